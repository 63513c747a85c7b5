"""Aligner benchmark: cells/s of every backend against a plain-Python double-loop DP.

``python -m biovl_core.bench align [--quick]`` prints one table, all figures measured side by
side in one run on BioVL-sized problems (K = 4..30 steps, N = 50..400 segments), one
alignment at a time and in a batch. ``gpu_check()`` compares the GPU backends with numba.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

import numpy as np

from biovl_core.align import SegmentationProblem, align, objective, solve_segmentation
from biovl_core.bench import best_seconds
from biovl_core.device import cupy_usable


def python_dp(match: np.ndarray, drop: np.ndarray) -> tuple[list[int], float]:
    """The same segmentation DP as the kernels, as a plain Python double loop (the yardstick)."""
    m = match.tolist()
    d = drop.tolist()
    k, n = len(m), len(d)
    neg = float("-inf")
    a_prev = [neg] * (k + 1)
    b_prev = [0.0] + [neg] * k
    dirs = []
    for j in range(n):
        dj = d[j]
        a_cur = [neg] * (k + 1)
        b_cur = [dj + b_prev[0]] + [neg] * k
        col = [4] * (k + 1)
        for i in range(1, k + 1):
            best, c = a_prev[i], 0
            if a_prev[i - 1] > best:
                best, c = a_prev[i - 1], 1
            if b_prev[i - 1] > best:
                best, c = b_prev[i - 1], 2
            a_cur[i] = m[i - 1][j] + best
            bb = a_prev[i]
            if b_prev[i] > bb:
                bb, c = b_prev[i], c | 4
            b_cur[i] = dj + bb
            col[i] = c
        dirs.append(col)
        a_prev, b_prev = a_cur, b_cur
    i, state = k, 0 if a_prev[k] >= b_prev[k] else 1
    score = a_prev[k] if state == 0 else b_prev[k]
    labels = [-1] * n
    for j in range(n - 1, -1, -1):
        c = dirs[j][i]
        if state == 0:
            labels[j] = i - 1
            if c & 3:
                state = 1 if (c & 3) == 2 else 0
                i -= 1
        elif not c & 4:
            state = 0
    return labels, score


def make_problems(
    count: int,
    seed: int = 0,
    k_range: tuple[int, int] = (4, 30),
    n_range: tuple[int, int] = (50, 400),
) -> list[SegmentationProblem]:
    """Random BioVL-sized drop_dtw problems: cosine-like similarities, drop cost at the 70th percentile."""
    rng = np.random.default_rng(seed)
    problems = []
    for _ in range(count):
        k = int(rng.integers(k_range[0], k_range[1] + 1))
        n = int(rng.integers(max(n_range[0], k), n_range[1] + 1))
        sim = rng.normal(0.2, 0.08, size=(k, n)).astype(np.float32)
        drop = np.full(n, np.percentile(sim, 70), dtype=np.float32)
        problems.append(SegmentationProblem(sim, drop))
    return problems


def _cells(problems: Sequence[SegmentationProblem]) -> int:
    """Total K x N over the problems."""
    return int(sum(p.match.size for p in problems))


def _time_single(problems: Sequence[SegmentationProblem], backend: str, repeats: int) -> float:
    """Seconds to solve the problems one ``solve_segmentation`` call each."""
    return best_seconds(lambda: [solve_segmentation([p], backend) for p in problems], repeats)


def _row(
    name: str, mode: str, problems: Sequence[SegmentationProblem], seconds: float, path: str
) -> dict:
    """One table row's raw figures."""
    return {
        "backend": name,
        "mode": mode,
        "path": path,
        "count": len(problems),
        "rate": _cells(problems) / seconds,
    }


def run(quick: bool = False, batch: int = 1000, seed: int = 0) -> list[dict]:
    """Measure every usable backend; return rows with cells/s (and print nothing).

    All rows use the same problems (the Python loop and numpy's single calls a prefix of
    them when ``quick``). ``path`` is ``kernel`` for the bare solver (labels only, drop
    scores given) and ``api`` for ``align``/``align_batch`` (validation, default drop cost
    as a percentile, labels, spans, float64 score): the same drop_dtw problems, since
    ``make_problems`` sets the drop score at the 70th percentile like the default method.
    """
    import numba

    from biovl_core.align import align_batch, kernel_numba, pack_flat
    from biovl_core.align.pack import pack_batch

    repeats = 1 if quick else 3
    problems = make_problems(100 if quick else batch, seed)
    sims = [p.match for p in problems]
    py_set = problems[:5] if quick else problems
    np_single = problems[: 3 if quick else 20]
    rows = []
    py_best = float("inf")
    for _ in range(1 if quick else 2):
        start = time.perf_counter()
        for p in py_set:
            python_dp(p.match, p.drop)
        py_best = min(py_best, time.perf_counter() - start)
    rows.append(_row("python loop", "single", py_set, py_best, "kernel"))
    rows.append(
        _row("numpy", "single", np_single, _time_single(np_single, "numpy", repeats), "kernel")
    )
    rows.append(
        _row(
            "numpy",
            "batch",
            problems,
            best_seconds(lambda: solve_segmentation(problems, "numpy"), repeats),
            "kernel",
        )
    )
    t = best_seconds(lambda: [kernel_numba.solve_one(p.match, p.drop) for p in problems], repeats)
    rows.append(_row("numba", "single", problems, t, "kernel"))
    packed = pack_flat(problems)
    for parallel in (False, True):
        t = best_seconds(lambda p=parallel: kernel_numba.solve_flat(*packed, parallel=p), repeats)
        threads = numba.get_num_threads() if parallel else 1
        rows.append(_row(f"numba {threads} thread(s)", "batch", problems, t, "kernel"))
    t = best_seconds(lambda: [align(s, method="drop_dtw", backend="numba") for s in sims], repeats)
    rows.append(_row("numba align()", "single", problems, t, "api"))
    t = best_seconds(lambda: align_batch(sims, method="drop_dtw", backend="numba"), repeats)
    rows.append(_row("numba align_batch()", "batch", problems, t, "api"))
    matches, drops = [p.match for p in problems], [p.drop for p in problems]
    t = best_seconds(lambda: pack_flat(problems), repeats)
    rows.append(_row("pack_flat (old)", "pack", problems, t, "pack"))
    t = best_seconds(lambda: pack_batch(matches, drops), repeats)
    rows.append(_row("pack_batch (1 buffer)", "pack", problems, t, "pack"))
    if cupy_usable():
        for backend in ("cupy_xp", "cupy"):
            t = best_seconds(lambda b=backend: solve_segmentation(problems, b), repeats)
            rows.append(_row(backend, "batch", problems, t, "kernel"))
    return rows


def format_table(rows: list[dict]) -> str:
    """Rows as a fixed-width table with ratios to the Python loop and to numpy."""
    py = next(r["rate"] for r in rows if r["backend"] == "python loop")
    numpy_rate = {r["mode"]: r["rate"] for r in rows if r["backend"] == "numpy"}
    head = (
        f"{'backend':<22} {'path':<6} {'mode':<7} {'aligns':>6} {'M cells/s':>10} "
        f"{'x python':>9} {'x numpy':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        vs_np = r["rate"] / numpy_rate[r["mode"]] if r["mode"] in numpy_rate else float("nan")
        lines.append(
            f"{r['backend']:<22} {r['path']:<6} {r['mode']:<7} {r['count']:>6} "
            f"{r['rate'] / 1e6:>10.2f} {r['rate'] / py:>9.1f} {vs_np:>8.2f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: print the aligner table (``--quick`` for a CI-sized run)."""
    parser = argparse.ArgumentParser(prog="python -m biovl_core.bench align", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (CI)")
    parser.add_argument("--batch", type=int, default=1000, help="alignments per batch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    warm = make_problems(2, args.seed)
    solve_segmentation(warm, "numba")
    align_batch_warm = [p.match for p in warm]
    align(align_batch_warm[0], backend="numba")
    rows = run(quick=args.quick, batch=args.batch, seed=args.seed)
    print("aligner: drop_dtw segmentation, K=4..30 steps, N=50..400 segments, float32 + traceback")
    print(
        "all rows on the same problems (python loop on every one unless --quick); kernel = bare "
        "solver, api = align()/align_batch() incl. validation, percentile drop cost, spans, score, "
        "pack = packing the batch for the flat kernels (cells packed per second)"
    )
    print(format_table(rows))
    return 0


def _shfl_mismatch(
    name: str, got: tuple, ref_labels: np.ndarray, ref_scores: np.ndarray, fused: tuple
) -> str | None:
    """Compare the "shfl" variant's (labels, optima) with numba and the fused kernel; None if equal."""
    labels, scores = (np.asarray(x.get() if hasattr(x, "get") else x) for x in got)
    fused_labels, fused_scores = (np.asarray(x.get()) for x in fused)
    problems = []
    if not np.array_equal(labels, ref_labels):
        problems.append(f"labels differ from numba at {int((labels != ref_labels).sum())} segments")
    if not np.allclose(scores, ref_scores, atol=1e-4):
        problems.append(
            f"optima differ from numba by up to {float(np.nanmax(np.abs(scores - ref_scores))):.3g}"
        )
    if not np.array_equal(labels, fused_labels):
        problems.append("labels differ from the fused RawKernel")
    if not np.array_equal(scores.view(np.uint32), fused_scores.view(np.uint32)):
        problems.append(
            f"optima not bit-identical to the fused RawKernel at "
            f"{int((scores.view(np.uint32) != fused_scores.view(np.uint32)).sum())} alignments"
        )
    return f"{name}: " + "; ".join(problems) if problems else None


def gpu_check(batch: int = 1000, big_batch: int = 20000, repeats: int = 5) -> None:
    """On a GPU: cupy RawKernel and cupy wavefront vs numba on a batch (same answers), and G cells/s.

    Raises AssertionError on any disagreement; prints throughput with inputs already on the
    GPU (kernel incl. traceback) and end to end from host arrays. The block-per-alignment
    "fused" RawKernel's checks come first and raise at once; the warp-per-alignment "shfl"
    kernel (the cupy backend's default since it passed these checks on an H200) is checked
    against numba and the fused kernel on the same alignments (plus K = 33..64 for its
    2-steps-per-lane path) and timed beside it; a disagreement prints "shfl variant: MISMATCH"
    and raises only after every figure is printed.
    """
    import cupy as cp

    from biovl_core.align import kernel_cupy, kernel_numba, pack_flat, pack_padded

    problems = make_problems(batch, seed=1)
    problems += make_problems(20, seed=2, k_range=(1, 3), n_range=(3, 12))
    mt, m_off, drop, seg_off, ks, ns = pack_flat(problems)
    ref_labels, ref_scores = kernel_numba.solve_flat(mt, m_off, drop, seg_off, ks, ns)
    raw_labels, raw_scores = kernel_cupy.solve_flat_rawkernel(
        mt, m_off, drop, seg_off, ks, ns, kernel="fused"
    )
    assert np.array_equal(raw_labels.get(), ref_labels), "RawKernel labels differ from numba"
    assert np.allclose(raw_scores.get(), ref_scores, atol=1e-4), "RawKernel optima differ"
    pm, pd, pk, pn = pack_padded(problems)
    xp_labels, xp_scores = kernel_cupy.solve_padded_cupy(pm, pd, pk, pn)
    xp_labels = xp_labels.get()
    for b, (s, n) in enumerate(zip(seg_off, ns, strict=True)):
        assert np.array_equal(xp_labels[b, :n], ref_labels[s : s + n]), (
            f"cupy_xp labels differ #{b}"
        )
    assert np.allclose(xp_scores.get(), ref_scores, atol=1e-4), "cupy_xp optima differ"
    for b in range(50):
        labels = ref_labels[seg_off[b] : seg_off[b] + ns[b]]
        assert abs(objective(problems[b].match, problems[b].drop, labels) - ref_scores[b]) < 1e-3
    assert (
        align(problems[0].match, backend="cupy").score
        == align(problems[0].match, backend="numba").score
    )
    print(f"same labels and optima on {len(problems)} alignments: numba == RawKernel == cupy_xp")

    shfl_failures: list[str] = []

    def shfl_check(
        name: str, fn: Callable[[], tuple], ref: tuple, fused: Callable[[], tuple]
    ) -> None:
        try:
            bad = _shfl_mismatch(name, fn(), ref[0], ref[1], fused())
        except Exception as exc:  # report the variant's failure, keep the verified checks
            bad = f"{name}: {type(exc).__name__}: {exc}"
        if bad:
            shfl_failures.append(bad)
            print(f"shfl variant: MISMATCH {bad}")
        else:
            print(f"shfl variant: same labels as numba, optima bit-identical to RawKernel ({name})")

    flat = (mt, m_off, drop, seg_off, ks, ns)
    shfl_check(
        f"{len(problems)} alignments, K=1..30",
        lambda: kernel_cupy.solve_flat_shfl(*flat),
        (ref_labels, ref_scores),
        lambda: (raw_labels, raw_scores),
    )
    wide = pack_flat(make_problems(200, seed=4, k_range=(33, 64), n_range=(64, 400)))
    shfl_check(
        "200 alignments, K=33..64 (2 steps per lane)",
        lambda: kernel_cupy.solve_flat_shfl(*wide),
        kernel_numba.solve_flat(*wide),
        lambda: kernel_cupy.solve_flat_rawkernel(*wide, kernel="fused"),
    )

    def gpu_seconds(fn: Callable[[], object]) -> float:
        fn()
        cp.cuda.Device().synchronize()
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        best = float("inf")
        for _ in range(repeats):
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            best = min(best, cp.cuda.get_elapsed_time(start, stop) / 1e3)
        return best

    for size in (batch, big_batch):
        probs = make_problems(size, seed=3)
        cells = _cells(probs)
        packed = pack_flat(probs)
        dev = [cp.asarray(a) for a in packed[:4]] + list(packed[4:])
        t_kernel = gpu_seconds(lambda d=dev: kernel_cupy.solve_flat_rawkernel(*d, kernel="fused"))
        ref_big = kernel_numba.solve_flat(*packed)
        shfl_check(
            f"batch {size}",
            lambda d=dev: kernel_cupy.solve_flat_shfl(*d),
            ref_big,
            lambda d=dev: kernel_cupy.solve_flat_rawkernel(*d, kernel="fused"),
        )
        try:
            t_shfl = gpu_seconds(lambda d=dev: kernel_cupy.solve_flat_shfl(*d))
            shfl_rate = f"{cells / t_shfl / 1e9:8.1f}"
        except Exception as exc:
            shfl_failures.append(f"batch {size} timing: {type(exc).__name__}: {exc}")
            shfl_rate = "  failed"
        t_e2e = gpu_seconds(lambda p=probs: solve_segmentation(p, "cupy"))
        padded = [cp.asarray(a) for a in pack_padded(probs)]
        t_xp = gpu_seconds(lambda p=padded: kernel_cupy.solve_padded_cupy(*p))
        t_cpu = best_seconds(lambda p=packed: kernel_numba.solve_flat(*p), 1)
        print(
            f"batch {size:>6} ({cells / 1e6:.1f} M cells): RawKernel {cells / t_kernel / 1e9:8.1f} G cells/s "
            f"(device-resident), {cells / t_e2e / 1e9:6.2f} G cells/s from host lists; "
            f"cupy_xp {cells / t_xp / 1e9:6.2f} G cells/s; numba (CPU) {cells / t_cpu / 1e9:6.3f} G cells/s"
        )
        print(
            f"batch {size:>6} device-resident, side by side: RawKernel (fused, verified) "
            f"{cells / t_kernel / 1e9:8.1f} G cells/s | shfl variant {shfl_rate} G cells/s"
            f"{'' if not shfl_failures else ' (MISMATCH, see above)'}"
        )
    if shfl_failures:
        raise AssertionError(
            "shfl variant: MISMATCH (the fused RawKernel passed all its checks): "
            + " | ".join(shfl_failures)
        )


def host_arrays_check(quick: bool = False, repeats: int = 3) -> None:
    """On a GPU: the cupy path from host arrays (pack once, one pinned copy, one launch) vs numba.

    Asserts the same labels as numba; prints G cells/s of packing alone, of the whole host
    path and of numba per batch size, and where the GPU starts to win (the size rule behind
    ``align.AUTO_CUPY_MIN_CELLS``).
    """
    import cupy as cp

    from biovl_core.align import AUTO_CUPY_MIN_CELLS, kernel_cupy, kernel_numba, pack_flat
    from biovl_core.align.pack import pack_batch

    sizes = (1, 10, 100, 1000, 5000) if quick else (1, 10, 100, 1000, 5000, 20000)
    crossover = None
    for size in sizes:
        probs = make_problems(size, seed=5)
        matches, drops = [p.match for p in probs], [p.drop for p in probs]
        cells = _cells(probs)
        ref, _ = kernel_numba.solve_flat(*pack_flat(probs))
        labels, _, _ = kernel_cupy.solve_from_host(matches, drops)
        assert np.array_equal(labels, ref), f"host-array cupy labels differ from numba ({size})"

        def host(m: list = matches, d: list = drops) -> None:
            kernel_cupy.solve_from_host(m, d)
            cp.cuda.get_current_stream().synchronize()

        t_pack = best_seconds(
            lambda m=matches, d=drops: pack_batch(m, d, allocate=kernel_cupy.PINNED.allocate),
            repeats,
        )
        t_host = best_seconds(host, repeats)
        packed = pack_flat(probs)
        t_numba = best_seconds(lambda p=packed: kernel_numba.solve_flat(*p), repeats)
        if crossover is None and t_host < t_numba:
            crossover = cells
        print(
            f"batch {size:>6} ({cells / 1e6:7.2f} M cells): from host arrays "
            f"{cells / t_host / 1e9:6.2f} G cells/s (packing alone {cells / t_pack / 1e9:6.2f}); "
            f"numba {cells / t_numba / 1e9:6.2f} G cells/s; {'cupy' if t_host < t_numba else 'numba'} wins"
        )
    where = (
        "never in these sizes" if crossover is None else f"from about {crossover / 1e6:.2f} M cells"
    )
    print(
        f"same labels as numba at every size; the GPU path wins {where} "
        f"(auto switches at AUTO_CUPY_MIN_CELLS = {AUTO_CUPY_MIN_CELLS / 1e6:.1f} M cells); "
        "target >= 5 G cells/s from host arrays"
    )

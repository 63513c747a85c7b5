"""Aligner: every backend reaches the brute-force optimum; spans, methods and errors behave."""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from biovl_core.align import (
    DEFAULT_METHOD,
    METHODS,
    Alignment,
    align,
    align_batch,
    objective,
    solve_segmentation,
)
from biovl_core.bench.__main__ import available
from biovl_core.bench.__main__ import main as bench_main
from biovl_core.bench.align import make_problems, python_dp
from biovl_core.device import cupy_usable

GPU = cupy_usable()
CPU_BACKENDS = ["numpy", "numba"]
ALL_BACKENDS = CPU_BACKENDS + (["cupy", "cupy_xp"] if GPU else [])
NO_GPU = "needs a CUDA GPU with cupy (biovl_core.device.cupy_usable() is False here)"


def runs(k: int, n: int, start: int, allow_gaps: bool) -> Iterator[list[tuple[int, int]]]:
    """Every way to give steps k.. contiguous non-empty ordered runs inside [start, n)."""
    if k == 0:
        if allow_gaps or start == n:
            yield []
        return
    first_starts = range(start, n) if allow_gaps else [start]
    for a in first_starts:
        for b in range(a, n - k + 1):
            for rest in runs(k - 1, n, b + 1, allow_gaps):
                yield [(a, b), *rest]


def brute_force(sim: np.ndarray, drop: np.ndarray | None) -> float:
    """Best objective over all valid labelings (drop None = every segment assigned)."""
    k, n = sim.shape
    best = -np.inf
    for layout in runs(k, n, 0, allow_gaps=drop is not None):
        labels = np.full(n, -1)
        for step, (a, b) in enumerate(layout):
            labels[a : b + 1] = step
        d = drop if drop is not None else np.zeros(n, np.float32)
        best = max(best, objective(sim, d, labels))
    return best


def assert_valid_segmentation(labels: np.ndarray, k: int, allow_background: bool) -> None:
    """Each step a contiguous non-empty run, in protocol order; background only where allowed."""
    steps = labels[labels >= 0]
    assert np.all(np.diff(steps) >= 0), labels
    assert set(steps.tolist()) == set(range(k)), labels
    for step in range(k):
        idx = np.flatnonzero(labels == step)
        assert idx[-1] - idx[0] + 1 == idx.size, f"step {step} is not contiguous: {labels}"
    if not allow_background:
        assert (labels >= 0).all()


@st.composite
def tiny_problem(draw: st.DrawFn) -> tuple[np.ndarray, float]:
    """K <= 3 steps, K <= N <= 7 segments, similarities in [-1, 1], a drop cost in [-1, 1]."""
    k = draw(st.integers(1, 3))
    n = draw(st.integers(k, 7))
    elems = st.floats(-1, 1, width=32, allow_nan=False)
    sim = draw(arrays(np.float32, (k, n), elements=elems))
    return sim, draw(elems)


@settings(max_examples=60, deadline=None)
@given(tiny_problem())
def test_every_backend_reaches_brute_force_optimum(problem: tuple[np.ndarray, float]) -> None:
    sim, cost = problem
    k = sim.shape[0]
    cases = [("nw", {}, None), ("drop_dtw", {"drop_cost": cost}, np.full(sim.shape[1], -cost))]
    for method, params, drop in cases:
        expected = brute_force(sim, None if drop is None else drop.astype(np.float32))
        results = [align(sim, method=method, backend=b, **params) for b in ALL_BACKENDS]
        for backend, a in zip(ALL_BACKENDS, results, strict=True):
            assert a.score == pytest.approx(expected, abs=1e-4), (method, backend)
            assert_valid_segmentation(a.labels, k, allow_background=method == "drop_dtw")
            np.testing.assert_array_equal(a.labels, results[0].labels)


def test_backends_agree_on_biovl_sized_batch() -> None:
    problems = make_problems(40, seed=7)
    by_backend = {b: solve_segmentation(problems, b) for b in ALL_BACKENDS}
    singles = [solve_segmentation([p], "numba")[0] for p in problems]
    for i, p in enumerate(problems):
        ref = by_backend["numba"][i]
        np.testing.assert_array_equal(singles[i], ref)
        for backend in ALL_BACKENDS:
            np.testing.assert_array_equal(by_backend[backend][i], ref, err_msg=backend)
        py_labels, py_score = python_dp(p.match, p.drop)
        np.testing.assert_array_equal(np.array(py_labels), ref)
        assert objective(p.match, p.drop, ref) == pytest.approx(py_score, abs=1e-3)


@pytest.mark.skipif(not GPU, reason=NO_GPU)
def test_gpu_backends_match_numba_with_shared_and_global_direction_bits() -> None:
    big = make_problems(3, seed=5, k_range=(60, 80), n_range=(1500, 2000))
    small = make_problems(30, seed=6)
    for problems in (small, big):
        ref = solve_segmentation(problems, "numba")
        for backend in ("cupy", "cupy_xp"):
            for got, want in zip(solve_segmentation(problems, backend), ref, strict=True):
                np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(not GPU, reason=NO_GPU)
@pytest.mark.parametrize("k_range", [(1, 32), (4, 30), (33, 64)])
def test_shfl_variant_matches_numba_and_fused_kernel(k_range: tuple[int, int]) -> None:
    from biovl_core.align import kernel_cupy, kernel_numba, pack_flat

    problems = make_problems(60, seed=9, k_range=k_range, n_range=(k_range[1], 300))
    packed = list(pack_flat(problems))
    packed[0] = (np.round(packed[0] * 20) / 20).astype(np.float32)  # many ties
    ref_labels, ref_scores = kernel_numba.solve_flat(*packed)
    labels, scores = kernel_cupy.solve_flat_rawkernel(*packed, kernel="shfl")
    fused_labels, fused_scores = kernel_cupy.solve_flat_rawkernel(*packed, kernel="fused")
    np.testing.assert_array_equal(labels.get(), ref_labels)
    np.testing.assert_array_equal(labels.get(), fused_labels.get())
    np.testing.assert_array_equal(scores.get().view(np.uint32), fused_scores.get().view(np.uint32))
    np.testing.assert_allclose(scores.get(), ref_scores, atol=1e-4)


def test_planted_steps_with_gaps_are_recovered() -> None:
    rng = np.random.default_rng(0)
    truth = [(2, 5), (9, 12), (13, 20), (25, 27)]
    sim = rng.uniform(0.0, 0.1, size=(len(truth), 30)).astype(np.float32)
    for step, (a, b) in enumerate(truth):
        sim[step, a : b + 1] += 0.8
    dropped = align(sim, method="drop_dtw", drop_cost=-0.4, segment_seconds=2.0)
    assert dropped.spans == [(2 * a, 2 * (b + 1)) for a, b in truth]
    nw = align(sim, method="nw", segment_seconds=2.0)
    assert (nw.labels >= 0).all() and nw.spans[0][0] == 0.0 and nw.spans[-1][1] == 60.0
    assert dropped.score > nw.score


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 8).flatmap(
        lambda k: st.tuples(
            arrays(np.float32, (k, 40), elements=st.floats(-1, 1, width=32)),
            st.floats(0.5, 10.0),
            st.floats(0.01, 1.0),
            st.sampled_from(["nw", "drop_dtw", "uniform"]),
        )
    )
)
def test_spans_ordered_contiguous_inside_video(args: tuple) -> None:
    sim, seg, tail, method = args
    n = sim.shape[1]
    duration = (n - 1) * seg + tail * seg
    a = align(sim, segment_seconds=seg, duration_s=duration, method=method)
    assert isinstance(a, Alignment) and a.method == method and len(a.spans) == sim.shape[0]
    assert a.labels.shape == (n,) and a.labels.dtype == np.int64
    ends = [0.0]
    for span in a.spans:
        assert span is not None
        start, end = span
        assert ends[-1] <= start < end <= duration + 1e-9
        ends.append(end)
    if method == "nw":
        assert a.spans[0][0] == 0.0 and a.spans[-1][1] == pytest.approx(duration)


def test_huge_drop_cost_equals_nw() -> None:
    for p in make_problems(10, seed=3):
        nw = align(p.match, method="nw", backend="numba")
        for backend in CPU_BACKENDS:
            dd = align(p.match, method="drop_dtw", drop_cost=1e6, backend=backend)
            np.testing.assert_array_equal(dd.labels, nw.labels)
            assert dd.score == pytest.approx(nw.score, abs=1e-4)


def test_default_drop_cost_comes_from_similarity_percentile() -> None:
    rng = np.random.default_rng(1)
    sim = rng.normal(0.2, 0.1, size=(5, 60)).astype(np.float32)
    default = align(sim, method="drop_dtw")
    assert default.params["drop_cost"] == pytest.approx(-np.percentile(sim, 70), abs=1e-6)
    greedy = align(sim, method="drop_dtw", drop_percentile=100)
    assert (greedy.labels >= 0).sum() == sim.shape[0]
    dropped_less = align(sim, method="drop_dtw", drop_percentile=0)
    assert (dropped_less.labels >= 0).sum() > (default.labels >= 0).sum()


def test_default_method_is_the_projects_best() -> None:
    sim = np.random.default_rng(2).normal(0.2, 0.1, size=(5, 60)).astype(np.float32)
    assert DEFAULT_METHOD == "biovl"
    assert align(sim).method == DEFAULT_METHOD
    assert align(sim, method="default").score == align(sim, method=DEFAULT_METHOD).score


def test_per_segment_drop_cost() -> None:
    sim = np.full((2, 10), 0.5, dtype=np.float32)
    cost = np.zeros(10)
    cost[3:6] = -5.0
    a = align(sim, method="drop_dtw", drop_cost=cost)
    np.testing.assert_array_equal(np.flatnonzero(a.labels == -1), [3, 4, 5])
    assert a.score == pytest.approx(7 * 0.5 + 3 * 5.0)


def test_uniform_splits_video_evenly() -> None:
    sim = np.arange(3 * 7, dtype=np.float32).reshape(3, 7)
    a = align(sim, method="uniform", segment_seconds=5.0, duration_s=33.0)
    assert a.spans == [(0.0, 11.0), (11.0, 22.0), (22.0, 33.0)]
    np.testing.assert_array_equal(a.labels, [0, 0, 1, 1, 2, 2, 2])
    assert a.score == pytest.approx(sum(sim[s, j] for j, s in enumerate(a.labels)))
    wide = align(np.zeros((5, 2), np.float32), method="uniform", segment_seconds=4.0)
    assert wide.spans[-1] == pytest.approx((6.4, 8.0)) and wide.labels.tolist() == [1, 3]


def test_align_batch_matches_single_calls_and_durations() -> None:
    sims = [p.match for p in make_problems(5, seed=9)]
    durations = [s.shape[1] * 5.0 - 1.0 for s in sims]
    batch = align_batch(sims, method="nw", backend="numpy", duration_s=durations)
    for s, d, a in zip(sims, durations, batch, strict=True):
        one = align(s, method="nw", backend="numba", duration_s=d)
        np.testing.assert_array_equal(a.labels, one.labels)
        assert a.spans == one.spans and a.spans[-1][1] == d


def test_registry_lists_methods() -> None:
    assert {"uniform", "nw", "drop_dtw"} <= set(METHODS)
    assert DEFAULT_METHOD in METHODS


@pytest.mark.parametrize(
    ("sim", "kwargs", "message"),
    [
        (np.zeros(5), {}, "2-D"),
        (np.zeros((2, 3, 4)), {}, "2-D"),
        (np.zeros((0, 4)), {}, "empty"),
        (np.zeros((3, 0)), {}, "empty"),
        (np.array([[0.1, np.nan, 0.2]]), {}, "NaN/inf"),
        (np.array([[0.1, np.inf, 0.2]]), {}, "NaN/inf"),
        ([["a", "b"]], {}, "numeric"),
        (np.zeros((5, 3)), {"method": "nw"}, "K=5 steps"),
        (np.zeros((5, 3)), {"method": "drop_dtw"}, "K=5 steps"),
        (np.zeros((2, 4)), {"method": "drop_dtw", "drop_cost": np.zeros(3)}, "shape (4,)"),
        (np.zeros((2, 4)), {"method": "drop_dtw", "drop_cost": np.nan}, "finite"),
        (np.zeros((2, 4)), {"method": "drop_dtw", "drop_percentile": 120}, "[0, 100]"),
        (np.zeros((2, 4)), {"method": "nw", "drop_cost": 1.0}, "does not take"),
        (np.zeros((2, 4)), {"method": "viterbi"}, "unknown alignment method"),
        (np.zeros((2, 4)), {"backend": "fortran"}, "unknown aligner backend"),
        (np.zeros((2, 4)), {"segment_seconds": 0}, "positive"),
        (np.zeros((2, 4)), {"duration_s": 10.0}, "empty"),
    ],
)
def test_bad_inputs_raise_clear_value_errors(sim: object, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        align(sim, **kwargs)


def test_batch_errors_name_the_video() -> None:
    with pytest.raises(ValueError, match="similarity #1"):
        align_batch([np.zeros((2, 4)), np.zeros((2, 4, 1))])
    with pytest.raises(ValueError, match="one per video"):
        align_batch([np.zeros((2, 4))] * 2, duration_s=[20.0])


@pytest.mark.skipif(GPU, reason="checks the error raised where no GPU is usable")
def test_cupy_backend_without_gpu_says_what_to_use() -> None:
    with pytest.raises(ValueError, match="backend='numba'"):
        align(np.zeros((2, 4)), backend="cupy")


def test_bench_dispatch_and_quick_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert "align" in available()
    assert bench_main(["no-such-bench"]) == 2
    assert bench_main(["align", "--quick"]) == 0
    out = capsys.readouterr().out
    for row in ("python loop", "numpy", "numba"):
        assert row in out


def _spans_reference(labels: np.ndarray, k: int, seg: float, dur: float) -> list:
    """Spans straight from the labels, one step at a time (independent of the fast path)."""
    out = []
    for step in range(k):
        idx = np.flatnonzero(labels == step)
        out.append(None if idx.size == 0 else (idx[0] * seg, min((idx[-1] + 1) * seg, dur)))
    return out


@pytest.mark.parametrize("method", ["drop_dtw", "nw"])
def test_numba_flat_batch_path_matches_wavefront_and_python_dp(method: str) -> None:
    rng = np.random.default_rng(11)
    problems = make_problems(25, seed=12) + make_problems(
        15, seed=13, k_range=(1, 4), n_range=(1, 9)
    )
    sims = [p.match for p in problems]
    sims[3] = sims[3].astype(np.float64)  # converted inside the packed path
    sims[4] = np.asfortranarray(sims[4])  # non-contiguous input
    durs = [s.shape[1] * 2.0 - float(rng.uniform(0, 1.9)) for s in sims]
    fast = align_batch(sims, segment_seconds=2.0, method=method, backend="numba", duration_s=durs)
    slow = align_batch(sims, segment_seconds=2.0, method=method, backend="numpy", duration_s=durs)
    for s, d, p, a, b in zip(sims, durs, problems, fast, slow, strict=True):
        np.testing.assert_array_equal(a.labels, b.labels)
        drop = p.drop if method == "drop_dtw" else np.full(s.shape[1], -np.inf, np.float32)
        py_labels, py_score = python_dp(np.asarray(s, np.float32), drop)
        np.testing.assert_array_equal(a.labels, py_labels)
        assert a.score == b.score  # same float64 summation order on every backend
        assert a.score == pytest.approx(objective(p.match, drop, a.labels), abs=1e-9)
        assert a.score == pytest.approx(py_score, abs=1e-3)
        assert a.spans == b.spans == _spans_reference(a.labels, s.shape[0], 2.0, d)
        assert a.params == b.params
    singles = [
        align(s, segment_seconds=2.0, method=method, duration_s=d)
        for s, d in zip(sims, durs, strict=True)
    ]
    for a, one in zip(fast, singles, strict=True):
        np.testing.assert_array_equal(a.labels, one.labels)
        assert a.score == one.score and a.spans == one.spans


def test_numba_parallel_and_serial_batches_agree() -> None:
    from biovl_core.align import kernel_numba, pack_flat

    problems = make_problems(60, seed=21)
    packed = pack_flat(problems)
    runs = [
        kernel_numba.solve_flat_full(
            *packed[:2], packed[2].copy(), *packed[3:], pct=70.0, parallel=p
        )
        for p in (False, True)
    ]
    for name in ("labels", "first", "last", "optima", "scores", "drop_values"):
        np.testing.assert_array_equal(runs[0][name], runs[1][name], err_msg=name)
    want = [np.float32(np.percentile(p.match, 70)) for p in problems]
    np.testing.assert_array_equal(runs[0]["drop_values"], want)


def test_kernel_percentile_is_numpys_bit_for_bit() -> None:
    from biovl_core.align import kernel_numba

    rng = np.random.default_rng(5)
    for trial in range(400):
        size = int(rng.integers(1, 5000))
        kind = trial % 4
        if kind == 0:
            x = rng.normal(0.2, 0.08, size)
        elif kind == 1:
            x = rng.integers(-3, 3, size)  # heavy ties
        elif kind == 2:
            x = rng.uniform(-1, 1, size) ** 7  # skewed
        else:
            x = np.full(size, 0.5)
            x[: int(rng.integers(0, 3))] = rng.normal()
        x = x.astype(np.float32)
        pct = float(rng.choice([0.0, 100.0, 70.0, rng.uniform(0, 100)]))
        assert kernel_numba.percentile(x, pct) == np.percentile(x, pct), (trial, pct)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_fast_path_errors_name_the_video() -> None:
    good = np.zeros((2, 4), np.float32)
    bad = np.zeros((2, 4), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(
        ValueError, match=r"similarity #2 has 1 NaN/inf value\(s\), first at step 1"
    ):
        align_batch([good, good, bad], backend="numba")
    with pytest.raises(ValueError, match="too large for float32"):
        align(np.full((2, 4), 1e39), backend="numba")
    with pytest.raises(ValueError, match="similarity #1: method 'nw'"):
        align_batch([good, np.zeros((5, 3))], method="nw", backend="numba")
    assert align_batch([], backend="numba") == []


def test_kernel_percentile_on_biovl_sized_matrices_and_bracket_edges() -> None:
    from biovl_core.align import kernel_numba

    problems = make_problems(30, seed=31) + make_problems(
        10, seed=32, k_range=(1, 3), n_range=(1, 30)
    )
    rng = np.random.default_rng(33)
    for p in problems:
        x = p.match.ravel()
        q = np.round(x, 2)  # ties straddling the narrowed value interval
        for pct in (0.0, 1.0, 50.0, 70.0, 99.5, 100.0, float(rng.uniform(0, 100))):
            for arr in (x, q):
                assert kernel_numba.percentile(arr, pct) == np.percentile(arr, pct), (arr.size, pct)

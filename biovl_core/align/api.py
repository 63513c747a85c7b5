"""Align protocol steps to video segments: methods, validation, spans, and backend dispatch.

Every dynamic-programming method reduces to one kernel, *monotonic segmentation with
optional background*: given match scores ``M[K, N]`` and per-segment drop scores ``D[N]``
(``-inf`` = dropping disabled), pick for each step a contiguous non-empty run of segments,
runs in protocol order and disjoint, every other segment background, maximising
``sum(M over matched cells) + sum(D over background segments)``. Methods only build
``M`` and ``D`` (see ``METHODS`` / ``register_method``); the kernels never change.

Backends: ``"numba"`` (compiled CPU, parallel over the batch), ``"numpy"`` (the batched
wavefront written against an array module), ``"cupy"`` (fused GPU kernel), ``"cupy_xp"``
(the same wavefront under cupy), ``"auto"`` (cupy when usable and the batch is big enough
to pay for the host-to-device copy, see ``AUTO_CUPY_MIN_CELLS``; else numba).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from biovl_core.device import cupy_usable
from biovl_core.errors import BioVLError

Span = tuple[float, float] | None

BACKENDS = ("auto", "numpy", "numba", "cupy", "cupy_xp")

AUTO_CUPY_MIN_CELLS = 2_000_000
"""Smallest batch (sum of K x N) that ``backend="auto"`` sends to the GPU; smaller ones run numba.

From the H200 figures in docs/GPU_CHECK.md: numba solves 4-5 G cells/s on 16 cores, and a GPU
batch from host arrays pays a fixed ~0.2 ms (pack, one copy, one launch, labels back) before
its per-cell cost; below ~2 M cells (~500 BioVL-sized alignments) numba finishes first. An
estimate until ``make gpu-check`` measures the crossover (it prints it) on the GPU in use.
"""


@dataclass
class Alignment:
    """One alignment: a span per step (seconds, or None), a step label per segment, the optimum."""

    spans: list[Span]
    labels: np.ndarray
    score: float
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    # Per-step confidence in [0, 1] (float array [K]); set by ``align_group``, None elsewhere.
    confidence: np.ndarray | None = None


@dataclass
class SegmentationProblem:
    """Input of the generic kernel: match scores [K, N] and drop scores [N] (``-inf`` = no drop)."""

    match: np.ndarray
    drop: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: either ``prepare`` (builds a kernel problem) or ``direct`` (no DP)."""

    name: str
    description: str
    defaults: Mapping[str, Any]
    prepare: Callable[[np.ndarray, dict[str, Any]], SegmentationProblem] | None = None
    direct: (
        Callable[[np.ndarray, float, float, dict[str, Any]], tuple[list[Span], np.ndarray]] | None
    ) = None


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a method to ``METHODS`` (refusing a duplicate name) so ``align(method=name)`` finds it."""
    if (spec.prepare is None) == (spec.direct is None):
        raise ValueError(f"method {spec.name!r} must define exactly one of prepare / direct")
    if spec.name in METHODS or spec.name == "default":
        raise ValueError(f"method name {spec.name!r} is already taken; pick another name")
    METHODS[spec.name] = spec
    return spec


def _float_param(name: str, value: Any, method: str) -> float:
    """A finite float parameter, or an error naming it."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise BioVLError(f"{method}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise BioVLError(f"{method}: {name} must be finite, got {value!r}")
    return out


def _prepare_nw(sim: np.ndarray, params: dict[str, Any]) -> SegmentationProblem:
    """Needleman-Wunsch as in the BioVL paper: every segment belongs to a step."""
    drop = np.full(sim.shape[1], -np.inf, dtype=np.float32)
    return SegmentationProblem(sim, drop)


def _prepare_drop_dtw(sim: np.ndarray, params: dict[str, Any]) -> SegmentationProblem:
    """Drop-DTW (exclusive, contiguous): background costs ``drop_cost`` per segment.

    Like Drop-DTW's Algorithm 1, steps are never dropped (each gets >= 1 segment). Without an
    explicit ``drop_cost`` it is set per video as in Drop-DTW, from a percentile of the match
    costs (``-sim``): ``drop_cost = -percentile(sim, drop_percentile)``, so dropping a segment
    pays off where its similarity is below that percentile.
    """
    n = sim.shape[1]
    cost = params.get("drop_cost")
    if cost is None:
        pct = _float_param("drop_percentile", params["drop_percentile"], "drop_dtw")
        if not 0.0 <= pct <= 100.0:
            raise BioVLError(f"drop_dtw: drop_percentile must be in [0, 100], got {pct}")
        value = -float(np.percentile(sim, pct))
        return SegmentationProblem(
            sim, np.full(n, -value, dtype=np.float32), {"drop_cost": value, "drop_percentile": pct}
        )
    arr = np.asarray(cost, dtype=np.float64)
    if arr.ndim == 0:
        value = _float_param("drop_cost", cost, "drop_dtw")
        return SegmentationProblem(sim, np.full(n, -value, dtype=np.float32), {"drop_cost": value})
    if arr.shape != (n,):
        raise BioVLError(
            f"drop_dtw: drop_cost must be a number or one value per segment (shape ({n},)); "
            f"got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise BioVLError("drop_dtw: drop_cost contains NaN or inf; give finite costs")
    return SegmentationProblem(sim, (-arr).astype(np.float32), {"drop_cost": "per-segment"})


def _uniform(
    sim: np.ndarray, segment_seconds: float, duration_s: float, params: dict[str, Any]
) -> tuple[list[Span], np.ndarray]:
    """The paper's baseline: the video cut into K equal parts, each segment labelled by its midpoint."""
    k, n = sim.shape
    edges = np.linspace(0.0, duration_s, k + 1)
    spans: list[Span] = [(float(edges[i]), float(edges[i + 1])) for i in range(k)]
    starts = np.arange(n) * segment_seconds
    mids = (starts + np.minimum(starts + segment_seconds, duration_s)) / 2.0
    labels = np.clip((mids * k / duration_s).astype(np.int64), 0, k - 1)
    return spans, labels


register_method(
    MethodSpec("uniform", "video cut into K equal parts (BioVL baseline)", {}, direct=_uniform)
)
register_method(
    MethodSpec(
        "nw", "monotonic, every segment assigned (BioVL paper's Needleman-Wunsch)", {}, _prepare_nw
    )
)
register_method(
    MethodSpec(
        "drop_dtw",
        "monotonic with background segments at a drop cost (Drop-DTW, exclusive & contiguous)",
        {"drop_cost": None, "drop_percentile": 70.0},
        _prepare_drop_dtw,
    )
)

# The project's best method (see docs/QUALITY.md); "nw" stays available as the paper's setting.
DEFAULT_METHOD = "biovl"


def resolve_method(method: str) -> MethodSpec:
    """The spec of ``method`` ('default' = DEFAULT_METHOD), or an error listing the known ones."""
    name = DEFAULT_METHOD if method == "default" else method
    if name not in METHODS:
        raise BioVLError(
            f"unknown alignment method {method!r}; choose one of {sorted(METHODS)} or 'default'"
        )
    return METHODS[name]


def _params(spec: MethodSpec, given: Mapping[str, Any]) -> dict[str, Any]:
    """Method defaults overlaid with the given parameters; unknown names are refused."""
    unknown = sorted(set(given) - set(spec.defaults))
    if unknown:
        accepted = sorted(spec.defaults) or "none"
        raise BioVLError(
            f"method {spec.name!r} does not take parameter(s) {unknown}; accepted: {accepted}"
        )
    return {**spec.defaults, **given}


def validate_similarity(similarity: Any, what: str = "similarity") -> np.ndarray:
    """Check a [K steps, N segments] finite matrix and return it as contiguous float32."""
    try:
        arr = np.asarray(similarity)
        if arr.dtype != np.float32:
            arr = arr.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise BioVLError(
            f"{what} must be a numeric 2-D array [K steps, N segments]; could not convert it ({exc})"
        ) from None
    if arr.ndim != 2:
        raise BioVLError(
            f"{what} must be 2-D [K steps, N segments]; got {arr.ndim}-D shape {arr.shape}. "
            "Pass one matrix per video (use align_batch for several)."
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BioVLError(
            f"{what} is empty (shape {arr.shape}): the protocol needs at least one step and "
            "the video at least one segment"
        )
    bad = ~np.isfinite(arr)
    if bad.any():
        i, j = (int(x) for x in np.argwhere(bad)[0])
        raise BioVLError(
            f"{what} has {int(bad.sum())} NaN/inf value(s), first at step {i}, segment {j}; "
            "check the embeddings (zero vectors give NaN cosines) or clean with np.nan_to_num"
        )
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        raise BioVLError(f"{what} has values too large for float32; rescale the similarities")
    return out


def _duration(n: int, segment_seconds: float, duration_s: float | None, what: str) -> float:
    """Video length in seconds: the given one (checked against N) or N * segment length."""
    if duration_s is None:
        return n * segment_seconds
    d = _float_param("duration_s", duration_s, "align")
    if d <= (n - 1) * segment_seconds:
        raise BioVLError(
            f"{what}: duration_s={d} s leaves the last of {n} segments of {segment_seconds} s empty; "
            f"expected more than {(n - 1) * segment_seconds} s (or pass duration_s=None)"
        )
    return d


def spans_from_labels(
    labels: np.ndarray, k: int, segment_seconds: float, duration_s: float
) -> list[Span]:
    """Span of each step from its first and last segment (None when it has none).

    ``labels`` must be monotonic (as every method's are): step indices never decrease
    over the non-background segments.
    """
    idx = np.flatnonzero(labels >= 0)
    steps = labels[idx]
    wanted = np.arange(k)
    first = np.searchsorted(steps, wanted, side="left")
    last = np.searchsorted(steps, wanted, side="right") - 1
    spans: list[Span] = []
    for a_pos, b_pos in zip(first.tolist(), last.tolist(), strict=True):
        if b_pos < a_pos:
            spans.append(None)
            continue
        a, b = int(idx[a_pos]), int(idx[b_pos])
        spans.append((a * segment_seconds, min((b + 1) * segment_seconds, duration_s)))
    return spans


def objective(match: np.ndarray, drop: np.ndarray, labels: np.ndarray) -> float:
    """The segmentation objective of ``labels`` in float64: matched scores plus drop scores."""
    matched = labels >= 0
    cols = np.flatnonzero(matched)
    total = float(match[labels[cols], cols].astype(np.float64).sum())
    return total + float(drop[~matched].astype(np.float64).sum())


def auto_backend(cells: int) -> str:
    """The backend 'auto' means for a batch of `cells` (sum of K x N): cupy or numba."""
    return "cupy" if cells >= AUTO_CUPY_MIN_CELLS and cupy_usable() else "numba"


def _resolve_backend(backend: str, cells: int | None = None) -> str:
    """Map 'auto' to cupy or numba (by batch size when `cells` is known); refuse unknown names."""
    if backend not in BACKENDS:
        raise BioVLError(f"unknown aligner backend {backend!r}; choose one of {list(BACKENDS)}")
    if backend == "auto":
        return auto_backend(AUTO_CUPY_MIN_CELLS if cells is None else cells)
    if backend in ("cupy", "cupy_xp") and not cupy_usable():
        raise BioVLError(
            f"backend {backend!r} needs a CUDA GPU and cupy, and none is usable here; "
            "use backend='numba' (or 'auto')"
        )
    return backend


def _cells(sims: Sequence[Any]) -> int:
    """Sum of K x N over similarity matrices (malformed ones count 0; validation reports them)."""
    total = 0
    for s in sims:
        shape = getattr(s, "shape", None)
        if shape is None:
            try:
                shape = np.shape(s)
            except ValueError:
                continue
        if len(shape) == 2:
            total += int(shape[0]) * int(shape[1])
    return total


def pack_flat(problems: Sequence[SegmentationProblem]) -> tuple[np.ndarray, ...]:
    """Pack problems for the flat kernels: (m_flat, m_off, drop_flat, seg_off, ks, ns), [K, N] each."""
    ks = np.array([p.match.shape[0] for p in problems], dtype=np.int64)
    ns = np.array([p.match.shape[1] for p in problems], dtype=np.int64)
    sizes = ks * ns
    m_off = np.zeros(len(problems), dtype=np.int64)
    seg_off = np.zeros(len(problems), dtype=np.int64)
    m_off[1:] = np.cumsum(sizes)[:-1]
    seg_off[1:] = np.cumsum(ns)[:-1]
    m_flat = np.concatenate([p.match.ravel() for p in problems]).astype(np.float32, copy=False)
    drop_flat = np.concatenate([p.drop for p in problems]).astype(np.float32, copy=False)
    return m_flat, m_off, drop_flat, seg_off, ks, ns


def pack_padded(problems: Sequence[SegmentationProblem]) -> tuple[np.ndarray, ...]:
    """Pack problems for the wavefront: (mt [B, Nmax, Kmax], drop [B, Nmax], ks, ns), zero-padded."""
    ks = np.array([p.match.shape[0] for p in problems], dtype=np.int64)
    ns = np.array([p.match.shape[1] for p in problems], dtype=np.int64)
    mt = np.zeros((len(problems), int(ns.max()), int(ks.max())), dtype=np.float32)
    drop = np.zeros((len(problems), int(ns.max())), dtype=np.float32)
    for b, p in enumerate(problems):
        mt[b, : ns[b], : ks[b]] = p.match.T
        drop[b, : ns[b]] = p.drop
    return mt, drop, ks, ns


def _solve_flat(
    problems: Sequence[SegmentationProblem], backend: str
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Flat labels of every problem and the packed host arrays (``pack_flat``'s layout), packed once.

    numba and cupy share one vectorised packing (``pack.pack_batch``); cupy packs into
    pinned memory and makes one copy and one kernel launch per batch.
    """
    matches = [p.match for p in problems]
    drops = [p.drop for p in problems]
    if backend == "cupy":
        from biovl_core.align import kernel_cupy

        labels, _, packed = kernel_cupy.solve_from_host(matches, drops)
        return labels, packed.flat()
    from biovl_core.align import kernel_numba
    from biovl_core.align.pack import pack_batch

    flat = pack_batch(matches, drops).flat()
    if backend == "numba":
        if len(problems) == 1:
            labels, _ = kernel_numba.solve_one(problems[0].match, problems[0].drop)
            return labels, flat
        labels, _ = kernel_numba.solve_flat(*flat)
        return labels, flat
    mt, drop, ks, ns = pack_padded(problems)
    if backend == "cupy_xp":
        from biovl_core.align import kernel_cupy

        padded, _ = kernel_cupy.solve_padded_cupy(mt, drop, ks, ns)
        padded = padded.get()
    else:
        from biovl_core.align.wavefront import solve_padded

        padded, _ = solve_padded(np, mt, drop, ks, ns)
    labels = np.concatenate([padded[b, : ns[b]] for b in range(len(problems))])
    return labels.astype(np.int64, copy=False), flat


def solve_segmentation(
    problems: Sequence[SegmentationProblem], backend: str = "auto"
) -> list[np.ndarray]:
    """Run the generic kernel on every problem (each needs 1 <= K <= N); return labels [N] each."""
    if not problems:
        return []
    resolved = _resolve_backend(backend, sum(p.match.size for p in problems))
    labels, flat = _solve_flat(problems, resolved)
    seg_off, ns = flat[3], flat[5]
    return [labels[s : s + n] for s, n in zip(seg_off.tolist(), ns.tolist(), strict=True)]


def _check_feasible(spec: MethodSpec, sim: np.ndarray, segment_seconds: float, what: str) -> None:
    """DP methods need at least one segment per step; say what to change otherwise."""
    k, n = sim.shape
    if k > n:
        raise BioVLError(
            f"{what}: method {spec.name!r} gives every step at least one segment, but there are "
            f"K={k} steps and only N={n} segments ({n * segment_seconds:g} s at "
            f"{segment_seconds:g} s per segment). Use shorter segments, merge steps, "
            "or method='uniform'."
        )


def _durations(
    sims: list[Any], duration_s: float | Sequence[float | None] | None
) -> list[float | None]:
    """One (unchecked) duration per video from a single value or a per-video sequence."""
    if duration_s is None or np.ndim(duration_s) == 0:
        return [duration_s] * len(sims)  # type: ignore[list-item]
    durations = list(duration_s)  # type: ignore[arg-type]
    if len(durations) != len(sims):
        raise BioVLError(
            f"duration_s has {len(durations)} values for {len(sims)} videos; "
            "give one per video or a single value"
        )
    return durations


def _what(idx: int, count: int) -> str:
    """How errors name video ``idx`` of ``count``."""
    return "similarity" if count == 1 else f"similarity #{idx}"


def _checked(
    spec: MethodSpec, sims: list[Any], durations: list[float | None], seg: float
) -> list[tuple[np.ndarray, float, str]]:
    """Validate every video in order (the first problem raises): (float32 matrix, duration, name)."""
    checked = []
    for idx, (s, d) in enumerate(zip(sims, durations, strict=True)):
        what = _what(idx, len(sims))
        arr = validate_similarity(s, what)
        dur = _duration(arr.shape[1], seg, d, what)
        if spec.direct is None:
            _check_feasible(spec, arr, seg, what)
        checked.append((arr, dur, what))
    return checked


_FAST_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _flat_drop(spec: MethodSpec, full: dict[str, Any]) -> tuple[float, float, dict] | None:
    """For the built-in methods with a per-video constant drop: (drop score, percentile, params).

    ``percentile >= 0`` asks the kernel to set each video's drop score to that percentile
    of its similarities; ``None`` means the method needs the generic per-video path.
    """
    if spec.prepare is _prepare_nw:
        return float("-inf"), -1.0, {}
    if spec.prepare is not _prepare_drop_dtw:
        return None
    cost = full.get("drop_cost")
    if cost is None:
        pct = _float_param("drop_percentile", full["drop_percentile"], "drop_dtw")
        if not 0.0 <= pct <= 100.0:
            raise BioVLError(f"drop_dtw: drop_percentile must be in [0, 100], got {pct}")
        return 0.0, pct, {"drop_percentile": pct}
    if np.ndim(cost) != 0:
        return None
    value = _float_param("drop_cost", cost, "drop_dtw")
    return -value, -1.0, {"drop_cost": value}


def _build(
    spec: MethodSpec,
    full: dict[str, Any],
    seg: float,
    durs: np.ndarray,
    ks: np.ndarray,
    ns: np.ndarray,
    seg_off: np.ndarray,
    labels: np.ndarray,
    first: np.ndarray,
    last: np.ndarray,
    scores: np.ndarray,
    params: list[dict[str, Any]],
) -> list[Alignment]:
    """Alignments from flat per-segment labels and per-step first/last segments (vectorised spans)."""
    dur_steps = np.repeat(durs, ks)
    starts = (first * seg).tolist()
    ends = np.minimum((last + 1) * seg, dur_steps).tolist()
    missing = first < 0
    if missing.any():
        for t in np.flatnonzero(missing).tolist():
            starts[t] = None
    out = []
    t = 0
    for s, n, k, score, p in zip(
        seg_off.tolist(), ns.tolist(), ks.tolist(), scores.tolist(), params, strict=True
    ):
        st = starts[t : t + k]
        spans = list(zip(st, ends[t : t + k], strict=True))
        if None in st:
            spans = [None if a is None else (a, b) for a, b in spans]
        out.append(Alignment(spans, labels[s : s + n], score, spec.name, p))
        t += k
    return out


def _offsets(sizes: np.ndarray) -> np.ndarray:
    """Exclusive prefix sums (start offset of each item)."""
    off = np.zeros(sizes.shape[0], dtype=np.int64)
    if sizes.shape[0] > 1:
        np.cumsum(sizes[:-1], out=off[1:])
    return off


def _align_flat_numba(
    spec: MethodSpec,
    full: dict[str, Any],
    flat_drop: tuple[float, float, dict],
    sims: list[Any],
    durations: list[float | None],
    seg: float,
) -> list[Alignment]:
    """The numba fast path: one packed buffer, one kernel call (parallel over videos when big).

    Validation is vectorised: shapes and dtypes are read per video, finiteness is checked
    inside the kernel, and on any problem the per-video checks run in order to raise the
    same error as the generic path.
    """
    from biovl_core.align import kernel_numba

    count = len(sims)
    arrs = []
    for idx, s in enumerate(sims):
        if not (
            type(s) is np.ndarray
            and s.ndim == 2
            and s.dtype in _FAST_DTYPES
            and s.shape[0] > 0
            and s.shape[1] > 0
        ):
            s = validate_similarity(s, _what(idx, count))
        arrs.append(s)
    ks = np.fromiter((a.shape[0] for a in arrs), dtype=np.int64, count=count)
    ns = np.fromiter((a.shape[1] for a in arrs), dtype=np.int64, count=count)
    if (ks > ns).any():
        _checked(spec, sims, durations, seg)  # raises the first error, in video order
    if any(d is not None for d in durations):
        durs = np.array(
            [
                n * seg if d is None else _duration(n, seg, d, _what(i, count))
                for i, (n, d) in enumerate(zip(ns.tolist(), durations, strict=True))
            ],
            dtype=np.float64,
        )
    else:
        durs = ns * seg
    m_flat = (
        arrs[0].astype(np.float32, copy=False).ravel()
        if count == 1
        else np.concatenate([a.ravel() for a in arrs], dtype=np.float32)
    )
    if not m_flat.flags.c_contiguous:
        m_flat = np.ascontiguousarray(m_flat)
    m_off = _offsets(ks * ns)
    seg_off = _offsets(ns)
    drop_score, pct, extra = flat_drop
    drop_flat = np.full(int(ns.sum()), drop_score, dtype=np.float32)
    res = kernel_numba.solve_flat_full(m_flat, m_off, drop_flat, seg_off, ks, ns, pct=pct)
    if res["bad"].any():
        _checked(spec, sims, durations, seg)
        raise BioVLError("similarity has NaN/inf values; check the embeddings")  # unreachable
    base = {**full, **extra}
    if pct >= 0.0:
        params = [{**base, "drop_cost": -float(v)} for v in res["drop_values"].tolist()]
    else:
        params = [dict(base) for _ in range(count)]
    return _build(
        spec, full, seg, durs, ks, ns, seg_off,
        res["labels"], res["first"], res["last"], res["scores"], params,
    )  # fmt: skip


def align_batch(
    similarities: Sequence[Any],
    segment_seconds: float = 5.0,
    method: str = DEFAULT_METHOD,
    backend: str = "auto",
    duration_s: float | Sequence[float | None] | None = None,
    per_video: Sequence[Mapping[str, Any]] | None = None,
    **params: Any,
) -> list[Alignment]:
    """Align many videos at once (one similarity matrix [K, N] each) on one backend.

    ``params`` go to every video's method (a per-segment ``drop_cost`` must fit each N);
    ``per_video`` adds parameters that differ between videos (one mapping each, e.g. the
    step texts ``{"steps": [...]}`` of "biovl"); ``duration_s`` is one value for all, or one
    per video. On the numba backend the built-in methods run as one packed kernel call (see
    ``_align_flat_numba``).
    """
    spec = resolve_method(method)
    seg = _float_param("segment_seconds", segment_seconds, "align")
    if seg <= 0:
        raise BioVLError(f"segment_seconds must be positive, got {seg}")
    sims = list(similarities)
    if not sims:
        return []
    durations = _durations(sims, duration_s)
    full = _params(spec, params)
    if per_video is not None:
        per_video = [dict(p) for p in per_video]
        if len(per_video) != len(sims):
            raise BioVLError(
                f"per_video has {len(per_video)} entries for {len(sims)} videos; give one each"
            )
        for p in per_video:
            _params(spec, p)
    extra = per_video or [{} for _ in sims]
    cells = _cells(sims) if backend == "auto" else None
    if spec.direct is None and per_video is None:
        resolved = _resolve_backend(backend, cells)
        flat_drop = _flat_drop(spec, full) if resolved == "numba" else None
        if flat_drop is not None:
            return _align_flat_numba(spec, full, flat_drop, sims, durations, seg)
    checked = _checked(spec, sims, durations, seg)
    if spec.direct is not None:
        out = []
        for (arr, dur, _), more in zip(checked, extra, strict=True):
            spans, labels = spec.direct(arr, seg, dur, {**full, **more})
            cols = np.arange(arr.shape[1])
            score = float(arr[labels, cols].astype(np.float64).sum())
            out.append(Alignment(spans, labels, score, spec.name, {**full, **more}))
        return out
    resolved = _resolve_backend(backend, cells)
    problems = [
        spec.prepare(arr, {**full, **more})  # type: ignore[misc]
        for (arr, _, _), more in zip(checked, extra, strict=True)
    ]
    labels, (m_flat, m_off, drop_flat, seg_off, ks, ns) = _solve_flat(problems, resolved)
    labels = labels.astype(np.int64, copy=False)
    from biovl_core.align import kernel_numba

    scores, first, last = kernel_numba.finish_flat(
        m_flat, m_off, drop_flat, seg_off, _offsets(ks), ks, ns, labels
    )
    durs = np.array([dur for _, dur, _ in checked], dtype=np.float64)
    params_list = [{**full, **more, **p.params} for p, more in zip(problems, extra, strict=True)]
    return _build(spec, full, seg, durs, ks, ns, seg_off, labels, first, last, scores, params_list)


def align(
    similarity: Any,
    segment_seconds: float = 5.0,
    method: str = DEFAULT_METHOD,
    backend: str = "auto",
    duration_s: float | None = None,
    **params: Any,
) -> Alignment:
    """Align one video's steps [K] to its segments [N] given their similarity [K, N]."""
    return align_batch(
        [similarity],
        segment_seconds=segment_seconds,
        method=method,
        backend=backend,
        duration_s=duration_s,
        **params,
    )[0]


def align_batch_or_each(
    similarities: Sequence[Any],
    *,
    duration_s: Sequence[float | None],
    per_video: Sequence[Mapping[str, Any]],
    **kwargs: Any,
) -> tuple[list[Alignment | Exception], int]:
    """``align_batch`` over every video, retried video by video when the batch raises, so one
    infeasible video gets its own error and the others still align.

    Returns one ``Alignment`` or the exception it raised per video, and the number of
    ``align_batch`` calls made; ``kwargs`` are ``align_batch``'s shared arguments.
    """
    sims, durations, per = list(similarities), list(duration_s), list(per_video)
    try:
        return list(align_batch(sims, duration_s=durations, per_video=per, **kwargs)), 1
    except Exception:
        out: list[Alignment | Exception] = []
        for sim, duration, own in zip(sims, durations, per, strict=True):
            try:
                out.extend(align_batch([sim], duration_s=[duration], per_video=[own], **kwargs))
            except Exception as exc:
                out.append(exc)
        return out, 1 + len(sims)

"""Align protocol steps to video segments: the public calls, their input checks, and the fast path.

Every dynamic-programming method reduces to one kernel, *monotonic segmentation with
optional background*: given match scores ``M[K, N]`` and per-segment drop scores ``D[N]``
(``-inf`` = dropping disabled), pick for each step a contiguous non-empty run of segments,
runs in protocol order and disjoint, every other segment background, maximising
``sum(M over matched cells) + sum(D over background segments)``. Methods only build
``M`` and ``D`` (see ``METHODS`` / ``register_method``); the kernels never change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from biovl_core.align.backends import batch_cells, resolve_backend, solve_flat
from biovl_core.align.paper import constant_drop
from biovl_core.align.registry import (
    DEFAULT_METHOD,
    Alignment,
    MethodSpec,
    float_param,
    method_params,
    resolve_method,
    validate_similarity,
)
from biovl_core.errors import BioVLError


def _duration(n: int, segment_seconds: float, duration_s: float | None, what: str) -> float:
    """Video length in seconds: the given one (checked against N) or N * segment length."""
    if duration_s is None:
        return n * segment_seconds
    d = float_param("duration_s", duration_s, "align")
    if d <= (n - 1) * segment_seconds:
        raise BioVLError(
            f"{what}: duration_s={d} s leaves the last of {n} segments of {segment_seconds} s empty; "
            f"expected more than {(n - 1) * segment_seconds} s (or pass duration_s=None)"
        )
    return d


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
    seg = float_param("segment_seconds", segment_seconds, "align")
    if seg <= 0:
        raise BioVLError(f"segment_seconds must be positive, got {seg}")
    sims = list(similarities)
    if not sims:
        return []
    durations = _durations(sims, duration_s)
    full = method_params(spec, params)
    if per_video is not None:
        per_video = [dict(p) for p in per_video]
        if len(per_video) != len(sims):
            raise BioVLError(
                f"per_video has {len(per_video)} entries for {len(sims)} videos; give one each"
            )
        for p in per_video:
            method_params(spec, p)
    extra = per_video or [{} for _ in sims]
    cells = batch_cells(sims) if backend == "auto" else None
    if spec.direct is None and per_video is None:
        resolved = resolve_backend(backend, cells)
        flat_drop = constant_drop(spec, full) if resolved == "numba" else None
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
    resolved = resolve_backend(backend, cells)
    problems = [
        spec.prepare(arr, {**full, **more})  # type: ignore[misc]
        for (arr, _, _), more in zip(checked, extra, strict=True)
    ]
    labels, (m_flat, m_off, drop_flat, seg_off, ks, ns) = solve_flat(problems, resolved)
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

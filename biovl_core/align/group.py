"""Group alignment: recordings of one protocol align each other (SPEC.md "Group alignment").

```python
from biovl_core.align import align_group
alignments = align_group(frames=[F1, F2, ...], texts=T, annotations=[None, spans, ...],
                         segment_seconds=5.0)
```

``frames[i]`` float32 [N_i, D] L2-normalised segment embeddings, ``texts`` [K, D] the step
texts, ``annotations[i]`` None or K spans ``(start_s, end_s)`` each possibly None (not
performed); annotated recordings are ground truth. One ``Alignment`` per recording, with a
per-step ``confidence`` in [0, 1]; ``spans[k] is None`` = step k judged not performed, said
only when the frames show strong evidence against it. A group of one without annotation
returns exactly ``align(texts @ F.T)``.

Method (an EM over the group; docs/QUALITY.md "Group alignment" has the evaluation):

1. Frames are centred per recording (the recording's mean frame removed: the shared scene
   look, the camera offset) and re-normalised.
2. Every recording gets soft step labels ``Q_i`` [K, N_i]: its annotation, or, to start, the
   posterior of the text-only "biovl" problem (``kernel_skip.posterior``).
3. Rounds: for recording i, step exemplars are the confidence-weighted mean of the other
   recordings' frames under their labels (leave-one-out, so a recording never confirms
   itself); annotated recordings weigh ``annotated_weight``, the others their agreement
   weight. The exemplar similarity is turned into per-step log-likelihood ratios exactly as
   "biovl" turns text similarity (``standardize``, ``signal_strength``) and added, times
   ``exemplar_weight``, to the text problem's scores. The new posterior, at ``temperature``,
   is the recording's next ``Q_i``; a step may be skipped at ``skip_penalty``.
4. Agreement: how well a recording's frames fit the step exemplars (mean over frames of
   the best exemplar cosine) against the group's median. Below ``min_agreement`` it is of
   something else: it stops teaching the others and is aligned from text alone.
5. Final (``biovl_core.align.order_search``): the best labeling with skips
   (``kernel_skip.solve_skip``), in protocol order or with two steps swapped (adjacent, or
   across one skipped step: ``swap_reach``) when that gains more than ``swap_gain``, beats the step done again (``repeat_gain``) and both
   swapped runs look like the others' steps (``swap_fit``); a skipped step
   is placed out of order elsewhere only above ``place_gain`` (default never: far
   placements were mostly wrong once swaps are searched). Confidence: the posterior mass of
   the chosen span (or of the skip), 1 for annotated recordings; a swapped step's is a
   logistic of its margin.
6. Priors (``biovl_core.align.priors``): each recording's durations are learned from the
   others (leave-one-out; annotated recordings weigh ``annotated_weight``, the others by their
   step-5 labels) and the recording is decoded again with the explicit-duration kernel
   (``kernel_duration``), each run scored with ``duration_weight`` x the step's strength x
   its length's log prior, and each skip's score moved by ``skip_prior_weight`` x strength x
   the log-odds of the lab's skip rate against the prior's (an optional step is skipped more
   readily, one never skipped less). With no other recording there is nothing to learn and nothing
   changes. Last (``biovl_core.align.step_check``), a step skipped or whose run looks on
   average less like the other recordings' step than its bar (its mean exemplar
   log-likelihood ratio against the others' own fit less ``fit_drop``, between
   ``min_step_fit`` and ``max_step_fit``) is decoded again where its exemplars put it (``relocate_fit``,
   ``relocate_margin``) or, failing that, judged not performed: the text alone put it
   there, on an off-protocol action or a look-alike (only when the others weigh at least
   ``MIN_VETO_EVIDENCE``: one unannotated partner is too noisy a judge). Each result keeps
   its priors and per-segment exemplar fit for the deviation
   report (``biovl_core.align.deviations``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from biovl_core.align import kernel_skip
from biovl_core.align.api import align_batch
from biovl_core.align.deviations import segment_fit
from biovl_core.align.methods import signal_strength, standardize
from biovl_core.align.order_search import decode, run_fit
from biovl_core.align.priors import HistoryRecord, duration_scores, group_priors, skip_scores
from biovl_core.align.refine import centred
from biovl_core.align.registry import Alignment, objective, resolve_method
from biovl_core.align.step_check import StepProblem, check_steps, veto_bars
from biovl_core.errors import BioVLError
from biovl_core.result import Span

GROUP_METHOD = "group"
TEXT_METHOD = "biovl"  # the per-recording text problem, as ``align`` builds it by default

# Chosen by scripts/eval_group.py on tuning seeds 0-9; see docs/QUALITY.md "Group alignment".
GROUP_DEFAULTS: dict[str, float] = {
    "rounds": 4,
    "exemplar_weight": 2.0,
    "annotated_weight": 3.0,
    "temperature": 3.0,
    "skip_penalty": 2.0,
    "min_agreement": 0.6,
    "place_gain": math.inf,  # was 32 before the adjacent-swap search (issue 22)
    # Issue 22, chosen on development seeds 0-3 (swap_gain, repeat_gain, swap_fit: 0-19),
    # docs/QUALITY.md "A lab's history":
    "duration_weight": 3.0,
    "swap_gain": 8.0,  # 16 before the repeat and fit checks (order_search)
    "repeat_gain": 8.0,  # a swap must also beat "done again" by this (order_search)
    "swap_fit": 0.0,  # and each swapped run's mean exemplar llr must reach this
    "swap_reach": 2.0,  # 1: adjacent steps swap; 2: also across one skipped step (dev 0-19)
    "skip_prior_weight": 0.5,
    "min_step_fit": -1.5,  # step_check: the lowest bar a step's run fit must reach
    "max_step_fit": 0.5,  # the highest
    "fit_drop": 6.0,  # between them: the others' own fit to the step less this
    "relocate_fit": 3.0,  # step_check: a relocated run's exemplar fit, at least
    "relocate_margin": 6.0,  # and how much better than what held its segments
}


def _check_frames(frames: Sequence[Any], texts: Any) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames [N_i, D] and texts [K, D] as finite float32, with matching D; errors say which."""
    t = np.asarray(texts, dtype=np.float32)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise BioVLError(f"texts must be a non-empty 2-D array [K steps, D]; got shape {t.shape}")
    if not np.isfinite(t).all():
        raise BioVLError("texts has NaN/inf values; check the text embeddings")
    if len(frames) == 0:
        raise BioVLError("frames is empty: give at least one recording's [N, D] embeddings")
    out = []
    for i, f in enumerate(frames):
        arr = np.asarray(f, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] != t.shape[1]:
            raise BioVLError(
                f"frames[{i}] must be [N segments, D={t.shape[1]}] like texts; got {arr.shape}"
            )
        if not np.isfinite(arr).all():
            raise BioVLError(f"frames[{i}] has NaN/inf values; check its embeddings")
        out.append(arr)
    return out, t


def _check_annotation(spans: Any, i: int, k: int) -> list[Span]:
    """K spans (start_s <= end_s, or None) of recording i, or an error naming what is wrong."""
    spans = list(spans)
    if len(spans) != k:
        raise BioVLError(f"annotations[{i}] has {len(spans)} spans for {k} steps; give one each")
    out: list[Span] = []
    for s, span in enumerate(spans):
        if span is None:
            out.append(None)
            continue
        a, b = (float(x) for x in span)
        if not (math.isfinite(a) and math.isfinite(b) and 0.0 <= a <= b):
            raise BioVLError(f"annotations[{i}][{s}] = {span!r}: need 0 <= start_s <= end_s")
        out.append((a, b))
    return out


def _group_params(params: dict[str, Any]) -> dict[str, float]:
    """GROUP_DEFAULTS overlaid with ``params``; unknown names and bad values are refused."""
    unknown = sorted(set(params) - set(GROUP_DEFAULTS))
    if unknown:
        raise BioVLError(f"align_group does not take {unknown}; accepted: {sorted(GROUP_DEFAULTS)}")
    full = {**GROUP_DEFAULTS, **params}
    for name, value in full.items():
        if name in ("min_step_fit", "max_step_fit", "swap_fit"):  # any number; -inf: no veto
            if not (isinstance(value, int | float) and value < math.inf):
                raise BioVLError(f"align_group: {name} must be a number, got {value!r}")
            continue
        never = ("place_gain", "swap_gain", "repeat_gain", "relocate_fit")
        may_be_inf = name in never and value == math.inf  # = never
        if not (isinstance(value, int | float) and (math.isfinite(value) or may_be_inf)):
            raise BioVLError(f"align_group: {name} must be a number >= 0, got {value!r}")
        if value < 0:
            raise BioVLError(f"align_group: {name} must be a number >= 0, got {value!r}")
    if full["temperature"] <= 0:
        raise BioVLError("align_group: temperature must be > 0")
    return full


def segment_labels(spans: list[Span], n: int, seg: float) -> np.ndarray:
    """Step index per segment by its midpoint (-1 = background); later steps win overlaps."""
    mids = (np.arange(n) + 0.5) * seg
    labels = np.full(n, -1, dtype=np.int64)
    for k, span in enumerate(spans):
        if span is not None:
            labels[(mids >= span[0]) & (mids < span[1])] = k
    return labels


def _one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    """[K, N] indicator of each segment's step (background rows all zero)."""
    q = np.zeros((k, labels.shape[0]))
    cols = np.flatnonzero(labels >= 0)
    q[labels[cols], cols] = 1.0
    return q


def _with_background(q: np.ndarray) -> np.ndarray:
    """Soft labels [K, N] plus a background row: the mass no step holds."""
    return np.vstack([q, np.clip(1.0 - q.sum(axis=0, keepdims=True), 0.0, 1.0)])


def _exemplar_llr(
    prototypes: np.ndarray, x: np.ndarray, text_params: dict[str, Any]
) -> tuple[np.ndarray, float]:
    """Log-likelihood ratios [K + 1, N] of frames ``x`` against step and background prototypes.

    The same model "biovl" uses for text: standardized similarity z, signal mu from the
    row's top cells, ``mu z - mu**2 / 2``; a prototype with no mass gives zeros. Also the
    fit of the recording to the steps: the mean over frames of the best step-prototype
    cosine (a recording of something else resembles none of them).
    """
    norm = np.linalg.norm(prototypes, axis=1, keepdims=True)
    p = np.where(norm > 1e-12, prototypes / np.maximum(norm, 1e-12), 0.0)
    cos = p @ x.T
    z = standardize(cos)
    mu = signal_strength(z, text_params["top_share"], text_params["signal_offset"])
    mu = np.where(norm[:, 0] > 1e-12, mu, 0.0)
    return mu[:, None] * z - 0.5 * mu[:, None] ** 2, float(cos[:-1].max(axis=0).mean())


def _confidence(labels: np.ndarray, post: np.ndarray, p_skip: np.ndarray, k: int) -> np.ndarray:
    """Per step: mean posterior over its labelled segments, or its skip probability."""
    conf = np.empty(k)
    for s in range(k):
        cols = np.flatnonzero(labels == s)
        conf[s] = post[s, cols].mean() if cols.size else p_skip[s]
    return np.clip(conf, 0.0, 1.0)


def spans_of_labels(labels: np.ndarray, k: int, seg: float, duration: float) -> list[Span]:
    """Span per step from its first and last segment (labels need not be monotonic)."""
    out: list[Span] = []
    for s in range(k):
        cols = np.flatnonzero(labels == s)
        if cols.size == 0:
            out.append(None)
        else:
            out.append((float(cols[0] * seg), float(min((cols[-1] + 1) * seg, duration))))
    return out


def align_group(
    frames: Sequence[Any],
    texts: Any,
    annotations: Sequence[Sequence[Span] | None] | None = None,
    segment_seconds: float = 5.0,
    **params: float,
) -> list[Alignment]:
    """Align every recording of one protocol using the others (module doc; SPEC.md contract)."""
    feats, t = _check_frames(frames, texts)
    g, k = len(feats), t.shape[0]
    annotations = [None] * g if annotations is None else list(annotations)
    if len(annotations) != g:
        raise BioVLError(
            f"annotations has {len(annotations)} entries for {g} recordings; give one each "
            "(None for a recording without annotation)"
        )
    gt = [None if a is None else _check_annotation(a, i, k) for i, a in enumerate(annotations)]
    p = _group_params(params)
    seg = float(segment_seconds)
    if not (math.isfinite(seg) and seg > 0):
        raise BioVLError(f"segment_seconds must be positive, got {segment_seconds!r}")
    sims = [t @ f.T for f in feats]
    free = [i for i in range(g) if gt[i] is None]
    alone = dict(zip(free, align_batch([sims[i] for i in free], seg, TEXT_METHOD), strict=True))
    spec = resolve_method(TEXT_METHOD)
    text_params = dict(spec.defaults)
    problems = [spec.prepare(s, dict(text_params)) for s in sims]  # type: ignore[misc]
    no_skip = np.full(k, -np.inf)
    temp = p["temperature"]

    labelled = [
        None if a is None else segment_labels(a, f.shape[0], seg)
        for a, f in zip(gt, feats, strict=True)
    ]
    soft: list[np.ndarray] = []
    for i in range(g):
        if labelled[i] is not None:
            soft.append(_one_hot(labelled[i], k))
        else:
            m, d = problems[i].match.astype(np.float64), problems[i].drop.astype(np.float64)
            soft.append(kernel_skip.posterior(m, d, no_skip, temp)[0])
    source_weight = np.array([p["annotated_weight"] if a is not None else 1.0 for a in gt])
    x = [centred(f, f.mean(axis=0)) for f in feats]
    scores: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    seg_fit: dict[int, np.ndarray] = {}
    step_llr: dict[int, np.ndarray] = {}
    full_llr: dict[int, np.ndarray] = {}  # step_llr with the background's row last
    agreement = np.ones(g)
    teaching = np.ones(g, dtype=bool)
    skip = np.full(k, -p["skip_penalty"])
    for _ in range(int(p["rounds"]) if g > 1 else 0):
        # Row K is the background: frames no step claims, so idle looks stop matching steps.
        sums = np.stack([_with_background(q) @ xi for q, xi in zip(soft, x, strict=True)])
        weights = source_weight * teaching
        total = np.tensordot(weights, sums, axes=1)
        fit = np.zeros(g)
        for i in free:
            llr, fit[i] = _exemplar_llr(total - weights[i] * sums[i], x[i], text_params)
            match = problems[i].match + p["exemplar_weight"] * llr[:k]
            drop = problems[i].drop + p["exemplar_weight"] * llr[k]
            post, p_skip, _ = kernel_skip.posterior(match, drop, skip, temp)
            soft[i] = post
            scores[i] = (match, drop, p_skip)
            step_llr[i], full_llr[i] = llr[:k], llr
            seg_fit[i] = segment_fit(total - weights[i] * sums[i], x[i])
        for i in [j for j in range(g) if gt[j] is not None]:
            llr, fit[i] = _exemplar_llr(total - weights[i] * sums[i], x[i], text_params)
            seg_fit[i] = segment_fit(total - weights[i] * sums[i], x[i])
            step_llr[i] = llr[:k]
        reference = float(np.median(fit))
        agreement = fit / reference if reference > 0 else np.zeros(g)
        teaching = (agreement >= p["min_agreement"]) | np.array([a is not None for a in gt])

    # Final labels: the best labeling with skips, then (module doc, step 6) again with the
    # duration priors learned from the other recordings' labels (leave-one-out).
    decoded = {
        i: decode(scores[i], skip, p, temp, fit=step_llr[i])
        for i in free
        if i in scores and teaching[i]
    }
    terms: dict[int, tuple[np.ndarray, np.ndarray | None]] = {i: (skip, None) for i in decoded}
    if (p["duration_weight"] > 0 or p["skip_prior_weight"] > 0) and g > 1:
        now = _history(gt, decoded, k, seg, p["annotated_weight"])
        for i in list(decoded):
            priors = group_priors([h for j, h in now.items() if j != i], k)
            if not priors.empty:
                length = duration_scores(priors, feats[i].shape[0], seg, p["duration_weight"])
                terms[i] = (skip + skip_scores(priors, p["skip_prior_weight"]), length)
                decoded[i] = decode(scores[i], terms[i][0], p, temp, length, step_llr[i])
    taught = source_weight * teaching  # the check needs exemplars from more than one alignment
    # each recording's fit to its own runs (an annotated one's: its annotation's) sets the bars
    runs = {j: lab for j, (lab, _) in decoded.items()}
    runs.update({j: labelled[j] for j in step_llr if gt[j] is not None})
    own_fit = {j: [run_fit(lab, step_llr[j], s) for s in range(k)] for j, lab in runs.items()}
    for i, (labels, placed) in list(decoded.items()):
        if taught.sum() - taught[i] >= MIN_VETO_EVIDENCE:
            others = [[np.nan if f is None else f for f in own_fit[j]] for j in own_fit if j != i]
            bars = veto_bars(np.array(others, dtype=np.float64).reshape(-1, k), p)
            problem = StepProblem(scores[i][0], scores[i][1], *terms[i], full_llr[i])
            labels, judged = check_steps(labels, problem, p, temp, bars)
            decoded[i] = (labels, {**placed, **judged})
    final = _history(gt, decoded, k, seg, p["annotated_weight"])

    out: list[Alignment] = []
    for i in range(g):
        n = feats[i].shape[0]
        base = {**p, "recordings": g, "annotated": int(sum(a is not None for a in gt))}
        if gt[i] is not None:
            labels = labelled[i]
            score = objective(problems[i].match, problems[i].drop, labels)
            conf = np.ones(k)
            info = {**base, "agreement": float(agreement[i])}
            out.append(Alignment(gt[i], labels, score, GROUP_METHOD, info, confidence=conf))
            out[-1].priors = group_priors([h for j, h in final.items() if j != i], k)
            out[-1].segment_fit = seg_fit.get(i)
            continue
        if i not in decoded:
            a = alone[i]
            m, d = problems[i].match.astype(np.float64), problems[i].drop.astype(np.float64)
            post, p_skip, _ = kernel_skip.posterior(m, d, no_skip, temp)
            a.confidence = _confidence(a.labels, post, p_skip, k)
            a.params = {
                **a.params,
                "group": {**base, "agreement": float(agreement[i]), "used": False},
            }
            out.append(a)
            continue
        match, drop, p_skip = scores[i]
        labels, placed = decoded[i]
        conf = _confidence(labels, soft[i], p_skip, k)
        for s, c in placed.items():
            conf[s] = c
        spans = spans_of_labels(labels, k, seg, n * seg)
        score = objective(match, drop, labels) - p["skip_penalty"] * sum(s is None for s in spans)
        info = {**base, "agreement": float(agreement[i]), "used": True}
        out.append(Alignment(spans, labels, score, GROUP_METHOD, info, confidence=conf))
        out[-1].priors = group_priors([h for j, h in final.items() if j != i], k)
        out[-1].segment_fit = seg_fit[i]
    return out


def _history(
    gt: list[list[Span] | None],
    decoded: dict[int, tuple[np.ndarray, Any]],
    k: int,
    seg: float,
    annotated_weight: float,
) -> dict[int, HistoryRecord]:
    """The group's recordings as history: annotations at ``annotated_weight``, alignments at 1."""
    out = {j: HistoryRecord(a, annotated_weight) for j, a in enumerate(gt) if a is not None}
    for j, (labels, _) in decoded.items():
        out[j] = HistoryRecord(spans_of_labels(labels, k, seg, labels.shape[0] * seg))
    return out


MIN_VETO_EVIDENCE = 2.0  # the others' summed weight (an annotation counts annotated_weight)


@dataclass(frozen=True)
class GroupMember:
    """Another archived recording of the same lab and protocol, as the new one's group sees it."""

    job_id: str
    video_sha256: str  # its segment embeddings are looked up in the cache by this
    annotation: tuple[Span, ...] | None = None  # K spans in the new recording's step order
    corrected: bool = False  # the annotation is a correction saved from the viewer


@dataclass(frozen=True)
class GroupContext:
    """The group a recording belongs to: its protocol key and the other recordings in it."""

    protocol_key: str
    members: tuple[GroupMember, ...] = field(default_factory=tuple)

    def info(self, used: Sequence[GroupMember], applied: bool) -> dict[str, Any]:
        """What the result says about its group: how many recordings and corrections helped."""
        return {
            "protocol_key": self.protocol_key,
            "recordings": len(used),
            "annotated": sum(m.annotation is not None for m in used),
            "corrections": sum(m.annotation is not None and m.corrected for m in used),
            "used": bool(applied),
        }


def coalign(
    frames: Sequence[Any],
    texts: Any,
    annotations: Sequence[Sequence[Span] | None],
    durations_s: Sequence[float],
    segment_seconds: float = 5.0,
) -> list[Alignment]:
    """``align_group`` with each span's end clipped to its recording's true duration (the last
    segment of a recording is usually shorter than ``segment_seconds``)."""
    out = align_group(frames, texts, annotations, segment_seconds)
    for a, d in zip(out, durations_s, strict=True):
        a.spans = [None if s is None else (s[0], min(s[1], float(d))) for s in a.spans]
    return out

"""Synthetic labs at the embedding level: several recordings of one protocol, with ground truth.

``biovl_core.synthetic`` draws similarity matrices for one recording at a time; group
alignment (``biovl_core.group``) needs the embeddings themselves, since it compares frames
of one recording with frames of the others. A lab here is:

- a shared scene look (bench, tubes, gloves) in every frame, plus a per-recording camera
  offset and a slow drift of the view (AR(1) over segments, ``drift_rho``);
- a visual prototype per distinct step text, built from a component shared by every step
  with the same verb ("add primer1" / "add primer2" look alike) and a step-own component;
  each recording shows a step with a small variation of its prototype;
- background gaps that show an idle look, and temporally correlated frame noise;
- step texts embedded only weakly towards their visual prototype (``text_tie``), plus a
  per-text offset, so text-to-frame similarity is the weak signal zero-shot CLIP gives;
- deviations per recording: skipped steps (ground truth None), two adjacent steps swapped,
  a step done twice (the repeat comes after the next step and counts as background: the
  annotated span is the first time), variable durations and gaps drawn by
  ``synthetic.timeline`` from the experiment's profile;
- optionally one off-protocol recording (another protocol in the same scene, as when a
  recording is filed under the wrong protocol): ``off_protocol`` True, nothing to score.

Frames and texts are L2-normalised float32 [N, D] and [K, D], as ``align_group`` takes them.
``text_tie`` 0.25 was set so that text-only alignment (``align(texts @ F.T)``, the "biovl"
method) scores about 58 mIoU at the defaults (tuning seeds 0-3), near what "biovl" scores on
the calibrated generator at difficulty 1 (60).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field, replace

import numpy as np

from biovl_core.protocol import step_verb
from biovl_core.result import Span
from biovl_core.synthetic.frames_at import RecordingDraws, noise_sd
from biovl_core.synthetic.profiles import EXPERIMENTS, knobs_for
from biovl_core.synthetic.timeline import ar1_noise, coverage, timeline


@dataclass(frozen=True)
class LabKnobs:
    """Every parameter of the lab generator (vector norms are per frame before normalising)."""

    dim: int = 256
    scene: float = 1.0  # the shared scene look
    view: float = 0.35  # per-recording camera offset
    drift: float = 0.35  # marginal norm of the slow drift of the view
    drift_rho: float = 0.98  # lag-1 autocorrelation of the drift (5 s segments)
    action: float = 0.55  # a step's visual prototype in its frames
    verb_share: float = 0.6  # share of a prototype's variance common to its verb
    variation: float = 0.45  # per-recording variation of a step's look (relative to action)
    idle: float = 0.3  # the background (no step) look
    noise: float = 0.6  # per-frame noise
    noise_rho: float = 0.5  # its lag-1 autocorrelation
    text_tie: float = 0.25  # cosine between a step text and its visual prototype
    text_bias: float = 0.05  # sd of the per-text offset along the scene look
    p_skip: float = 0.08  # chance that a recording skips a step
    p_swap: float = 0.3  # chance that a recording swaps two adjacent steps
    p_repeat: float = 0.15  # chance that a recording repeats a step
    difficulty: float = 1.0  # timing irregularity (durations, gaps) as in ``synthetic``
    # Planted deviations and per-step paces; at 0 (the defaults) nothing more is drawn, so
    # the recordings are exactly those drawn before these knobs existed.
    step_pace_sd: float = 0.0  # log sd of a lab's per-step duration factor (steps differ)
    duration_sd: float | None = (
        None  # log sd of a step's duration per recording (None: by difficulty)
    )
    p_long: float = 0.0  # chance that a performed step takes ``long_factor`` times as long
    long_factor: float = 3.0
    # What a planted long step is ``long_factor`` times: "usual", the step's typical duration
    # in this lab (the median of what the generator draws for it: the experiment's mean action
    # x the step's pace x exp(-sd^2 / 2)), which is what "much longer than usual" means; or
    # "draw", the duration this recording happened to draw (before this knob: a short draw
    # made a "3x" step only about 2x the lab's usual). Neither draws anything more.
    long_of: str = "usual"
    p_insert: float = 0.0  # chance that a recording shows one off-protocol action in a gap


@dataclass
class LabRecording:
    """One recording: its frame embeddings and the ground truth to score it."""

    frames: np.ndarray  # float32 [N, D], rows L2-normalised
    gt_spans: list[Span]  # one per protocol step, None = not performed
    order: list[int]  # the steps in the order done (a repeat appears twice)
    duration_s: float
    off_protocol: bool = False
    long_steps: list[int] = field(default_factory=list)  # steps planted ``long_factor`` x longer
    inserted: list[tuple[float, float]] = field(default_factory=list)  # off-protocol actions
    draws: RecordingDraws | None = None  # what it drew: ``synthetic.frames_at`` shows any time


@dataclass
class LabGroup:
    """Recordings of one protocol in one lab, with its step texts and their embeddings."""

    experiment: str
    steps: list[str]
    texts: np.ndarray  # float32 [K, D]
    recordings: list[LabRecording]
    segment_seconds: float
    seed: int
    knobs: LabKnobs = field(default_factory=LabKnobs)
    usual_s: np.ndarray | None = None  # each step's typical duration in this lab (seconds)

    @property
    def frames(self) -> list[np.ndarray]:
        """The recordings' frame embeddings, in order."""
        return [r.frames for r in self.recordings]


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _directions(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    """``rows`` random unit vectors in ``dim`` dimensions."""
    return _unit(rng.normal(size=(rows, dim)))


def _prototypes(steps: list[str], knobs: LabKnobs, rng: np.random.Generator) -> np.ndarray:
    """Unit visual prototype per step: verb component + own component; equal texts share one."""
    verbs = sorted({step_verb(s) or s for s in steps})
    verb_dir = dict(zip(verbs, _directions(rng, len(verbs), knobs.dim), strict=True))
    texts = sorted(set(steps))
    own = dict(zip(texts, _directions(rng, len(texts), knobs.dim), strict=True))
    a, b = math.sqrt(knobs.verb_share), math.sqrt(1.0 - knobs.verb_share)
    return _unit(np.stack([a * verb_dir[step_verb(s) or s] + b * own[s] for s in steps]))


def _deviate(k: int, knobs: LabKnobs, rng: np.random.Generator) -> list[int]:
    """The order a recording does the steps in: skips, one adjacent swap, one repeat."""
    order = [s for s in range(k) if rng.random() >= knobs.p_skip]
    if len(order) < 2:
        order = list(range(k))
    if len(order) >= 2 and rng.random() < knobs.p_swap:
        i = int(rng.integers(0, len(order) - 1))
        order[i], order[i + 1] = order[i + 1], order[i]
    if len(order) >= 2 and rng.random() < knobs.p_repeat:
        i = int(rng.integers(0, len(order) - 1))
        order.insert(i + 2, order[i])
    return order


def _recording(
    order: list[int],
    looks: np.ndarray,
    scene: np.ndarray,
    idle: np.ndarray,
    experiment: str,
    knobs: LabKnobs,
    seg: float,
    rng: np.random.Generator,
    factors: np.ndarray | None = None,
    fixed: np.ndarray | None = None,
) -> tuple[np.ndarray, list[tuple[float, float]], float, RecordingDraws]:
    """Frames [N, D] of one recording doing ``order`` (looks [K, D]), action spans, length, and
    what it drew (for ``frames_at``); ``factors`` (one per action) stretch the drawn durations,
    ``fixed`` (seconds, NaN: keep) replaces them, gaps kept."""
    sd = {} if knobs.duration_sd is None else {"dur_sigma": knobs.duration_sd}
    spans, duration = timeline(
        EXPERIMENTS[experiment], len(order), knobs_for(knobs.difficulty, **sd), rng, seg
    )
    if factors is not None:
        spans, duration = _stretched(spans, duration, factors, seg, fixed)
    n = math.ceil(duration / seg - 1e-9)
    cover = coverage(spans, n, duration, seg)  # [actions, N]
    d = knobs.dim
    varied = looks[order] + knobs.variation * _directions(rng, len(order), d)
    shown = knobs.action * _unit(varied)
    view = knobs.view * _directions(rng, 1, d)[0]
    drift = ar1_noise(rng, d, n, knobs.drift / math.sqrt(d), knobs.drift_rho).T
    noise = ar1_noise(rng, d, n, knobs.noise / math.sqrt(d), knobs.noise_rho).T
    active = np.clip(cover.sum(axis=0), 0.0, 1.0)
    frames = (
        knobs.scene * scene
        + view
        + drift
        + cover.T @ shown
        + knobs.idle * (1.0 - active)[:, None] * idle
        + noise
    )
    draws = RecordingDraws(
        shown,
        tuple(spans),
        knobs.scene * scene + view + drift,
        knobs.idle * idle,
        noise_sd(knobs.noise, d),
        seg,
    )
    return _unit(frames).astype(np.float32), spans, duration, draws


def _stretched(
    spans: list[tuple[float, float]],
    duration: float,
    factors: np.ndarray,
    seg: float,
    fixed: np.ndarray | None = None,
) -> tuple[list[tuple[float, float]], float]:
    """Spans with each action's duration times its factor (or ``fixed`` seconds where that is
    not NaN), the gaps between them kept."""
    if fixed is None:
        fixed = np.full(len(spans), np.nan)
    out, shift = [], 0.0
    for (a, b), f, x in zip(spans, factors, fixed, strict=True):
        start = round(a + shift, 1)
        seconds = (b - a) * float(f) if math.isnan(x) else float(x)
        end = round(start + seconds, 1)
        shift = end - b
        out.append((start, end))
    return out, max(round(duration + shift, 1), seg)


def usual_seconds(experiment: str, pace: np.ndarray, knobs: LabKnobs) -> np.ndarray:
    """Each step's typical duration in a lab (seconds): the median of the generator's draw,
    the experiment's mean action x the step's pace x exp(-sd^2 / 2), at least 2 s."""
    sd = knobs_for(knobs.difficulty).dur_sigma if knobs.duration_sd is None else knobs.duration_sd
    return np.maximum(EXPERIMENTS[experiment].step_seconds * pace * math.exp(-0.5 * sd**2), 2.0)


def _plant(
    order: list[int], pace: np.ndarray, usual: np.ndarray, knobs: LabKnobs, rng: np.random.Generator
) -> tuple[list[int], np.ndarray | None, np.ndarray | None, list[int], int | None]:
    """Per-action duration factors and fixed durations (NaN: none), the steps made longer, and
    where an inserted action goes (its index in the returned order, shown with look row K);
    no draws when the knobs are 0. A long step lasts ``long_factor`` x its ``usual`` seconds
    (``long_of`` "usual") or x its own draw ("draw")."""
    if knobs.step_pace_sd == 0 and knobs.p_long == 0 and knobs.p_insert == 0:
        return order, None, None, [], None
    factors = pace[order].astype(np.float64)
    fixed = np.full(len(order), np.nan)
    long_steps: list[int] = []
    if knobs.p_long > 0:
        for a, step in enumerate(order):
            if step not in long_steps and rng.random() < knobs.p_long:
                if knobs.long_of == "usual":
                    fixed[a] = knobs.long_factor * usual[step]
                else:
                    factors[a] *= knobs.long_factor
                long_steps.append(step)
    inserted = None
    if knobs.p_insert > 0 and rng.random() < knobs.p_insert:
        inserted = int(rng.integers(1, len(order)))  # between two protocol actions
        order = [*order[:inserted], len(pace), *order[inserted:]]
        factors = np.insert(factors, inserted, 1.0)
        fixed = np.insert(fixed, inserted, np.nan)
    return order, factors, fixed, long_steps, inserted


def make_lab_group(
    experiment: str = "pcr",
    recordings: int = 6,
    seed: int = 0,
    off_protocol: bool = False,
    segment_seconds: float = 5.0,
    **knobs: float,
) -> LabGroup:
    """``recordings`` recordings of ``experiment``'s protocol in one lab (see module doc).

    With ``off_protocol`` the last recording shows another experiment's steps in the same
    scene. Knobs override ``LabKnobs`` fields by name.
    """
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; choose one of {sorted(EXPERIMENTS)}")
    if recordings < 1:
        raise ValueError(f"recordings must be >= 1, got {recordings}")
    lab = replace(LabKnobs(), **knobs)
    if lab.long_of not in ("usual", "draw"):
        raise ValueError(f"long_of must be 'usual' or 'draw', got {lab.long_of!r}")
    exp_index = sorted(EXPERIMENTS).index(experiment)
    rng = np.random.default_rng(np.random.SeedSequence([seed, exp_index, zlib.crc32(b"biovl-lab")]))
    steps = list(EXPERIMENTS[experiment].protocol)
    k = len(steps)
    scene, idle = _directions(rng, 2, lab.dim)
    looks = _prototypes(steps, lab, rng)
    tie = lab.text_tie
    texts = _unit(
        tie * looks
        + math.sqrt(1.0 - tie**2) * _directions(rng, k, lab.dim)
        + rng.normal(0.0, lab.text_bias, (k, 1)) * scene
    )
    by_text = {s: texts[steps.index(s)] for s in steps}  # equal texts embed equally
    texts = np.stack([by_text[s] for s in steps]).astype(np.float32)
    pace = np.ones(k)
    if lab.step_pace_sd > 0:  # a lab's steps have their own typical durations
        pace = np.exp(rng.normal(0.0, lab.step_pace_sd, k))
    usual = usual_seconds(experiment, pace, lab)
    out = []
    for r in range(recordings):
        if off_protocol and r == recordings - 1:
            other = EXPERIMENTS[sorted(EXPERIMENTS)[(exp_index + 1) % len(EXPERIMENTS)]]
            other_looks = _prototypes([f"{s} (elsewhere)" for s in other.protocol], lab, rng)
            order = list(range(len(other.protocol)))
            frames, _, duration, draws = _recording(
                order, other_looks, scene, idle, other.name, lab, segment_seconds, rng
            )
            out.append(
                LabRecording(frames, [None] * k, [], duration, off_protocol=True, draws=draws)
            )
            continue
        order = _deviate(k, lab, rng)
        shown, factors, fixed, long_steps, ins = _plant(order, pace, usual, lab, rng)
        shown_looks = looks if ins is None else np.vstack([looks, _directions(rng, 1, lab.dim)])
        frames, spans, duration, draws = _recording(
            shown, shown_looks, scene, idle, experiment, lab, segment_seconds, rng, factors, fixed
        )
        gt: list[Span] = [None] * k
        for a, (step, span) in enumerate(zip(shown, spans, strict=True)):
            if a != ins and gt[step] is None:
                gt[step] = span
        inserted = [] if ins is None else [spans[ins]]
        out.append(LabRecording(frames, gt, order, duration, False, long_steps, inserted, draws))
    return LabGroup(experiment, steps, texts, out, float(segment_seconds), seed, lab, usual)

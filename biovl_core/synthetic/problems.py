"""Synthetic alignment problems: step/segment similarity matrices with known ground truth.

They stand in for BioVL (16 recordings, not redistributable here) in tests and benchmarks,
shaped by SPEC.md's data-set statistics:

- structure: K steps per protocol drawn around each experiment's mean (phenol-chloroform
  4.0, ethanol precipitation 9.0, PCR 6.0, agarose gel 10.3, miniprep 28.2); lognormal
  action durations; background gaps between steps (PCR example: 7-22 s) and before the first
  and after the last step; miniprep videos the longest, PCR the shortest; 5 s segments.
- similarity, in cosine units like CLIP's: a base level, a per-step text offset (some
  step texts score high on every frame), a per-segment offset (lighting, motion; AR(1)
  over time), a weak in-span signal scaled by the step's visibility (some steps are nearly
  invisible to the model), a smaller rise on every frame where some action happens,
  temporally correlated noise (AR(1) per step over segments), and look-alike steps: the
  signal leaks to other steps with the same verb ("add primer1" / "add primer2") and fully
  to steps with the same text.

``text_durations`` (opt-in, default 0) makes durations follow the step texts: a step that
names a duration ("centrifuge for 5 min") lasts about that long, others follow their verb's
pace (see ``_timeline``). It is off by default because it breaks the paper calibration below.

``difficulty`` scales every source of irregularity and confusion (duration spread, gap
spread, noise, text offsets, share of invisible steps); 0 is clean, 1 is calibrated to the
paper, and higher values make every method worse.

Calibration of difficulty 1.0 (targets: the paper's uniform 28.6 and CLIP+NW 33.2 mIoU):
``make_benchmark(seed, 1.0)`` (16 recordings: 2 phenol-chloroform, 2 ethanol precipitation,
4 PCR, 4 agarose gel, 4 miniprep), scored with ``biovl_core.align.align`` (methods
"uniform" and "nw", numpy backend) and ``metrics.aggregate`` (mean over videos, percent).
Step and gap means come from the PCR example (mean action 25 s, mean gap 17 s) and were
set per experiment so a benchmark totals ~1.6 h (measured 1.64 h over seeds 0-19) with PCR
the shortest and miniprep the longest videos. The structure knob ``dur_sigma`` (the PCR
example's log-sd is ~0.7) was then tuned, with ``gap_cv`` 0.6 and ``edge_gaps`` 1.0, until
uniform scored 28.6; uniform does not read the similarity, so this fixes it alone. Then
``noise`` was tuned (signal 0.03, text_bias 0.0045, leak 0.6 held) until NW scored 33.2.
Measured with the shipped defaults, mean (sd over seeds) of the benchmark figure:

=========  =============  =============  ==============
seeds      uniform        nw             drop_dtw
=========  =============  =============  ==============
0-59       28.57 (2.60)   33.31 (3.35)   45.45 (3.25)
0-19       29.02 (2.41)   32.32 (2.93)   44.88 (2.57)
0-2        31.70 (1.86)   34.03 (1.27)   46.67 (1.59)
=========  =============  =============  ==============

Per difficulty (seeds 0-9; uniform / nw / drop_dtw): 0.0: 57.6 / 58.3 / 85.8,
0.5: 44.2 / 54.8 / 74.9, 1.0: 29.0 / 32.4 / 45.0, 1.5: 19.9 / 17.2 / 22.7,
2.0: 14.4 / 12.4 / 13.9, 3.0: 8.3 / 10.0 / 9.0.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from biovl_core.protocol import step_duration_hint, step_verb


@dataclass(frozen=True)
class ExperimentProfile:
    """How recordings of one experiment type look: step count, timing, and step texts."""

    name: str
    steps_mean: float
    steps_sd: float
    words_per_step: float  # SPEC.md's figure, for reference; the texts below approximate it
    step_seconds: float  # mean action duration
    gap_seconds: float  # mean background time between two steps
    protocol: tuple[str, ...]
    extra: tuple[str, ...] = ()


EXPERIMENTS: dict[str, ExperimentProfile] = {
    p.name: p
    for p in (
        ExperimentProfile(
            "phenol_chloroform", 4.0, 0.0, 6.0, 40.0, 28.0,
            (
                "add an equal volume of phenol-chloroform to the sample",
                "vortex the tube vigorously for 30 s",
                "centrifuge the tube at 15,000 rpm for 5 min",
                "transfer the upper aqueous layer to a new tube",
            ),
            ("add an equal volume of chloroform to the tube",),
        ),
        ExperimentProfile(
            "ethanol_precipitation", 9.0, 0.5, 4.9, 22.0, 15.0,
            (
                "add 1/10 volume of sodium acetate",
                "add 2.5 volumes of cold ethanol",
                "invert the tube to mix",
                "incubate on ice for 10 min",
                "centrifuge at 15,000 rpm for 10 min",
                "discard the supernatant",
                "add 500 µl of 70% ethanol",
                "centrifuge for 5 min",
                "dry the DNA pellet",
            ),
            ("resuspend the pellet in TE buffer", "spin down briefly"),
        ),
        ExperimentProfile(
            "pcr", 6.0, 0.0, 3.0, 25.0, 17.0,
            (
                "add sterile distilled water",
                "add primer1",
                "add primer2",
                "add template",
                "add primeSTAR",
                "set in DNA engine",
            ),
            ("spin down the tube", "mix by pipetting"),
        ),
        ExperimentProfile(
            "agarose_gel", 10.3, 0.5, 4.7, 20.0, 12.0,
            (
                "weigh 1 g of agarose powder",
                "pour agarose into the flask",
                "add 100 ml of TAE buffer",
                "heat in the microwave until dissolved",
                "swirl the flask to mix",
                "cool the solution to 60 °C",
                "add 5 µl of DNA stain",
                "pour the gel into the tray",
                "insert the comb into the gel",
                "leave the gel to solidify",
                "remove the comb carefully",
            ),
            ("place the tray in the tank",),
        ),
        ExperimentProfile(
            "miniprep", 28.2, 1.0, 6.4, 12.0, 8.0,
            (
                "pour the overnight culture into a tube",
                "centrifuge the culture at 6,800 x g for 3 min",
                "discard the supernatant from the tube",
                "resuspend the pellet in 250 µl buffer P1",
                "transfer the suspension to a microcentrifuge tube",
                "add 250 µl buffer P2 to the tube",
                "invert the tube gently 4-6 times to mix",
                "add 350 µl buffer N3 to the tube",
                "invert the tube immediately 4-6 times",
                "centrifuge for 10 min at 13,000 rpm",
                "apply the supernatant to the spin column",
                "centrifuge the column for 60 s",
                "discard the flow-through from the tube",
                "add 0.5 ml buffer PB to the column",
                "centrifuge the column for 60 s",
                "discard the flow-through from the tube",
                "add 0.75 ml buffer PE to wash",
                "centrifuge the column for 60 s",
                "discard the flow-through from the tube",
                "centrifuge for 1 min to dry the membrane",
                "place the column in a clean 1.5 ml tube",
                "add 50 µl buffer EB to the membrane",
                "let the column stand for 1 min",
                "centrifuge the column for 1 min",
                "remove the column from the tube",
                "measure the DNA concentration with a spectrophotometer",
                "label the tube with the sample name",
                "store the plasmid DNA at -20 °C",
            ),
            ("vortex the tube briefly to mix", "spin down the tube briefly"),
        ),
    )
}  # fmt: skip

# BioVL: 4 experiments x 4 recordings, DNA extraction split into phenol / ethanol halves.
BENCHMARK_LAYOUT: tuple[tuple[str, float], ...] = (
    ("phenol_chloroform", 0.5),
    ("ethanol_precipitation", 0.5),
    ("pcr", 1.0),
    ("agarose_gel", 1.0),
    ("miniprep", 1.0),
)

_FILLER_VERBS = ("add", "mix", "transfer", "incubate", "vortex", "centrifuge", "pipette", "place")
_FILLER_OBJECTS = ("buffer A", "the sample", "the lysate", "water", "the enzyme", "the tube")


@dataclass(frozen=True)
class Knobs:
    """Every parameter of the generator (cosine-similarity units, seconds)."""

    dur_sigma: float  # lognormal sigma of action durations
    gap_cv: float  # coefficient of variation of background gaps
    edge_gaps: float  # mean background before the first / after the last step, in mean gaps
    noise: float  # sd of the per-step AR(1) noise
    text_bias: float  # sd of the per-step-text offset
    p_invisible: float  # share of steps the model barely sees
    seg_bias: float = 0.015  # sd of the per-segment AR(1) offset shared by all steps
    rho: float = 0.7  # lag-1 autocorrelation of noise and segment offsets (5 s apart)
    signal: float = 0.03  # in-span rise for a fully visible step
    foreground: float = 0.006  # rise on every step's row where any action happens
    leak: float = 0.6  # share of the signal a same-verb step also gets
    base: float = 0.22  # mean cosine similarity
    # Text-aware durations (opt-in; 0 keeps the paper calibration, see ``_timeline``): 1 makes
    # a step that names a duration last about that long and other steps follow their verb.
    text_durations: float = 0.0
    hint_sigma: float = 0.3  # lognormal sigma of a step's real span around its named duration


DIFFICULTY_1 = Knobs(
    dur_sigma=0.71,
    gap_cv=0.6,
    edge_gaps=1.0,
    noise=0.0068,
    text_bias=0.0045,
    p_invisible=0.15,
)
_SCALED = (
    "dur_sigma", "gap_cv", "noise", "text_bias", "p_invisible", "seg_bias", "leak", "hint_sigma",
)  # fmt: skip
_CAPS = {"p_invisible": 0.9, "leak": 0.95}


def knobs_for(difficulty: float = 1.0, **overrides: float) -> Knobs:
    """The generator parameters at ``difficulty`` (irregularity knobs scale linearly)."""
    if not (math.isfinite(difficulty) and difficulty >= 0.0):
        raise ValueError(f"difficulty must be a finite number >= 0, got {difficulty!r}")
    known = [f.name for f in dataclasses.fields(Knobs)]
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise TypeError(f"unknown synthetic knob(s) {unknown}; known: {known}")
    scaled = {name: getattr(DIFFICULTY_1, name) * difficulty for name in _SCALED}
    for name, cap in _CAPS.items():
        scaled[name] = min(cap, scaled[name])
    return dataclasses.replace(DIFFICULTY_1, **{**scaled, **overrides})


@dataclass
class SyntheticProblem:
    """One synthetic recording: what the aligner sees and the ground truth to score it."""

    similarity: np.ndarray  # float32 [K, N]
    gt_spans: list[tuple[float, float]]  # one (start_s, end_s) per step, ordered, with gaps
    steps: list[str]
    experiment: str
    duration_s: float
    segment_seconds: float
    name: str = ""
    seed: int = 0
    difficulty: float = 1.0
    visibility: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per step, 0..1

    @property
    def gt_labels(self) -> np.ndarray:
        """Ground-truth step index per segment (by the segment's midpoint; -1 = background)."""
        n = self.similarity.shape[1]
        starts = np.arange(n) * self.segment_seconds
        mids = (starts + np.minimum(starts + self.segment_seconds, self.duration_s)) / 2.0
        labels = np.full(n, -1, dtype=np.int64)
        for k, (a, b) in enumerate(self.gt_spans):
            labels[(mids >= a) & (mids < b)] = k
        return labels


def make_problem(
    experiment: str | None = None,
    num_steps: int | None = None,
    seed: int = 0,
    difficulty: float = 1.0,
    segment_seconds: float = 5.0,
    **knobs: float,
) -> SyntheticProblem:
    """One synthetic recording of ``experiment`` (drawn at random when None); see module doc."""
    if segment_seconds <= 0:
        raise ValueError(f"segment_seconds must be positive, got {segment_seconds}")
    k_ = knobs_for(difficulty, **knobs)
    rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(b"biovl-synth")]))
    if experiment is None:
        names = [n for n, _ in BENCHMARK_LAYOUT]
        weights = np.array([w for _, w in BENCHMARK_LAYOUT])
        experiment = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; choose one of {sorted(EXPERIMENTS)}")
    profile = EXPERIMENTS[experiment]
    if num_steps is None:
        num_steps = max(2, round(rng.normal(profile.steps_mean, profile.steps_sd)))
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    steps = _step_texts(profile, num_steps, rng)
    spans, duration = _timeline(profile, num_steps, k_, rng, segment_seconds, steps)
    n = math.ceil(duration / segment_seconds - 1e-9)
    visibility = np.where(
        rng.random(num_steps) < k_.p_invisible,
        rng.uniform(0.0, 0.1, num_steps),
        rng.uniform(0.5, 1.0, num_steps),
    )
    sim = _similarity(steps, spans, visibility, n, duration, segment_seconds, k_, rng)
    return SyntheticProblem(
        similarity=sim,
        gt_spans=spans,
        steps=steps,
        experiment=experiment,
        duration_s=duration,
        segment_seconds=float(segment_seconds),
        name=f"{experiment}_seed{seed}",
        seed=seed,
        difficulty=float(difficulty),
        visibility=visibility,
    )


def make_benchmark(
    seed: int = 0,
    difficulty: float = 1.0,
    recordings_per_experiment: int = 4,
    segment_seconds: float = 5.0,
    **knobs: float,
) -> list[SyntheticProblem]:
    """A BioVL-shaped set: per experiment ``recordings_per_experiment`` recordings (16 by default).

    DNA extraction's recordings are split between phenol-chloroform and ethanol precipitation.
    """
    if recordings_per_experiment < 1:
        raise ValueError(f"recordings_per_experiment must be >= 1, got {recordings_per_experiment}")
    half = recordings_per_experiment // 2
    counts = {
        "phenol_chloroform": recordings_per_experiment - half,
        "ethanol_precipitation": half,
        "pcr": recordings_per_experiment,
        "agarose_gel": recordings_per_experiment,
        "miniprep": recordings_per_experiment,
    }
    problems = []
    for exp_index, (experiment, _) in enumerate(BENCHMARK_LAYOUT):
        for r in range(counts[experiment]):
            sub_seed = int(np.random.SeedSequence([seed, exp_index, r]).generate_state(1)[0])
            p = make_problem(
                experiment,
                seed=sub_seed,
                difficulty=difficulty,
                segment_seconds=segment_seconds,
                **knobs,
            )
            p.name = f"{experiment}_{r + 1:02d}"
            problems.append(p)
    return problems


def _step_texts(profile: ExperimentProfile, k: int, rng: np.random.Generator) -> list[str]:
    """K step texts: the profile's protocol, thinned or extended in place, order kept."""
    base = list(profile.protocol)
    if k <= len(base):
        keep = np.sort(rng.choice(len(base), size=k, replace=False))
        return [base[i] for i in keep]
    pool = list(profile.extra)
    steps = base[:]
    i = 0
    while len(steps) < k:
        if i < len(pool):
            text = pool[i]
        else:
            verb = _FILLER_VERBS[i % len(_FILLER_VERBS)]
            obj = _FILLER_OBJECTS[(i // len(_FILLER_VERBS)) % len(_FILLER_OBJECTS)]
            text = f"{verb} {obj} ({i + 1})" if verb != "incubate" else f"incubate {obj} for 5 min"
        steps.insert(int(rng.integers(1, len(steps) + 1)), text)
        i += 1
    return steps


def _timeline(
    profile: ExperimentProfile,
    k: int,
    knobs: Knobs,
    rng: np.random.Generator,
    segment_seconds: float,
    steps: Sequence[str] = (),
) -> tuple[list[tuple[float, float]], float]:
    """Ground-truth spans and video length: background, step, gap, ..., step, background.

    With ``knobs.text_durations`` w > 0 each step's log-duration moves by w towards what its
    text says: the named duration (``step_duration_hint``, lognormal ``hint_sigma`` around it)
    or, without one, the profile's mean action times the verb's relative duration
    (``_VERB_PACE``). w = 0 (the default) draws exactly what the calibrated generator drew.
    """
    sigma = knobs.dur_sigma
    durations = profile.step_seconds * np.exp(rng.normal(-0.5 * sigma**2, sigma, k))
    if knobs.text_durations > 0.0:
        durations = _text_durations(profile, steps, durations, knobs, rng)
    durations = np.maximum(durations, 2.0)
    gaps = profile.gap_seconds * _gamma_unit(rng, knobs.gap_cv, k + 1)
    gaps[0] *= knobs.edge_gaps
    gaps[-1] *= knobs.edge_gaps
    gaps = np.maximum(gaps, 1.0)
    spans = []
    t = float(gaps[0])
    for d, g in zip(durations, gaps[1:], strict=True):
        start = round(t, 1)
        end = round(t + float(d), 1)
        spans.append((start, end))
        t = end + float(g)
    duration = max(round(t, 1), segment_seconds)
    return spans, duration


# How long a step's action takes relative to an experiment's mean action, by verb, in the
# text-aware generator: liquid handling and mixing are quick, waiting/processing is long.
_VERB_PACE: dict[str, float] = {
    **dict.fromkeys(("add", "pipette", "pipet", "transfer", "discard", "apply", "pour"), 0.6),
    **dict.fromkeys(("mix", "vortex", "invert", "swirl", "flick", "tap", "shake", "spin"), 0.5),
    **dict.fromkeys(("label", "place", "insert", "remove", "set", "store", "put"), 0.8),
    **dict.fromkeys(("resuspend", "weigh", "measure", "cool", "dry", "heat", "wash"), 1.5),
    **dict.fromkeys(("incubate", "centrifuge", "run", "leave", "let", "stand", "wait"), 2.5),
}


def _text_durations(
    profile: ExperimentProfile,
    steps: Sequence[str],
    drawn: np.ndarray,
    knobs: Knobs,
    rng: np.random.Generator,
) -> np.ndarray:
    """Durations pulled (in log space, by ``knobs.text_durations``) towards the step texts."""
    w = min(1.0, knobs.text_durations)
    sigma = knobs.hint_sigma
    jitter = np.exp(rng.normal(-0.5 * sigma**2, sigma, len(steps)))
    out = np.empty(len(steps))
    for i, text in enumerate(steps):
        hint = step_duration_hint(text)
        if hint is not None:
            target = hint * jitter[i]
        else:
            target = drawn[i] * _VERB_PACE.get(step_verb(text) or "", 1.0)
        out[i] = math.exp((1.0 - w) * math.log(drawn[i]) + w * math.log(max(target, 1.0)))
    return out


def _gamma_unit(rng: np.random.Generator, cv: float, size: int) -> np.ndarray:
    """Positive draws with mean 1 and coefficient of variation ``cv`` (all 1 when cv is 0)."""
    if cv <= 1e-6:
        return np.ones(size)
    shape = 1.0 / cv**2
    return rng.gamma(shape, 1.0 / shape, size)


def _ar1(rng: np.random.Generator, rows: int, n: int, sd: float, rho: float) -> np.ndarray:
    """``rows`` independent stationary AR(1) series of length ``n`` with marginal sd ``sd``."""
    eps = rng.normal(0.0, 1.0, (rows, n))
    out = np.empty((rows, n))
    out[:, 0] = eps[:, 0]
    innovation = math.sqrt(max(0.0, 1.0 - rho**2))
    for i in range(1, n):
        out[:, i] = rho * out[:, i - 1] + innovation * eps[:, i]
    return sd * out


def _coverage(
    spans: Sequence[tuple[float, float]], n: int, duration: float, seg: float
) -> np.ndarray:
    """[K, N] share of each segment covered by each step's span."""
    starts = np.arange(n) * seg
    ends = np.minimum(starts + seg, duration)
    cover = np.zeros((len(spans), n))
    for k, (a, b) in enumerate(spans):
        cover[k] = np.clip(np.minimum(ends, b) - np.maximum(starts, a), 0.0, None)
    return cover / np.maximum(ends - starts, 1e-9)


def _similarity(
    steps: list[str],
    spans: list[tuple[float, float]],
    visibility: np.ndarray,
    n: int,
    duration: float,
    seg: float,
    knobs: Knobs,
    rng: np.random.Generator,
) -> np.ndarray:
    """The [K, N] step/segment similarity (see the module docstring for its parts)."""
    k = len(steps)
    texts = sorted(set(steps))
    text_id = np.array([texts.index(s) for s in steps])
    verbs = [step_verb(s) for s in steps]
    look = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            if text_id[i] == text_id[j]:
                look[i, j] = 1.0
            elif verbs[i] is not None and verbs[i] == verbs[j]:
                look[i, j] = knobs.leak
    cover = _coverage(spans, n, duration, seg)
    seen = visibility[:, None] * cover  # what each step's action shows, per segment
    text_offset = rng.normal(0.0, knobs.text_bias, len(texts))[text_id]
    noise = _ar1(rng, len(texts), n, knobs.noise, knobs.rho)[text_id]
    seg_offset = _ar1(rng, 1, n, knobs.seg_bias, knobs.rho)[0]
    active = np.clip(cover.sum(axis=0), 0.0, 1.0)
    sim = (
        knobs.base
        + text_offset[:, None]
        + seg_offset[None, :]
        + knobs.foreground * active[None, :]
        + knobs.signal * (look @ seen)
        + noise
    )
    return sim.astype(np.float32)

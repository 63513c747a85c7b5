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
pace (see ``timeline``). It is off by default because it breaks the paper calibration below.

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

import math
import zlib
from dataclasses import dataclass, field

import numpy as np

from biovl_core.protocol import step_verb
from biovl_core.synthetic.profiles import (
    BENCHMARK_LAYOUT,
    EXPERIMENTS,
    ExperimentProfile,
    Knobs,
    knobs_for,
)
from biovl_core.synthetic.timeline import ar1_noise, coverage, timeline

_FILLER_VERBS = ("add", "mix", "transfer", "incubate", "vortex", "centrifuge", "pipette", "place")
_FILLER_OBJECTS = ("buffer A", "the sample", "the lysate", "water", "the enzyme", "the tube")


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
    spans, duration = timeline(profile, num_steps, k_, rng, segment_seconds, steps)
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
    cover = coverage(spans, n, duration, seg)
    seen = visibility[:, None] * cover  # what each step's action shows, per segment
    text_offset = rng.normal(0.0, knobs.text_bias, len(texts))[text_id]
    noise = ar1_noise(rng, len(texts), n, knobs.noise, knobs.rho)[text_id]
    seg_offset = ar1_noise(rng, 1, n, knobs.seg_bias, knobs.rho)[0]
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

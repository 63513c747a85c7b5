"""The ground truth of a synthetic recording: step timelines with gaps, durations, and correlated noise."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from biovl_core.protocol import step_duration_hint, step_verb
from biovl_core.synthetic.profiles import ExperimentProfile, Knobs


def timeline(
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
        durations = text_durations(profile, steps, durations, knobs, rng)
    durations = np.maximum(durations, 2.0)
    gaps = profile.gap_seconds * gamma_unit(rng, knobs.gap_cv, k + 1)
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


def text_durations(
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


def gamma_unit(rng: np.random.Generator, cv: float, size: int) -> np.ndarray:
    """Positive draws with mean 1 and coefficient of variation ``cv`` (all 1 when cv is 0)."""
    if cv <= 1e-6:
        return np.ones(size)
    shape = 1.0 / cv**2
    return rng.gamma(shape, 1.0 / shape, size)


def ar1_noise(rng: np.random.Generator, rows: int, n: int, sd: float, rho: float) -> np.ndarray:
    """``rows`` independent stationary AR(1) series of length ``n`` with marginal sd ``sd``."""
    eps = rng.normal(0.0, 1.0, (rows, n))
    out = np.empty((rows, n))
    out[:, 0] = eps[:, 0]
    innovation = math.sqrt(max(0.0, 1.0 - rho**2))
    for i in range(1, n):
        out[:, i] = rho * out[:, i - 1] + innovation * eps[:, i]
    return sd * out


def coverage(
    spans: Sequence[tuple[float, float]], n: int, duration: float, seg: float
) -> np.ndarray:
    """[K, N] share of each segment covered by each step's span."""
    starts = np.arange(n) * seg
    ends = np.minimum(starts + seg, duration)
    cover = np.zeros((len(spans), n))
    for k, (a, b) in enumerate(spans):
        cover[k] = np.clip(np.minimum(ends, b) - np.maximum(starts, a), 0.0, None)
    return cover / np.maximum(ends - starts, 1e-9)

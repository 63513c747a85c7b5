"""Zero-shot aligner methods beyond the paper: they only build the kernel's ``M`` and ``D``.

Importing this module registers them in ``biovl_core.align.METHODS``. Every ``prepare`` is
array code on the [K, N] similarity (numpy, or cupy for a similarity already on the GPU:
`align/device_solve.py`), so every backend (numpy, numba, cupy) solves the same problem. See docs/QUALITY.md for the method, how its defaults were chosen, and its scores.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from biovl_core.align.registry import MethodSpec, SegmentationProblem, register_method
from biovl_core.device import array_module_of
from biovl_core.errors import BioVLError
from biovl_core.protocol import step_duration_hint, step_verb

# 1.4826 * MAD estimates the standard deviation of Gaussian data (consistency constant).
_MAD_TO_SD = 1.4826
# Guards a division by a spread that is zero (a constant similarity matrix).
_TINY = 1e-12


def _number(params: dict[str, Any], name: str, method: str, low: float, high: float) -> float:
    """A finite float parameter inside [low, high], or an error naming it and the range."""
    try:
        value = float(params[name])
    except (TypeError, ValueError):
        raise BioVLError(f"{method}: {name} must be a number, got {params[name]!r}") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise BioVLError(f"{method}: {name} must be in [{low}, {high}], got {params[name]!r}")
    return value


def robust_sd(x: np.ndarray) -> float:
    """Standard deviation estimated from the median absolute deviation (outlier-proof)."""
    xp = array_module_of(x)
    return _MAD_TO_SD * float(xp.median(xp.abs(x - xp.median(x))))


def standardize(sim: np.ndarray) -> np.ndarray:
    """Remove per-step and per-segment offsets, then scale to robust z-units.

    Rows lose their median (a step text that scores high on every frame). Columns lose their
    sum over the K steps divided by K + 1, the mean over the steps plus one zero pseudo-step
    (lighting or motion lifts every step's score): with few steps a step's own signal is a
    large part of the plain mean, and with K = 1 the plain mean would erase the only row. The
    result is divided by its MAD-based spread, so thresholds do not depend on the model.
    """
    xp = array_module_of(sim)  # numpy, or cupy for similarities already on the GPU
    s = xp.asarray(sim, dtype=xp.float64)
    s = s - xp.median(s, axis=1, keepdims=True)
    s = s - s.sum(axis=0, keepdims=True) / (s.shape[0] + 1)
    spread = robust_sd(s)
    if spread <= _TINY:
        spread = float(s.std())
    return s / spread if spread > _TINY else xp.zeros_like(s)


def signal_strength(z: np.ndarray, top_share: float, offset: float) -> np.ndarray:
    """Per-step signal estimate [K] in z-units: mean of the row's top cells, less ``offset``.

    A step is expected to cover about N / K segments; its top ``top_share`` * N / K cells
    estimate how far the model lifts it where it happens. ``offset`` discounts what the top
    cells of pure noise reach; a step the model cannot see gets 0.
    """
    k, n = z.shape
    top = max(1, round(top_share * n / k))
    xp = array_module_of(z)
    best = -xp.sort(-z, axis=1)[:, :top]
    return xp.maximum(best.mean(axis=1) - offset, 0.0)


def positional_prior(k: int, n: int, width: float, xp: Any = np) -> np.ndarray:
    """[K, N] Gaussian log-prior (<= 0) that step k sits near (k + 0.5) / K of the video.

    Without duration information every step is expected to take an equal share of the video;
    the sd is ``width`` step shares (``width`` / K of the video).
    """
    centre = (xp.arange(k, dtype=xp.float64) + 0.5) / k
    pos = (xp.arange(n, dtype=xp.float64) + 0.5) / n
    return -0.5 * ((pos[None, :] - centre[:, None]) * k / width) ** 2


# Typical hands-on time (seconds) of a step by its verb, when the text names no duration.
# Rationale (bench practice, not fitted to the generator): pipetting a reagent or discarding
# a supernatant takes ~10-15 s; inverting/vortexing/flicking ~10 s; placing/labelling ~15 s;
# resuspending, weighing, measuring, heating or drying ~30-60 s; incubating, centrifuging,
# running a machine or letting something stand takes minutes (1.5 min without a stated time).
# The table only shifts expected shares; its log-sd (VERB_LOG_SD) keeps the prior loose.
VERB_SECONDS: dict[str, float] = {
    **dict.fromkeys(
        ("add", "pipette", "pipet", "transfer", "discard", "apply", "pour", "aspirate"), 12.0
    ),
    **dict.fromkeys(("mix", "vortex", "invert", "swirl", "flick", "tap", "shake", "spin"), 10.0),
    **dict.fromkeys(("label", "place", "insert", "remove", "set", "store", "put", "close"), 15.0),
    **dict.fromkeys(("resuspend", "weigh", "measure", "cool", "dry", "heat", "wash"), 35.0),
    **dict.fromkeys(("incubate", "centrifuge", "run", "leave", "let", "stand", "wait"), 90.0),
}
DEFAULT_STEP_SECONDS = 20.0  # a verb outside the table
HINT_LOG_SD = 0.35  # a stated duration is roughly kept (lognormal sd of the real span)
VERB_LOG_SD = 0.8  # a verb's typical time is a loose guess


def expected_durations(steps: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """Expected seconds [K] and lognormal sd [K] of each step from its text, or None.

    A stated duration (``step_duration_hint``) wins; else the verb's typical time
    (``VERB_SECONDS``). None when the texts carry no duration information at all (no hint
    and every step the same typical time), so the caller keeps the equal-share prior.
    """
    secs, sds = [], []
    hinted = False
    for text in steps:
        hint = step_duration_hint(text)
        if hint is not None and hint > 0.0:
            secs.append(hint)
            sds.append(HINT_LOG_SD)
            hinted = True
        else:
            secs.append(VERB_SECONDS.get(step_verb(text) or "", DEFAULT_STEP_SECONDS))
            sds.append(VERB_LOG_SD)
    if not hinted and len(set(secs)) <= 1:
        return None
    return np.array(secs, dtype=np.float64), np.array(sds, dtype=np.float64)


def duration_prior(
    n: int, expected: np.ndarray, log_sd: np.ndarray, width: float, xp: Any = np
) -> np.ndarray:
    """[K, N] Gaussian log-prior around each step's centre given expected durations.

    The centre of step k is (sum of earlier durations + half its own) / total. Its sd adds,
    in quadrature, the equal-share prior's ``width`` / K (gaps, pace) and the delta-method sd
    of that centre when each duration d_j varies lognormally (sd d_j * sqrt(exp(s_j²) - 1)).
    """
    k = expected.shape[0]
    total = float(expected.sum())
    before = np.concatenate([[0.0], np.cumsum(expected)[:-1]])
    centre = (before + 0.5 * expected) / total
    dsd = expected * np.sqrt(np.expm1(log_sd**2)) / total  # sd of each duration's share
    j = np.arange(k)
    grad = np.where(j[None, :] < j[:, None], 1.0 - centre[:, None], -centre[:, None])
    grad = grad + np.where(j[None, :] == j[:, None], 0.5, 0.0)
    var = (grad**2 * dsd[None, :] ** 2).sum(axis=1)
    sd = np.sqrt((width / k) ** 2 + var)  # K values, on the host; the [K, N] prior on xp's device
    centre, sd = xp.asarray(centre), xp.asarray(sd)
    pos = (xp.arange(n, dtype=xp.float64) + 0.5) / n
    return -0.5 * ((pos[None, :] - centre[:, None]) / sd[:, None]) ** 2


def _steps_param(params: dict[str, Any], k: int) -> list[str] | None:
    """The optional ``steps`` parameter: None, or K step texts."""
    steps = params.get("steps")
    if steps is None:
        return None
    if isinstance(steps, str) or not all(isinstance(s, str) for s in steps):
        raise BioVLError("biovl: steps must be a list of step texts (one per similarity row)")
    steps = list(steps)
    if len(steps) != k:
        raise BioVLError(f"biovl: steps has {len(steps)} texts for a similarity with {k} rows")
    return steps


def _prepare_nw_norm(sim: np.ndarray, params: dict[str, Any]) -> SegmentationProblem:
    """The paper's NW on standardized similarities (no background, no prior)."""
    xp = array_module_of(sim)
    m = standardize(sim)
    drop = xp.full(sim.shape[1], -np.inf, dtype=xp.float32)
    return SegmentationProblem(m.astype(xp.float32), drop)


def _prepare_biovl(sim: np.ndarray, params: dict[str, Any]) -> SegmentationProblem:
    """Match = per-step Gaussian log-likelihood ratio + positional prior; drop = a fixed penalty.

    With z the standardized similarity and mu_k the step's signal strength, a segment inside
    step k is modelled as z ~ N(mu_k, 1) and outside as z ~ N(0, 1), so the log-likelihood
    ratio is ``mu_k * z - mu_k**2 / 2``; background scores ``-background_penalty``.
    """
    name = "biovl"
    share = _number(params, "top_share", name, _TINY, 1.0)
    offset = _number(params, "signal_offset", name, 0.0, math.inf)
    width = _number(params, "prior_width", name, 0.0, math.inf)  # 0 = no prior
    penalty = _number(params, "background_penalty", name, -math.inf, math.inf)
    k, n = sim.shape
    steps = _steps_param(params, k)
    xp = array_module_of(sim)  # cupy: the problem is built on the GPU (align/device_solve.py)
    z = standardize(sim)
    mu = signal_strength(z, share, offset)
    m = mu[:, None] * z - 0.5 * mu[:, None] ** 2
    durations = expected_durations(steps) if steps is not None else None
    if width > 0.0 and durations is not None:
        # Half/half mixture with the equal-share prior: when the video ignores the text's
        # durations (waits cut, steps paced alike) the equal-share mode still carries the step.
        text = duration_prior(n, *durations, width, xp=xp)
        m = m + (xp.logaddexp(text, positional_prior(k, n, width, xp)) - math.log(2.0))
    elif width > 0.0:
        m = m + positional_prior(k, n, width, xp)
    drop = xp.full(n, -penalty, dtype=xp.float32)
    return SegmentationProblem(m.astype(xp.float32), drop, {"signal_strength": mu.tolist()})


NW_NORM = register_method(
    MethodSpec(
        "nw_norm",
        "NW on similarities with per-step/per-segment offsets removed (robust z-units)",
        {},
        _prepare_nw_norm,
    )
)

# Chosen by scripts/tune_quality.py on tuning seeds 0-9 over many generator settings; see
# docs/QUALITY.md for the grid, the selection rule and held-out results.
BIOVL_DEFAULTS: dict[str, float] = {
    "top_share": 0.3,
    "signal_offset": 0.5,
    "prior_width": 3.0,
    "background_penalty": 0.5,
}
# Not a tuned number: the step texts (one per similarity row) for text-aware duration priors;
# None keeps the equal-share prior. See docs/QUALITY.md, "Duration priors from step text".
BIOVL_OPTIONS: dict[str, Any] = {"steps": None}

BIOVL = register_method(
    MethodSpec(
        "biovl",
        "per-step likelihood ratio on standardized similarities + positional prior + background",
        {**BIOVL_DEFAULTS, **BIOVL_OPTIONS},
        _prepare_biovl,
    )
)

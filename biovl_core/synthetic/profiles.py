"""What the synthetic generator varies: each experiment's profile (steps, pace, look) and the difficulty knobs."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


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
    # Text-aware durations (opt-in; 0 keeps the paper calibration, see ``timeline``): 1 makes
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

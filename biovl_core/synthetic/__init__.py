"""Synthetic data with ground truth: similarity problems, lab groups of recordings, lab-like videos."""

from biovl_core.synthetic.lab import LabGroup, LabKnobs, LabRecording, make_lab_group
from biovl_core.synthetic.problems import SyntheticProblem, make_benchmark, make_problem
from biovl_core.synthetic.profiles import (
    BENCHMARK_LAYOUT,
    DIFFICULTY_1,
    EXPERIMENTS,
    ExperimentProfile,
    Knobs,
    knobs_for,
)
from biovl_core.synthetic.video import (
    COUNTER_BITS,
    RECORDING_STEPS,
    SyntheticVideo,
    draw_counter,
    make_recording,
    read_frame_counter,
    write_video,
)

__all__ = [
    "BENCHMARK_LAYOUT",
    "COUNTER_BITS",
    "DIFFICULTY_1",
    "EXPERIMENTS",
    "ExperimentProfile",
    "Knobs",
    "LabGroup",
    "LabKnobs",
    "LabRecording",
    "RECORDING_STEPS",
    "SyntheticProblem",
    "SyntheticVideo",
    "draw_counter",
    "knobs_for",
    "make_benchmark",
    "make_lab_group",
    "make_problem",
    "make_recording",
    "read_frame_counter",
    "write_video",
]

"""Alignment stage: steps to segments by monotonic segmentation (SPEC.md "Aligner", "Group alignment").

``align`` / ``align_batch`` solve one or many recordings with any registered method on any
backend; ``align_group`` and ``coalign`` let recordings of one protocol align each other;
``group_priors`` learns a lab's usual steps from its history and ``deviation_report`` says what
one recording did differently.
Importing this package registers every method: the paper's (``uniform``, ``nw``, ``drop_dtw``,
in ``paper``) and the project's (``biovl``, ``nw_norm``, in ``methods``).
"""

from biovl_core.align import methods, paper  # noqa: F401  (importing them registers their methods)
from biovl_core.align.api import align, align_batch, align_batch_or_each
from biovl_core.align.backends import (
    AUTO_CUPY_MIN_CELLS,
    BACKENDS,
    auto_backend,
    pack_flat,
    pack_padded,
    solve_segmentation,
)
from biovl_core.align.deviations import deviation_report, step_ranges, step_variability
from biovl_core.align.group import (
    GROUP_DEFAULTS,
    GROUP_METHOD,
    TEXT_METHOD,
    GroupContext,
    GroupMember,
    align_group,
    coalign,
)
from biovl_core.align.methods import signal_strength, standardize
from biovl_core.align.priors import GroupPriors, HistoryRecord, group_priors
from biovl_core.align.registry import (
    DEFAULT_METHOD,
    METHODS,
    Alignment,
    MethodSpec,
    SegmentationProblem,
    objective,
    register_method,
    resolve_method,
    spans_from_labels,
    validate_similarity,
)
from biovl_core.result import Span

__all__ = [
    "AUTO_CUPY_MIN_CELLS",
    "BACKENDS",
    "DEFAULT_METHOD",
    "GROUP_DEFAULTS",
    "GROUP_METHOD",
    "METHODS",
    "TEXT_METHOD",
    "Alignment",
    "GroupContext",
    "GroupMember",
    "GroupPriors",
    "HistoryRecord",
    "MethodSpec",
    "SegmentationProblem",
    "Span",
    "align",
    "align_batch",
    "align_batch_or_each",
    "align_group",
    "auto_backend",
    "coalign",
    "deviation_report",
    "group_priors",
    "objective",
    "pack_flat",
    "pack_padded",
    "register_method",
    "resolve_method",
    "signal_strength",
    "solve_segmentation",
    "spans_from_labels",
    "step_ranges",
    "step_variability",
    "standardize",
    "validate_similarity",
]

"""Files in and out: annotations (CSV, JSON, ELAN) in, alignments (JSON, CSV, WebVTT, ELAN) out, data sets."""

from biovl_core.io.annotations import (
    Annotation,
    annotations_to_spans,
    parse_annotations,
    read_annotations,
)
from biovl_core.io.dataset import (
    ANNOTATION_NAMES,
    PROTOCOL_NAMES,
    VIDEO_SUFFIXES,
    Recording,
    discover,
    load_recording,
)
from biovl_core.io.elan import STEP_TIER, read_eaf_rows, write_eaf
from biovl_core.io.exports import (
    SCHEMA,
    SCHEMA_VERSION,
    alignment_from_dict,
    alignment_to_dict,
    annotations_to_eaf,
    to_csv,
    to_eaf,
    to_json,
    to_webvtt,
)
from biovl_core.io.step_match import (
    MATCH_THRESHOLD,
    MatchTooLarge,
    match_rows,
    monotonic_match,
    normalise_step,
    text_similarity,
)

__all__ = [
    "MATCH_THRESHOLD",
    "MatchTooLarge",
    "match_rows",
    "monotonic_match",
    "normalise_step",
    "text_similarity",
    "ANNOTATION_NAMES",
    "PROTOCOL_NAMES",
    "SCHEMA",
    "SCHEMA_VERSION",
    "STEP_TIER",
    "VIDEO_SUFFIXES",
    "Annotation",
    "Recording",
    "alignment_from_dict",
    "alignment_to_dict",
    "annotations_to_eaf",
    "annotations_to_spans",
    "discover",
    "load_recording",
    "parse_annotations",
    "read_annotations",
    "read_eaf_rows",
    "to_csv",
    "to_eaf",
    "to_json",
    "to_webvtt",
    "write_eaf",
]

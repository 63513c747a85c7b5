"""Protocol stage: a lab's protocol text (plain, Markdown, JSON, protocols.io) -> ordered steps."""

from biovl_core.protocol.lines import is_note
from biovl_core.protocol.model import (
    MAX_PROTOCOL_BYTES,
    MAX_STEP_CHARS,
    MAX_STEPS,
    LineDecision,
    Protocol,
)
from biovl_core.protocol.parse import explain_file, explain_protocol, parse_protocol, read_protocol
from biovl_core.protocol.prose import (
    LAB_VERBS,
    OVERNIGHT_SECONDS,
    is_cjk,
    split_japanese,
    split_sentences,
    split_step,
    step_duration_hint,
    step_verb,
    wraps,
)
from biovl_core.protocol.protocols_io import protocols_io_root, read_protocols_io
from biovl_core.protocol.rules import CLASSES

__all__ = [
    "CLASSES",
    "LAB_VERBS",
    "LineDecision",
    "MAX_PROTOCOL_BYTES",
    "MAX_STEPS",
    "MAX_STEP_CHARS",
    "OVERNIGHT_SECONDS",
    "Protocol",
    "explain_file",
    "explain_protocol",
    "is_cjk",
    "is_note",
    "parse_protocol",
    "protocols_io_root",
    "read_protocol",
    "read_protocols_io",
    "split_japanese",
    "split_sentences",
    "split_step",
    "step_duration_hint",
    "step_verb",
    "wraps",
]

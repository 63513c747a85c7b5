"""User-facing error types: each message names the file, the problem and the fix."""

from __future__ import annotations


class BioVLError(ValueError):
    """Base class of errors a user can act on (bad input, missing weights, ...)."""


class ProtocolError(BioVLError):
    """The protocol text could not be turned into steps."""


class VideoError(BioVLError):
    """The video file cannot be read (not a video, truncated, no stream, unsupported codec...)."""


class AnnotationError(BioVLError):
    """An annotations file is malformed."""


class WeightsUnavailable(BioVLError):
    """The configured model weights cannot be loaded here (and random weights were not allowed)."""


class DecoderUnavailable(BioVLError):
    """The requested frame decoder cannot run here (DALI without a CUDA GPU or not installed)."""


class JobDeadlineExceeded(BioVLError):
    """A recording took longer than its deadline (``PipelineConfig.job_deadline_s``)."""

"""The frame-sampler interface every decoder implements, its counters, and the decoder names.

Frame rule (both decoders): the frame returned for a timestamp ``t`` (seconds from
the first frame) is the one whose presentation interval ``[t_i, t_{i+1})`` contains
``t``, i.e. the last frame with ``t_i <= t``; before the first frame that is frame 0,
after the last it is the last frame. Times come from pts * time_base, never from
index / fps, so variable-frame-rate recordings sample the right frame.

Frames come out as uint8 RGB ``[N, k, size, size, 3]``: the shorter side resized to
``size``, center-cropped, then turned upright according to the display rotation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    pass


SAMPLER_NAMES = ("auto", "pyav", "dali")


DALI_HINT = "pip install 'biovl-aligner[gpu]' (nvidia-dali-cuda130)"


@dataclass
class DecodeStats:
    """What the last `sample` / `iter_batches` call cost (for tests and benchmarks)."""

    frames_decoded: int = 0
    frames_converted: int = 0
    seeks: int = 0
    wall_s: float = 0.0
    bytes_read: int = 0  # bytes the decoder read from the file (index reads not included)
    samples: int = 0  # timestamps served
    keyframes_alone: int = 0  # samples served by decoding one keyframe alone

    @property
    def frames_per_sample(self) -> float:
        """Frames decoded per timestamp served."""
        return self.frames_decoded / self.samples if self.samples else 0.0

    @property
    def bytes_per_sample(self) -> float:
        """Bytes read per timestamp served."""
        return self.bytes_read / self.samples if self.samples else 0.0


@runtime_checkable
class FrameSampler(Protocol):
    """A decoder that returns the frames shown at given timestamps.

    PyAV returns numpy arrays; DALI returns torch CUDA tensors of the same shape and dtype.
    """

    name: str

    def sample(self, path: str | Path, timestamps: np.ndarray, size: int = 224) -> Any:
        """uint8 RGB frames [N, k, size, size, 3] for timestamps [N, k] (seconds)."""
        ...

    def iter_batches(
        self, path: str | Path, timestamps: np.ndarray, size: int = 224, batch_segments: int = 64
    ) -> Iterator[tuple[slice, Any]]:
        """The same frames as `sample`, as (segment slice, frames [b, k, size, size, 3]) batches."""
        ...

"""On-disk embedding cache, so re-aligning a recording never re-decodes or re-embeds it.

Segment embeddings are keyed by (video content sha256, ``Embedder.cache_key()``, segment
length, frames per segment, sampling rule), and kept with the time of every embedded frame
(``<key>.times.npy``, the alignment JSON's ``frame_times``); step-text embeddings by (``cache_key()``, prompt templates,
step texts). Each entry is an ``.npy`` file plus a small ``.json`` of what it holds, both
written to a temporary file and moved into place with ``os.replace``, so readers see a
complete entry or none, and concurrent writers of the same key are harmless.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from biovl_core.files import atomic_write

log = logging.getLogger(__name__)

CACHE_VERSION = "1"


class _EmbedderLike(Protocol):
    frames_per_segment: int
    prompt_templates: tuple[str, ...]

    def cache_key(self) -> str: ...

    def embed_texts(self, steps: list[str]) -> np.ndarray: ...


def _digest(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class EmbeddingCache:
    """Segment and text embeddings under ``root`` (``segments/`` and ``texts/``, sharded by key)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def segment_fields(
        video_sha256: str,
        model_key: str,
        segment_seconds: float,
        frames_per_segment: int,
        sampling: str = "exact",
    ) -> dict[str, Any]:
        """What identifies a recording's segment embeddings (``sampling``:
        ``PipelineConfig.sampling_key()``; "exact" keys stay those of entries made before the
        rule was a setting)."""
        fields = {
            "cache_version": CACHE_VERSION,
            "video_sha256": video_sha256,
            "model_key": model_key,
            "segment_seconds": float(segment_seconds),
            "frames_per_segment": int(frames_per_segment),
        }
        if sampling != "exact":
            fields["sampling"] = sampling
        return fields

    @staticmethod
    def text_fields(
        model_key: str, steps: Sequence[str], templates: Sequence[str]
    ) -> dict[str, Any]:
        """What identifies a protocol's step embeddings."""
        steps_sha = hashlib.sha256(json.dumps(list(steps)).encode()).hexdigest()
        return {
            "cache_version": CACHE_VERSION,
            "model_key": model_key,
            "templates": list(templates),
            "steps_sha256": steps_sha,
            "num_steps": len(steps),
        }

    def _path(self, kind: str, fields: dict[str, Any]) -> Path:
        key = _digest(fields)
        return self.root / kind / key[:2] / f"{key}.npy"

    def _load(self, path: Path, rows: int | None = None) -> np.ndarray | None:
        try:
            array = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            self.misses += 1
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable cache entry %s (%s); it will be recomputed", path, exc)
            self.misses += 1
            return None
        if (
            array.ndim != 2
            or array.dtype != np.float32
            or (rows is not None and len(array) != rows)
        ):
            log.warning("ignoring cache entry %s of unexpected shape %s", path, array.shape)
            self.misses += 1
            return None
        self.hits += 1
        return array

    def _store(self, path: Path, fields: dict[str, Any], embeddings: np.ndarray) -> Path:
        array = np.ascontiguousarray(embeddings, dtype=np.float32)
        if array.ndim != 2:
            raise ValueError(f"embeddings must be 2-D [rows, dim], got shape {array.shape}")
        meta = {**fields, "shape": list(array.shape)}
        atomic_write(path, lambda fh: np.save(fh, array, allow_pickle=False), "wb")
        atomic_write(path.with_suffix(".json"), lambda fh: json.dump(meta, fh, indent=1), "w")
        return path

    def get(
        self,
        video_sha256: str,
        model_key: str,
        segment_seconds: float,
        frames_per_segment: int,
        sampling: str = "exact",
    ) -> np.ndarray | None:
        """Cached segment embeddings float32 [N, D], or None."""
        fields = self.segment_fields(
            video_sha256, model_key, segment_seconds, frames_per_segment, sampling
        )
        return self._load(self._path("segments", fields))

    def get_frame_times(
        self,
        video_sha256: str,
        model_key: str,
        segment_seconds: float,
        frames_per_segment: int,
        sampling: str = "exact",
    ) -> np.ndarray | None:
        """float64 [N, k] time of every embedded frame of a cached entry, or None (none stored)."""
        fields = self.segment_fields(
            video_sha256, model_key, segment_seconds, frames_per_segment, sampling
        )
        path = self._path("segments", fields).with_suffix(".times.npy")
        try:
            times = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        return times if times.ndim == 2 and times.dtype == np.float64 else None

    def put(
        self,
        video_sha256: str,
        model_key: str,
        segment_seconds: float,
        frames_per_segment: int,
        embeddings: np.ndarray,
        sampling: str = "exact",
        frame_times: np.ndarray | None = None,
    ) -> Path:
        """Store segment embeddings (and the time of each embedded frame); returns the .npy path."""
        fields = self.segment_fields(
            video_sha256, model_key, segment_seconds, frames_per_segment, sampling
        )
        path = self._path("segments", fields)
        if frame_times is not None:  # before the embeddings: an entry is complete once they land
            times = np.ascontiguousarray(frame_times, dtype=np.float64)
            atomic_write(
                path.with_suffix(".times.npy"),
                lambda fh: np.save(fh, times, allow_pickle=False),
                "wb",
            )
        return self._store(path, fields, embeddings)

    def get_texts(
        self, model_key: str, steps: Sequence[str], templates: Sequence[str]
    ) -> np.ndarray | None:
        """Cached step embeddings float32 [K, D], or None."""
        fields = self.text_fields(model_key, steps, templates)
        return self._load(self._path("texts", fields), rows=len(steps))

    def put_texts(
        self,
        model_key: str,
        steps: Sequence[str],
        templates: Sequence[str],
        embeddings: np.ndarray,
    ) -> Path:
        """Store step embeddings; returns the .npy path."""
        if len(embeddings) != len(steps):
            raise ValueError(f"{len(embeddings)} embeddings for {len(steps)} steps")
        fields = self.text_fields(model_key, steps, templates)
        return self._store(self._path("texts", fields), fields, embeddings)

    def segments(
        self,
        video_sha256: str,
        embedder: _EmbedderLike,
        segment_seconds: float,
        compute: Callable[[], np.ndarray],
        sampling: str = "exact",
    ) -> np.ndarray:
        """Segment embeddings from the cache, else ``compute()`` (decode + embed) and store them."""
        args = (video_sha256, embedder.cache_key(), segment_seconds, embedder.frames_per_segment)
        cached = self.get(*args, sampling)
        if cached is not None:
            return cached
        embeddings = np.asarray(compute(), dtype=np.float32)
        self.put(*args, embeddings, sampling)
        return embeddings

    def texts(self, embedder: _EmbedderLike, steps: Sequence[str]) -> np.ndarray:
        """Step embeddings from the cache, else embed and store them."""
        args = (embedder.cache_key(), list(steps), embedder.prompt_templates)
        cached = self.get_texts(*args)
        if cached is not None:
            return cached
        embeddings = embedder.embed_texts(list(steps))
        self.put_texts(*args, embeddings)
        return embeddings

"""The pipeline's prefetching of decoded batches: order, errors, early stop, bounded read-ahead,
no thread left behind by a failing consumer."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from biovl_core.embed import load_embedder
from biovl_core.pipeline import PREFETCH_THREAD, embed_video, prefetched
from biovl_core.synthetic import write_video
from tests.fixtures_embed import tiny_cfg


def test_prefetched_keeps_order_and_reads_ahead_at_most_depth() -> None:
    produced: list[int] = []

    def source() -> Iterator[int]:
        for i in range(6):
            produced.append(i)
            yield i

    out = []
    for item in prefetched(source(), depth=1):
        time.sleep(0.05)  # the consumer is slow: the producer may run ahead by depth (+1 in hand)
        assert len(produced) <= item + 3
        out.append(item)
    assert out == list(range(6))


def test_prefetched_reraises_the_producers_error_in_the_consumer() -> None:
    def source() -> Iterator[int]:
        yield 1
        raise OSError("truncated file")

    got = []
    with pytest.raises(OSError, match="truncated file"):
        for item in prefetched(source()):
            got.append(item)
    assert got == [1]


def test_prefetched_stops_the_producer_when_the_consumer_stops() -> None:
    produced = 0

    def source() -> Iterator[int]:
        nonlocal produced
        for i in range(1000):
            produced += 1
            yield i

    gen = prefetched(source(), depth=2)
    assert next(gen) == 0
    gen.close()
    time.sleep(0.3)
    assert produced <= 5
    assert not any(t.name == "biovl-prefetch" and t.is_alive() for t in threading.enumerate())


class _FailsOnSecondBatch:
    """Fault injection: the real tiny embedder, failing on its second batch as an OOM would."""

    def __init__(self, embedder: Any) -> None:
        self._embedder = embedder
        self._calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._embedder, name)

    def embed_frames(self, frames: np.ndarray) -> np.ndarray:
        self._calls += 1
        if self._calls % 2 == 0:
            raise RuntimeError("out of memory while embedding")
        return self._embedder.embed_frames(frames)


def test_a_failing_consumer_leaves_no_live_prefetch_thread(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.mp4", duration_s=12, fps=4, size=(64, 48), noise=0).path
    cfg = tiny_cfg(segment_seconds=2.0, batch_size=1, decoder="pyav")
    embedder = _FailsOnSecondBatch(load_embedder(cfg))
    errors = []
    for _ in range(3):
        try:
            embed_video(video, embedder, cfg)  # type: ignore[arg-type]
        except RuntimeError as exc:
            errors.append(exc)  # kept, as a worker's retry state keeps it: the traceback too
    assert len(errors) == 3
    assert not [t for t in threading.enumerate() if t.name == PREFETCH_THREAD and t.is_alive()]


def test_meanwhile_runs_while_the_first_item_is_produced() -> None:
    """The step texts are embedded while the first batch decodes: the producer of the first
    item sees what ``meanwhile`` did before it finishes that item."""
    texts_done = threading.Event()
    seen: list[bool] = []

    def source() -> Iterator[int]:
        seen.append(texts_done.wait(timeout=30))  # the first item waits for meanwhile
        yield 0
        yield 1

    out = list(prefetched(source(), meanwhile=texts_done.set))
    assert out == [0, 1] and seen == [True]

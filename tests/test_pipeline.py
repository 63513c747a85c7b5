"""The pipeline's prefetching of decoded batches: order, errors, early stop, bounded read-ahead."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from biovl_core.pipeline import prefetched


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

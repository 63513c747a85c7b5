"""Reading a request body as a stream, under a byte cap, a total deadline, an idle timeout and a
minimum data rate: every route that takes a body reads it through ``BodyReader``, so a slow or
endless client costs a bounded time, memory and slot, and gets a 408 or 413 that says why."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from starlette.requests import ClientDisconnect, Request

from services.api.errors import HTTPProblem


@dataclass(frozen=True)
class BodyLimits:
    """How much and how fast one body must come."""

    max_bytes: int
    deadline_s: float  # the whole body within this many seconds
    idle_timeout_s: float  # at most this long between two chunks
    min_rate_bps: float  # after grace_s, bytes received / seconds elapsed stays above this
    grace_s: float
    what: str  # e.g. "the correction": named in the answers
    fix: str  # what the client can do when the body is too large

    def too_large(self, size: int | None = None) -> HTTPProblem:
        """413 naming the limit and the fix."""
        got = f" ({size} bytes)" if size is not None else ""
        return HTTPProblem(
            413, f"{self.what} is larger than {self.max_bytes} bytes{got}; {self.fix}"
        )


class BodyReader:
    """Yields one request's body chunks while they come within the limits.

    ``received`` counts the bytes read so far (also after a 408 or a hang-up, so a tus PATCH can
    keep what arrived). ``clock`` is for tests of the pacing rule."""

    def __init__(
        self,
        request: Request,
        limits: BodyLimits,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.request = request
        self.limits = limits
        self.received = 0
        self._clock = clock
        self._start = clock()

    def check_declared_length(self) -> None:
        """413 up front when Content-Length already says the body is too large."""
        length = self.request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.limits.max_bytes:
            raise self.limits.too_large(int(length))

    def _wait_s(self) -> tuple[float, str]:
        """Seconds the next chunk may take, and what passing them means."""
        lim = self.limits
        elapsed = self._clock() - self._start
        limits = [
            (lim.deadline_s - elapsed, f"did not arrive within {lim.deadline_s:g} s"),
            (lim.idle_timeout_s, f"sent no data for {lim.idle_timeout_s:g} s"),
        ]
        if lim.min_rate_bps > 0:
            # the moment the average rate would drop below the minimum
            slow_at = max(lim.grace_s, self.received / lim.min_rate_bps)
            limits.append(
                (
                    slow_at - elapsed,
                    f"came slower than {lim.min_rate_bps / 1024:g} KiB/s on average",
                )
            )
        return min(limits, key=lambda limit: limit[0])  # on a tie the first named (the deadline)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's chunks; 413 past the cap, 408 past a time limit, 400 on a hang-up."""
        self.check_declared_length()
        stream = self.request.stream()
        while True:
            wait_s, why = self._wait_s()
            if wait_s <= 0:
                raise self._timeout(why)
            try:
                chunk = await asyncio.wait_for(anext(stream), wait_s)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise self._timeout(why) from None
            except ClientDisconnect:
                raise HTTPProblem(
                    400, f"the client disconnected while sending {self.limits.what}; send it again"
                ) from None
            if not chunk:
                continue
            if self.received + len(chunk) > self.limits.max_bytes:
                raise self.limits.too_large()
            self.received += len(chunk)
            yield chunk

    def _timeout(self, why: str) -> HTTPProblem:
        return HTTPProblem(
            408,
            f"{self.limits.what} {why} ({self.received} bytes received); check the connection "
            "and send it again",
        )

    async def read(self) -> bytes:
        """The whole (small) body."""
        parts = [chunk async for chunk in self.chunks()]
        return b"".join(parts)

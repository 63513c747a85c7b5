"""A recording's deadline: started with the job, checked between batches, a one-line error when passed."""

from __future__ import annotations

import time
from pathlib import Path

from biovl_core.errors import JobDeadlineExceeded


class Deadline:
    """Wall-clock budget of one recording (``PipelineConfig.job_deadline_s``; None: none)."""

    def __init__(self, seconds: float | None, what: str | Path) -> None:
        if seconds is not None and not seconds > 0:
            raise ValueError(f"job_deadline_s must be positive seconds or None, got {seconds}")
        self.seconds = seconds
        self.what = str(what)
        self.started = time.monotonic()

    @property
    def elapsed_s(self) -> float:
        """Seconds since the job started."""
        return time.monotonic() - self.started

    def check(self, progress: str) -> None:
        """Raise JobDeadlineExceeded once the budget is spent; ``progress`` says how far it got."""
        if self.seconds is None or self.elapsed_s <= self.seconds:
            return
        raise JobDeadlineExceeded(
            f"{self.what}: the job passed its deadline of {self.seconds:g} s "
            f"({self.elapsed_s:.0f} s, {progress}); raise job_deadline_s in the pipeline "
            "settings, or split the recording"
        )

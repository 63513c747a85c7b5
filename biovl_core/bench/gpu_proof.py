"""Proof that the GPU did the work, and stages that cannot pass by hanging or falling back.

A GPU check that only compares answers passes when the GPU did nothing (DALI hands a video it
cannot decode to PyAV and the frames still match). Every GPU decode stage therefore asserts:

- zero fallbacks to PyAV (`require_no_fallbacks`);
- bytes actually read by the GPU sampler (`require_bytes_read`);
- NVDEC utilisation above zero during the decode, from NVML (`NvdecMonitor`; no NVML is a
  failure, not a skip: without it nothing shows that NVDEC decoded);
- frames equal to PyAV's at the same timestamps (the callers compare frame counters).

`run_stage` runs one stage in a subprocess under a deadline: a non-zero exit or a timeout is
FAIL, never PASS. The NVML parts are **unverified on GPU** (no GPU in the session that wrote
them); the API used is nvidia-ml-py's ``nvmlInit``, ``nvmlDeviceGetHandleByIndex``,
``nvmlDeviceGetDecoderUtilization`` (returns ``[percent, sampling period in us]``) and
``nvmlShutdown``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

SKIP_EXIT = 3
"""Exit code of a stage subprocess that could not run here (a missing wheel, no GPU)."""
SKIP_PREFIX = "SKIP-REASON: "
"""A stage subprocess prints this, then the reason, before exiting with SKIP_EXIT."""


class GpuProofError(AssertionError):
    """A GPU stage cannot show that the GPU did the work; the message says what is missing."""


def require_no_fallbacks(sampler: Any, before: int = 0, label: str = "") -> None:
    """Raise unless `sampler` handed no video to PyAV since its counter read `before`."""
    fell = int(getattr(sampler, "fallbacks", 0)) - before
    if fell > 0:
        reasons = "; ".join(getattr(sampler, "fallback_reasons", lambda: [])()[-3:])
        raise GpuProofError(
            f"{label or sampler.name}: {fell} video(s) fell back from DALI "
            f"({getattr(sampler, 'backend', '?')} backend) to PyAV, so the GPU did not decode "
            f"them ({reasons or 'see the warnings above'})"
        )


def require_bytes_read(sampler: Any, label: str = "") -> int:
    """Raise unless the GPU sampler's last call read file bytes itself; return how many."""
    read = int(getattr(sampler, "last_bytes_read", 0))
    if read <= 0:
        raise GpuProofError(
            f"{label or sampler.name}: 0 bytes of the file read by the GPU sampler (it decoded "
            "nothing itself; a fallback or an empty plan)"
        )
    return read


def nvml_module() -> Any:
    """pynvml, initialised; GpuProofError when it is missing or NVML does not start."""
    try:
        import pynvml
    except ImportError as exc:
        raise GpuProofError(
            "NVML is unavailable (pip install nvidia-ml-py): without it nothing shows that "
            "NVDEC decoded, so the stage fails"
        ) from exc
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # pynvml.NVMLError and its subclasses
        raise GpuProofError(
            f"NVML did not start ({exc}); the stage cannot show NVDEC work"
        ) from exc
    return pynvml


@dataclass
class NvdecMonitor:
    """Polls NVML's decoder utilisation of one GPU in a thread while a decode runs.

    ``with NvdecMonitor() as mon: decode()`` then ``mon.require_busy()``. Entering raises
    GpuProofError when NVML is missing. NVML averages over its sampling period (returned with
    each reading, often 0.17-1 s), so `busy_for` repeats a short decode for long enough.
    """

    device_index: int = 0
    interval_s: float = 0.05
    samples: list[int] = field(default_factory=list)
    period_us: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _nvml: Any = None
    _handle: Any = None
    _error: str = ""

    def _read(self) -> None:
        util, period = self._nvml.nvmlDeviceGetDecoderUtilization(self._handle)
        self.samples.append(int(util))
        self.period_us = int(period)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._read()
            except Exception as exc:  # keep the first error for require_busy
                self._error = self._error or str(exc)

    def __enter__(self) -> NvdecMonitor:
        self._nvml = nvml_module()
        self._handle = self._nvml.nvmlDeviceGetHandleByIndex(self.device_index)
        self._read()  # fails here, loudly, when the GPU has no decoder counter
        self.samples.clear()
        self._thread = threading.Thread(target=self._loop, name="nvdec-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self._read()  # the period that covers the decode's end
            self._nvml.nvmlShutdown()
        except Exception as exc:
            self._error = self._error or str(exc)

    @property
    def peak(self) -> int:
        """Highest decoder utilisation seen (percent)."""
        return max(self.samples, default=0)

    @property
    def min_busy_s(self) -> float:
        """How long a decode should run so that NVML reports it: two sampling periods, >= 1 s."""
        return max(1.0, 2 * self.period_us / 1e6)

    def busy_for(self, decode: Callable[[], Any], min_seconds: float | None = None) -> int:
        """Run `decode` repeatedly for at least `min_seconds` (default `min_busy_s`); the runs."""
        want = self.min_busy_s if min_seconds is None else min_seconds
        runs, start = 0, time.perf_counter()
        while runs == 0 or time.perf_counter() - start < want:
            decode()
            runs += 1
        return runs

    def summary(self) -> str:
        """Peak and mean utilisation over the samples."""
        if not self.samples:
            return "NVDEC utilisation: no NVML sample"
        mean = sum(self.samples) / len(self.samples)
        return (
            f"NVDEC utilisation peak {self.peak}%, mean {mean:.0f}% over {len(self.samples)} "
            f"NVML samples (sampling period {self.period_us / 1e3:.0f} ms)"
        )

    def require_busy(self, label: str = "decode") -> None:
        """Raise unless NVML saw the decoder busy (> 0 %) during the monitored decode."""
        if self.peak <= 0:
            why = f"; NVML error: {self._error}" if self._error else ""
            raise GpuProofError(
                f"{label}: NVML reported 0% NVDEC utilisation over {len(self.samples)} samples "
                f"while DALI decoded, so NVDEC did not do the work{why}"
            )


@dataclass
class StageOutcome:
    """What one stage subprocess came to: PASS, SKIP or FAIL, its seconds and why."""

    status: str
    seconds: float
    detail: str = ""

    def line(self) -> str:
        """``PASS``, ``SKIP (why)`` or ``FAIL (why)``."""
        return f"{self.status} ({self.detail})" if self.detail else self.status


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the stage and every process it started (it leads its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def run_stage(
    command: Sequence[str],
    deadline_s: float,
    env: dict[str, str] | None = None,
    echo: Callable[[str], None] | None = None,
) -> StageOutcome:
    """Run `command` under `deadline_s`: exit 0 PASS, SKIP_EXIT SKIP (its SKIP-REASON line),
    anything else FAIL; past the deadline the whole process group is killed and it is FAIL."""
    echo = echo or (lambda s: print(s, end="", flush=True))
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    tail: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            echo(line)
            tail.append(line.rstrip("\n"))
            del tail[:-40]

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.wait()
        reader.join(timeout=5)
        return StageOutcome(
            "FAIL", time.perf_counter() - start, f"timed out after {deadline_s:g} s, killed"
        )
    reader.join(timeout=5)
    seconds = time.perf_counter() - start
    if code == 0:
        return StageOutcome("PASS", seconds)
    if code == SKIP_EXIT:
        reason = next(
            (t[len(SKIP_PREFIX) :] for t in reversed(tail) if t.startswith(SKIP_PREFIX)), ""
        )
        return StageOutcome("SKIP", seconds, reason or "no reason given")
    last = next((t for t in reversed(tail) if t.strip()), "")
    return StageOutcome("FAIL", seconds, f"exit {code}: {last[:200]}")


def python_command(*args: str) -> list[str]:
    """This interpreter with `args` (stages run with the same Python and environment)."""
    return [sys.executable, *args]

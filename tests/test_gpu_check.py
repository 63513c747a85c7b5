"""The GPU checks fail loudly: a DALI fallback, a missing NVML, a stage past its deadline.

Runs here without a GPU: DALI's CPU backend has no H.264 decoder, so on an H.264 file it hands
the video to PyAV; the frames still match, and the check must fail all the same.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from biovl_core.bench.gpu_proof import (
    SKIP_EXIT,
    SKIP_PREFIX,
    GpuProofError,
    NvdecMonitor,
    python_command,
    run_stage,
)

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "BIOVL_DEVICE": "cpu"}


def test_dali_cpu_backend_falling_back_on_h264_fails_the_frame_check() -> None:
    """The frames match PyAV's (PyAV decoded them), yet the check fails: DALI fell back."""
    pytest.importorskip("nvidia.dali", reason="nvidia-dali-cuda130 is a dev dependency")
    code = (
        "from biovl_core.bench.decode import same_frames_check\n"
        "from biovl_core.video import DALISampler\n"
        "same_frames_check(DALISampler(backend='cpu', num_threads=1), 'h264', seconds=2.0, size=64)\n"
    )
    lines: list[str] = []
    outcome = run_stage(python_command("-c", code), deadline_s=240, env=_env(), echo=lines.append)
    out = "".join(lines)
    assert outcome.status == "FAIL", out
    assert "GpuProofError" in out and "fell back from DALI (cpu backend) to PyAV" in out
    assert "exit 1" in outcome.detail


def test_smoke_test_fails_when_dali_did_not_decode() -> None:
    """The start-up probe refuses a DALI that hands the probe clip to PyAV."""
    pytest.importorskip("nvidia.dali", reason="nvidia-dali-cuda130 is a dev dependency")
    from biovl_core.video.dali import smoke_test

    with pytest.raises(RuntimeError, match=r"did not decode the probe clip itself"):
        smoke_test(backend="cpu")


def test_a_stage_past_its_deadline_fails_and_its_children_are_killed(tmp_path: Path) -> None:
    """A real subprocess (and a child it started) sleeping past the deadline: FAIL, all killed."""
    pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(120)\n"
    )
    lines: list[str] = []
    outcome = run_stage(python_command("-c", code), deadline_s=3, echo=lines.append)
    assert outcome.status == "FAIL" and "timed out after 3 s" in outcome.detail
    assert "started\n" in lines
    child = int(pid_file.read_text())
    for _ in range(100):  # the kill is asynchronous; the child is reaped by init
        if not Path(f"/proc/{child}").exists() or "Z" in _state(child):
            break
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or "Z" in _state(child)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "Z"


def test_stage_outcomes_follow_exit_codes() -> None:
    ok = run_stage(python_command("-c", "print('fine')"), 60, echo=lambda s: None)
    assert (ok.status, ok.line()) == ("PASS", "PASS")
    skip = run_stage(
        python_command(
            "-c", f"print({SKIP_PREFIX + 'no GPU here'!r}); raise SystemExit({SKIP_EXIT})"
        ),
        60,
        echo=lambda s: None,
    )
    assert (skip.status, skip.detail) == ("SKIP", "no GPU here")
    fail = run_stage(python_command("-c", "raise SystemExit('broken')"), 60, echo=lambda s: None)
    assert fail.status == "FAIL" and "broken" in fail.detail


def test_no_nvml_is_a_failure_not_a_skip() -> None:
    """Without NVML (or NVML without a GPU, as here) nothing shows NVDEC worked: GpuProofError."""
    with pytest.raises(GpuProofError, match="NVML"):
        with NvdecMonitor():
            pass


def test_gpu_check_exits_non_zero_when_a_stage_overruns_its_deadline() -> None:
    """The whole script: a real stage given a deadline it cannot meet is FAIL, exit code 1."""
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "gpu_check.py"),
            "--quick",
            "--only",
            "packing",
            "--deadline-scale",
            "0.002",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL (timed out after" in done.stdout
    assert "PASS" not in done.stdout.split("summary:")[-1]


def test_e2e_reads_the_proof_metrics_from_a_prometheus_page() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import gpu_e2e

    page = (
        "# HELP biovl_decoder_fallbacks_total Videos...\n"
        "biovl_decoder_fallbacks_total 2.0\n"
        "biovl_decoder_fallbacks_created 1.7e9\n"
        'biovl_decode_read_bytes_total{node="a"} 10.0\n'
        'biovl_decode_read_bytes_total{node="b"} 5.0\n'
    )
    assert gpu_e2e.metric_total(page, "biovl_decoder_fallbacks_total") == 2.0
    assert gpu_e2e.metric_total(page, "biovl_decode_read_bytes_total") == 15.0
    with pytest.raises(GpuProofError, match="fell back"):
        gpu_e2e.prove_dali_run(
            {"biovl_decoder_fallbacks_total": 1.0, "biovl_decode_read_bytes_total": 9.0}, None
        )
    with pytest.raises(GpuProofError, match="0 bytes"):
        gpu_e2e.prove_dali_run(
            {"biovl_decoder_fallbacks_total": 0.0, "biovl_decode_read_bytes_total": 0.0}, None
        )


def test_gpu_check_leaves_out_a_skipped_stage() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--only", "packing"]
        + ["--skip", "packing"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "left out (--skip packing)" in done.stdout and "--- PASS" not in done.stdout

"""The end-to-end stage of `make gpu-check`: the whole Serve application on one GPU, over HTTP.

Starts ``python -m services.run_local --no-sample`` (Ingress, Decoder, Embedder, Aligner and
QueueWorker on the local Ray) once with the DALI decoder and once with PyAV, sends the same
generated 720p and 1080p H.264 recordings through ``POST /v1/jobs``, and prints video seconds
per wall second, the time per stage (``biovl_stage_seconds`` from ``/metrics``), GPU and NVDEC
utilisation (NVML, else ``nvidia-smi``), and the bottleneck. The DALI run FAILS unless it shows
the GPU decoded: no fallback on ``/metrics``, bytes read, NVML NVDEC utilisation above zero. Only the public HTTP API and the
``services.run_local`` command line are used, so the services' internals may change freely.
Unverified on a GPU. ``python scripts/gpu_e2e.py --rehearse`` runs the same flow on the CPU
(PyAV, two short 320x240 recordings) to check the plumbing before device time is spent.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from biovl_core.bench.gpu_proof import (  # noqa: E402
    GpuProofError,
    NvdecMonitor,
    require_bytes_read,
    require_no_fallbacks,
)

STAGE_RE = re.compile(r'^biovl_stage_seconds_(sum|count)\{[^}]*stage="([^"]+)"[^}]*\}\s+(\S+)')


@dataclass
class GpuSampler:
    """Samples GPU and decoder (NVDEC) utilisation every `interval_s` in a thread."""

    interval_s: float = 0.5
    gpu: list[float] = field(default_factory=list)
    dec: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _read(self) -> tuple[float, float] | None:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            util = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
            dec = pynvml.nvmlDeviceGetDecoderUtilization(handle)[0]
            return float(util), float(dec)
        except Exception:
            pass
        try:
            out = subprocess.run(
                [
                    "nvidia-smi",
                    "--query-gpu=utilization.gpu,utilization.decoder",
                    "--format=csv,noheader,nounits",
                    "-i",
                    "0",
                ],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.split(",")
            return float(out[0]), float(out[1])
        except Exception:
            return None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            got = self._read()
            if got is not None:
                self.gpu.append(got[0])
                self.dec.append(got[1])

    def __enter__(self) -> GpuSampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def summary(self) -> str:
        """Mean and peak utilisation, or why there is none."""
        if not self.gpu:
            return "GPU utilisation: not sampled (neither pynvml nor nvidia-smi answered)"
        return (
            f"GPU busy mean {np.mean(self.gpu):.0f}% (peak {max(self.gpu):.0f}%), "
            f"NVDEC mean {np.mean(self.dec):.0f}% (peak {max(self.dec):.0f}%), "
            f"{len(self.gpu)} samples"
        )


def make_recordings(directory: Path, quick: bool) -> list[tuple[Path, float]]:
    """(video path, duration) of 720p and 1080p H.264 recordings, 5-10 min, built from cached clips."""
    from biovl_core.bench.decode import bench_video
    from biovl_core.video import probe

    plan = [((1280, 720), 5.0), ((1920, 1080), 5.0)]
    if not quick:
        plan += [((1280, 720), 10.0), ((1920, 1080), 10.0)]
    out = []
    for size, minutes in plan:
        path = bench_video(minutes, size=size, clip_s=20.0 if quick else 60.0)
        out.append((path, probe(path).duration_s))
    return out


def _stage_totals(text: str) -> dict[str, list[float]]:
    """{stage: [sum_seconds, count]} from a Prometheus text page."""
    totals: dict[str, list[float]] = {}
    for line in text.splitlines():
        m = STAGE_RE.match(line)
        if m:
            kind, stage, value = m.groups()
            totals.setdefault(stage, [0.0, 0.0])[0 if kind == "sum" else 1] += float(value)
    return totals


def metric_total(text: str, name: str) -> float:
    """Sum of every sample of the metric `name` (any labels) on a Prometheus text page."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(None, 1)[-1])
    return total


PROOF_METRICS = ("biovl_decoder_fallbacks_total", "biovl_decode_read_bytes_total")
"""What the DALI run must show: no fallback to PyAV, bytes read by the decoders."""


class Service:
    """`python -m services.run_local` in a subprocess, configured by a YAML file."""

    def __init__(self, work: Path, decoder: str, port: int, device: str = "cuda") -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.metrics_urls = [f"http://127.0.0.1:{port + 100}/metrics"]  # the node's, not the API's
        self.token = secrets.token_urlsafe(16)
        config = work / f"service-{decoder}.yaml"
        config.write_text(
            "service:\n"
            f"  lab_tokens: 'gpu:{self.token}'\n"
            f"  http_port: {port}\n"
            f"  worker_metrics_port: {port + 100}\n"
            "  pipeline:\n"
            f"    decoder: {decoder}\n"
            f"    device: {device}\n"
            "    backend: auto\n",
            encoding="utf-8",
        )
        env = {**os.environ, "BIOVL_SERVICE_CONFIG": str(config), "PYTHONPATH": str(ROOT)}
        env.pop("BIOVL_DEVICE", None)
        self.log = open(work / f"service-{decoder}.log", "w", encoding="utf-8")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.run_local", "--no-sample", "--port", str(port)]
            + ["--var-dir", str(work / f"var-{decoder}")],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stage_totals(self, client: Any) -> dict[str, list[float]]:
        """Stage sums from the node's metrics port (the larger where several are listed)."""
        totals: dict[str, list[float]] = {}
        for url in self.metrics_urls:
            try:
                page = _stage_totals(client.get(url).text)
            except Exception:
                continue
            for stage, (total, count) in page.items():
                old = totals.get(stage, [0.0, 0.0])
                totals[stage] = [max(old[0], total), max(old[1], count)]
        return totals

    def proof_totals(self, client: Any) -> dict[str, float]:
        """The PROOF_METRICS' totals from the node's metrics port (0 where it did not answer)."""
        out = dict.fromkeys(PROOF_METRICS, 0.0)
        for url in self.metrics_urls:
            try:
                page = client.get(url).text
            except Exception:
                continue
            for name in PROOF_METRICS:
                out[name] = max(out[name], metric_total(page, name))
        return out

    def wait_ready(self, client: Any, timeout_s: float = 240.0) -> None:
        """Poll the health endpoint until the app answers (or the process dies)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited early; see {self.log.name}")
            try:
                if client.get(f"{self.base}/v1/jobs").status_code == 200:
                    return
            except Exception:
                pass
            time.sleep(2.0)
        raise TimeoutError(f"the service did not answer in {timeout_s:.0f} s; see {self.log.name}")

    def stop(self) -> None:
        """Ctrl-C (run_local shuts Serve and Ray down), then kill what is left."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.log.close()


def _submit(client: Any, base: str, video: Path, name: str, protocol: str) -> str:
    """POST one job; its status URL."""
    files = {
        "video": (name, video.read_bytes(), "video/mp4"),
        "protocol": ("protocol.txt", protocol, "text/plain"),
    }
    r = client.post(f"{base}/v1/jobs", files=files)
    if r.status_code != 202:
        raise AssertionError(f"POST /v1/jobs -> {r.status_code}: {r.text[:500]}")
    return r.json()["urls"]["self"]


def _wait(client: Any, base: str, urls: list[str]) -> dict[str, dict]:
    """Poll until every job has ended; {url: job}."""
    done: dict[str, dict] = {}
    while len(done) < len(urls):
        for url in urls:
            if url not in done:
                job = client.get(f"{base}{url}").json()
                if job["status"] in ("succeeded", "dead"):
                    done[url] = job
        time.sleep(0.2)
    return done


def _warm_up(client: Any, base: str, work: Path) -> None:
    """One short job of another protocol first, so start-up (replicas, model, decoder pipelines)
    is not measured and the measured recordings do not join its group."""
    from biovl_core.synthetic import write_video

    video = write_video(work / "warmup.mp4", 20.0, fps=15, size=(320, 240), gop=15, seed=99)
    protocol = "1. Label the tube.\n2. Open the tube.\n3. Close the tube.\n"
    (job,) = _wait(
        client, base, [_submit(client, base, video.path, "warmup.mp4", protocol)]
    ).values()
    if job["status"] != "succeeded":
        raise AssertionError(f"the warm-up job failed: {job.get('error')}")


def run_service(
    work: Path, decoder: str, recordings: list[tuple[Path, float]], port: int, device: str = "cuda"
) -> dict[str, Any]:
    """Start the app with `decoder`, warm it up, push every recording through HTTP at once, and
    return the figures (wall time from the first POST to the last job's end)."""
    import httpx

    from biovl_core.synthetic.video import RECORDING_STEPS

    protocol = "".join(f"{i + 1}. {s}\n" for i, s in enumerate(RECORDING_STEPS["pcr"]))
    service = Service(work, decoder, port, device)
    try:
        with httpx.Client(timeout=600, headers={"Authorization": f"Bearer {service.token}"}) as c:
            service.wait_ready(c)
            _warm_up(c, service.base, work)
            before, proof_before = service.stage_totals(c), service.proof_totals(c)
            nvdec = NvdecMonitor() if decoder == "dali" else contextlib.nullcontext()
            with GpuSampler() as gpu, nvdec:  # NvdecMonitor: no NVML = GpuProofError
                start = time.perf_counter()
                with ThreadPoolExecutor(max_workers=8) as pool:  # uploads in parallel
                    jobs = list(
                        pool.map(
                            lambda i: _submit(
                                c,
                                service.base,
                                recordings[i][0],
                                f"rec{i}.mp4",
                                f"{protocol}# {decoder} {i}\n",
                            ),
                            range(len(recordings)),
                        )
                    )
                done = _wait(c, service.base, jobs)
                wall = time.perf_counter() - start
            after = service.stage_totals(c)
            proof = {k: v - proof_before[k] for k, v in service.proof_totals(c).items()}
    finally:
        service.stop()
    failed = [j for j in done.values() if j["status"] != "succeeded"]
    if failed:
        raise AssertionError(f"{decoder}: {len(failed)} job(s) failed: {failed[0].get('error')}")
    if decoder == "dali":
        prove_dali_run(proof, nvdec)
    stages = {
        s: after[s][0] - before.get(s, [0.0, 0.0])[0]
        for s in after
        if after[s][0] - before.get(s, [0.0, 0.0])[0] > 0
    }
    return {
        "decoder": decoder,
        "video_s": sum(d for _, d in recordings),
        "wall_s": wall,
        "stages": stages,
        "gpu": gpu.summary(),
        "proof": proof,
    }


def prove_dali_run(proof: dict[str, float], nvdec: Any) -> None:
    """The DALI run decoded on the GPU: no fallback, bytes read, NVDEC busy (else it FAILS)."""
    fell = proof["biovl_decoder_fallbacks_total"]
    if fell > 0:
        raise GpuProofError(f"dali: {fell:.0f} recording(s) fell back to PyAV during the run")
    if proof["biovl_decode_read_bytes_total"] <= 0:
        raise GpuProofError("dali: /metrics shows 0 bytes read by the decoders during the run")
    nvdec.require_busy("dali end to end")
    print(
        f"dali: 0 fallbacks, {proof['biovl_decode_read_bytes_total'] / 1e6:.0f} MB read; {nvdec.summary()}"
    )


def bottleneck(figures: dict[str, Any]) -> str:
    """The stage with the most time (queue waits, writes and the job total excluded), and its share."""
    work = {s: t for s, t in figures["stages"].items() if s not in ("queue_wait", "write", "total")}
    if not work:
        return "unknown (no biovl_stage_seconds on /metrics)"
    stage = max(work, key=work.get)  # type: ignore[arg-type]
    return f"{stage} ({work[stage] / sum(work.values()):.0%} of the summed stage time)"


def check_frames(recordings: list[tuple[Path, float]]) -> None:
    """DALI frames against PyAV frames on the recordings: same frames, mean abs difference."""
    from biovl_core.bench.decode import MAX_MEAN_ABS_DIFF
    from biovl_core.synthetic import read_frame_counter
    from biovl_core.video import DALISampler, PyAVSampler, probe, segment_timestamps

    for path, _ in recordings:
        info = probe(path)
        ts = segment_timestamps(info, 5.0, 1)[:: max(1, len(segment_timestamps(info)) // 24)]
        dali = DALISampler()
        g = dali.sample(path, ts, size=224).cpu().numpy()
        require_no_fallbacks(dali, 0, str(path))
        require_bytes_read(dali, str(path))
        c = PyAVSampler().sample(path, ts, size=224)
        same = all(
            read_frame_counter(a) == read_frame_counter(b)
            for a, b in zip(g.reshape(-1, 224, 224, 3), c.reshape(-1, 224, 224, 3), strict=True)
        )
        mad = float(np.abs(g.astype(np.int16) - c.astype(np.int16)).mean())
        print(
            f"DALI vs PyAV on {info.width}x{info.height} ({len(ts)} frames): "
            f"{'same frames' if same else 'DIFFERENT FRAMES'}, mean |diff| {mad:.2f} grey levels"
        )
        assert same and mad < MAX_MEAN_ABS_DIFF, "DALI and PyAV disagree"


def gpu_check(quick: bool = False) -> None:
    """The stage: both decoders end to end, side by side; raises on a failed job or mismatch."""
    import importlib.util

    from biovl_core.video import choose_decoder

    choice = choose_decoder("auto")
    print(f"decoder probe: backend={choice.backend} reason={choice.reason} {choice.detail}")
    work = Path(tempfile.mkdtemp(prefix="biovl-gpu-e2e-"))
    recordings = make_recordings(work, quick)
    total = sum(d for _, d in recordings)
    print(f"{len(recordings)} recordings, {total / 60:.0f} min of video; logs in {work}")
    if importlib.util.find_spec("nvidia.dali") is None:
        raise GpuProofError("nvidia-dali is not installed (pip install nvidia-dali-cuda130)")
    if choice.backend != "dali":  # a GPU stage that ran PyAV only would prove nothing
        raise GpuProofError(f"the start-up probe chose PyAV ({choice.reason}: {choice.detail})")
    decoders = ["dali", "pyav"]
    results = []
    for i, decoder in enumerate(decoders):
        fig = run_service(work, decoder, recordings, port=8600 + i)
        results.append(fig)
        stages = ", ".join(f"{s} {t:.1f} s" for s, t in sorted(fig["stages"].items()))
        print(
            f"{decoder:>5}: {fig['video_s'] / fig['wall_s']:7.1f} video s per wall s "
            f"({fig['wall_s']:.1f} s wall); stages (summed over jobs): {stages or 'n/a'}"
        )
        print(f"       {fig['gpu']}; bottleneck: {bottleneck(fig)}")
    if len(results) == 2:
        ratio = (results[0]["video_s"] / results[0]["wall_s"]) / (
            results[1]["video_s"] / results[1]["wall_s"]
        )
        print(f"DALI end to end {ratio:.2f}x the PyAV run, same recordings, same machine")
        check_frames(recordings[:2])


def rehearse() -> None:
    """The same flow on the CPU (PyAV, two 30 s 320x240 recordings): HTTP, stages, bottleneck."""
    from biovl_core.synthetic import write_video
    from biovl_core.video import probe

    work = Path(tempfile.mkdtemp(prefix="biovl-e2e-rehearsal-"))
    recordings = []
    for i in range(2):
        v = write_video(work / f"rec{i}.mp4", 30.0, fps=15, size=(320, 240), gop=15, seed=i)
        recordings.append((v.path, probe(v.path).duration_s))
    fig = run_service(work, "pyav", recordings, port=8600, device="cpu")
    stages = ", ".join(f"{s} {t:.1f} s" for s, t in sorted(fig["stages"].items()))
    print(
        f"rehearsal (CPU, pyav): {fig['video_s'] / fig['wall_s']:.1f} video s per wall s "
        f"({fig['wall_s']:.1f} s wall); stages: {stages}"
    )
    print(f"       {fig['gpu']}; bottleneck: {bottleneck(fig)}; logs in {work}")
    missing = {"decode", "embed_video", "embed_text"} - set(fig["stages"])
    # recordings of one protocol co-align in the QueueWorker (group_align) once a sibling's
    # embeddings are cached; the first one alone goes to the Aligner (align)
    if not {"align", "group_align"} & set(fig["stages"]):
        missing.add("align or group_align")
    assert not missing, f"stages missing from /metrics: {sorted(missing)}"


def main(argv: list[str] | None = None) -> int:
    """`--rehearse` on the CPU; without it, the GPU stage (`make gpu-check` runs it too)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rehearse", action="store_true", help="the CPU rehearsal")
    parser.add_argument("--quick", action="store_true", help="2 x 5 min recordings")
    args = parser.parse_args(argv)
    if args.rehearse:
        rehearse()
    else:
        gpu_check(quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())

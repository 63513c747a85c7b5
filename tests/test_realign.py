"""``biovl realign`` on a generated archive: local and Ray Data paths, reruns, crashes, model change.

The archive (built once per module, copied per test) holds 35 jobs in three labs, so the
local runner meets them in a known order:

- ``a-lab``: 8 recordings whose embeddings are already in the cache (no decodable video at all:
  re-aligning them must be pure DP on cached embeddings);
- ``m-lab``: 3 real generated videos with nothing cached (decode + embed);
- ``z-lab``: 22 more cached recordings, 1 corrupt video with nothing cached (fails), 1 job that
  was never aligned (the queue owns it: skipped).

Every aligned job starts with a stale ``v0001`` (another config key); a run adds ``v0002``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from biovl_core.align import align
from biovl_core.config import PipelineConfig
from biovl_core.embed import EmbeddingCache, load_embedder
from biovl_core.io import to_csv, to_webvtt
from biovl_core.pipeline import align_video, step_scores
from biovl_core.protocol import parse_protocol
from biovl_core.result import AlignmentResult
from biovl_core.synthetic import RECORDING_STEPS, make_recording
from biovl_core.video import probe
from services import archive as archive_mod
from services.archive import Archive, JobFiles
from services.metrics import REGISTRY
from services.realign import ModelIdentity, main, realign_archive, realign_key
from services.runner import LocalRunner, result_payload
from tests.fixtures_embed import make_tiny_clip_checkpoint, tiny_cfg

SEG = 2.0
N_A, N_REAL, N_Z = 8, 3, 22
N_JOBS = N_A + N_REAL + N_Z + 2
N_ALIGNABLE = N_A + N_REAL + N_Z  # the corrupt one fails, the never-aligned one is skipped
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Template:
    """The generated archive and what a test needs to know about it."""

    root: Path  # holds archive/ (with archive/embeddings/) and the checkpoints
    checkpoint: Path
    other_checkpoint: Path  # a different model: every embedding is stale
    corrupt: tuple[str, str]  # (lab, job_id)
    never_aligned: tuple[str, str]
    fifo_job: tuple[str, str]  # the first real-video job in processing order


def _cfg(root: Path, checkpoint: Path):
    return tiny_cfg(checkpoint, segment_seconds=SEG)


def _job_id(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _spans_for(k: int, duration: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    weights, gaps = rng.uniform(0.6, 1.6, k), rng.uniform(0.1, 0.5, k + 1)
    unit = duration / (weights.sum() + gaps.sum())
    out, t = [], gaps[0] * unit
    for w, g in zip(weights, gaps[1:], strict=True):
        out.append((round(t, 2), round(t + w * unit, 2)))
        t += (w + g) * unit
    return out


def _annotations_csv(steps: list[str], spans: list[tuple[float, float]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["step", "start", "end"])
    for step, (a, b) in zip(steps, spans, strict=True):
        writer.writerow([step, a, b])
    return buf.getvalue()


def _add_job(
    archive: Archive,
    lab: str,
    name: str,
    *,
    video: bytes,
    protocol_text: str,
    experiment: str,
    duration_s: float,
    annotations: str | None,
) -> JobFiles:
    """A job as the ingress stores it (record with the video's sha256 and probed duration)."""
    video_tmp = archive.temp_path()
    video_tmp.write_bytes(video)
    ann_tmp = None
    if annotations is not None:
        ann_tmp = archive.temp_path()
        ann_tmp.write_text(annotations)
    steps = parse_protocol(protocol_text, filename="protocol.txt").steps
    return archive.create_job(
        lab,
        _job_id(name),
        video_tmp=video_tmp,
        video_ext=".mp4",
        protocol_text=protocol_text,
        annotations_tmp=ann_tmp,
        annotations_ext=".csv" if annotations is not None else None,
        record={
            "status": "succeeded",
            "video_sha256": hashlib.sha256(video).hexdigest(),
            "protocol_filename": "protocol.txt",
            "title": experiment,
            "num_steps": len(steps),
            "duration_s": duration_s,
            "options": {},
        },
    )


def _stale_v1(jf: JobFiles, k: int, n: int, duration: float) -> None:
    """A v0001 written by an older configuration: the uniform baseline, another config key."""
    sim = np.zeros((k, n), dtype=np.float32)
    a = align(sim, segment_seconds=SEG, method="uniform", duration_s=duration)
    steps = parse_protocol(jf.protocol_path.read_text(), filename="protocol.txt").steps
    result = AlignmentResult(
        steps=list(steps),
        spans=list(a.spans),
        step_scores=step_scores(sim, a.labels),
        labels=np.asarray(a.labels),
        similarity=sim,
        segment_seconds=SEG,
        duration_s=duration,
        method=a.method,
        score=float(a.score),
        model_id="open_clip:old",
        weights="checkpoint:old.pt",
        aligner_version="0.0.1",
    )
    service = {"job_id": jf.job_id, "lab": jf.lab, "config_key": "stale-config", "worker": "old"}
    jf.write_result(result_payload(result, service), to_csv(result), to_webvtt(result))


def _cached_job(
    archive: Archive, cache: EmbeddingCache, model_key: str, lab: str, i: int, dim: int
) -> None:
    """A recording whose segment and step embeddings are in the cache (its 'video' is not one)."""
    rng = np.random.default_rng(i)
    experiment = sorted(RECORDING_STEPS)[i % len(RECORDING_STEPS)]
    steps = RECORDING_STEPS[experiment]
    text = "".join(f"{j + 1}. {s}\n" for j, s in enumerate(steps))
    steps = list(parse_protocol(text, filename="protocol.txt").steps)
    k = len(steps)
    n = int(rng.integers(2 * k, 4 * k))
    duration = (n - 0.5) * SEG
    spans = _spans_for(k, duration, rng)
    video = f"placeholder video {lab} {i}".encode()
    jf = _add_job(
        archive,
        lab,
        f"{lab}-{i}",
        video=video,
        protocol_text=text,
        experiment=experiment,
        duration_s=duration,
        annotations=_annotations_csv(steps, spans) if i % 3 else None,
    )
    # One protocol, one set of step embeddings (the cache shares them across recordings).
    text_emb = _normalise(np.random.default_rng(len(experiment)).normal(size=(k, dim)))
    seg_emb = _normalise(rng.normal(size=(n, dim)))
    mids = (np.arange(n) + 0.5) * SEG
    for step, (a, b) in enumerate(spans):
        inside = (mids >= a) & (mids < b)
        seg_emb[inside] = seg_emb[inside] * 0.6 + text_emb[step]
    sha = hashlib.sha256(video).hexdigest()
    cache.put(sha, model_key, SEG, 1, _normalise(seg_emb), PipelineConfig().sampling_key())
    cache.put_texts(model_key, steps, ("{}",), text_emb)
    _stale_v1(jf, k, n, duration)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    root = tmp_path_factory.mktemp("realign-template")
    checkpoint = make_tiny_clip_checkpoint(root / "tiny.pt", seed=1)
    other = make_tiny_clip_checkpoint(root / "tiny-other.pt", seed=2)
    archive = Archive(root / "archive")
    cfg = _cfg(root, checkpoint)
    embedder = load_embedder(cfg)
    cache = EmbeddingCache(archive.root / "embeddings")
    for i in range(N_A):
        _cached_job(archive, cache, embedder.cache_key(), "a-lab", i, embedder.dim)
    real_ids = []
    for i in range(N_REAL):
        rec = make_recording(root / f"rec{i}", "pcr", seed=i, duration_s=16, size=(64, 48), fps=4)
        duration = probe(rec / "video.mp4").duration_s
        jf = _add_job(
            archive,
            "m-lab",
            f"real-{i}",
            video=(rec / "video.mp4").read_bytes(),
            protocol_text=(rec / "protocol.txt").read_text(),
            experiment="pcr",
            duration_s=duration,
            annotations=(rec / "annotations.csv").read_text(),
        )
        _stale_v1(jf, len(RECORDING_STEPS["pcr"]), math.ceil(duration / SEG), duration)
        real_ids.append(jf.job_id)
    for i in range(N_Z):
        _cached_job(archive, cache, embedder.cache_key(), "z-lab", 100 + i, embedder.dim)
    steps_text = "1. Add water.\n2. Mix.\n"
    corrupt = _add_job(
        archive,
        "z-lab",
        "corrupt",
        video=b"this is not a video",
        protocol_text=steps_text,
        experiment="pcr",
        duration_s=10.0,
        annotations=None,
    )
    _stale_v1(corrupt, 2, 5, 10.0)
    never = _add_job(
        archive,
        "z-lab",
        "never-aligned",
        video=b"queued",
        protocol_text=steps_text,
        experiment="pcr",
        duration_s=10.0,
        annotations=None,
    )
    return Template(
        root,
        checkpoint,
        other,
        ("z-lab", corrupt.job_id),
        ("z-lab", never.job_id),
        ("m-lab", min(real_ids)),
    )


@pytest.fixture()
def fresh(template: Template, tmp_path: Path) -> Path:
    """A private copy of the template archive (same checkpoint paths)."""
    shutil.copytree(template.root / "archive", tmp_path / "archive")
    return tmp_path / "archive"


def _digest_v1(root: Path) -> dict[str, str]:
    """sha256 of every file of every v0001 (which no run may touch)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.glob("labs/*/jobs/*/alignments/v0001.*"))
    }


def _versions(root: Path) -> dict[str, list[int]]:
    return {f"{jf.lab}/{jf.job_id}": jf.versions() for jf in Archive(root).iter_jobs()}


def _counter(outcome: str) -> float:
    value = REGISTRY.get_sample_value("biovl_realign_recordings_total", {"outcome": outcome})
    return value or 0.0


def _latest(root: Path) -> dict[str, dict]:
    out = {}
    for jf in Archive(root).iter_jobs():
        latest = jf.latest_alignment()
        if latest is not None:
            out[f"{jf.lab}/{jf.job_id}"] = latest[1]
    return out


def test_local_realign_writes_new_versions_then_rerun_skips(template: Template, fresh: Path):
    cfg = _cfg(fresh, template.checkpoint)
    before = _digest_v1(fresh)
    counts = {o: _counter(o) for o in ("done", "skipped", "failed")}
    summary = realign_archive(fresh, cfg, use_ray="local", progress=False)

    assert (summary.total, summary.done, summary.failed, summary.skipped) == (
        N_JOBS,
        N_ALIGNABLE,
        1,
        1,
    )
    assert (summary.embedded, summary.from_cache) == (N_REAL, N_A + N_Z)
    assert summary.align_calls == 1  # every alignment through one align_batch call
    assert not summary.ray
    failed = [o for o in summary.outcomes if o.outcome == "failed"]
    assert [(o.lab, o.job_id) for o in failed] == [template.corrupt]
    assert failed[0].reason.startswith("embed:")
    skipped = [o for o in summary.outcomes if o.outcome == "skipped"]
    assert [(o.lab, o.job_id, o.reason) for o in skipped] == [
        (*template.never_aligned, "no_result")
    ]
    assert summary.spans_changed > 0 and summary.recordings_changed > 0
    assert _counter("done") - counts["done"] == N_ALIGNABLE
    assert _counter("failed") - counts["failed"] == 1
    assert _counter("skipped") - counts["skipped"] == 1

    versions = _versions(fresh)
    for name, vs in versions.items():
        lab, job_id = name.split("/")
        expected = {template.never_aligned: [], template.corrupt: [1]}.get((lab, job_id), [1, 2])
        assert vs == expected, name
    assert _digest_v1(fresh) == before

    ident = ModelIdentity.of(LocalRunner().embedder(cfg.replace(cache_dir=None)))
    key = realign_key(cfg, ident)
    latest = _latest(fresh)
    done = [p for p in latest.values() if p["service"]["worker"] == "realign"]
    assert len(done) == N_ALIGNABLE
    assert {p["service"]["config_key"] for p in done} == {key}
    assert all(p["aligner_version"] and p["service"]["previous_version"] == 1 for p in done)
    # re-aligning gives what `biovl align` gives on the video with the same embedding cache
    # (the fixture planted step-text embeddings in it)
    for name, payload in latest.items():
        lab, job_id = name.split("/")
        if lab != "m-lab":
            continue
        jf = Archive(fresh).job(lab, job_id)
        protocol = parse_protocol(jf.protocol_path.read_text(), filename="protocol.txt")
        want = align_video(
            jf.video_path(), protocol, cfg.replace(cache_dir=str(Path(fresh) / "embeddings"))
        )
        assert payload["labels"] == want.labels.tolist(), name
        assert payload["method"] == "biovl" and payload["score"] == pytest.approx(want.score)

    score = summary.miou_score()
    annotated = (
        N_REAL
        + sum(1 for i in range(N_A) if i % 3)
        + sum(1 for i in range(100, 100 + N_Z) if i % 3)
    )
    assert score.overall.n == annotated
    assert score.overall.mean > 50.0  # cached embeddings were built to be alignable
    table = summary.table()
    for name in ("pcr", "miniprep", "all", "steps moved", "mIoU %"):
        assert name in table
    assert summary.to_dict()["by_experiment"]["pcr"]["failed"] == 1

    again = realign_archive(fresh, cfg, use_ray="local", progress=False)
    assert (again.done, again.failed, again.skipped) == (0, 1, N_ALIGNABLE + 1)
    assert {o.reason for o in again.outcomes if o.outcome == "skipped"} == {"current", "no_result"}
    assert again.miou_score().overall.n == annotated  # the table still covers current results
    assert _versions(fresh) == versions
    assert _digest_v1(fresh) == before


def test_dry_run_and_limit(template: Template, fresh: Path):
    cfg = _cfg(fresh, template.checkpoint)
    dry = realign_archive(fresh, cfg, use_ray="local", progress=False, dry_run=True)
    assert dry.dry_run and dry.done == 0
    assert (dry.from_cache, dry.embedded) == (N_A + N_Z, N_REAL + 1)
    assert all(vs in ([1], []) for vs in _versions(fresh).values())

    part = realign_archive(fresh, cfg, use_ray="local", progress=False, limit=5, batch=2)
    assert part.done == 5 and part.align_calls == 3
    assert sum(vs == [1, 2] for vs in _versions(fresh).values()) == 5
    rest = realign_archive(fresh, cfg, use_ray="local", progress=False)
    assert (rest.done, rest.failed) == (N_ALIGNABLE - 5, 1)
    assert sum(vs == [1, 2] for vs in _versions(fresh).values()) == N_ALIGNABLE


def test_method_override_and_model_change(template: Template, fresh: Path):
    cfg = _cfg(fresh, template.checkpoint)
    first = realign_archive(fresh, cfg, use_ray="local", progress=False, method="nw")
    assert first.done == N_ALIGNABLE
    assert {
        p["method"] for p in _latest(fresh).values() if p["service"]["worker"] == "realign"
    } == {"nw"}
    # The default method is another config: everything is re-aligned, now all from the cache
    # (the first run cached the real videos' embeddings): pure DP.
    second = realign_archive(fresh, cfg, use_ray="local", progress=False)
    assert (second.done, second.from_cache, second.embedded) == (N_ALIGNABLE, N_ALIGNABLE, 0)
    # A new model makes every cached embedding stale: only decodable videos can be re-embedded.
    before = _versions(fresh)
    changed = realign_archive(
        fresh, _cfg(fresh, template.other_checkpoint), use_ray="local", progress=False
    )
    assert (changed.done, changed.embedded) == (N_REAL, N_REAL)
    assert changed.failed == N_A + N_Z + 1
    after = _versions(fresh)
    for name, vs in after.items():
        grew = name.startswith("m-lab/")
        assert vs == (before[name] + [before[name][-1] + 1] if grew else before[name]), name


def test_failed_commit_leaves_no_version_and_rerun_completes(
    template: Template, fresh: Path, monkeypatch: pytest.MonkeyPatch
):
    """A write that dies before its JSON commit marker (disk full) leaves no version behind."""
    cfg = _cfg(fresh, template.checkpoint)
    victim = Archive(fresh).job("a-lab", sorted(_versions(fresh))[3].split("/")[1])
    real_write = archive_mod.write_json_atomic

    def failing(path: Path, obj: object) -> None:
        if path == victim.alignment_path(2):
            raise OSError(28, "No space left on device")
        real_write(path, obj)

    monkeypatch.setattr(archive_mod, "write_json_atomic", failing)
    summary = realign_archive(fresh, cfg, use_ray="local", progress=False)
    assert (summary.done, summary.failed) == (N_ALIGNABLE - 1, 2)
    assert victim.versions() == [1]
    assert victim.alignment_path(2, "csv").exists()  # the orphan a crash leaves: not a version
    monkeypatch.setattr(archive_mod, "write_json_atomic", real_write)
    again = realign_archive(fresh, cfg, use_ray="local", progress=False)
    assert (again.done, again.failed) == (1, 1)
    assert victim.versions() == [1, 2]
    assert all(vs in ([1, 2], [1], []) for vs in _versions(fresh).values())


def test_sigkill_mid_run_then_rerun_completes_exactly_once(
    template: Template,
    fresh: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    """``python -m services.realign`` killed while blocked inside a recording; a rerun finishes."""
    cfg = _cfg(fresh, template.checkpoint)
    before = _digest_v1(fresh)
    # The protocol of the first real recording becomes a FIFO: reading it blocks (like a hung
    # network mount), so the process is certainly mid-run, after the a-lab batches were
    # committed, when it is killed.
    jf = Archive(fresh).job(*template.fifo_job)
    saved = fresh.parent / "protocol.txt"
    os.replace(jf.protocol_path, saved)
    os.mkfifo(jf.protocol_path)
    env = {
        **os.environ,
        "BIOVL_PIPELINE": json.dumps(cfg.to_dict()),
        "BIOVL_DEVICE": "cpu",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("BIOVL_SERVICE_CONFIG", None)
    cmd = [sys.executable, "-m", "services.realign", "--archive", str(fresh)]
    proc = subprocess.Popen(
        [*cmd, "--ray", "local", "--batch", "4", "--quiet"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while sum(vs == [1, 2] for vs in _versions(fresh).values()) < N_A:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "realign never reached the blocking recording"
            time.sleep(0.05)
        time.sleep(0.3)
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    written = sum(vs == [1, 2] for vs in _versions(fresh).values())
    assert written == N_A  # the batch holding the FIFO committed nothing

    os.unlink(jf.protocol_path)
    os.replace(saved, jf.protocol_path)
    monkeypatch.setenv("BIOVL_PIPELINE", env["BIOVL_PIPELINE"])
    monkeypatch.delenv("BIOVL_SERVICE_CONFIG", raising=False)
    code = main(
        ["--archive", str(fresh), "--ray", "local", "--quiet", "--json", str(tmp_path / "s.json")]
    )
    out = capsys.readouterr().out
    assert code == 1, out  # 1: the corrupt recording failed
    assert f"{N_ALIGNABLE - N_A} done, {N_A + 1} skipped, 1 failed" in out
    assert "steps moved" in out and "pcr" in out
    assert json.loads((tmp_path / "s.json").read_text())["done"] == N_ALIGNABLE - N_A
    for name, vs in _versions(fresh).items():
        lab, job_id = name.split("/")
        expected = {template.never_aligned: [], template.corrupt: [1]}.get((lab, job_id), [1, 2])
        assert vs == expected, name
    assert _digest_v1(fresh) == before


def test_ray_data_pipeline_matches_local(template: Template, tmp_path: Path, ray_cluster):
    import ray

    local_root, ray_root = tmp_path / "local", tmp_path / "ray"
    shutil.copytree(template.root / "archive", local_root)
    shutil.copytree(template.root / "archive", ray_root)
    local = realign_archive(
        local_root, _cfg(local_root, template.checkpoint), use_ray="local", progress=False
    )
    address = ray.get_runtime_context().gcs_address
    on_ray = realign_archive(
        ray_root, _cfg(ray_root, template.checkpoint), use_ray=address, progress=False, batch=64
    )
    assert on_ray.ray and not local.ray
    for field in ("total", "done", "skipped", "failed", "embedded", "from_cache", "spans_changed"):
        assert getattr(on_ray, field) == getattr(local, field), field
    assert on_ray.align_calls == 1
    a, b = _latest(local_root), _latest(ray_root)
    assert a.keys() == b.keys()
    for name in a:
        for key in ("steps", "labels", "method", "score", "duration_s", "video_sha256"):
            assert a[name][key] == b[name][key], (name, key)
        assert a[name]["service"]["config_key"] == b[name]["service"]["config_key"]
    assert ray.is_initialized()  # a cluster it did not start is left running

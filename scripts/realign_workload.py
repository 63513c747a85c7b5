#!/usr/bin/env python3
"""The GPU batch figure: re-embedding an archive after a model change (`biovl realign`).

    python scripts/realign_workload.py                 # 32 x 120 s 1080p recordings (a GPU)
    python scripts/realign_workload.py --small         # 4 x 12 s: the same flow on a CPU box

1. Builds N distinct camera-like 1080p H.264 recordings (High profile, 3 B-frames; GOP spread
   over 0.5-1 s and bitrate over 10-40 Mbps across the recordings; distinct seeds and scene
   layouts), cached in ``--work``.
2. Lays them out as an archive whose every job has a v0001 from another model (its config key
   differs), so `realign_archive` decodes and embeds every recording again, as after a change
   of checkpoint: the embedding cache has nothing for the new model.
3. Runs `realign_archive` (the code `biovl realign` runs) with the new model and reports:
   video seconds per wall second over the whole run and over the steady window (from the
   first recording's end to the last's: model load and kernel compilation left out; the
   target is >= 60 s of it), each stage's busy share (summed stage seconds / wall; the embed
   stage split into probe, decode, embed_video, ... from the recordings' timings), and the
   stage that stops it. Frames and bytes per sample: `make bench` (the decode table).

The ingest figure (HTTP upload to result) is separate (`scripts/gpu_e2e.py`): it is bounded
by the upload bandwidth, which this prints for the measured rate. On a GPU the figures are
**not run** yet (docs/GPU_CHECK.md); the CPU figures are in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from biovl_core.config import PipelineConfig  # noqa: E402
from biovl_core.synthetic import RECORDING_STEPS  # noqa: E402
from biovl_core.synthetic.camera import CameraProfile, write_camera_video  # noqa: E402

TARGET_VIDEO_S_PER_S = 10_000.0  # one H200, issue 19
STEADY_MIN_S = 60.0


def profiles(n: int) -> list[CameraProfile]:
    """N camera profiles: GOP 0.5-1 s and 10-40 Mbps spread evenly across the recordings."""
    spread = np.linspace(0.0, 1.0, n) if n > 1 else np.array([0.5])
    return [
        CameraProfile(gop_s=round(0.5 + 0.5 * f, 3), bitrate_mbps=round(10.0 + 30.0 * f, 1))
        for f in np.random.default_rng(19).permutation(spread)
    ]


def make_recordings(
    work: Path, n: int, seconds: float, size: tuple[int, int], fps: float, clip_s: float = 0.0
) -> list[tuple[Path, CameraProfile, str]]:
    """(video, profile, experiment) of N distinct recordings, built once and cached.

    With ``clip_s`` (0 < clip_s < seconds) each recording is its own encoded clip of that
    length repeated by copying packets (no re-encode): on a device call, encoding 32 x 120 s
    of 1080p would eat the budget; the decoder sees the same GOPs and bitrate either way."""
    folder = work / "recordings"
    folder.mkdir(parents=True, exist_ok=True)
    experiments = sorted(RECORDING_STEPS)
    out = []
    for i, profile in enumerate(profiles(n)):
        clip = clip_s if 0 < clip_s < seconds else seconds
        tag = f"rec{i:03d}_{size[1]}p_{seconds:g}s_c{clip:g}_g{profile.gop_s:g}_{profile.bitrate_mbps:g}M"
        path = folder / f"{tag}.mp4"
        experiment = experiments[i % len(experiments)]
        if not path.exists():
            k = len(RECORDING_STEPS[experiment])
            edges = np.linspace(0.0, clip, k + 2)[1:]  # one scene per step, then background
            scenes = [
                (float(a), float(b), j + 1)
                for j, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True))
            ]
            start = time.perf_counter()
            tmp = path.with_suffix(".partial.mp4")
            if clip < seconds:  # the encoded clip is kept: other lengths reuse it
                from biovl_core.bench.videos import repeat_clip

                source = folder / "clips" / f"{tag.replace(f'_{seconds:g}s', '')}.mp4"
                if not source.exists():
                    source.parent.mkdir(exist_ok=True)
                    part = source.with_suffix(".partial.mp4")
                    write_camera_video(
                        part, clip, profile, fps=fps, size=size, scenes=scenes, seed=i
                    )
                    part.replace(source)
                repeat_clip(source, tmp, max(1, int(round(seconds / clip))))
            else:
                write_camera_video(tmp, clip, profile, fps=fps, size=size, scenes=scenes, seed=i)
            tmp.replace(path)
            print(f"  built {path.name} in {time.perf_counter() - start:.1f} s", flush=True)
        out.append((path, profile, experiment))
    return out


def build_archive(
    root: Path, recordings: list[tuple[Path, CameraProfile, str]], segment_s: float
) -> None:
    """An archive of one job per recording, each with a v0001 from another model."""
    from biovl_core.align import align
    from biovl_core.io import to_csv, to_webvtt
    from biovl_core.pipeline import step_scores
    from biovl_core.protocol import parse_protocol
    from biovl_core.result import AlignmentResult
    from biovl_core.video import probe
    from services.archive import Archive
    from services.runner import result_payload

    archive = Archive(root)
    for path, _, experiment in recordings:
        text = "".join(f"{j + 1}. {s}\n" for j, s in enumerate(RECORDING_STEPS[experiment]))
        steps = list(parse_protocol(text, filename="protocol.txt").steps)
        duration = probe(path).duration_s
        tmp = archive.temp_path()
        tmp.write_bytes(path.read_bytes())
        record = {
            "status": "succeeded",
            "video_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "protocol_filename": "protocol.txt",
            "title": experiment,
            "num_steps": len(steps),
            "duration_s": duration,
            "options": {},
        }
        jf = archive.create_job(
            "lab",
            hashlib.sha1(path.name.encode()).hexdigest(),
            video_tmp=tmp,
            video_ext=".mp4",
            protocol_text=text,
            annotations_tmp=None,
            annotations_ext=None,
            record=record,
        )
        n = max(len(steps), int(np.ceil(duration / segment_s)))
        sim = np.zeros((len(steps), n), dtype=np.float32)
        a = align(sim, segment_seconds=segment_s, method="uniform", duration_s=None)
        result = AlignmentResult(
            steps=steps,
            spans=list(a.spans),
            step_scores=step_scores(sim, a.labels),
            labels=np.asarray(a.labels),
            similarity=sim,
            segment_seconds=segment_s,
            duration_s=duration,
            method=a.method,
            score=float(a.score),
            model_id="open_clip:the-old-model",
            weights="checkpoint:old.pt",
            aligner_version="0.0.1",
        )
        service = {"job_id": jf.job_id, "lab": jf.lab, "config_key": "old-model", "worker": "old"}
        jf.write_result(result_payload(result, service), to_csv(result), to_webvtt(result))


def new_model(work: Path, model: str, seed: int) -> Path:
    """A checkpoint of `model` (random weights, seeded): the "new model" of the change."""
    import open_clip
    import torch

    from biovl_core.embed import resolve_model_name

    path = work / f"new_model_{model}_{seed}.pt"
    if not path.exists():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            torch.save(open_clip.create_model(resolve_model_name(model)).state_dict(), path)
    return path


def pipeline_seconds(root: Path) -> dict[str, float]:
    """Seconds per pipeline stage (probe, decode, embed_video, ...) summed over the archive's
    latest alignments (their ``timings``): the split inside realign's "embed" stage."""
    from services.archive import Archive

    totals: dict[str, float] = {}
    for jf in Archive(root).iter_jobs():
        latest = jf.latest_alignment()
        for stage, seconds in ((latest[1].get("timings") or {}) if latest else {}).items():
            totals[stage] = totals.get(stage, 0.0) + float(seconds)
    return totals


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build, realign, measure; the figures as a dict (also printed)."""
    from services.realign import realign_archive

    size = tuple(int(v) for v in args.size.split("x"))
    work = Path(args.work).resolve()
    print(f"recordings: {args.recordings} x {args.seconds:g} s at {size[0]}x{size[1]} in {work}")
    recordings = make_recordings(work, args.recordings, args.seconds, size, args.fps, args.clip)  # type: ignore[arg-type]
    root = work / f"archive-{time.time_ns()}"
    build_archive(root, recordings, args.segment)
    ckpt = new_model(work, args.model, seed=args.seed)
    cfg = PipelineConfig(
        model=args.model,
        pretrained=None,
        checkpoint=str(ckpt),
        device=args.device,
        decoder=args.decoder,
        segment_seconds=args.segment,
        cache_dir=str(root / "embeddings"),
    )
    video_s = sum(float(_duration(p)) for p, _, _ in recordings)
    done_at: list[float] = []
    start = time.perf_counter()
    summary = realign_archive(
        root,
        cfg,
        use_ray="local",
        progress=False,
        batch=args.batch,
        on_outcome=lambda rec: done_at.append(time.perf_counter()),
        embed_num_gpus=1.0 if args.device == "cuda" else 0.0,
        align_num_gpus=0.25 if args.device == "cuda" else 0.0,
    )
    wall = time.perf_counter() - start
    if summary.failed or summary.embedded != len(recordings):
        failed = [o.reason for o in summary.outcomes if o.outcome == "failed"][:3]
        raise SystemExit(
            f"realign: {summary.embedded} of {len(recordings)} re-embedded, "
            f"{summary.failed} failed: {failed}"
        )
    # steady window: from the end of the first batch (model load, compilation) to the last
    # recording's end; the recordings are of equal length, so the video in it is counted
    first = min(args.batch, len(done_at))
    steady_s = done_at[-1] - done_at[first - 1] if len(done_at) > first else 0.0
    steady_video = video_s / len(recordings) * (len(done_at) - first)
    busy = {s: t / wall for s, t in sorted(summary.stage_seconds.items())}
    inside = {s: t / wall for s, t in sorted(pipeline_seconds(root).items())}
    mbps = float(np.mean([p.bitrate_mbps for _, p, _ in recordings]))
    figures = {
        "recordings": len(recordings),
        "video_s": video_s,
        "wall_s": wall,
        "video_s_per_s": video_s / wall,
        "steady_window_s": steady_s,
        "steady_video_s_per_s": steady_video / steady_s if steady_s > 0 else None,
        "busy_share": busy,
        "embed_stage_share": inside,
        "mean_mbps": mbps,
        "device": args.device,
        "decoder": args.decoder,
        "model": args.model,
    }
    report(figures)
    return figures


def _duration(path: Path) -> float:
    from biovl_core.video import probe

    return probe(path).duration_s


def report(f: dict[str, Any]) -> None:
    """Print the figures and what limits them."""
    steady = f["steady_video_s_per_s"]
    print(
        f"\nre-embedded {f['recordings']} recordings, {f['video_s']:.0f} s of video, in "
        f"{f['wall_s']:.1f} s: {f['video_s_per_s']:.1f} video s per wall s "
        f"({f['device']}, decoder {f['decoder']}, model {f['model']})"
    )
    window = f["steady_window_s"]
    verdict = "meets" if window >= STEADY_MIN_S else "SHORTER than"
    rate = f"{steady:.1f}" if steady else "n/a"
    print(
        f"steady window {window:.1f} s ({verdict} the {STEADY_MIN_S:g} s asked for): "
        f"{rate} video s per wall s"
    )
    shares = ", ".join(f"{s} {v:.0%}" for s, v in f["busy_share"].items())
    print(f"busy share of the wall time per stage: {shares}")
    top = max(f["busy_share"], key=f["busy_share"].get) if f["busy_share"] else "n/a"
    print(f"the stage that stops it: {top}")
    inside = ", ".join(f"{s} {v:.0%}" for s, v in f["embed_stage_share"].items())
    print(f"inside the embed stage (the recordings' own timings, share of the wall): {inside}")
    best = steady or f["video_s_per_s"]
    print(
        f"target {TARGET_VIDEO_S_PER_S:,.0f} video s per wall s on one H200: "
        f"{best / TARGET_VIDEO_S_PER_S:.2%} of it here"
    )
    upload = best * f["mean_mbps"] / 8
    print(
        f"ingest (separate, scripts/gpu_e2e.py): feeding {best:.1f} video s/s at the mean "
        f"{f['mean_mbps']:.0f} Mbps needs {upload:.1f} MB/s of uploads; the target rate would "
        f"need {TARGET_VIDEO_S_PER_S * f['mean_mbps'] / 8 / 1e3:.1f} GB/s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recordings", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=120.0, help="length of each recording")
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument(
        "--clip",
        type=float,
        default=10.0,
        help="encode this many seconds per recording and repeat them (0: encode the whole length)",
    )
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--segment", type=float, default=5.0, help="segment length in seconds")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--seed", type=int, default=2, help="seed of the new model's weights")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--decoder", default="dali", choices=["dali", "pyav", "auto"])
    parser.add_argument(
        "--batch", type=int, default=4, help="recordings per realign batch (embed, then align)"
    )
    parser.add_argument("--work", default=str(ROOT / ".bench" / "realign_workload"))
    parser.add_argument(
        "--small", action="store_true", help="4 x 12 s, 0.5 s segments, tiny model, CPU, PyAV"
    )
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.small:
        args.recordings, args.seconds = min(args.recordings, 4), min(args.seconds, 12.0)
        args.clip = 0.0  # 12 s: encode it whole
        args.segment = min(args.segment, 0.5)  # >= 16 segments (the longest protocol's steps)
        args.model, args.device, args.decoder = "biovl-tiny-clip", "cpu", "pyav"
        args.batch = 1  # an outcome per recording: a steady window even with 4 of them
    if args.recordings < 1:
        parser.error("--recordings must be >= 1")
    figures = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

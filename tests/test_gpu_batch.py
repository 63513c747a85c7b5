"""Batched decoding for the Serve deployments, run with DALI's CPU backend and the CPU embedder:
several jobs' requests share DALI runs; the fused decode+embed gives the embeddings the two-step
path gives; a video DALI cannot decode goes to PyAV alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nvidia.dali", reason="nvidia-dali-cuda130 is a dev dependency (make venv)")

from biovl_core.embed import load_embedder  # noqa: E402
from biovl_core.synthetic import SyntheticVideo, read_frame_counter, write_video  # noqa: E402
from biovl_core.video import frame_index_at, probe, segment_timestamps  # noqa: E402
from biovl_core.video.dali import DALISampler  # noqa: E402
from services.serve.gpu_batch import decode_batch, decode_embed_batch  # noqa: E402
from tests.fixtures_embed import TINY_SIZE, make_tiny_clip_checkpoint, tiny_cfg  # noqa: E402


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SyntheticVideo]:
    d = tmp_path_factory.mktemp("gpu-batch")
    small = {"fps": 20, "size": (160, 120), "gop": 10, "codec": "vp9"}
    return {
        "a": write_video(d / "a.mp4", 4.0, seed=4, **small),
        "b": write_video(d / "b.mp4", 3.0, seed=5, **small),
        "h264": write_video(d / "h264.mp4", 2.0, fps=20, size=(160, 120), gop=10),
    }


def _requests(videos: dict[str, SyntheticVideo], names: list[str], k: int = 1) -> list[dict]:
    return [
        {
            "path": str(videos[n].path),
            "timestamps": segment_timestamps(probe(videos[n].path), 0.5, k),
            "size": TINY_SIZE,
        }
        for n in names
    ]


def test_decode_batch_shares_runs_and_answers_each_request(videos) -> None:
    names = ["a", "h264", "b"]
    requests = [{**r, "size": 96} for r in _requests(videos, names, k=2)]
    dali = DALISampler(backend="cpu", num_threads=2, clips_per_run=8, min_clip_segments=2)
    got = decode_batch(dali, requests)
    for name, r, frames in zip(names, requests, got, strict=True):
        assert isinstance(frames, np.ndarray) and frames.shape == (
            *r["timestamps"].shape,
            96,
            96,
            3,
        )
        seen = np.array([[read_frame_counter(f) for f in row] for row in frames])
        np.testing.assert_array_equal(
            seen, frame_index_at(videos[name].frame_times, r["timestamps"])
        )
    assert dali.fallbacks == 1 and dali.runs < dali.clips


def test_fused_decode_embed_equals_decode_then_embed(videos, tmp_path: Path) -> None:
    embedder = load_embedder(tiny_cfg(make_tiny_clip_checkpoint(tmp_path / "c.pt", seed=3)))
    requests = _requests(videos, ["a", "b"], k=embedder.frames_per_segment)
    for r in requests:
        r["size"] = embedder.input_size
    dali = DALISampler(backend="cpu", num_threads=2, clips_per_run=4, min_clip_segments=2)
    fused = decode_embed_batch(dali, embedder, requests)
    apart = [embedder.embed_frames(f) for f in decode_batch(dali, requests)]
    for r, a, b in zip(requests, fused, apart, strict=True):
        assert a.shape == (len(r["timestamps"]), embedder.dim) and a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert dali.fallbacks == 0
    with pytest.raises(ValueError, match="one crop size"):
        decode_embed_batch(dali, embedder, [requests[0], {**requests[1], "size": 32}])

"""Several clips per DALI run (DALI's CPU backend, VP9): the layout the GPU uses to keep several
NVDEC sessions busy. Frames must equal the one-clip-per-run answer and PyAV's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nvidia.dali", reason="nvidia-dali-cuda130 is a dev dependency (make venv)")

from biovl_core.synthetic import SyntheticVideo, read_frame_counter, write_video  # noqa: E402
from biovl_core.video import frame_index_at, probe, segment_timestamps  # noqa: E402
from biovl_core.video.dali import DALISampler  # noqa: E402

SIZE = 96


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SyntheticVideo]:
    d = tmp_path_factory.mktemp("dali-batch")
    small = {"fps": 20, "size": (160, 120), "gop": 10, "codec": "vp9"}
    return {
        "a": write_video(d / "a.mp4", 4.0, seed=1, **small),
        "vfr": write_video(d / "vfr.mp4", 4.0, variable_frame_rate=True, seed=2, **small),
        "rot": write_video(d / "rot.mp4", 3.0, rotation=90, seed=3, **small),
        "h264": write_video(d / "h264.mp4", 2.0, fps=20, size=(160, 120), gop=10),
    }


def counters(frames: np.ndarray) -> np.ndarray:
    return np.array([[read_frame_counter(f) for f in row] for row in frames])


def test_clips_of_one_video_share_runs(videos: dict[str, SyntheticVideo]) -> None:
    """An eight-segment batch spread over four clips of two segments, decoded in one run: the
    same frames as one clip holding the whole batch."""
    v = videos["a"]
    ts = segment_timestamps(probe(v.path), 0.25, 2)[:8]
    wide = DALISampler(backend="cpu", num_threads=2, clips_per_run=4, min_clip_segments=2)
    got = wide.sample(v.path, ts, size=SIZE).numpy()
    assert (wide.runs, wide.clips) == (1, 4)
    one = DALISampler(backend="cpu", num_threads=1, clips_per_run=1, min_clip_segments=2)
    np.testing.assert_array_equal(got, one.sample(v.path, ts, size=SIZE).numpy())
    assert (one.runs, one.clips) == (1, 1)  # one clip holds the whole batch
    np.testing.assert_array_equal(counters(got), frame_index_at(v.frame_times, ts))
    assert wide.last_stats.samples == ts.size and wide.last_stats.bytes_read > 0


def test_sample_many_packs_videos_into_runs_and_isolates_a_failure(
    videos: dict[str, SyntheticVideo],
) -> None:
    """Three VP9 videos and one H.264 (no CPU decoder in DALI's wheel) in one call: the VP9
    clips share runs, the H.264 video alone goes to PyAV, every frame is right."""
    names = ["a", "h264", "vfr", "rot"]
    requests = [(videos[n].path, segment_timestamps(probe(videos[n].path), 0.5, 1)) for n in names]
    dali = DALISampler(backend="cpu", num_threads=2, clips_per_run=8, min_clip_segments=2)
    outs = dali.sample_many(requests, size=SIZE)
    for name, (_, ts), out in zip(names, requests, outs, strict=True):
        assert tuple(out.shape) == (*ts.shape, SIZE, SIZE, 3), name
        np.testing.assert_array_equal(
            counters(out.numpy()), frame_index_at(videos[name].frame_times, ts), err_msg=name
        )
    assert dali.fallbacks == 1 and str(videos["h264"].path) in dali.fallback_reasons()[0]
    assert dali.runs < dali.clips  # several clips per run
    vp9 = [r for n, r in zip(names, requests, strict=True) if n != "h264"]
    assert dali.last_stats.samples == sum(ts.size for _, ts in vp9)
    assert dali.last_stats.bytes_read > 0
    # the same videos one by one: the same frames
    for name, (path, ts), out in zip(names, requests, outs, strict=True):
        if name != "h264":
            np.testing.assert_array_equal(out.numpy(), dali.sample(path, ts, size=SIZE).numpy())


def test_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="clips_per_run"):
        DALISampler(backend="cpu", clips_per_run=0)

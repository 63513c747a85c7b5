"""The sampling rule and what it costs, on real files decoded by PyAV: the container's own index,
keyframes decoded alone, bounded decoding for any GOP, bytes read (counted, never timed)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from biovl_core.synthetic import SyntheticVideo, read_frame_counter, write_video
from biovl_core.synthetic.camera import CameraProfile, keyframe_times, write_camera_video
from biovl_core.video import (
    PyAVSampler,
    container_index,
    frame_index_at,
    probe,
    recording_plan,
    sample_plan,
)

SIZE = 96
SMALL = CameraProfile(gop_s=0.6, bitrate_mbps=1.0)  # camera-like GOP and B-frames, small file


def counters(frames: np.ndarray) -> np.ndarray:
    """Frame indices painted in sampled frames [N, k, S, S, 3]."""
    return np.array([[read_frame_counter(f) for f in row] for row in frames])


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SyntheticVideo]:
    """Camera-like clips (B-frames, 0.6 s GOP) in MP4, MKV and MPEG-TS, a VFR one, and a
    single-keyframe MPEG-TS."""
    d = tmp_path_factory.mktemp("sampling")
    small = {"size": (192, 144)}
    out = {
        ext: write_camera_video(d / f"cam.{ext}", 8.0, SMALL, **small)
        for ext in ("mp4", "mkv", "ts")
    }
    out["vfr"] = write_camera_video(
        d / "vfr.mp4",
        8.0,
        CameraProfile(gop_s=1.0, bitrate_mbps=1.0, variable_frame_rate=True),
        **small,
    )
    out["one_ts"] = write_video(
        d / "one.ts", 60.0, fps=5, size=(96, 96), gop=10**6, x264_params="scenecut=0"
    )
    return out


def test_camera_like_files_are_high_profile_with_b_frames_and_a_fixed_gop(
    media: dict[str, SyntheticVideo],
) -> None:
    v = media["mp4"]
    with av.open(str(v.path)) as c:
        s = c.streams.video[0]
        assert s.codec_context.profile == "High"
        packets = [p for p in c.demux(s) if p.size]
    assert any(p.pts != p.dts for p in packets[1:])  # reordered: B-frames
    np.testing.assert_allclose(np.diff(keyframe_times(v.path)), 0.6, atol=1e-6)
    mbps = v.path.stat().st_size * 8 / v.duration_s / 1e6
    assert 0.5 < mbps < 1.6  # the rate control holds the asked-for 1 Mbps: the grain is real
    gaps = np.diff(media["vfr"].frame_times)
    assert gaps.max() > 1.4 * gaps.min()  # variable frame rate


@pytest.mark.parametrize(
    ("key", "source", "complete"),
    [("mp4", "sample-tables", True), ("mkv", "cues", False), ("ts", "scan", True)],
)
def test_index_comes_from_the_container_and_holds_exact_keyframe_times(
    media: dict[str, SyntheticVideo], key: str, source: str, complete: bool
) -> None:
    v = media[key]
    index = container_index(v.path)
    assert (index.source, index.complete) == (source, complete)
    np.testing.assert_allclose(index.keyframe_times, keyframe_times(v.path), atol=1e-6)
    if complete:
        np.testing.assert_allclose(index.frame_times, v.frame_times, atol=1e-6)
    size = v.path.stat().st_size
    if source == "scan":
        assert index.bytes_read >= size * 0.9  # no index: the one demux pass reads it all
    else:
        assert index.bytes_read < size * 0.5  # the header, not the file


def test_mp4_index_gives_presentation_times_on_b_frame_and_vfr_files(
    media: dict[str, SyntheticVideo],
) -> None:
    v = media["vfr"]
    index = container_index(v.path)
    np.testing.assert_allclose(index.frame_times, v.frame_times, atol=1e-6)
    np.testing.assert_allclose(index.keyframe_times, keyframe_times(v.path), atol=1e-6)


def test_plan_moves_samples_to_keyframes_within_the_tolerance() -> None:
    keys = np.array([0.0, 2.2, 4.9, 9.0])
    plan = sample_plan(12.0, 5.0, 1, tolerance_s=0.5, keyframe_times=keys)
    # middles 2.5, 7.5, 10.5 (the last segment is 2 s: a keyframe must lie within 1 s of 11)
    np.testing.assert_allclose(plan.timestamps[:, 0], [2.2, 7.5, 11.0])
    assert plan.on_keyframe[:, 0].tolist() == [True, False, False]
    exact = sample_plan(12.0, 5.0, 1, rule="exact", keyframe_times=keys)
    np.testing.assert_allclose(exact.timestamps[:, 0], [2.5, 7.5, 11.0])
    sub = sample_plan(10.0, 5.0, 4, tolerance_s=1.0, keyframe_times=np.array([0.5, 1.0, 6.0]))
    # sub-interval centres 0.625, 1.875, ...: a keyframe may move a sample within +-0.625 s only
    np.testing.assert_allclose(sub.timestamps[0], [0.5, 1.875, 3.125, 4.375])
    np.testing.assert_allclose(sub.timestamps[1], [6.0, 6.875, 8.125, 9.375])
    with pytest.raises(ValueError, match="sampling"):
        sample_plan(10.0, rule="middle")


@pytest.mark.parametrize("key", ["mp4", "mkv", "ts", "vfr"])
def test_default_rule_decodes_each_keyframe_alone_and_returns_it(
    media: dict[str, SyntheticVideo], key: str
) -> None:
    v = media[key]
    plan = recording_plan(v.path, probe(v.path), 1.0, 1, tolerance_s=1.0)
    sampler = PyAVSampler()
    got = counters(sampler.sample(v.path, plan.timestamps, size=SIZE))
    np.testing.assert_array_equal(got, frame_index_at(v.frame_times, plan.timestamps))
    keys = keyframe_times(v.path)
    on_key = np.isclose(plan.timestamps[..., None], keys).any(-1)
    np.testing.assert_array_equal(on_key, plan.on_keyframe)
    st = sampler.last_stats
    assert st.samples == plan.timestamps.size
    assert st.keyframes_alone == int(plan.on_keyframe.sum()) > 0
    if plan.on_keyframe.all():
        assert st.frames_per_sample <= 1.2
    exact = PyAVSampler()
    ts = recording_plan(v.path, probe(v.path), 1.0, 1, rule="exact").timestamps
    np.testing.assert_array_equal(
        counters(exact.sample(v.path, ts, size=SIZE)), frame_index_at(v.frame_times, ts)
    )
    assert exact.last_stats.frames_decoded > 2 * st.frames_decoded


def test_default_rule_reads_a_fraction_of_the_file(media: dict[str, SyntheticVideo]) -> None:
    v = media["mp4"]
    plan = recording_plan(v.path, probe(v.path), 2.0, 1)
    sampler = PyAVSampler()
    sampler.sample(v.path, plan.timestamps, size=SIZE)
    assert 0 < sampler.last_stats.bytes_read < 0.5 * v.path.stat().st_size
    walker = PyAVSampler()  # MPEG-TS is read forward: its bytes are all counted
    walker.sample(media["ts"].path, plan.timestamps, size=SIZE)
    assert walker.last_stats.bytes_read >= 0.9 * media["ts"].path.stat().st_size


def test_single_keyframe_mpegts_decodes_in_one_pass(media: dict[str, SyntheticVideo]) -> None:
    """One keyframe, 300 frames, 12 segments of 5 s: each frame decoded once, not from the
    start again for every segment (the sampler used to seek back to the only keyframe)."""
    v = media["one_ts"]
    frames = len(v.frame_times)
    plan = recording_plan(v.path, probe(v.path), 5.0, 1)
    sampler = PyAVSampler()
    got = counters(sampler.sample(v.path, plan.timestamps, size=SIZE))
    np.testing.assert_array_equal(got, frame_index_at(v.frame_times, plan.timestamps))
    st = sampler.last_stats  # a keyframe decoded alone is decoded again to go on from it
    assert st.frames_decoded <= frames + st.keyframes_alone
    # the service's Decoder asks batch by batch: later calls continue the earlier reader
    total = 0
    for a in range(0, len(plan.timestamps), 3):
        part = plan.timestamps[a : a + 3]
        got = counters(sampler.sample(v.path, part, size=SIZE))
        np.testing.assert_array_equal(got, frame_index_at(v.frame_times, part))
        total += sampler.last_stats.frames_decoded
    assert total <= 2 * frames
    sampler.close()


def test_any_gop_stays_within_twice_the_frame_count(media: dict[str, SyntheticVideo]) -> None:
    """Exact sampling of many timestamps (8 per segment) on a B-frame file with a 1 s GOP."""
    v = media["vfr"]
    ts = recording_plan(v.path, probe(v.path), 1.0, 8, rule="exact").timestamps
    sampler = PyAVSampler()
    got = counters(sampler.sample(v.path, ts, size=SIZE))
    np.testing.assert_array_equal(got, frame_index_at(v.frame_times, ts))
    assert sampler.last_stats.frames_decoded <= 2 * len(v.frame_times)


def test_index_of_a_remuxed_file_is_read_anew(
    media: dict[str, SyntheticVideo], tmp_path: Path
) -> None:
    """The per-process index cache is keyed by size and mtime: a replaced file is re-read."""
    target = tmp_path / "v.mp4"
    target.write_bytes(media["mp4"].path.read_bytes())
    first = container_index(target)
    target.write_bytes(media["vfr"].path.read_bytes())
    second = container_index(target)
    assert len(first.keyframe_times) != len(second.keyframe_times)

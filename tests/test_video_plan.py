"""The GPU decoder's read plan, on the CPU: frames, keyframe runs, byte ranges and the remuxed clip.

The clip the plan builds is decoded here with PyAV (the same bytes DALI would get), so these
tests check that the frames the plan names are the frames shown at the timestamps.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest

from biovl_core.synthetic import SyntheticVideo, read_frame_counter, write_video
from biovl_core.video import index_packets, packet_index_from_arrays, plan_reads, write_clip
from biovl_core.video.info import frame_index_at, frame_times, probe
from biovl_core.video.pyav import _to_rgb
from biovl_core.video.segments import segment_timestamps

SIZE = 112


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SyntheticVideo]:
    """A constant-rate, a variable-rate and a long (6 min, 1 s GOP, low motion) video."""
    d = tmp_path_factory.mktemp("plan")
    return {
        "cfr": write_video(d / "cfr.mp4", 12.0, fps=30, size=(192, 144), gop=15),
        "vfr": write_video(
            d / "vfr.mp4", 8.0, fps=30, size=(192, 144), variable_frame_rate=True, gop=20
        ),
        "long": write_video(
            d / "long.mp4", 360.0, fps=10, size=(128, 96), gop=10, motion=0.2, noise=0.5
        ),
        "mkv": write_video(d / "cfr.mkv", 3.0, fps=30, size=(192, 144), gop=15),
        "vp9": write_video(d / "vp9.mp4", 4.0, fps=30, size=(192, 144), gop=15, codec="vp9"),
    }


def clip_counters(clip: bytes, wanted: np.ndarray) -> np.ndarray:
    """Decode the clip with PyAV and read the frame counter of clip frames `wanted`."""
    with av.open(io.BytesIO(clip)) as container:
        frames = sorted(container.decode(video=0), key=lambda f: f.pts)
    return np.array([read_frame_counter(_to_rgb(frames[i], SIZE, 0)) for i in wanted])


def check_plan(v: SyntheticVideo, ts: np.ndarray) -> None:
    """Plan, remux and decode; the clip's frames must be the ones shown at `ts`."""
    index = index_packets(v.path)
    plan = plan_reads(index, ts)
    expected = frame_index_at(v.frame_times, ts).ravel()
    np.testing.assert_array_equal(plan.frames[plan.inverse], expected)
    got = clip_counters(write_clip(index, plan), plan.clip_frames)
    np.testing.assert_array_equal(got[plan.inverse], expected)
    assert index.keyframe[plan.runs[:, 0]].all()  # every run starts at a keyframe


def test_index_matches_the_packet_scan(videos: dict[str, SyntheticVideo]) -> None:
    v = videos["vfr"]
    index = index_packets(v.path)
    np.testing.assert_allclose(index.frame_times, frame_times(v.path), atol=1e-9)
    assert index.raw_bytes and index.keyframe[0]
    assert len(index.pts) == probe(v.path).num_frames


@pytest.mark.parametrize("k", [1, 3])
def test_plan_clip_holds_the_sampled_frames(videos: dict[str, SyntheticVideo], k: int) -> None:
    v = videos["cfr"]
    check_plan(v, segment_timestamps(probe(v.path), 2.0, k))


def test_plan_on_variable_frame_rate(videos: dict[str, SyntheticVideo]) -> None:
    v = videos["vfr"]
    ts = segment_timestamps(probe(v.path), 0.5, 2)
    check_plan(v, ts)
    naive = np.floor(ts * v.fps + 1e-6).astype(int)  # index = t * fps would be wrong here
    assert np.any(naive != frame_index_at(v.frame_times, ts))


def test_plan_on_a_long_file_reads_a_small_part(videos: dict[str, SyntheticVideo]) -> None:
    v = videos["long"]
    ts = segment_timestamps(probe(v.path), 5.0, 1)  # 72 segments, as the service samples
    index = index_packets(v.path)
    size = index.file_bytes
    read = 0
    for a in range(0, len(ts), 32):  # batches, one index for all of them
        plan = plan_reads(index, ts[a : a + 32])
        read += plan.bytes_read
        assert len(plan.runs) == len(plan.frames)  # 1 s GOPs, 5 s apart: one run per frame
        # each run decodes at most one keyframe range (10 frames), never the whole file
        assert (plan.runs[:, 1] - plan.runs[:, 0]).max() <= 10
    assert read < 0.6 * size
    check_plan(v, ts[40:72])  # late in the file: no seek from the start


@pytest.mark.parametrize("ts", [[[1.0]], [[0.5], [2.9]]], ids=["keyframe-only", "mid-gop"])
def test_clip_keeps_its_last_frame(videos: dict[str, SyntheticVideo], ts: list) -> None:
    """Regression: the remuxed clip carries each packet's duration. Without them the MP4 edit
    list ended at the last frame's start and decoders dropped that frame (VP9: a one-keyframe
    clip decoded to no frame at all, and DALI returned a blank frame)."""
    v = videos["vp9"]
    index = index_packets(v.path)
    assert (index.duration > 0).all()
    plan = plan_reads(index, np.array(ts))
    with av.open(io.BytesIO(write_clip(index, plan))) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    assert decoded == len(plan.packets)
    check_plan(v, np.array(ts))


def test_durations_default_to_the_gaps_between_frames() -> None:
    pts = np.array([0, 3, 1, 2, 6])  # decode order, one B-pyramid
    index = packet_index_from_arrays(
        "x.mp4",
        pts,
        np.arange(5),
        np.arange(5) * 10,
        np.full(5, 10),
        np.eye(5)[0] > 0,
        Fraction(1, 30),
        0,
        duration=np.array([0, 0, 1, 0, 0]),
    )
    # frames in pts order 0 1 2 3 6: gaps 1 1 1 3, the last gets the median gap (1)
    assert index.duration.tolist() == [1, 3, 1, 1, 1]


def test_overlapping_ranges_share_a_run(videos: dict[str, SyntheticVideo]) -> None:
    v = videos["cfr"]
    index = index_packets(v.path)
    plan = plan_reads(index, np.array([[0.1, 0.2], [0.3, 5.0]]))
    assert len(plan.runs) == 2 and len(plan.frames) == 4
    assert plan.runs[0, 0] == 0 and index.keyframe[plan.runs[1, 0]]
    assert plan.bytes_read < index.file_bytes
    assert plan.byte_ranges.shape[1] == 2 and (np.diff(plan.byte_ranges.ravel()) > 0).all()


def test_repeated_and_unsorted_timestamps(videos: dict[str, SyntheticVideo]) -> None:
    v = videos["cfr"]
    check_plan(v, np.array([[8.0, 1.0], [8.0, 10.5], [1.0, 0.0]]))


def test_open_gop_leading_pictures_pull_in_the_range_before() -> None:
    # decode order: I0 P3 B1 B2 | I6 B4 B5 P9 B7 B8; B4, B5 precede their keyframe I6 (open GOP)
    pts = np.array([0, 3, 1, 2, 6, 4, 5, 9, 7, 8])
    key = np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 0], dtype=bool)
    index = packet_index_from_arrays(
        "x.mp4", pts, np.arange(10), np.arange(10) * 100, np.full(10, 100), key, Fraction(1), 0
    )
    assert index.leading.tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 0, 0]
    leading = plan_reads(index, np.array([[4.0]]))  # frame 4 is B4
    assert leading.runs.tolist() == [[0, 6]] and leading.packets.tolist() == [0, 1, 2, 3, 4, 5]
    assert leading.clip_frames.tolist() == [4]
    after = plan_reads(index, np.array([[7.0]]))  # frame 7: from I6, leading B4 B5 left out
    assert after.runs.tolist() == [[4, 9]] and after.packets.tolist() == [4, 7, 8]
    assert after.clip_frames.tolist() == [1]  # clip presents I6, B7, P9
    assert after.byte_ranges.tolist() == [[400, 500], [700, 900]]


def test_matroska_is_refused_with_a_fix(videos: dict[str, SyntheticVideo]) -> None:
    index = index_packets(videos["mkv"].path)
    assert not index.raw_bytes
    with pytest.raises(Exception, match="remux it to MP4"):
        write_clip(index, plan_reads(index, np.array([[1.0]])))

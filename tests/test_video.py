"""Video probing, segment timestamps and frame sampling, checked against generated videos."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from biovl_core.device import cuda_available
from biovl_core.errors import VideoError
from biovl_core.synthetic import SyntheticVideo, read_frame_counter, write_video
from biovl_core.video import (
    DecoderChoice,
    PyAVSampler,
    VideoInfo,
    choose_decoder,
    dali_available,
    frame_index_at,
    frame_times,
    get_sampler,
    probe,
    segment_count,
    segment_timestamps,
    video_sha256,
)

SIZE = 112  # output crop; large enough for the frame counter to read back reliably


def counters(frames: np.ndarray) -> np.ndarray:
    """Frame indices painted in sampled frames [N, k, S, S, 3]."""
    return np.array([[read_frame_counter(f) for f in row] for row in frames])


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SyntheticVideo]:
    """Small test videos, written once for the module."""
    d = tmp_path_factory.mktemp("videos")
    return {
        "cfr": write_video(
            d / "cfr.mp4", 12.0, fps=30, size=(192, 144), gop=15, scenes=[(3, 7, 1)]
        ),
        "vfr": write_video(
            d / "vfr.mp4", 6.0, fps=30, size=(192, 144), variable_frame_rate=True, gop=15
        ),
        "rot90": write_video(d / "rot90.mp4", 1.0, fps=30, size=(192, 144), rotation=90),
        "rot180": write_video(d / "rot180.mp4", 1.0, fps=30, size=(192, 144), rotation=180),
        "rot270": write_video(d / "rot270.mp4", 1.0, fps=30, size=(144, 192), rotation=270),
    }


def test_probe_constant_frame_rate(videos: dict[str, SyntheticVideo]) -> None:
    info = probe(videos["cfr"].path)
    assert isinstance(info, VideoInfo)
    assert info.duration_s == pytest.approx(12.0, abs=1e-3)
    assert info.avg_fps == pytest.approx(30.0)
    assert (info.width, info.height, info.rotation) == (192, 144, 0)
    assert info.num_frames == 360 and info.num_frames_exact
    assert not info.variable_frame_rate
    assert info.codec == "h264"
    assert info.path == str(videos["cfr"].path)


@pytest.mark.parametrize(("key", "rotation"), [("rot90", 90), ("rot180", 180), ("rot270", 270)])
def test_probe_reads_rotation(videos: dict[str, SyntheticVideo], key: str, rotation: int) -> None:
    v = videos[key]
    info = probe(v.path)
    assert info.rotation == rotation
    assert (info.width, info.height) == v.size
    if rotation in (90, 270):
        assert (info.coded_width, info.coded_height) == (v.size[1], v.size[0])


def test_probe_detects_variable_frame_rate(videos: dict[str, SyntheticVideo]) -> None:
    v = videos["vfr"]
    info = probe(v.path)
    assert info.variable_frame_rate
    assert info.num_frames == len(v.frame_times)
    np.testing.assert_allclose(frame_times(v.path), v.frame_times, atol=1e-4)


def test_segment_count_rules() -> None:
    assert segment_count(10.0, 5.0) == 2
    assert segment_count(10.6, 5.0) == 3
    assert segment_count(10.3, 5.0) == 2  # a 0.3 s tail is dropped
    assert segment_count(0.2, 5.0) == 1
    with pytest.raises(ValueError, match="duration_s"):
        segment_count(0.0, 5.0)


def test_segment_timestamps_middles_and_subintervals() -> None:
    mid = segment_timestamps(12.0, 5.0)
    np.testing.assert_allclose(mid[:, 0], [2.5, 7.5, 11.0])  # last segment is [10, 12)
    four = segment_timestamps(10.0, 5.0, frames_per_segment=4)
    np.testing.assert_allclose(four[0], [0.625, 1.875, 3.125, 4.375])
    assert four.shape == (2, 4) and four.dtype == np.float64
    tail_dropped = segment_timestamps(10.3, 5.0)
    assert tail_dropped.shape == (2, 1) and tail_dropped[-1, 0] == pytest.approx(7.5)


@pytest.mark.parametrize("k", [1, 3])
def test_sampler_returns_the_frame_shown_at_each_timestamp(
    videos: dict[str, SyntheticVideo], k: int
) -> None:
    v = videos["cfr"]
    ts = segment_timestamps(probe(v.path), 2.0, k)
    frames = PyAVSampler().sample(v.path, ts, size=SIZE)
    assert frames.shape == (*ts.shape, SIZE, SIZE, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(counters(frames), frame_index_at(v.frame_times, ts))


def test_frame_rule_at_boundaries(videos: dict[str, SyntheticVideo]) -> None:
    v = videos["cfr"]
    ts = np.array([[0.0, 0.999, 1.0, 1.0 + 1 / 60, 11.99, 50.0, -1.0]])
    got = counters(PyAVSampler().sample(v.path, ts, size=SIZE))
    np.testing.assert_array_equal(got[0], [0, 29, 30, 30, 359, 359, 0])


def test_seek_and_forward_only_paths_agree(
    videos: dict[str, SyntheticVideo], tmp_path: Path
) -> None:
    """The MP4 is read by seeking to keyframes; the same stream in MPEG-TS (no index, seeks
    unreliable) only forward: the same frames, each decoded from its keyframe."""
    v = videos["cfr"]
    ts_file = tmp_path / "cfr.ts"
    with av.open(str(v.path)) as src, av.open(str(ts_file), "w", format="mpegts") as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.size:
                packet.stream = out
                dst.mux(packet)
    ts = segment_timestamps(probe(v.path), 1.5, 2)
    seeker, walker = PyAVSampler(), PyAVSampler()
    a = seeker.sample(v.path, ts, size=SIZE)
    b = walker.sample(ts_file, ts, size=SIZE)
    np.testing.assert_array_equal(counters(a), counters(b))
    assert seeker.last_stats.seeks > 0 and walker.last_stats.seeks == 0
    assert walker.last_stats.frames_decoded <= len(v.frame_times)


def test_few_timestamps_decode_a_fraction_of_the_frames(videos: dict[str, SyntheticVideo]) -> None:
    v = videos["cfr"]
    sampler = PyAVSampler()
    frames = sampler.sample(v.path, np.array([[2.0], [9.5]]), size=SIZE)
    np.testing.assert_array_equal(counters(frames)[:, 0], [60, 285])
    assert sampler.last_stats.frames_decoded < 0.25 * len(v.frame_times)
    assert sampler.last_stats.frames_converted == 2


def test_unsorted_timestamps_keep_their_positions(videos: dict[str, SyntheticVideo]) -> None:
    v = videos["cfr"]
    ts = np.array([[8.0, 1.0], [4.0, 10.5]])
    got = counters(PyAVSampler().sample(v.path, ts, size=SIZE))
    np.testing.assert_array_equal(got, frame_index_at(v.frame_times, ts))


@pytest.mark.parametrize("key", ["rot90", "rot180", "rot270"])
def test_rotation_is_applied(videos: dict[str, SyntheticVideo], key: str) -> None:
    v = videos[key]
    ts = np.array([[0.2, 0.5]])
    got = counters(PyAVSampler().sample(v.path, ts, size=SIZE))
    np.testing.assert_array_equal(got, frame_index_at(v.frame_times, ts))


@pytest.mark.parametrize("key", ["rot90", "rot270"])
def test_rotation_matches_opencv_autorotation(videos: dict[str, SyntheticVideo], key: str) -> None:
    cv2 = pytest.importorskip(
        "cv2", reason="opencv-python-headless (dev extra) cross-checks rotation"
    )
    v = videos[key]
    cap = cv2.VideoCapture(str(v.path))
    ok, bgr = cap.read()
    cap.release()
    assert ok
    assert bgr.shape[:2] == (v.size[1], v.size[0])  # OpenCV turns it upright too
    ours = PyAVSampler().sample(v.path, np.array([[0.0]]), size=SIZE)[0, 0]
    theirs = cv2.resize(
        np.ascontiguousarray(bgr[..., ::-1]),
        None,
        fx=SIZE / min(bgr.shape[:2]),
        fy=SIZE / min(bgr.shape[:2]),
        interpolation=cv2.INTER_AREA,
    )
    h, w = theirs.shape[:2]
    theirs = theirs[
        (h - SIZE) // 2 : (h - SIZE) // 2 + SIZE, (w - SIZE) // 2 : (w - SIZE) // 2 + SIZE
    ]
    assert read_frame_counter(theirs) == 0 == read_frame_counter(ours)
    assert np.abs(ours.astype(int) - theirs.astype(int)).mean() < 12


def test_variable_frame_rate_uses_presentation_times(videos: dict[str, SyntheticVideo]) -> None:
    v = videos["vfr"]
    ts = segment_timestamps(probe(v.path), 0.5, 2)
    got = counters(PyAVSampler().sample(v.path, ts, size=SIZE))
    expected = frame_index_at(v.frame_times, ts)
    np.testing.assert_array_equal(got, expected)
    naive = np.floor(ts * v.fps + 1e-6).astype(int)  # index / fps would be wrong here
    assert np.any(naive != expected)


def test_iter_batches_bounds_memory(videos: dict[str, SyntheticVideo]) -> None:
    v = videos["cfr"]
    ts = segment_timestamps(probe(v.path), 1.0, 2)  # 12 segments
    sampler = PyAVSampler()
    batches = list(sampler.iter_batches(v.path, ts, size=SIZE, batch_segments=5))
    assert [(sl.start, sl.stop) for sl, _ in batches] == [(0, 5), (5, 10), (10, 12)]
    assert [b.shape for _, b in batches] == [(5, 2, SIZE, SIZE, 3)] * 2 + [(2, 2, SIZE, SIZE, 3)]
    np.testing.assert_array_equal(
        np.concatenate([b for _, b in batches]), sampler.sample(v.path, ts, size=SIZE)
    )


def test_timestamps_must_be_two_dimensional(videos: dict[str, SyntheticVideo]) -> None:
    with pytest.raises(ValueError, match="2-D"):
        PyAVSampler().sample(videos["cfr"].path, np.array([1.0, 2.0]))


def _bad_files(d: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """Broken inputs, each with a word its error message must contain."""
    text = d / "notes.mp4"
    text.write_text("not a video\n" * 100)
    truncated = d / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    faststart = d / "faststart.mp4"
    with av.open(str(faststart), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(30):
            c.mux(
                s.encode(
                    av.VideoFrame.from_ndarray(
                        np.full((48, 64, 3), i * 8, np.uint8), format="rgb24"
                    )
                )
            )
        c.mux(s.encode(None))
    truncated_fs = d / "truncated_faststart.mp4"
    truncated_fs.write_bytes(faststart.read_bytes()[: int(faststart.stat().st_size * 0.6)])
    audio = d / "voice.m4a"
    no_frames = d / "no_frames.mkv"
    for path, with_video in ((audio, False), (no_frames, True)):
        with av.open(str(path), "w") as c:
            if with_video:
                v = c.add_stream("libx264", rate=30)
                v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
            a = c.add_stream("aac", rate=44100)
            for i in range(10):
                fr = av.AudioFrame.from_ndarray(
                    np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
                )
                fr.sample_rate, fr.pts = 44100, i * 1024
                c.mux(a.encode(fr))
            c.mux(a.encode(None))
    unknown = d / "unknown_codec.mp4"
    unknown.write_bytes(good.read_bytes().replace(b"avc1", b"zzzz"))
    empty = d / "empty.mp4"
    empty.write_bytes(b"")
    return {
        "text": (text, "not a video"),
        "truncated": (truncated, "truncated"),
        "truncated_faststart": (truncated_fs, "truncated"),
        "audio_only": (audio, "no video stream"),
        "no_frames": (no_frames, "no frames"),
        "unknown_codec": (unknown, "codec"),
        "empty": (empty, "empty"),
        "missing": (d / "missing.mp4", "not found"),
        "folder": (d, "folder"),
    }


@pytest.fixture(scope="module")
def bad_files(
    tmp_path_factory: pytest.TempPathFactory, videos: dict[str, SyntheticVideo]
) -> dict[str, tuple[Path, str]]:
    """Broken inputs written once for the module."""
    return _bad_files(tmp_path_factory.mktemp("bad"), videos["cfr"].path)


@pytest.mark.parametrize(
    "case",
    [
        "text",
        "truncated",
        "truncated_faststart",
        "audio_only",
        "no_frames",
        "unknown_codec",
        "empty",
        "missing",
        "folder",
    ],
)
def test_bad_inputs_raise_one_clear_video_error(
    bad_files: dict[str, tuple[Path, str]], case: str
) -> None:
    path, word = bad_files[case]
    with pytest.raises(VideoError) as err:
        probe(path)
    assert str(path) in str(err.value)
    assert word in str(err.value)
    with pytest.raises(VideoError):
        PyAVSampler().sample(path, np.array([[0.5]]))


def test_video_sha256_streams_the_file(videos: dict[str, SyntheticVideo], tmp_path: Path) -> None:
    p = videos["cfr"].path
    assert video_sha256(p, chunk=4096) == hashlib.sha256(p.read_bytes()).hexdigest()
    copy = tmp_path / "copy.mp4"
    shutil.copy(p, copy)
    assert video_sha256(copy) == video_sha256(p)
    with pytest.raises(VideoError, match="not found"):
        video_sha256(tmp_path / "nope.mp4")


def test_get_sampler_by_name() -> None:
    assert isinstance(get_sampler("pyav"), PyAVSampler)
    assert get_sampler("auto").name == choose_decoder("auto").backend
    with pytest.raises(ValueError, match="auto, pyav, dali"):
        get_sampler("ffmpeg-gpu")


def test_choose_decoder_names_the_reason() -> None:
    assert choose_decoder("pyav") == DecoderChoice("pyav", "requested")
    assert choose_decoder("DALI").backend == "dali"
    with pytest.raises(ValueError, match="auto, pyav, dali"):
        choose_decoder("nvdec")
    if not cuda_available():
        assert choose_decoder("auto").backend == "pyav"
        assert choose_decoder("auto").reason == "no_cuda"


def test_gpu_node_without_nvdec_serves_on_pyav_after_one_warning(
    videos: dict[str, SyntheticVideo],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A GPU with DALI installed but a driver without libnvcuvid: PyAV, reason no_nvcuvid."""
    from biovl_core.video import decoders as video

    monkeypatch.setattr(video, "cuda_available", lambda: True)
    monkeypatch.setattr(video, "dali_available", lambda: True)
    monkeypatch.setattr(video, "nvdec_library", lambda: None)
    choose_decoder.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="biovl_core.video"):
            first = choose_decoder("auto")
            sampler = get_sampler("auto")
        assert (first.backend, first.reason) == ("pyav", "no_nvcuvid")
        assert "NVIDIA_DRIVER_CAPABILITIES" in first.detail
        assert len([r for r in caplog.records if "falls back to PyAV" in r.message]) == 1
        frames = sampler.sample(videos["cfr"].path, np.array([[2.0]]), size=SIZE)
        assert counters(frames)[0, 0] == 60
    finally:
        choose_decoder.cache_clear()


@pytest.mark.gpu
@pytest.mark.skipif(
    not dali_available(),
    reason="needs a CUDA GPU and nvidia-dali (pip install 'biovl-aligner[gpu]')",
)
def test_dali_picks_the_same_frames_as_pyav(videos: dict[str, SyntheticVideo]) -> None:
    v = videos["cfr"]
    ts = segment_timestamps(probe(v.path), 2.0, 2)
    gpu = get_sampler("dali").sample(v.path, ts, size=SIZE)
    assert gpu.is_cuda and tuple(gpu.shape) == (*ts.shape, SIZE, SIZE, 3)
    cpu = PyAVSampler().sample(v.path, ts, size=SIZE)
    np.testing.assert_array_equal(counters(gpu.cpu().numpy()), counters(cpu))
    assert np.abs(gpu.cpu().numpy().astype(int) - cpu.astype(int)).mean() < 8

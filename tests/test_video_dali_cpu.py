"""The DALI sampler on DALI's CPU backend, frame by frame against PyAV.

The pipeline is the one the GPU runs: packet index, read plan, remuxed clip, DALI's ``frames``
indexing, resize, crop and rotation. Only the decoder differs. The pip wheel's CPU decoder has
no H.264, so these videos are VP9 in MP4. NVDEC (``backend="mixed"``) runs only in
``make gpu-check``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nvidia.dali", reason="nvidia-dali-cuda130 is a dev dependency (make venv)")

from biovl_core.bench.decode import MAX_MEAN_ABS_DIFF  # noqa: E402
from biovl_core.synthetic import SyntheticVideo, read_frame_counter, write_video  # noqa: E402
from biovl_core.video import (  # noqa: E402
    PyAVSampler,
    frame_index_at,
    index_packets,  # noqa: E402
    probe,
    segment_timestamps,
)
from biovl_core.video.dali import DALISampler, dali_reason  # noqa: E402

SIZE = 112


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SyntheticVideo]:
    """VP9 videos: constant and variable frame rate, rotated, long, Matroska; one H.264."""
    d = tmp_path_factory.mktemp("dali")
    small = {"fps": 30, "size": (192, 144), "gop": 20, "codec": "vp9"}
    return {
        "cfr": write_video(d / "cfr.mp4", 6.0, **small),
        "vfr": write_video(d / "vfr.mp4", 6.0, variable_frame_rate=True, **small),
        "rot90": write_video(d / "rot90.mp4", 4.0, rotation=90, **small),
        "rot270": write_video(d / "rot270.mp4", 4.0, rotation=270, **small),
        "long": write_video(
            d / "long.mp4", 150.0, fps=6, size=(128, 96), gop=6, codec="vp9", motion=0.2
        ),
        "mkv": write_video(d / "cfr.mkv", 3.0, **small),
        "h264": write_video(d / "h264.mp4", 3.0, fps=30, size=(192, 144), gop=20),
    }


@pytest.fixture()
def dali() -> DALISampler:
    return DALISampler(backend="cpu", num_threads=2)


def counters(frames: np.ndarray) -> np.ndarray:
    """The frame counter read back from each sampled frame [N, k, S, S, 3] -> [N, k]."""
    return np.array([[read_frame_counter(f) for f in row] for row in frames])


@pytest.mark.parametrize("name", ["cfr", "vfr", "rot90", "rot270"])
def test_same_frames_as_pyav(videos: dict[str, SyntheticVideo], dali: DALISampler, name: str):
    v = videos[name]
    ts = segment_timestamps(probe(v.path), 0.5, 3)
    got = dali.sample(v.path, ts, size=SIZE)
    assert got.device.type == "cpu" and tuple(got.shape) == (*ts.shape, SIZE, SIZE, 3)
    frames = got.numpy()
    np.testing.assert_array_equal(counters(frames), frame_index_at(v.frame_times, ts))
    reference = PyAVSampler().sample(v.path, ts, size=SIZE)
    diff = np.abs(frames.astype(np.int16) - reference.astype(np.int16))
    assert diff.mean() < MAX_MEAN_ABS_DIFF, f"{name}: mean |DALI - PyAV| {diff.mean():.2f}"
    assert dali.fallbacks == 0 and 0 < dali.last_bytes_read <= v.path.stat().st_size


def test_batches_chunks_and_the_last_frame(videos: dict[str, SyntheticVideo], dali: DALISampler):
    """Small batches and clips of at most 4 frames cover every segment, the file's last frame too."""
    v = videos["cfr"]
    ts = np.concatenate([segment_timestamps(probe(v.path), 0.5, 2), [[v.frame_times[-1]] * 2]])
    small = DALISampler(backend="cpu", num_threads=2, max_clip_frames=4)
    parts = list(small.iter_batches(v.path, ts, size=SIZE, batch_segments=3))
    assert [p[0] for p in parts] == [slice(a, min(a + 3, len(ts))) for a in range(0, len(ts), 3)]
    frames = np.concatenate([p[1].numpy() for p in parts])
    np.testing.assert_array_equal(counters(frames), frame_index_at(v.frame_times, ts))
    assert counters(frames)[-1, -1] == len(v.frame_times) - 1
    np.testing.assert_array_equal(frames, dali.sample(v.path, ts, size=SIZE).numpy())


def test_long_file_reads_a_small_part(videos: dict[str, SyntheticVideo], dali: DALISampler):
    """2.5 minutes sampled as the service does (5 s segments, 1 frame): right frames at every
    depth of the file, from a fraction of its bytes, with one packet index for all batches."""
    v = videos["long"]
    ts = segment_timestamps(probe(v.path), 5.0, 1)
    read = 0
    frames = []
    for _, batch in dali.iter_batches(v.path, ts, size=SIZE, batch_segments=8):
        frames.append(batch.numpy())
        read += dali.last_bytes_read
    np.testing.assert_array_equal(
        counters(np.concatenate(frames)), frame_index_at(v.frame_times, ts)
    )
    assert dali.last_stats.frames_converted == len(ts)
    assert read < 0.5 * v.path.stat().st_size
    assert len(dali._indexes) == 1


def test_a_video_dali_cannot_decode_goes_to_pyav(
    videos: dict[str, SyntheticVideo], dali: DALISampler, caplog: pytest.LogCaptureFixture
):
    """H.264 on the CPU backend stands in for a codec or profile NVDEC lacks: one warning naming
    the file, right frames from PyAV, and the next video still decodes with DALI."""
    h264, vp9 = videos["h264"], videos["cfr"]
    ts = segment_timestamps(probe(h264.path), 0.5, 2)
    with caplog.at_level(logging.WARNING, logger="biovl_core.video.dali"):
        frames = np.concatenate([b.numpy() for _, b in dali.iter_batches(h264.path, ts, SIZE, 2)])
    np.testing.assert_array_equal(counters(frames), frame_index_at(h264.frame_times, ts))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(h264.path) in warnings[0] and "PyAV" in warnings[0]
    assert dali.fallbacks == 1
    dali.sample(h264.path, ts[:2], size=SIZE)  # known now: straight to PyAV, no second failure
    assert dali.fallbacks == 1
    ts9 = segment_timestamps(probe(vp9.path), 1.0, 1)
    got = dali.sample(vp9.path, ts9, size=SIZE).numpy()
    np.testing.assert_array_equal(counters(got), frame_index_at(vp9.frame_times, ts9))
    assert dali.last_bytes_read > 0  # read by a DALI read plan, not by PyAV


def test_matroska_is_decoded_by_pyav(videos: dict[str, SyntheticVideo], dali: DALISampler):
    v = videos["mkv"]
    assert not index_packets(v.path).raw_bytes
    ts = segment_timestamps(probe(v.path), 1.0, 2)
    got = dali.sample(v.path, ts, size=SIZE).numpy()
    np.testing.assert_array_equal(counters(got), frame_index_at(v.frame_times, ts))


def test_dali_reason_picks_the_line_that_says_what_failed() -> None:
    text = (
        "Critical error in pipeline:\nError in CPU operator `nvidia.dali.fn.decoders.video`,\n"
        "which was used in the pipeline definition with the following traceback:\n\n"
        '  File "x.py", line 1\n\nencountered:\n\nAssert on "IsValid()" failed: Failed to '
        'create video decoder for "memory file"\nC++ context: [video_decoder_base.h:246]'
    )
    assert dali_reason(RuntimeError(text)) == 'Failed to create video decoder for "memory file"'
    assert dali_reason(RuntimeError("plain message\nmore")) == "plain message"


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="mixed, cpu"):
        DALISampler(backend="gpu")


FUZZ_SCRIPT = """
import sys
from biovl_core.video.dali import DALISampler
from biovl_core.errors import BioVLError
from biovl_core.video import probe, segment_timestamps

sampler = DALISampler(backend="cpu", num_threads=1)
for path in sys.argv[1:]:
    try:
        frames = sampler.sample(path, segment_timestamps(probe(path), 1.0, 2), size=64)
        print("OK", tuple(frames.shape))
    except BioVLError as exc:
        print("ERR", str(exc).splitlines()[0])
"""


def test_corrupt_files_give_frames_or_a_clear_error(
    videos: dict[str, SyntheticVideo], tmp_path: Path
) -> None:
    """Byte-flipped VP9 MP4s through probe, read plan and DALI, in a child process so that a
    crash of DALI's native code fails the test: each gives frames or a one-line VideoError."""
    import random
    import subprocess
    import sys

    data = videos["cfr"].path.read_bytes()
    rng = random.Random(7)
    paths = []
    for i in range(16):
        corrupt = bytearray(data)
        for _ in range(rng.choice([1, 4, 16, 64])):
            j = rng.randrange(len(corrupt))
            corrupt[j] ^= 1 << rng.randrange(8)
        path = tmp_path / f"flipped{i}.mp4"
        path.write_bytes(bytes(corrupt))
        paths.append(str(path))
    run = subprocess.run(
        [sys.executable, "-c", FUZZ_SCRIPT, *paths], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    outcomes = run.stdout.strip().splitlines()
    assert len(outcomes) == len(paths) and all(o.split()[0] in ("OK", "ERR") for o in outcomes)

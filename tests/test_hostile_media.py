"""Media files an attacker would upload: playlists naming other files, lying durations, corrupt bytes.

Each case must end in a clear VideoError or a correct result, never a crash, a hang or a read of
another path. The fuzz test flips bytes in a valid MP4 200 times and runs probe + decode on each
copy in a forked child under a time limit.
"""

from __future__ import annotations

import multiprocessing as mp
import random
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from biovl_core.errors import VideoError  # noqa: E402
from biovl_core.video import PyAVSampler, canonical_extension, probe, segment_timestamps  # noqa: E402
from tests.media_fixtures import encode_video as _encode  # noqa: E402

FUZZ_CASES = 200
FUZZ_TIME_LIMIT_S = 20.0


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


def test_hls_playlist_naming_another_file_is_refused(media: Path) -> None:
    secret = _encode(media / "other-lab-video.mp4")
    playlist = media / "upload.m3u8"
    playlist.write_text(
        f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:2,\n{secret}\n#EXT-X-ENDLIST\n"
    )
    # The attack is real: FFmpeg left to itself opens the playlist and reads the other file.
    with av.open(str(playlist)) as plain:
        assert plain.format.name == "hls" and plain.streams.video
    with pytest.raises(VideoError, match="not in an accepted container"):
        probe(playlist)
    with pytest.raises(VideoError, match="not in an accepted container"):
        PyAVSampler().sample(playlist, np.array([[0.5]]))


def test_concat_list_is_refused(media: Path) -> None:
    secret = _encode(media / "concat-target.mp4")
    listing = media / "list.txt"
    listing.write_text(f"ffconcat version 1.0\nfile '{secret}'\n")
    with pytest.raises(VideoError):
        probe(listing)


def test_duration_comes_from_the_video_stream_not_the_audio(media: Path) -> None:
    mkv = _encode(media / "long-audio.mkv", fmt="matroska", seconds=10, audio_seconds=30)
    info = probe(mkv)
    assert info.duration_s == pytest.approx(10.0, abs=0.15)
    assert len(segment_timestamps(info, 5.0)) == 2
    assert info.canonical_extension == ".mkv"


def test_a_video_spanning_1000_hours_probes_as_such(media: Path) -> None:
    """Two frames at t=0 and t=3.6e6 s: the duration tells the truth, so the service can refuse it."""
    mkv = _encode(media / "huge.mkv", fmt="matroska", pts_ms=[0, 3_600_000_000])
    assert mkv.stat().st_size < 8192
    info = probe(mkv)
    assert info.duration_s > 3.5e6


def test_canonical_extension_comes_from_the_container(media: Path) -> None:
    mp4 = _encode(media / "named-wrong.avi")  # an MP4... no: PyAV writes what the name says
    assert probe(mp4).canonical_extension == ".avi"
    real_mp4 = _encode(media / "clip.mp4")
    renamed = media / "clip.mkv"
    renamed.write_bytes(real_mp4.read_bytes())
    assert probe(renamed).canonical_extension == ".mp4"
    assert canonical_extension("matroska,webm") == ".mkv"
    with pytest.raises(ValueError):
        canonical_extension("hls")


def _probe_and_decode(path: str, queue: mp.Queue) -> None:
    try:
        info = probe(path)
        ts = segment_timestamps(info, 1.0)
        frames = PyAVSampler().sample(path, ts, size=32)
        queue.put(("ok", f"{info.duration_s:.2f}s {frames.shape}"))
    except VideoError as exc:
        queue.put(("error", str(exc)[:200]))
    except Exception as exc:  # anything else is a bug: report it, do not crash the child
        queue.put(("crash", f"{type(exc).__name__}: {exc}"))


@pytest.mark.slow
def test_byte_flipped_mp4s_end_in_a_clear_error_or_a_result(media: Path) -> None:
    base = _encode(media / "fuzz-base.mp4", seconds=3).read_bytes()
    rng = random.Random(20261201)
    ctx = mp.get_context("fork")
    outcomes: dict[str, int] = {"ok": 0, "error": 0}
    for case in range(FUZZ_CASES):
        data = bytearray(base)
        for _ in range(rng.choice([1, 4, 16, 64])):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if case % 10 == 0:  # truncations too
            data = data[: rng.randrange(16, len(data))]
        path = media / f"fuzz-{case:03d}.mp4"
        path.write_bytes(bytes(data))
        queue: mp.Queue = ctx.Queue()
        child = ctx.Process(target=_probe_and_decode, args=(str(path), queue))
        child.start()
        child.join(FUZZ_TIME_LIMIT_S)
        if child.is_alive():
            child.kill()
            pytest.fail(f"case {case}: probe/decode hung for {FUZZ_TIME_LIMIT_S} s on {path}")
        assert child.exitcode == 0, f"case {case}: the child died with exit code {child.exitcode}"
        kind, detail = queue.get(timeout=5)
        assert kind in ("ok", "error"), f"case {case}: not a VideoError: {detail}"
        outcomes[kind] += 1
        path.unlink()
    assert sum(outcomes.values()) == FUZZ_CASES
    assert outcomes["error"] > 0, "no flipped file was refused: the fuzzing did nothing"
    print(f"fuzz outcomes: {outcomes}")

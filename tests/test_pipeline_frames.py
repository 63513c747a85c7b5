"""One recording through the pipeline: which frames stood for each segment (``frame_times``), a
known hash never recomputed, the deadline, and the embedding cache keyed by the sampling rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from biovl_core.embed import EmbeddingCache, load_embedder
from biovl_core.errors import JobDeadlineExceeded
from biovl_core.files import sha256_file
from biovl_core.io import alignment_from_dict, alignment_to_dict
from biovl_core.pipeline import align_video
from biovl_core.protocol import Protocol
from biovl_core.synthetic import SyntheticVideo
from biovl_core.synthetic.camera import CameraProfile, keyframe_times, write_camera_video
from biovl_core.video import segment_timestamps
from tests.fixtures_embed import tiny_cfg

PROTOCOL = Protocol(title="t", steps=["Add water.", "Mix.", "Spin."])
SEG = 2.0


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> SyntheticVideo:
    """A 12 s camera-like clip (B-frames, 0.7 s GOP: keyframes off the segment middles)."""
    d = tmp_path_factory.mktemp("frames")
    profile = CameraProfile(gop_s=0.7, bitrate_mbps=1.0)
    return write_camera_video(d / "cam.mp4", 12.0, profile, size=(160, 120))


@pytest.fixture(scope="module")
def embedder():  # noqa: ANN201 - the tiny CLIP embedder
    return load_embedder(tiny_cfg())


def test_frame_times_say_which_keyframe_stood_for_each_segment(
    video: SyntheticVideo, embedder: object
) -> None:
    cfg = tiny_cfg(segment_seconds=SEG, keyframe_tolerance_s=0.5)
    result = align_video(video.path, PROTOCOL, cfg, embedder=embedder)
    middles = segment_timestamps(video.duration_s, SEG)
    times = np.asarray(result.frame_times)
    assert times.shape == middles.shape
    keys = keyframe_times(video.path)
    assert np.isclose(times[..., None], keys).any(-1).all()  # every one is a keyframe
    assert np.abs(times - middles).max() <= 0.5 + 1e-6
    assert result.decode["samples"] == middles.size
    assert result.decode["frames_decoded"] <= 1.2 * middles.size
    doc = alignment_to_dict(result)
    assert np.allclose(doc["frame_times"], times)
    assert alignment_from_dict(doc).frame_times == doc["frame_times"]


def test_exact_rule_embeds_the_middle_frames(video: SyntheticVideo, embedder: object) -> None:
    cfg = tiny_cfg(segment_seconds=SEG, sampling="exact")
    result = align_video(video.path, PROTOCOL, cfg, embedder=embedder)
    middles = segment_timestamps(video.duration_s, SEG)
    shown = video.frame_times[np.searchsorted(video.frame_times, middles + 1e-6) - 1]
    np.testing.assert_allclose(result.frame_times, shown, atol=1e-6)


def test_a_known_hash_is_not_recomputed(video: SyntheticVideo, embedder: object) -> None:
    cfg = tiny_cfg(segment_seconds=SEG)
    known = align_video(video.path, PROTOCOL, cfg, embedder=embedder, video_sha256="ab" * 32)
    assert known.video_sha256 == "ab" * 32 and "hash" not in known.timings
    hashed = align_video(video.path, PROTOCOL, cfg, embedder=embedder)
    assert hashed.video_sha256 == sha256_file(video.path) and "hash" in hashed.timings


def test_a_job_past_its_deadline_fails_in_one_line(video: SyntheticVideo, embedder: object) -> None:
    cfg = tiny_cfg(segment_seconds=0.5, batch_size=4, job_deadline_s=1e-6)
    with pytest.raises(JobDeadlineExceeded) as err:
        align_video(video.path, PROTOCOL, cfg, embedder=embedder)
    text = str(err.value)
    assert "\n" not in text and str(video.path) in text
    assert "deadline of 1e-06 s" in text and "job_deadline_s" in text
    assert "4 of 24 segments" in text  # checked after the first batch, not after the last


def test_cache_entries_are_kept_apart_by_sampling_rule(
    video: SyntheticVideo, embedder: object, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "cache"
    keyed = tiny_cfg(segment_seconds=SEG, cache_dir=str(cache_dir))
    first = align_video(video.path, PROTOCOL, keyed, embedder=embedder)
    again = align_video(video.path, PROTOCOL, keyed, embedder=embedder)
    assert "decode" in first.timings and "decode" not in again.timings  # from the cache
    assert again.frame_times == first.frame_times  # kept beside the embeddings
    exact = align_video(video.path, PROTOCOL, keyed.replace(sampling="exact"), embedder=embedder)
    assert "decode" in exact.timings  # another rule's frames: not the keyframe entry
    cache = EmbeddingCache(cache_dir)
    key = (first.video_sha256, embedder.cache_key(), SEG, 1)
    assert cache.get(*key, "keyframe:1") is not None and cache.get(*key) is not None
    assert not np.array_equal(cache.get(*key, "keyframe:1"), cache.get(*key))

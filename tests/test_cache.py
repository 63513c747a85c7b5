"""Embedding cache: hits, misses, key separation, atomic writes, no re-embedding on re-align."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from biovl_core.embed import EmbeddingCache, load_embedder
from biovl_core.files import sha256_file
from tests.fixtures_embed import make_tiny_clip_checkpoint, random_frames, tiny_cfg

VIDEO = "ab" * 32
KEY = "clip-open_clip-ViT-B-32-0123456789abcdef0123"


def _emb(rows: int = 6, dim: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)


def test_miss_then_hit_returns_identical_array(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    assert cache.get(VIDEO, KEY, 5.0, 1) is None
    path = cache.put(VIDEO, KEY, 5.0, 1, _emb())
    np.testing.assert_array_equal(cache.get(VIDEO, KEY, 5.0, 1), _emb())
    assert (cache.hits, cache.misses) == (1, 1)
    assert path.is_file() and path.with_suffix(".json").is_file()


@pytest.mark.parametrize(
    "other",
    [
        ("cd" * 32, KEY, 5.0, 1),
        (VIDEO, KEY + "x", 5.0, 1),
        (VIDEO, KEY, 2.5, 1),
        (VIDEO, KEY, 5.0, 8),
    ],
)
def test_every_key_part_separates_entries(tmp_path: Path, other: tuple) -> None:
    cache = EmbeddingCache(tmp_path)
    cache.put(VIDEO, KEY, 5.0, 1, _emb())
    assert cache.get(*other) is None


def test_segment_seconds_int_and_float_share_an_entry(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    cache.put(VIDEO, KEY, 5, 1, _emb())
    assert cache.get(VIDEO, KEY, 5.0, 1) is not None


def test_text_entries_depend_on_steps_and_templates(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    steps = ["add water", "mix"]
    cache.put_texts(KEY, steps, ("{}",), _emb(2))
    np.testing.assert_array_equal(cache.get_texts(KEY, steps, ("{}",)), _emb(2))
    assert cache.get_texts(KEY, ["add water", "mix well"], ("{}",)) is None
    assert cache.get_texts(KEY, steps, ("a photo of {}",)) is None
    assert cache.get_texts(KEY, ["add water mix"], ("{}",)) is None
    with pytest.raises(ValueError, match="2 embeddings for 3 steps"):
        cache.put_texts(KEY, ["a", "b", "c"], ("{}",), _emb(2))


def test_failed_write_leaves_no_entry_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = EmbeddingCache(tmp_path)

    def crash(fh, array, allow_pickle=False):  # noqa: ANN001
        fh.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        cache.put(VIDEO, KEY, 5.0, 1, _emb())
    monkeypatch.undo()
    assert cache.get(VIDEO, KEY, 5.0, 1) is None
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_overwrite_replaces_whole_entry_and_corrupt_entry_is_a_miss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = EmbeddingCache(tmp_path)
    path = cache.put(VIDEO, KEY, 5.0, 1, _emb(seed=1))
    cache.put(VIDEO, KEY, 5.0, 1, _emb(seed=2))
    np.testing.assert_array_equal(cache.get(VIDEO, KEY, 5.0, 1), _emb(seed=2))
    path.write_bytes(b"not an npy file")
    assert cache.get(VIDEO, KEY, 5.0, 1) is None
    assert "unreadable cache entry" in caplog.text


def test_put_refuses_non_matrix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2-D"):
        EmbeddingCache(tmp_path).put(VIDEO, KEY, 5.0, 1, np.zeros(3, np.float32))


def test_sha256_file_hashes_content(tmp_path: Path) -> None:
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    a.write_bytes(b"video bytes")
    b.write_bytes(b"video bytes")
    assert sha256_file(a) == sha256_file(b)
    b.write_bytes(b"other bytes")
    assert sha256_file(a) != sha256_file(b)


class CountingEmbedder:
    """A real tiny embedder that counts how often it is asked to embed."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner = inner
        self.frames_per_segment = inner.frames_per_segment
        self.prompt_templates = inner.prompt_templates
        self.frame_calls = 0
        self.text_calls = 0

    def cache_key(self) -> str:
        return self.inner.cache_key()

    def embed_frames(self, frames: np.ndarray) -> np.ndarray:
        self.frame_calls += 1
        return self.inner.embed_frames(frames)

    def embed_texts(self, steps: list[str]) -> np.ndarray:
        self.text_calls += 1
        return self.inner.embed_texts(steps)


def test_realigning_never_re_embeds(tmp_path: Path) -> None:
    ckpt = make_tiny_clip_checkpoint(tmp_path / "tiny.pt", seed=3)
    embedder = CountingEmbedder(load_embedder(tiny_cfg(ckpt)))
    cache = EmbeddingCache(tmp_path / "cache")
    frames = random_frames(4, 1)
    decodes = []

    def decode_and_embed() -> np.ndarray:
        decodes.append(1)
        return embedder.embed_frames(frames)

    first = cache.segments(VIDEO, embedder, 5.0, decode_and_embed)
    again = cache.segments(VIDEO, embedder, 5.0, decode_and_embed)
    steps = ["add water", "mix"]
    texts = cache.texts(embedder, steps)
    np.testing.assert_array_equal(texts, cache.texts(embedder, steps))
    np.testing.assert_array_equal(first, again)
    assert (len(decodes), embedder.frame_calls, embedder.text_calls) == (1, 1, 1)
    fresh = EmbeddingCache(tmp_path / "cache")
    np.testing.assert_array_equal(fresh.segments(VIDEO, embedder, 5.0, decode_and_embed), first)
    assert len(decodes) == 1

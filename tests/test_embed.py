"""Embedding: shapes, normalisation, batching, prompt ensembles, weight resolution, S3D."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from biovl_core.bench.embed import centred_cosines
from biovl_core.config import PipelineConfig
from biovl_core.device import cuda_available
from biovl_core.embed import (
    MODEL_CONFIG_DIR,
    OPEN_CLIP_CACHE_ENV,
    RANDOM_DEMO,
    S3D,
    S3D_DICT_ENV,
    S3DTokenizer,
    load_embedder,
    load_s3d_dictionary,
    resolve_model_name,
)
from biovl_core.errors import BioVLError, WeightsUnavailable
from tests.fixtures_embed import (
    S3D_WORDS,
    TINY_MODEL,
    TINY_SIZE,
    make_s3d_checkpoint,
    make_tiny_clip_checkpoint,
    random_frames,
    tiny_cfg,
)

open_clip = pytest.importorskip("open_clip")

STEPS = ["Add 10 µl of sterile water.", "Invert 4 times to mix.", "Centrifuge the tube."]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_clip_checkpoint(tmp_path_factory.mktemp("clip") / "tiny.pt", seed=123)


@pytest.fixture(scope="module")
def embedder(ckpt: Path):
    return load_embedder(tiny_cfg(ckpt))


def test_frame_and_text_embeddings_have_shape_dtype_unit_norm(embedder) -> None:
    video = embedder.embed_frames(random_frames(5, 1))
    text = embedder.embed_texts(STEPS)
    assert video.shape == (5, embedder.dim) and text.shape == (3, embedder.dim)
    assert video.dtype == np.float32 and text.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(video, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
    assert embedder.embed_frames(random_frames(0, 1)).shape == (0, embedder.dim)
    assert embedder.embed_texts([]).shape == (0, embedder.dim)
    assert (embedder.input_size, embedder.frames_per_segment) == (TINY_SIZE, 1)
    assert embedder.model_id == f"open_clip:{TINY_MODEL}"


def test_frames_embed_like_open_clip_own_preprocessing(ckpt: Path, embedder) -> None:
    from PIL import Image

    model = open_clip.create_model(TINY_MODEL, pretrained=str(ckpt)).eval()
    preprocess = open_clip.image_transform(TINY_SIZE, is_train=False)
    frames = random_frames(4, 1, seed=3)
    batch = torch.stack([preprocess(Image.fromarray(f)) for f in frames[:, 0]])
    with torch.no_grad():
        expected = F.normalize(model.encode_image(batch), dim=-1).numpy()
    np.testing.assert_allclose(embedder.embed_frames(frames), expected, atol=1e-5)


def test_batch_size_does_not_change_embeddings(ckpt: Path) -> None:
    frames = random_frames(5, 3, seed=1)
    one = load_embedder(tiny_cfg(ckpt, embedder="clip_pooled", frames_per_segment=3, batch_size=1))
    seven = load_embedder(
        tiny_cfg(ckpt, embedder="clip_pooled", frames_per_segment=3, batch_size=7)
    )
    np.testing.assert_allclose(one.embed_frames(frames), seven.embed_frames(frames), atol=1e-5)
    np.testing.assert_allclose(one.embed_texts(STEPS), seven.embed_texts(STEPS), atol=1e-5)


def test_embeddings_are_deterministic_across_calls_and_loads(ckpt: Path, embedder) -> None:
    frames = random_frames(3, 1, seed=2)
    first = embedder.embed_frames(frames)
    np.testing.assert_array_equal(first, embedder.embed_frames(frames))
    np.testing.assert_array_equal(first, load_embedder(tiny_cfg(ckpt)).embed_frames(frames))


def test_clip_uses_middle_frame_and_pooled_averages_frames(ckpt: Path, embedder) -> None:
    frames = random_frames(4, 3, seed=4)
    per_frame = [embedder.embed_frames(frames[:, i : i + 1]) for i in range(3)]
    np.testing.assert_allclose(embedder.embed_frames(frames), per_frame[1], atol=1e-6)
    pooled = load_embedder(tiny_cfg(ckpt, embedder="clip_pooled", frames_per_segment=3))
    mean = np.mean(per_frame, axis=0)
    expected = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    np.testing.assert_allclose(pooled.embed_frames(frames), expected, atol=1e-5)
    assert pooled.frames_per_segment == 3


def test_prompt_ensemble_averages_template_embeddings(ckpt: Path) -> None:
    templates = ("{}", "a photo of a person who is doing this: {}")
    ensemble = load_embedder(tiny_cfg(ckpt, prompt_templates=templates)).embed_texts(STEPS)
    singles = [
        load_embedder(tiny_cfg(ckpt, prompt_templates=(t,))).embed_texts(STEPS) for t in templates
    ]
    mean = np.mean(singles, axis=0)
    np.testing.assert_allclose(
        ensemble, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-5
    )
    assert not np.allclose(singles[0], singles[1], atol=1e-3)


def test_template_without_placeholder_is_refused(ckpt: Path) -> None:
    with pytest.raises(BioVLError, match="placeholder"):
        load_embedder(tiny_cfg(ckpt, prompt_templates=("a photo",)))


def test_checkpoint_weights_are_loaded(tmp_path: Path, ckpt: Path, embedder) -> None:
    frames = random_frames(3, 1, seed=5)
    other = load_embedder(tiny_cfg(make_tiny_clip_checkpoint(tmp_path / "o.pt", seed=7)))
    assert not np.allclose(embedder.embed_frames(frames), other.embed_frames(frames), atol=1e-3)
    assert embedder.weights == f"checkpoint:{ckpt}"
    assert embedder.cache_key() != other.cache_key()


def test_missing_checkpoint_names_file_and_fixes(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(WeightsUnavailable) as info:
        load_embedder(tiny_cfg(missing, allow_random_weights=False))
    message = str(info.value)
    for part in (str(missing), "does not exist", "--checkpoint", "--allow-random-weights"):
        assert part in message


def test_unavailable_pretrained_offline_fails_fast_listing_tags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv(OPEN_CLIP_CACHE_ENV, str(tmp_path))
    cfg = PipelineConfig(
        model="ViT-B-32", pretrained="laion2b_s34b_b79k", device="cpu", allow_random_weights=False
    )
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as info:
        load_embedder(cfg)
    assert time.perf_counter() - start < 5.0
    message = str(info.value)
    for part in ("laion2b_s34b_b79k", "openai", "HF_HUB_OFFLINE", "--checkpoint", str(tmp_path)):
        assert part in message


def test_unknown_tag_lists_the_models_tags() -> None:
    cfg = PipelineConfig(model="ViT-B-32", pretrained="no-such-tag", allow_random_weights=False)
    with pytest.raises(
        WeightsUnavailable, match="no pretrained tag 'no-such-tag'.*laion2b_s34b_b79k"
    ):
        load_embedder(cfg)


def test_unknown_model_is_an_actionable_error() -> None:
    with pytest.raises(BioVLError, match="unknown model 'ViT-Q-99'.*biovl-tiny-clip"):
        load_embedder(PipelineConfig(model="ViT-Q-99", allow_random_weights=True))


def test_random_demo_is_labelled_and_reproducible(
    embedder, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tiny_cfg(None)
    with caplog.at_level("WARNING", logger="biovl_core.embed"):
        demo = load_embedder(cfg)
    assert demo.weights == RANDOM_DEMO
    assert "RANDOM DEMO WEIGHTS" in caplog.text and "MEANINGLESS" in caplog.text
    frames = random_frames(2, 1, seed=6)
    np.testing.assert_array_equal(
        demo.embed_frames(frames), load_embedder(cfg).embed_frames(frames)
    )
    assert demo.cache_key() != embedder.cache_key()


def test_model_config_json_path_and_mismatched_checkpoint(tmp_path: Path, ckpt: Path) -> None:
    config = json.loads((MODEL_CONFIG_DIR / f"{TINY_MODEL}.json").read_text())
    config["embed_dim"] = 48
    path = tmp_path / "wider-tiny.json"
    path.write_text(json.dumps(config))
    assert resolve_model_name(str(path)) == "wider-tiny"
    demo = load_embedder(tiny_cfg(None, model=str(path)))
    assert demo.dim == 48 and demo.model_id == "open_clip:wider-tiny"
    with pytest.raises(WeightsUnavailable, match=f"{ckpt}.*does not fit model wider-tiny"):
        load_embedder(tiny_cfg(ckpt, model=str(path)))


def test_frames_of_another_size_are_resized_on_device(embedder) -> None:
    out = embedder.embed_frames(random_frames(2, 1, size=96, seed=8))
    assert out.shape == (2, embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "frames, error",
    [
        (np.zeros((2, 1, 64, 64, 3), np.float32), ValueError),
        (np.zeros((2, 64, 64, 3), np.uint8), ValueError),
        ([[0]], TypeError),
    ],
)
def test_bad_frames_are_refused(embedder, frames: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        embedder.embed_frames(frames)


def test_torch_uint8_tensor_input_matches_numpy(embedder) -> None:
    frames = random_frames(2, 1, seed=9)
    np.testing.assert_array_equal(
        embedder.embed_frames(torch.from_numpy(frames)), embedder.embed_frames(frames)
    )


# --- S3D MIL-NCE ---------------------------------------------------------------------------


def test_s3d_forward_shapes_on_tiny_input() -> None:
    torch.manual_seed(0)
    net = S3D(num_classes=32, vocab_size=20).eval()
    with torch.inference_mode():
        video = net.forward_video(torch.rand(2, 3, 4, 32, 32))
        text = net.forward_text(torch.tensor([[1, 2, 0, 0], [3, 0, 0, 0]]))
    assert video.shape == (2, 32) and text.shape == (2, 32)
    with pytest.raises(ValueError, match="even"):
        net.forward_video(torch.rand(1, 3, 3, 32, 32))


def test_s3d_state_dict_uses_published_key_names() -> None:
    keys = set(S3D(vocab_size=10).state_dict())
    for key in (
        "conv1.conv1.weight",
        "conv_2c.conv2.weight",
        "gating.fc.weight",
        "mixed_3b.conv_b1_b.bn2.running_var",
        "mixed_5c.gating_b3.fc.bias",
        "fc.weight",
        "text_module.word_embd.weight",
        "text_module.fc1.weight",
        "text_module.fc2.bias",
    ):
        assert key in keys


def test_s3d_tokenizer_follows_the_reference_rules() -> None:
    tok = S3DTokenizer(["add", "water", "don't"], vocab_size=4, max_words=4)
    ids = tok(["Add WATER, unknown don't add water", "nothing known"])
    assert ids.tolist() == [[1, 2, 3, 1], [0, 0, 0, 0]]
    with pytest.raises(ValueError, match="do not belong together"):
        S3DTokenizer(["a", "b", "c"], vocab_size=3)


def test_s3d_checkpoint_round_trip(tmp_path: Path) -> None:
    path = make_s3d_checkpoint(tmp_path / "s3d", seed=11)
    cfg = PipelineConfig(embedder="s3d", checkpoint=str(path), frames_per_segment=4, device="cpu")
    emb = load_embedder(cfg)
    assert (emb.model_id, emb.weights, emb.dim, emb.input_size) == (
        "s3d_milnce",
        f"checkpoint:{path}",
        32,
        224,
    )
    assert load_s3d_dictionary(path.parent / "s3d_dict.npy") == S3D_WORDS
    frames = random_frames(2, 4, size=224, seed=12)
    video = emb.embed_frames(frames)
    assert not np.allclose(video[0], video[1], atol=1e-4)
    reference = S3D(num_classes=32, vocab_size=len(S3D_WORDS) + 1)
    reference.load_state_dict(torch.load(path, weights_only=True))
    clip = torch.from_numpy(frames).float().div(255).permute(0, 4, 1, 2, 3)
    with torch.inference_mode():
        expected = F.normalize(reference.eval().forward_video(clip), dim=-1).numpy()
    np.testing.assert_allclose(video, expected, atol=1e-5)
    text = emb.embed_texts(["add water", "mix the buffer"])
    assert text.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
    with torch.inference_mode():
        ids = torch.tensor([[1, 2] + [0] * 14])
        expected_text = F.normalize(reference.forward_text(ids), dim=-1).numpy()
    np.testing.assert_allclose(text[:1], expected_text, atol=1e-5)


def test_s3d_needs_local_checkpoint_and_dictionary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(WeightsUnavailable, match="s3d_howto100m.pth"):
        load_embedder(PipelineConfig(embedder="s3d", allow_random_weights=False))
    path = make_s3d_checkpoint(tmp_path / "s3d", seed=1)
    (path.parent / "s3d_dict.npy").unlink()
    cfg = PipelineConfig(embedder="s3d", checkpoint=str(path), allow_random_weights=False)
    with pytest.raises(WeightsUnavailable, match=f"dictionary {path.parent / 's3d_dict.npy'}"):
        load_embedder(cfg)
    monkeypatch.setenv(S3D_DICT_ENV, str(tmp_path / "elsewhere.npy"))
    with pytest.raises(WeightsUnavailable, match="elsewhere.npy"):
        load_embedder(cfg)


def test_s3d_random_demo_embeds_text_by_hashed_words() -> None:
    emb = load_embedder(
        PipelineConfig(
            embedder="s3d", frames_per_segment=2, device="cpu", allow_random_weights=True
        )
    )
    assert emb.weights == RANDOM_DEMO and emb.dim == 512
    text = emb.embed_texts(["add water", "centrifuge the tube"])
    assert not np.allclose(text[0], text[1], atol=1e-3)
    with pytest.raises(BioVLError, match="even number"):
        load_embedder(
            PipelineConfig(
                embedder="s3d", frames_per_segment=3, device="cpu", allow_random_weights=True
            )
        )


# --- GPU ---------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU (none visible)")
def test_gpu_fp16_matches_cpu_fp32(ckpt: Path, embedder) -> None:
    gpu = load_embedder(tiny_cfg(ckpt, device="cuda"))
    frames = random_frames(8, 1, seed=13)
    on_gpu, on_cpu = gpu.embed_frames(frames), embedder.embed_frames(frames)
    assert np.sum(on_gpu * on_cpu, axis=1).min() > 0.99
    assert centred_cosines(on_gpu, on_cpu).min() > 0.99
    cos_text = np.sum(gpu.embed_texts(STEPS) * embedder.embed_texts(STEPS), axis=1)
    assert cos_text.min() > 0.99

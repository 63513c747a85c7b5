"""The embedder factory: `load_embedder(cfg)` builds the configured model with its weights on the chosen device."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from biovl_core.config import PipelineConfig
from biovl_core.device import torch_device
from biovl_core.embed.embedders import (
    POOLED_DEFAULT_FRAMES,
    S3D_DEFAULT_FRAMES,
    ClipEmbedder,
    Embedder,
    S3DEmbedder,
)
from biovl_core.embed.s3d_model import S3D, S3DTokenizer, demo_init_, load_s3d_dictionary
from biovl_core.embed.weights import (
    EMBEDDERS,
    RANDOM_DEMO_SEED,
    ResolvedWeights,
    open_clip_module,
    resolve_model_name,
    resolve_weights,
    s3d_fix_hint,
)
from biovl_core.errors import BioVLError, WeightsUnavailable


def _check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    templates = tuple(templates) or ("{}",)
    for tpl in templates:
        if "{}" not in tpl:
            raise BioVLError(
                f"prompt template {tpl!r} has no '{{}}' placeholder for the step text; "
                "write templates like 'a photo of a person who is {}'."
            )
    return templates


def _seeded(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Build a model under a fixed CPU seed so random-demo weights are the same in every process."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_DEMO_SEED)
        return fn(*args, **kwargs)


def _load_clip(cfg: PipelineConfig, device: str, templates: tuple[str, ...]) -> ClipEmbedder:
    open_clip = open_clip_module()
    name = resolve_model_name(cfg.model)
    weights = resolve_weights(cfg, name)
    preprocess = {
        key: weights.tag_cfg[key]
        for key in ("mean", "std", "interpolation", "resize_mode")
        if key in weights.tag_cfg
    }
    try:
        model = _seeded(
            open_clip.create_model,
            name,
            pretrained=weights.path,
            precision="fp16" if device.startswith("cuda") else "fp32",
            device=device,
            force_quick_gelu=bool(weights.tag_cfg.get("quick_gelu", False)),
            force_preprocess_cfg=preprocess or None,
        )
    except RuntimeError as exc:
        if weights.path is None:
            raise
        raise WeightsUnavailable(
            f"weights file {weights.path} does not fit model {name} ({exc}). Pass a checkpoint "
            f"saved from the same architecture, or pick the model it was trained with."
        ) from exc
    architecture = open_clip.get_model_config(name) or {}
    architecture["quick_gelu"] = bool(
        weights.tag_cfg.get("quick_gelu", architecture.get("quick_gelu", False))
    )
    kind = cfg.embedder
    k = 1 if kind == "clip" else cfg.frames_per_segment
    if kind == "clip_pooled" and k == 1:
        k = POOLED_DEFAULT_FRAMES
    return ClipEmbedder(
        model,
        open_clip.get_tokenizer(name),
        kind=kind,
        model_id=f"open_clip:{name}",
        weights=weights,
        device=device,
        frames_per_segment=k,
        batch_size=cfg.batch_size,
        prompt_templates=templates,
        architecture=architecture,
    )


def load_s3d_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """State dict of an S3D checkpoint file (plain, under 'state_dict', or with 'module.' prefixes)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailable(
            f"S3D checkpoint {path} cannot be read ({type(exc).__name__}: {exc}). " + s3d_fix_hint()
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsUnavailable(f"S3D checkpoint {path} holds no state dict. " + s3d_fix_hint())
    return {k.removeprefix("module."): v for k, v in state.items()}


def build_s3d(weights: ResolvedWeights) -> tuple[S3D, S3DTokenizer]:
    """The S3D model and tokenizer for resolved weights (random demo: seeded init, hashed words)."""
    if weights.path is None:
        model = _seeded(lambda: demo_init_(S3D()))
        return model, S3DTokenizer(None, model.text_module.word_embd.num_embeddings)
    state = load_s3d_state_dict(weights.path)
    try:
        vocab, _ = state["text_module.word_embd.weight"].shape
        dim = state["fc.weight"].shape[0]
    except KeyError as exc:
        raise WeightsUnavailable(
            f"{weights.path} is not an S3D MIL-NCE checkpoint (no {exc.args[0]!r}). "
            + s3d_fix_hint()
        ) from exc
    model = S3D(num_classes=dim, vocab_size=vocab)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise WeightsUnavailable(
            f"S3D checkpoint {weights.path} does not match the S3D architecture "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]}). " + s3d_fix_hint()
        )
    dict_path = weights.tag_cfg["dict"]
    try:
        tokenizer = S3DTokenizer(load_s3d_dictionary(dict_path), vocab)
    except (OSError, ValueError) as exc:
        raise WeightsUnavailable(f"S3D dictionary {dict_path}: {exc}. " + s3d_fix_hint()) from exc
    return model, tokenizer


def _load_s3d(cfg: PipelineConfig, device: str, templates: tuple[str, ...]) -> S3DEmbedder:
    weights = resolve_weights(cfg)
    model, tokenizer = build_s3d(weights)
    k = S3D_DEFAULT_FRAMES if cfg.frames_per_segment == 1 else cfg.frames_per_segment
    return S3DEmbedder(
        model.to(device),
        tokenizer,
        weights=weights,
        device=device,
        frames_per_segment=k,
        batch_size=cfg.batch_size,
        prompt_templates=templates,
    )


def load_embedder(cfg: PipelineConfig) -> Embedder:
    """Build the configured embedder; the one place model weights are resolved and loaded."""
    if cfg.embedder not in EMBEDDERS:
        raise BioVLError(
            f"unknown embedder {cfg.embedder!r}; choose one of {', '.join(EMBEDDERS)}."
        )
    if cfg.batch_size < 1:
        raise BioVLError(f"batch_size must be at least 1, got {cfg.batch_size}.")
    device = torch_device(cfg.device)
    templates = _check_templates(cfg.prompt_templates)
    if cfg.embedder == "s3d":
        return _load_s3d(cfg, device, templates)
    return _load_clip(cfg, device, templates)

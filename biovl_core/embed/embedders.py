"""Embedding: segment frames and protocol steps into one joint space (CLIP or S3D MIL-NCE).

``load_embedder(cfg)`` is the one place model weights are resolved (open_clip tag, local
checkpoint, or opt-in random demo weights). An ``Embedder`` takes decoded frames
``uint8 [N, k, S, S, 3]`` (numpy on the CPU, or a torch tensor already on the GPU) and step
texts, and returns float32 L2-normalised rows, so ``texts @ frames.T`` is a cosine similarity.
Preprocessing (resize if needed, mean/std) runs on the model's device; CUDA runs in fp16.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F

from biovl_core.config import RANDOM_WEIGHTS_ENV, PipelineConfig
from biovl_core.device import optional_import, torch_device
from biovl_core.embed.s3d_model import S3D, S3DTokenizer, demo_init_, load_s3d_dictionary
from biovl_core.errors import BioVLError, WeightsUnavailable
from biovl_core.files import sha256_file

log = logging.getLogger(__name__)

EMBED_VERSION = "1"
RANDOM_DEMO = "random-demo"
RANDOM_DEMO_SEED = 0
EMBEDDERS = ("clip", "clip_pooled", "s3d")
MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
OPEN_CLIP_CACHE_ENV = "BIOVL_OPEN_CLIP_CACHE"
S3D_DICT_ENV = "BIOVL_S3D_DICT"
S3D_MODEL_ID = "s3d_milnce"
S3D_INPUT_SIZE = 224
S3D_DEFAULT_FRAMES = 16
POOLED_DEFAULT_FRAMES = 8
REACHABILITY_TIMEOUT_S = 3.0

_RANDOM_BANNER = (
    "\n" + "!" * 78 + "\n"
    "!!  RANDOM DEMO WEIGHTS: the embedding model is randomly initialised.\n"
    "!!  The pipeline runs end to end but every similarity and alignment is MEANINGLESS.\n"
    "!!  Reason the real weights were not loaded: {reason}\n" + "!" * 78
)


def _open_clip() -> Any:
    return optional_import("open_clip", "pip install open_clip_torch")


def _fix_hint(model: str, tags: Sequence[str]) -> str:
    pretrained = (
        f"or, where the internet is reachable, set `pretrained` to one of the tags open_clip "
        f"lists for {model}: {', '.join(tags)} (open_clip downloads and caches it; set "
        f"{OPEN_CLIP_CACHE_ENV} to choose the cache folder); "
        if tags
        else f"(open_clip lists no pretrained tags for {model}, so a checkpoint is the only source); "
    )
    return (
        "How to fix: pass a local weights file with --checkpoint PATH (`checkpoint` in the "
        f"configuration); {pretrained}or opt in to meaningless random demo weights with "
        f"--allow-random-weights or {RANDOM_WEIGHTS_ENV}=1."
    )


def _s3d_fix_hint() -> str:
    return (
        "How to fix: S3D MIL-NCE weights come from local files only. On a machine with internet "
        "download s3d_howto100m.pth and s3d_dict.npy (links in the README of "
        "https://github.com/antoine77340/S3D_HowTo100M), copy both here and pass "
        "--checkpoint /path/to/s3d_howto100m.pth (the dictionary is looked up next to it as "
        f"s3d_dict.npy, or set {S3D_DICT_ENV}); or opt in to meaningless random demo weights "
        f"with --allow-random-weights or {RANDOM_WEIGHTS_ENV}=1."
    )


_registered_config_paths: set[Path] = set()


def _register_config_path(path: Path) -> None:
    if path not in _registered_config_paths:
        _open_clip().add_model_config(path)
        _registered_config_paths.add(path)


def resolve_model_name(model: str) -> str:
    """Turn ``cfg.model`` (open_clip name, one of ours, or a model-config JSON path) into a registered name."""
    open_clip = _open_clip()
    _register_config_path(MODEL_CONFIG_DIR)
    if model.endswith(".json") or os.sep in model:
        path = Path(model).expanduser().resolve()
        if not path.is_file():
            raise BioVLError(
                f"model config {path} does not exist; pass an open_clip model name "
                f"(e.g. ViT-B-32) or the path of an existing model-config JSON."
            )
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BioVLError(
                f"model config {path} is not readable JSON ({exc}); fix the file."
            ) from exc
        missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in data]
        if missing:
            raise BioVLError(
                f"model config {path} lacks the open_clip keys {missing}; a CLIP model config "
                "needs embed_dim, vision_cfg and text_cfg (see biovl_core/embed/model_configs/)."
            )
        _register_config_path(path)
        return path.stem
    if model not in open_clip.list_models():
        ours = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))
        raise BioVLError(
            f"unknown model {model!r}: open_clip has no such model config. Use an open_clip "
            f"name (e.g. ViT-B-32; `python -c 'import open_clip; print(open_clip.list_models())'` "
            f"lists them), one of ours ({', '.join(ours)}), or a path to a model-config JSON."
        )
    return model


@dataclass(frozen=True)
class ResolvedWeights:
    """Where the weights of a model come from, as decided by ``resolve_weights``."""

    path: str | None  # local file to load; None = random initialisation
    label: str  # "pretrained:<tag>" | "checkpoint:<path>" | "random-demo"
    fingerprint: str  # identifies the weight values: tag, file sha256, or random seed
    tag_cfg: dict[str, Any] = field(default_factory=dict)  # open_clip's config of the tag

    @property
    def is_random(self) -> bool:
        """True for the opt-in random demo weights."""
        return self.label == RANDOM_DEMO


def _offline() -> bool:
    try:
        from huggingface_hub import constants

        if constants.is_offline_mode():
            return True
    except ImportError:
        pass
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _host_reachable(url: str, timeout: float = REACHABILITY_TIMEOUT_S) -> bool:
    parsed = urlparse(url)
    if not parsed.hostname:
        return False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _hf_filenames(filename: str) -> list[str]:
    default = "open_clip_pytorch_model.bin"
    filename = filename or default
    names = []
    if filename == default:
        names.append("open_clip_model.safetensors")
    elif filename.endswith((".bin", ".pth")):
        names.append(filename[:-4] + ".safetensors")
    return names + [filename]


def _cached_tag_file(tag_cfg: dict[str, Any], cache_dir: str | None) -> str | None:
    """The tag's weights file if already in the local cache (no network)."""
    if tag_cfg.get("file"):
        return tag_cfg["file"] if os.path.isfile(tag_cfg["file"]) else None
    if tag_cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(tag_cfg["hf_hub"])
        for name in _hf_filenames(filename):
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            if isinstance(found, str) and os.path.isfile(found):
                return found
        return None
    if tag_cfg.get("url"):
        root = cache_dir or os.path.expanduser("~/.cache/clip")
        path = os.path.join(root, os.path.basename(tag_cfg["url"]))
        return path if os.path.isfile(path) else None
    return None


def _tag_source_url(tag_cfg: dict[str, Any]) -> str:
    if tag_cfg.get("hf_hub"):
        from huggingface_hub import constants

        return constants.ENDPOINT
    return str(tag_cfg.get("url", ""))


def _clip_tag_weights(name: str, tag: str) -> ResolvedWeights:
    open_clip = _open_clip()
    tags = open_clip.list_pretrained_tags_by_model(name)
    tag_cfg = open_clip.get_pretrained_cfg(name, tag)
    if not tag_cfg:
        raise WeightsUnavailable(
            f"open_clip has no pretrained tag {tag!r} for model {name}. " + _fix_hint(name, tags)
        )
    cache_dir = os.environ.get(OPEN_CLIP_CACHE_ENV) or None
    label = f"pretrained:{tag}"
    path = _cached_tag_file(tag_cfg, cache_dir)
    if path is None:
        source = _tag_source_url(tag_cfg)
        if _offline():
            why = "HF_HUB_OFFLINE is set"
        elif not _host_reachable(source):
            why = f"{source or 'the download host'} is not reachable from this machine"
        else:
            why = ""
            try:
                path = open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir) or None
            except Exception as exc:  # any download failure leaves the weights unavailable
                why = f"the download failed ({type(exc).__name__}: {exc})"
        if path is None:
            where = cache_dir or "open_clip's default cache"
            raise WeightsUnavailable(
                f"the weights of {name} pretrained={tag!r} are not in the local cache ({where}) "
                f"and cannot be downloaded: {why}. " + _fix_hint(name, tags)
            )
    return ResolvedWeights(path, label, label, dict(tag_cfg))


def _clip_weights(cfg: PipelineConfig, name: str) -> ResolvedWeights:
    open_clip = _open_clip()
    tags = open_clip.list_pretrained_tags_by_model(name)
    tag_cfg = open_clip.get_pretrained_cfg(name, cfg.pretrained) if cfg.pretrained else {}
    if cfg.checkpoint:
        path = Path(cfg.checkpoint).expanduser()
        if not path.is_file():
            raise WeightsUnavailable(
                f"checkpoint file {path} (configured for model {name}) does not exist. "
                + _fix_hint(name, tags)
            )
        return ResolvedWeights(str(path), f"checkpoint:{path}", sha256_file(path), dict(tag_cfg))
    if cfg.pretrained:
        if not tag_cfg and os.path.isfile(cfg.pretrained):
            path = Path(cfg.pretrained)
            return ResolvedWeights(str(path), f"checkpoint:{path}", sha256_file(path))
        return _clip_tag_weights(name, cfg.pretrained)
    raise WeightsUnavailable(
        f"no weights are configured for model {name} (pretrained and checkpoint are both unset). "
        + _fix_hint(name, tags)
    )


def _s3d_dict_path(checkpoint: Path) -> Path:
    env = os.environ.get(S3D_DICT_ENV)
    return Path(env).expanduser() if env else checkpoint.parent / "s3d_dict.npy"


def _s3d_weights(cfg: PipelineConfig) -> ResolvedWeights:
    if not cfg.checkpoint:
        raise WeightsUnavailable("no S3D checkpoint is configured. " + _s3d_fix_hint())
    path = Path(cfg.checkpoint).expanduser()
    if not path.is_file():
        raise WeightsUnavailable(f"S3D checkpoint file {path} does not exist. " + _s3d_fix_hint())
    dict_path = _s3d_dict_path(path)
    if not dict_path.is_file():
        raise WeightsUnavailable(
            f"the S3D word dictionary {dict_path} (needed with checkpoint {path}) does not exist. "
            + _s3d_fix_hint()
        )
    fingerprint = f"{sha256_file(path)}+{sha256_file(dict_path)}"
    return ResolvedWeights(str(path), f"checkpoint:{path}", fingerprint, {"dict": str(dict_path)})


def resolve_weights(cfg: PipelineConfig, model_name: str | None = None) -> ResolvedWeights:
    """Decide where the weights come from, or raise WeightsUnavailable (random demo only if opted in)."""
    try:
        if cfg.embedder == "s3d":
            return _s3d_weights(cfg)
        return _clip_weights(cfg, model_name or resolve_model_name(cfg.model))
    except WeightsUnavailable as exc:
        if not cfg.allow_random_weights:
            raise
        log.warning(_RANDOM_BANNER.format(reason=exc))
        return ResolvedWeights(None, RANDOM_DEMO, f"seed:{RANDOM_DEMO_SEED}")


def _as_video(frames: Any) -> torch.Tensor:
    if isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8, got {frames.dtype}; pass decoder output as is")
        video = torch.from_numpy(np.ascontiguousarray(frames))
    elif isinstance(frames, torch.Tensor):
        if frames.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8, got {frames.dtype}; pass decoder output as is")
        video = frames
    else:
        raise TypeError(
            f"frames must be a numpy array or torch tensor, got {type(frames).__name__}"
        )
    if video.ndim != 5 or video.shape[-1] != 3:
        raise ValueError(f"frames must have shape [N, k, S, S, 3], got {tuple(video.shape)}")
    return video


class Embedder:
    """Maps segment frames and step texts to L2-normalised float32 rows of one joint space."""

    kind: str
    model_id: str
    weights: str
    input_size: int
    frames_per_segment: int
    dim: int
    device: str
    prompt_templates: tuple[str, ...]
    batch_size: int
    _fingerprint: str
    _dtype: torch.dtype

    def _init_common(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        kind: str,
        model_id: str,
        weights: ResolvedWeights,
        device: str,
        frames_per_segment: int,
        batch_size: int,
        prompt_templates: tuple[str, ...],
    ) -> None:
        """The fields every embedder sets the same way (fp16 on CUDA, fp32 on CPU)."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.kind = kind
        self.model_id = model_id
        self.weights = weights.label
        self._fingerprint = weights.fingerprint
        self.device = device
        self.frames_per_segment = frames_per_segment
        self.batch_size = batch_size
        self.prompt_templates = prompt_templates
        self._dtype = torch.float16 if device.startswith("cuda") else torch.float32

    def _key_fields(self) -> dict[str, Any]:
        return {
            "version": EMBED_VERSION,
            "kind": self.kind,
            "model_id": self.model_id,
            "weights": self._fingerprint,
            "input_size": self.input_size,
            "frames_per_segment": self.frames_per_segment,
        }

    def cache_key(self) -> str:
        """Identifies model, weights and preprocessing (not the device) for the embedding cache."""
        blob = json.dumps(self._key_fields(), sort_keys=True).encode()
        slug = self.model_id.replace(":", "-").replace("/", "-")
        return f"{self.kind}-{slug}-{hashlib.sha256(blob).hexdigest()[:20]}"

    def _autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.float16, enabled=self.device.startswith("cuda"))

    def _frames_to_float(self, chunk: torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, 3] (any device) -> float32 [B, 3, S, S] in 0..255 on the model device."""
        if chunk.device.type == "cpu" and self.device.startswith("cuda"):
            chunk = chunk.pin_memory()
        x = chunk.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bicubic", antialias=True
            ).clamp_(0.0, 255.0)
        return x

    def embed_frames(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        """Segments' frames uint8 [N, k, S, S, 3] -> float32 [N, D] L2-normalised segment embeddings."""
        video = _as_video(frames)
        if video.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            out = self._embed_video(video)
        return out.float().cpu().numpy().astype(np.float32, copy=False)

    def embed_texts(self, steps: Sequence[str]) -> np.ndarray:
        """Steps -> float32 [K, D]: each step formatted with every template, averaged, re-normalised."""
        steps = list(steps)
        if not steps:
            return np.zeros((0, self.dim), dtype=np.float32)
        prompts = [tpl.format(step) for step in steps for tpl in self.prompt_templates]
        with torch.inference_mode():
            parts = [
                F.normalize(self._encode_prompts(prompts[i : i + self.batch_size]).float(), dim=-1)
                for i in range(0, len(prompts), self.batch_size)
            ]
            emb = torch.cat(parts).view(len(steps), len(self.prompt_templates), -1).mean(dim=1)
            emb = F.normalize(emb, dim=-1)
        return emb.cpu().numpy().astype(np.float32, copy=False)

    def _embed_video(self, video: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model_id={self.model_id!r}, weights={self.weights!r}, "
            f"device={self.device!r}, k={self.frames_per_segment}, dim={self.dim})"
        )


class ClipEmbedder(Embedder):
    """open_clip image + text towers; 'clip' embeds the middle frame, 'clip_pooled' mean-pools k frames."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        kind: str,
        model_id: str,
        weights: ResolvedWeights,
        device: str,
        frames_per_segment: int,
        batch_size: int,
        prompt_templates: tuple[str, ...],
        architecture: dict[str, Any] | None = None,
    ) -> None:
        open_clip = _open_clip()
        self._architecture = architecture or {}
        self._init_common(
            model,
            tokenizer,
            kind=kind,
            model_id=model_id,
            weights=weights,
            device=device,
            frames_per_segment=frames_per_segment,
            batch_size=batch_size,
            prompt_templates=prompt_templates,
        )
        pp = open_clip.get_model_preprocess_cfg(model)
        size = pp["size"]
        self.input_size = int(size if isinstance(size, int) else size[0])
        self._mean = tuple(float(v) for v in pp["mean"])
        self._std = tuple(float(v) for v in pp["std"])
        std = torch.tensor(self._std, device=device).view(1, 3, 1, 1)
        mean = torch.tensor(self._mean, device=device).view(1, 3, 1, 1)
        self._scale = 1.0 / (255.0 * std)
        self._shift = -mean / std
        self.dim = int(getattr(model, "embed_dim", 0) or model.text_projection.shape[-1])

    def _key_fields(self) -> dict[str, Any]:
        arch = json.dumps(self._architecture, sort_keys=True).encode()
        return {
            **super()._key_fields(),
            "architecture": hashlib.sha256(arch).hexdigest(),
            "mean": self._mean,
            "std": self._std,
        }

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, 3] -> L2-normalised float32 [B, D] on the device (one forward pass)."""
        x = self._frames_to_float(images) * self._scale + self._shift
        features = self.model.encode_image(x.to(self._dtype))
        return F.normalize(features.float(), dim=-1)

    def _embed_video(self, video: torch.Tensor) -> torch.Tensor:
        n, k = video.shape[:2]
        if self.kind == "clip":
            video = video[:, k // 2 : k // 2 + 1]
            k = 1
        images = video.reshape(n * k, *video.shape[2:])
        feats = torch.cat(
            [
                self.encode_images(images[i : i + self.batch_size])
                for i in range(0, n * k, self.batch_size)
            ]
        )
        return F.normalize(feats.view(n, k, -1).mean(dim=1), dim=-1)

    def _encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts).to(self.device)
        return self.model.encode_text(tokens)


class S3DEmbedder(Embedder):
    """S3D MIL-NCE (HowTo100M): k frames of a segment as one clip in [0, 1], word-embedding text tower."""

    def __init__(
        self,
        model: S3D,
        tokenizer: S3DTokenizer,
        *,
        weights: ResolvedWeights,
        device: str,
        frames_per_segment: int,
        batch_size: int,
        prompt_templates: tuple[str, ...],
        input_size: int = S3D_INPUT_SIZE,
    ) -> None:
        if frames_per_segment % 2:
            raise BioVLError(
                f"S3D needs an even number of frames per segment, got {frames_per_segment}; "
                f"set frames_per_segment to e.g. {S3D_DEFAULT_FRAMES}."
            )
        self._init_common(
            model,
            tokenizer,
            kind="s3d",
            model_id=S3D_MODEL_ID,
            weights=weights,
            device=device,
            frames_per_segment=frames_per_segment,
            batch_size=batch_size,
            prompt_templates=prompt_templates,
        )
        self.input_size = input_size
        self.dim = model.num_classes

    def _embed_video(self, video: torch.Tensor) -> torch.Tensor:
        n, k = video.shape[:2]
        if k % 2:
            raise ValueError(f"S3D needs an even number of frames per segment, got k={k}")
        clips_per_batch = max(1, self.batch_size // k)
        out = []
        for i in range(0, n, clips_per_batch):
            clip = video[i : i + clips_per_batch]
            b = clip.shape[0]
            x = self._frames_to_float(clip.reshape(b * k, *clip.shape[2:])) / 255.0
            x = x.view(b, k, 3, self.input_size, self.input_size).transpose(1, 2)
            with self._autocast():
                out.append(F.normalize(self.model.forward_video(x).float(), dim=-1))
        return torch.cat(out)

    def _encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        with self._autocast():
            return self.model.forward_text(self.tokenizer(prompts).to(self.device))


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
    open_clip = _open_clip()
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
            f"S3D checkpoint {path} cannot be read ({type(exc).__name__}: {exc}). "
            + _s3d_fix_hint()
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsUnavailable(f"S3D checkpoint {path} holds no state dict. " + _s3d_fix_hint())
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
            + _s3d_fix_hint()
        ) from exc
    model = S3D(num_classes=dim, vocab_size=vocab)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise WeightsUnavailable(
            f"S3D checkpoint {weights.path} does not match the S3D architecture "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]}). " + _s3d_fix_hint()
        )
    dict_path = weights.tag_cfg["dict"]
    try:
        tokenizer = S3DTokenizer(load_s3d_dictionary(dict_path), vocab)
    except (OSError, ValueError) as exc:
        raise WeightsUnavailable(f"S3D dictionary {dict_path}: {exc}. " + _s3d_fix_hint()) from exc
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

"""The embedders: the interface (`Embedder`) and its CLIP and S3D MIL-NCE implementations.

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
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from biovl_core.embed.s3d_model import S3D, S3DTokenizer
from biovl_core.embed.weights import S3D_MODEL_ID, ResolvedWeights, open_clip_module
from biovl_core.errors import BioVLError

log = logging.getLogger(__name__)

EMBED_VERSION = "1"
S3D_INPUT_SIZE = 224
S3D_DEFAULT_FRAMES = 16
POOLED_DEFAULT_FRAMES = 8


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
        open_clip = open_clip_module()
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

"""Generated weights for embedding tests: a tiny open_clip checkpoint and an S3D checkpoint + dictionary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from biovl_core.config import PipelineConfig
from biovl_core.embed import S3D, demo_init_, resolve_model_name

TINY_MODEL = "biovl-tiny-clip"
TINY_SIZE = 64
S3D_WORDS = ["add", "water", "mix", "tube", "pipette", "centrifuge", "the", "of", "buffer"]


def make_tiny_clip_checkpoint(path: Path, seed: int, model: str = TINY_MODEL) -> Path:
    """Save the state dict of a freshly initialised (seeded) open_clip model to ``path``."""
    import open_clip

    name = resolve_model_name(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = open_clip.create_model(name)
    torch.save(net.state_dict(), path)
    return path


def make_s3d_checkpoint(folder: Path, seed: int, words: list[str] = S3D_WORDS) -> Path:
    """Save a seeded S3D (vocabulary sized to ``words``) as s3d_howto100m.pth + s3d_dict.npy."""
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = demo_init_(S3D(num_classes=32, vocab_size=len(words) + 1))
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    torch.save(net.state_dict(), folder / "s3d_howto100m.pth")
    np.save(folder / "s3d_dict.npy", np.array(words))
    return folder / "s3d_howto100m.pth"


def tiny_cfg(checkpoint: Path | None = None, **changes: object) -> PipelineConfig:
    """A CPU configuration of the tiny CLIP model (random weights only if no checkpoint is given)."""
    base = PipelineConfig(
        model=TINY_MODEL,
        pretrained=None,
        checkpoint=str(checkpoint) if checkpoint else None,
        device="cpu",
        allow_random_weights=checkpoint is None,
    )
    return base.replace(**changes)


def random_frames(n: int, k: int, size: int = TINY_SIZE, seed: int = 0) -> np.ndarray:
    """uint8 frames [n, k, size, size, 3] with smooth structure (not pure noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, k, 4, 4, 3), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, size // 4, axis=2), size // 4, axis=3)

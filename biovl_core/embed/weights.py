"""Weights resolved in one place: a model name or config, an open_clip tag, a local checkpoint, or random demo weights."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from biovl_core.config import RANDOM_WEIGHTS_ENV, PipelineConfig
from biovl_core.device import optional_import
from biovl_core.errors import BioVLError, WeightsUnavailable
from biovl_core.files import sha256_file

RANDOM_DEMO = "random-demo"
RANDOM_DEMO_SEED = 0


_RANDOM_BANNER = (
    "\n" + "!" * 78 + "\n"
    "!!  RANDOM DEMO WEIGHTS: the embedding model is randomly initialised.\n"
    "!!  The pipeline runs end to end but every similarity and alignment is MEANINGLESS.\n"
    "!!  Reason the real weights were not loaded: {reason}\n" + "!" * 78
)

log = logging.getLogger(__name__)


EMBEDDERS = ("clip", "clip_pooled", "s3d")


MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"


OPEN_CLIP_CACHE_ENV = "BIOVL_OPEN_CLIP_CACHE"


S3D_DICT_ENV = "BIOVL_S3D_DICT"


S3D_MODEL_ID = "s3d_milnce"


REACHABILITY_TIMEOUT_S = 3.0


def open_clip_module() -> Any:
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


def s3d_fix_hint() -> str:
    return (
        "How to fix: S3D MIL-NCE weights come from local files only. On a machine with internet "
        "download s3d_howto100m.pth and s3d_dict.npy (links in the README of "
        "https://github.com/antoine77340/S3D_HowTo100M), copy both here and pass "
        "--checkpoint /path/to/s3d_howto100m.pth (the dictionary is looked up next to it as "
        f"s3d_dict.npy, or set {S3D_DICT_ENV}); or opt in to meaningless random demo weights "
        f"with --allow-random-weights or {RANDOM_WEIGHTS_ENV}=1."
    )


_registered_config_paths: set[Path] = set()


def register_config_path(path: Path) -> None:
    if path not in _registered_config_paths:
        open_clip_module().add_model_config(path)
        _registered_config_paths.add(path)


def resolve_model_name(model: str) -> str:
    """Turn ``cfg.model`` (open_clip name, one of ours, or a model-config JSON path) into a registered name."""
    open_clip = open_clip_module()
    register_config_path(MODEL_CONFIG_DIR)
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
        register_config_path(path)
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
    open_clip = open_clip_module()
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
    open_clip = open_clip_module()
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
        raise WeightsUnavailable("no S3D checkpoint is configured. " + s3d_fix_hint())
    path = Path(cfg.checkpoint).expanduser()
    if not path.is_file():
        raise WeightsUnavailable(f"S3D checkpoint file {path} does not exist. " + s3d_fix_hint())
    dict_path = _s3d_dict_path(path)
    if not dict_path.is_file():
        raise WeightsUnavailable(
            f"the S3D word dictionary {dict_path} (needed with checkpoint {path}) does not exist. "
            + s3d_fix_hint()
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

"""Embedding stage: segment frames and step texts into one joint space (open_clip or S3D MIL-NCE)."""

from biovl_core.embed.cache import EmbeddingCache
from biovl_core.embed.embedders import EMBED_VERSION, ClipEmbedder, Embedder, S3DEmbedder
from biovl_core.embed.factory import build_s3d, load_embedder, load_s3d_state_dict
from biovl_core.embed.s3d_model import S3D, S3DTokenizer, demo_init_, load_s3d_dictionary
from biovl_core.embed.weights import (
    EMBEDDERS,
    MODEL_CONFIG_DIR,
    OPEN_CLIP_CACHE_ENV,
    RANDOM_DEMO,
    S3D_DICT_ENV,
    ResolvedWeights,
    resolve_model_name,
    resolve_weights,
)

__all__ = [
    "EMBEDDERS",
    "EMBED_VERSION",
    "MODEL_CONFIG_DIR",
    "OPEN_CLIP_CACHE_ENV",
    "RANDOM_DEMO",
    "S3D",
    "S3D_DICT_ENV",
    "ClipEmbedder",
    "Embedder",
    "EmbeddingCache",
    "ResolvedWeights",
    "S3DEmbedder",
    "S3DTokenizer",
    "build_s3d",
    "demo_init_",
    "load_embedder",
    "load_s3d_dictionary",
    "load_s3d_state_dict",
    "resolve_model_name",
    "resolve_weights",
]

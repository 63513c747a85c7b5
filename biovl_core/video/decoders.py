"""Which decoder runs here: DALI on NVDEC when it works, else PyAV, decided once per process."""

from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from biovl_core.device import cuda_available, nvdec_library
from biovl_core.video.pyav import PyAVSampler
from biovl_core.video.sampler import DALI_HINT, SAMPLER_NAMES, FrameSampler

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    pass


def dali_unavailable_reason() -> str | None:
    """Why the DALI decoder cannot run here (no CUDA GPU, DALI not installed), or None."""
    if not cuda_available():
        return "no CUDA GPU is visible (or BIOVL_DEVICE=cpu)"
    try:
        found = importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:
        found = False
    return None if found else f"nvidia.dali is not installed ({DALI_HINT})"


def dali_available() -> bool:
    """True when a CUDA GPU is visible and NVIDIA DALI is installed."""
    return dali_unavailable_reason() is None


@dataclass(frozen=True)
class DecoderChoice:
    """Which decoder runs and why; ``reason`` is a short token fit for a metric label."""

    backend: str  # "dali" | "pyav"
    reason: str  # "requested" | "nvdec_ok" | "no_cuda" | "no_dali" | "no_nvcuvid" | "probe_failed"
    detail: str = ""  # what the probe saw, for the log


@functools.lru_cache(maxsize=4)
def choose_decoder(requested: str = "auto") -> DecoderChoice:
    """Resolve a decoder name once per process; 'auto' probes CUDA, DALI, NVDEC and one decode.

    A GPU node whose driver lacks NVDEC (``libnvcuvid``) or whose DALI cannot decode still
    serves, on PyAV, after one warning. Services export the result as
    ``decoder_backend{backend=..., reason=...}``.
    """
    key = (requested or "auto").strip().lower()
    if key not in SAMPLER_NAMES:
        raise ValueError(f"unknown decoder {requested!r}; choose one of {', '.join(SAMPLER_NAMES)}")
    if key != "auto":
        return DecoderChoice(key, "requested")
    if not cuda_available():
        return DecoderChoice("pyav", "no_cuda", "no CUDA GPU visible (or BIOVL_DEVICE=cpu)")
    if not dali_available():
        choice = DecoderChoice("pyav", "no_dali", f"nvidia.dali is not installed: {DALI_HINT}")
    elif nvdec_library() is None:
        choice = DecoderChoice(
            "pyav",
            "no_nvcuvid",
            "the NVIDIA driver's libnvcuvid (NVDEC) is not loadable; in a container set "
            "NVIDIA_DRIVER_CAPABILITIES=compute,utility,video",
        )
    else:
        from biovl_core.video.dali import smoke_test

        try:
            smoke_test()
            return DecoderChoice("dali", "nvdec_ok", f"NVDEC via {nvdec_library()}")
        except Exception as exc:  # any DALI/driver failure means: serve on the CPU decoder
            choice = DecoderChoice("pyav", "probe_failed", f"{type(exc).__name__}: {exc}")
    log.warning(
        "GPU visible but decoding falls back to PyAV (reason %s): %s", choice.reason, choice.detail
    )
    return choice


def get_sampler(name: str = "auto", **options: Any) -> FrameSampler:
    """A frame sampler by name: 'auto' (DALI when `choose_decoder` finds NVDEC working, else PyAV), 'pyav', 'dali'."""
    key = choose_decoder(name).backend
    if key == "pyav":
        return PyAVSampler(**options)
    from biovl_core.video.dali import DALISampler

    return DALISampler(**options)

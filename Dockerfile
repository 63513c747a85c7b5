# syntax=docker/dockerfile:1.7
# BioVL aligner: one image for the KubeRay head, the GPU workers, the nightly
# realign CronJob and local `docker run`.
#
#   docker build -t biovl-aligner:0.1.0 .
#   docker build --build-arg CUDA_VERSION=13.0.1 --build-arg BASE_FLAVOUR=cudnn-runtime-ubuntu24.04 .
#   docker run --gpus all -p 8000:8000 -v biovl-archive:/archive biovl-aligner:0.1.0
# (weights and the random-weights demo switch: docs/DEPLOY.md)
#
# KubeRay replaces the container command with `ray start ...`; the image only has
# to provide bash, `ray` on PATH (login shells included) and wget for its probes.

ARG CUDA_VERSION=13.0.1
ARG BASE_FLAVOUR=cudnn-runtime-ubuntu24.04
ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------- python base
FROM nvidia/cuda:${CUDA_VERSION}-${BASE_FLAVOUR} AS python
ARG PYTHON_VERSION
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    LC_ALL=C.UTF-8
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Ubuntu 24.04 ships Python 3.12; the deadsnakes PPA provides 3.11.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates gpg-agent software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
        "python${PYTHON_VERSION}" "python${PYTHON_VERSION}-venv" \
        tini wget procps \
 && apt-get purge -y --auto-remove software-properties-common gpg-agent \
 && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------- build stage
FROM python AS build
ARG PYTHON_VERSION
# Optional extra index for a specific torch CUDA build, e.g.
# --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
ARG TORCH_INDEX_URL=""
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential "python${PYTHON_VERSION}-dev" git \
 && rm -rf /var/lib/apt/lists/*
RUN "python${PYTHON_VERSION}" -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# The pinned torch/torchvision pair lives in constraints.txt: any other pair breaks open_clip.
COPY constraints.txt /constraints.txt
COPY pyproject.toml README.md ./
COPY biovl_core/ biovl_core/
COPY services/ services/
# Build tools float; every project dependency is bounded by pyproject + constraints.txt.
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --upgrade pip setuptools wheel \
 && pip install -c /constraints.txt ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} '.[service,gpu]' \
 && pip check \
 && ray --version && biovl --help > /dev/null

# ---------------------------------------------------------------- runtime
FROM python AS runtime
ARG CUDA_VERSION
LABEL org.opencontainers.image.title="biovl-aligner" \
      org.opencontainers.image.description="Aligns biochemistry protocol steps to egocentric lab video (Ray Serve + KubeRay)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      ai.biovl.cuda-version="${CUDA_VERSION}"

# Ubuntu images carry a default `ubuntu` user with uid 1000; Ray images and the
# k8s manifests use uid/gid 1000 for the app user, so take it over.
RUN if id -u ubuntu > /dev/null 2>&1; then userdel --remove ubuntu; fi \
 && groupadd --gid 1000 biovl \
 && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash biovl \
 && mkdir -p /archive /models /app \
 && chown biovl:biovl /archive /models /app

COPY --from=build /opt/venv /opt/venv
COPY --from=build /constraints.txt /constraints.txt
# KubeRay runs `bash -lc "ray start ..."`: a login shell re-reads /etc/profile, so
# put the venv on PATH there too, not only in ENV.
# hadolint ignore=SC2016
RUN printf 'export PATH=/opt/venv/bin:$PATH\n' > /etc/profile.d/biovl-venv.sh

WORKDIR /app
COPY --chown=biovl:biovl deploy/ deploy/

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BIOVL_ARCHIVE=/archive \
    HF_HOME=/models/huggingface \
    RAY_SERVE_DEFAULT_HTTP_HOST=0.0.0.0 \
    RAY_USAGE_STATS_ENABLED=0 \
    MALLOC_ARENA_MAX=2 \
    MALLOC_MMAP_THRESHOLD_=1048576 \
    MALLOC_TRIM_THRESHOLD_=8388608

# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 1000:1000
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["/bin/sh", "-c", "wget -q -O /dev/null http://127.0.0.1:8000/-/healthz || exit 1"]

# Standalone: a one-node Ray cluster serving the app from the committed serve config.
# On Kubernetes KubeRay overrides this with `ray start`; the RayService then deploys
# the same config (serveConfigV2).
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["serve", "run", "deploy/serve_config.yaml"]

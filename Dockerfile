# syntax=docker/dockerfile:1
# hadolint global ignore=DL3059
# (one RUN per install step on purpose: a failed step is retried alone, each compile cached)
# SAM 3D Objects + Lotus-D inference server. Layers run from least to most often changed:
# system, SAM 3D Objects at a pinned commit in upstream's own conda environment, our
# dependencies (pyproject.toml), the weights (checkpoints/), then our code.
# Builds without a GPU: every CUDA extension is compiled here for the architectures below.

# CUDA_STACK: default (upstream's CUDA 12.1 stack) or blackwell (CUDA 12.8); see below.
ARG CUDA_STACK=default

# The web page's JavaScript, from the npm packages locked in web/package-lock.json.
FROM node:20-bookworm-slim AS web
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund

# Two CUDA stacks, chosen with --build-arg CUDA_STACK (compose: the sam3d-objects-blackwell
# service). TORCH_CUDA_ARCH_LIST: with no GPU to query, torch cannot pick architectures
# itself (IndexError in _get_cuda_arch_flags), so every CUDA extension below is compiled for
# this list; scripts/rehearse_cuda_build.sh compiles them the same way without Docker.
#   default:   upstream's stack (CUDA 12.1, torch 2.5.1+cu121): A100 8.0, A10/A40/RTX 30xx
#              8.6, L4/L40S/RTX 40xx 8.9, H100/H200 9.0. Its PTX does not bring Blackwell
#              cards: torch 2.5.1 itself has no kernels (nor PTX) for them.
#   blackwell: CUDA 12.8, torch 2.8.0 (the first PyPI torch built with CUDA 12.8, kernels for
#              sm_100 and sm_120): the same cards plus B200 10.0 and RTX 50xx/RTX PRO 6000
#              12.0, PTX for later ones. What it changes in upstream's pins, and why that is
#              safe, is in docker/blackwell-pins.txt and DEPLOY.md.

FROM nvidia/cuda:12.1.1-cudnn8-devel-ubuntu22.04 AS cuda-default
ENV TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0+PTX" \
    SAM3D_EXTRA_INDEXES="https://pypi.ngc.nvidia.com https://download.pytorch.org/whl/cu121" \
    SAM3D_KAOLIN_LINKS=https://nvidia-kaolin.s3.us-east-2.amazonaws.com/torch-2.5.1_cu121.html

# kaolin 0.18.0 from NVIDIA's wheels for torch 2.8.0 + cu128 (kaolin v0.18.0
# docs/notes/installation.rst:27-38): no source build (its setup.py:12 imports pkg_resources,
# which setuptools dropped in 82.0.0), no CUDA compile.
FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04 AS cuda-blackwell
ENV TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0;10.0;12.0+PTX" \
    SAM3D_EXTRA_INDEXES="https://pypi.ngc.nvidia.com https://download.pytorch.org/whl/cu128" \
    SAM3D_KAOLIN_LINKS=https://nvidia-kaolin.s3.us-east-2.amazonaws.com/torch-2.8.0_cu128.html

# hadolint ignore=DL3006
FROM cuda-${CUDA_STACK} AS server
ARG CUDA_STACK

# CONDA_PREFIX: upstream's notebook/inference.py:5 copies it into CUDA_HOME at import, so
# the model cannot load without it; `conda activate` would set it, a container must.
# CUDA_HOME: the base image's toolkit (12.1.1 as upstream's environment, or 12.8.1) for the
# builds below; upstream repoints it at CONDA_PREFIX at run time, when nothing compiles any
# more. FORCE_CUDA: pytorch3d and kaolin skip their CUDA kernels without it.
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MAMBA_ROOT_PREFIX=/opt/conda \
    CONDA_PREFIX=/opt/conda/envs/sam3d-objects \
    CUDA_HOME=/usr/local/cuda \
    FORCE_CUDA=1 \
    PATH=/opt/conda/envs/sam3d-objects/bin:/opt/conda/bin:$PATH

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Debian/Ubuntu package versions move with the base image's snapshot; pinning them breaks rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
       bzip2 ca-certificates curl git libegl1 libgl1 libglib2.0-0 libgomp1 \
    && rm -rf /var/lib/apt/lists/*

ARG MICROMAMBA_VERSION=2.0.5-0
RUN curl -fsSL "https://github.com/mamba-org/micromamba-releases/releases/download/${MICROMAMBA_VERSION}/micromamba-linux-64" \
      -o /usr/local/bin/micromamba \
    && chmod +x /usr/local/bin/micromamba

# SAM 3D Objects, pinned (DEPLOY.md says why this commit), set up as its doc/setup.md says:
# its own environments/default.yml (Python 3.11.0, gcc 12, pip 25.0.1, setuptools and wheel,
# which pip needs to build pytorch3d, gsplat and nvdiffrast in place), the dev, p3d and
# inference extras (torch from PyTorch's index for the stack's CUDA, kaolin from NVIDIA's
# wheel index for that torch), then the hydra patch. Each step is docker/sam3d.sh, one RUN
# each, so a failed step is retried alone and each CUDA compile has its own layer; the
# Blackwell stack first rewrites upstream's requirements with docker/blackwell-pins.txt.
# `check` resolves the whole layer against docker/sam3d-<stack>.lock (pip --dry-run, under a
# minute) before anything compiles: a lock short of a requirement or a pin PyPI no longer
# gives stops the build there. scripts/replay_image.sh runs these same steps on a machine
# without Docker or CUDA (DEPLOY.md, "Step 2").
ARG SAM3D_REPO=https://github.com/facebookresearch/sam-3d-objects.git
ARG SAM3D_COMMIT=cf066761706cd02b07e2fc6274570ec8cdafb683
ENV SAM3D_SOURCE_DIR=/opt/sam-3d-objects
RUN git clone "${SAM3D_REPO}" "${SAM3D_SOURCE_DIR}" \
    && git -C "${SAM3D_SOURCE_DIR}" checkout "${SAM3D_COMMIT}"
RUN micromamba create -y -f "${SAM3D_SOURCE_DIR}/environments/default.yml" \
    && micromamba clean -a -y
WORKDIR /opt/sam-3d-objects
# MAX_JOBS: parallel compile jobs for pytorch3d, gsplat and nvdiffrast (torch's
# cpp_extension and ninja read it). One nvcc job can take 2-4 GB of memory: 4 keeps a
# 16 GB builder alive; raise it on a bigger one (--build-arg MAX_JOBS=16).
ARG MAX_JOBS=4
ARG NVDIFFRAST_COMMIT=253ac4fcea7de5f396371124af597e6cc957bfae
COPY docker/sam3d.sh docker/sam3d_layer.py docker/repin_sam3d.py docker/declared-requires.txt \
     docker/sam3d-*.lock docker/*-pins.txt /opt/docker/
RUN /opt/docker/sam3d.sh repin
RUN /opt/docker/sam3d.sh check
RUN /opt/docker/sam3d.sh dev
RUN /opt/docker/sam3d.sh p3d
RUN /opt/docker/sam3d.sh inference
# nvdiffrast: mesh post-processing and texture baking rasterise with it (through utils3d).
# v0.4.0 compiles its CUDA extension at install, for TORCH_CUDA_ARCH_LIST; v0.3.x compiled
# on first use, for the GPU present, minutes into the first GLB request of every container.
RUN /opt/docker/sam3d.sh nvdiffrast
RUN /opt/docker/sam3d.sh freeze
# Fail the build, not the first request, if a CUDA extension was not compiled.
COPY scripts/check_cuda_extensions.py /tmp/
RUN python /tmp/check_cuda_extensions.py

# Our dependencies: only pyproject.toml is copied, so this layer survives code changes.
# docker/server.sh: pyproject.toml's dependencies, the serverless extra and rembg[gpu] at the
# versions CI tests (docker/server.lock), everything else held where SAM 3D Objects' layer
# put it (/etc/sam3d-layer.txt, which later installs stay constrained to); then `pip check`
# (/etc/pip-check.txt; DEPLOY.md names each line it may hold).
WORKDIR /app
COPY pyproject.toml ./
COPY docker/server.sh docker/server.lock /opt/docker/
RUN /opt/docker/server.sh
ENV PIP_CONSTRAINT=/etc/sam3d-layer.txt

# The weights, read offline: SAM 3D Objects (pipeline.yaml, *.ckpt), Lotus-D, MoGe (Hugging
# Face cache), DINOv2 (torch hub) and u2net (rembg). scripts/download_checkpoints.sh fills it.
# The build stops if a Lotus folder there holds tiny random weights (`make serve` writes
# them; their maps are noise), decided from each UNet's config; --build-arg
# ALLOW_TEST_WEIGHTS=1 builds anyway.
COPY pipelines/lotus/catalog.py /tmp/checkpoints.py
COPY checkpoints/ /app/checkpoints/
ARG ALLOW_TEST_WEIGHTS=0
RUN python /tmp/checkpoints.py /app/checkpoints \
    || { [ "${ALLOW_TEST_WEIGHTS}" = 1 ] && echo "WARNING: this image serves TEST weights for Lotus"; }
ENV CHECKPOINTS_DIR=/app/checkpoints \
    OUTPUT_DIR=/app/outputs \
    HF_HOME=/app/checkpoints/hf-cache \
    HF_HUB_OFFLINE=1 \
    TORCH_HOME=/app/checkpoints/torch \
    U2NET_HOME=/app/checkpoints/u2net \
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True \
    PORT=8000 \
    HOST=0.0.0.0

COPY app.py queue_manager.py settings.py schemas.py handler.py metrics.py webhooks.py \
     gunicorn.conf.py ./
COPY pipelines/ ./pipelines/
COPY workers/ ./workers/
COPY jobs/ ./jobs/
COPY serverless/ ./serverless/
COPY front/ ./front/
COPY api/ ./api/
COPY scripts/ ./scripts/
COPY web/static/ ./web/static/
COPY --from=web /web/node_modules/@google/model-viewer/dist/ ./web/node_modules/@google/model-viewer/dist/
COPY --from=web /web/node_modules/three/build/ ./web/node_modules/three/build/
COPY --from=web /web/node_modules/@mkkellogg/gaussian-splats-3d/build/ ./web/node_modules/@mkkellogg/gaussian-splats-3d/build/

RUN useradd --create-home --uid 1000 app \
    && mkdir -p /app/outputs \
    && chown app /app/outputs
USER 1000

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
  CMD ["/bin/sh", "-c", "curl -fsS http://localhost:${PORT}/health || exit 1"]
CMD ["gunicorn", "-c", "gunicorn.conf.py"]

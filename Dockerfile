# syntax=docker/dockerfile:1
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
    SAM3D_TORCH_INDEX=https://download.pytorch.org/whl/cu121 \
    SAM3D_KAOLIN_LINKS=https://nvidia-kaolin.s3.us-east-2.amazonaws.com/torch-2.5.1_cu121.html

# kaolin 0.18.0 is built from source here, for this arch list (no find-links).
FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04 AS cuda-blackwell
ENV TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0;10.0;12.0+PTX" \
    SAM3D_TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
    SAM3D_KAOLIN_LINKS=

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
# its own environments/default.yml (Python 3.11.0, gcc 12, setuptools and wheel, which pip
# needs to build pytorch3d, gsplat and kaolin in place), the dev, p3d and inference extras
# (torch from PyTorch's index for the stack's CUDA; on the default stack kaolin from NVIDIA's
# wheel index for that torch), then the hydra patch. The Blackwell stack first rewrites
# upstream's requirements with docker/blackwell-pins.txt. Every install is constrained to
# docker/sam3d-<stack>.lock: the versions resolved once and recorded (scripts/lock_image.py),
# so nothing floats (MoGe's unpinned gradio no longer backtracks through twenty releases).
ARG SAM3D_REPO=https://github.com/facebookresearch/sam-3d-objects.git
ARG SAM3D_COMMIT=cf066761706cd02b07e2fc6274570ec8cdafb683
ENV SAM3D_SOURCE_DIR=/opt/sam-3d-objects
RUN git clone "${SAM3D_REPO}" "${SAM3D_SOURCE_DIR}" \
    && git -C "${SAM3D_SOURCE_DIR}" checkout "${SAM3D_COMMIT}"
RUN micromamba create -y -f "${SAM3D_SOURCE_DIR}/environments/default.yml" \
    && micromamba clean -a -y
WORKDIR /opt/sam-3d-objects
COPY docker/ /opt/docker/
COPY scripts/repin_sam3d.py /tmp/
RUN if [ -f "/opt/docker/${CUDA_STACK}-pins.txt" ]; then \
      python /tmp/repin_sam3d.py "/opt/docker/${CUDA_STACK}-pins.txt" .; fi \
    && export PIP_CONSTRAINT="/opt/docker/sam3d-${CUDA_STACK}.lock" \
      PIP_EXTRA_INDEX_URL="https://pypi.ngc.nvidia.com ${SAM3D_TORCH_INDEX}" \
    && pip install -e '.[dev]' \
    && pip install -e '.[p3d]' \
    && PIP_FIND_LINKS="${SAM3D_KAOLIN_LINKS}" pip install -e '.[inference]' \
    && ./patching/hydra
# nvdiffrast: mesh post-processing and texture baking rasterise with it (through utils3d).
# v0.4.0 compiles its CUDA extension at install, for TORCH_CUDA_ARCH_LIST; v0.3.x compiled
# on first use, for the GPU present, minutes into the first GLB request of every container.
# Then everything this layer holds is recorded (/etc/sam3d-layer.txt) and every later
# install is constrained to it, except what docker/server.lock pins: OURS in
# scripts/lock_image.py (the Lotus-D stack, transformers 4.49 where this layer resolved 4.39;
# cryptography 44 for runpod) and what its whole-image resolution moved to pip's choice
# (server.lock's header): our layer moves nothing else.
ARG NVDIFFRAST_COMMIT=253ac4fcea7de5f396371124af597e6cc957bfae
RUN pip install -c /opt/docker/server.lock ninja \
    && pip install --no-build-isolation -c "/opt/docker/sam3d-${CUDA_STACK}.lock" \
      "git+https://github.com/NVlabs/nvdiffrast.git@${NVDIFFRAST_COMMIT}" \
    && pip freeze --exclude-editable | grep -v ' @ ' > /tmp/sam3d-freeze.txt \
    && awk -F'==' 'NR == FNR { if (!/^#/) ours[tolower($1)]; next } !(tolower($1) in ours)' \
      /opt/docker/server.lock /tmp/sam3d-freeze.txt > /etc/sam3d-layer.txt
ENV PIP_CONSTRAINT=/etc/sam3d-layer.txt
# Fail the build, not the first request, if a CUDA extension was not compiled.
COPY scripts/check_cuda_extensions.py /tmp/
RUN python /tmp/check_cuda_extensions.py

# Our dependencies: only pyproject.toml is copied, so this layer survives code changes.
# pyproject.toml's dependencies, its serverless extra (the runpod SDK: this image also starts
# as a serverless worker, `python handler.py`) and rembg with its gpu extra (onnxruntime-gpu,
# whose CUDA provider uses the CUDA 12 and cuDNN 9 libraries torch's wheels bring), at the
# versions CI tests (docker/server.lock) where SAM 3D Objects' layer does not hold them.
# What server.lock pins of what that layer holds is installed too (/tmp/replaced.txt): pip
# leaves an installed package it is not asked for alone, so pyOpenSSL 26.4 (it wants
# cryptography>=49) would stay beside runpod's cryptography 44 instead of the lock's 25.1.
# One OpenCV: rembg's opencv-python-headless and upstream's opencv-python both write cv2/,
# so headless goes and opencv-python (upstream's pin) is written back whole.
WORKDIR /app
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['serverless'] + [r.replace('rembg', 'rembg[gpu]') for r in p['optional-dependencies']['segment'] if r.startswith('rembg')]))" \
      > /tmp/requirements.txt \
    && awk -F'==' 'NR == FNR { held[tolower($1)]; next } tolower($1) in held' \
      /tmp/sam3d-freeze.txt /opt/docker/server.lock > /tmp/replaced.txt \
    && pip install -c /opt/docker/server.lock -r /tmp/requirements.txt -r /tmp/replaced.txt \
    && pip uninstall -y opencv-python-headless \
    && grep -i '^opencv-python==' /etc/sam3d-layer.txt > /tmp/opencv.txt \
    && pip install --no-deps --force-reinstall -r /tmp/opencv.txt \
    && { pip check || true; } | tee /etc/pip-check.txt

# The weights, read offline: SAM 3D Objects (pipeline.yaml, *.ckpt), Lotus-D, MoGe (Hugging
# Face cache), DINOv2 (torch hub) and u2net (rembg). scripts/download_checkpoints.sh fills it.
# The build stops if a Lotus folder there holds tiny random weights (`make serve` writes
# them; their maps are noise), decided from each UNet's config; --build-arg
# ALLOW_TEST_WEIGHTS=1 builds anyway.
COPY pipelines/checkpoints.py /tmp/
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

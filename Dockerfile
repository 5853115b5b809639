# syntax=docker/dockerfile:1
# SAM 3D Objects + Lotus-D inference server. Layers run from least to most often changed:
# system, SAM 3D Objects at a pinned commit in upstream's own conda environment, our
# dependencies (pyproject.toml), the weights (checkpoints/), then our code.
# Builds without a GPU: every CUDA extension is compiled here for the architectures below.

# The web page's JavaScript, from the npm packages locked in web/package-lock.json.
FROM node:20-bookworm-slim AS web
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund

FROM nvidia/cuda:12.1.1-cudnn8-devel-ubuntu22.04

# CONDA_PREFIX: upstream's notebook/inference.py:5 copies it into CUDA_HOME at import, so
# the model cannot load without it; `conda activate` would set it, a container must.
# CUDA_HOME: the base image's toolkit (12.1.1, as upstream's environment) for the builds
# below; upstream repoints it at CONDA_PREFIX at run time, when nothing compiles any more.
# TORCH_CUDA_ARCH_LIST: with no GPU to query, torch cannot pick architectures itself
# (IndexError in _get_cuda_arch_flags): A100 8.0, A10/A40/RTX 30xx 8.6, L4/L40S/RTX 40xx 8.9,
# H100 9.0, and PTX for newer cards. FORCE_CUDA: pytorch3d skips its CUDA kernels without it.
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MAMBA_ROOT_PREFIX=/opt/conda \
    CONDA_PREFIX=/opt/conda/envs/sam3d-objects \
    CUDA_HOME=/usr/local/cuda \
    TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0+PTX" \
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
# its own environments/default.yml (Python 3.11.0, CUDA 12.1 toolkit, gcc 12, setuptools and
# wheel, which pip needs to build pytorch3d and gsplat in place), the dev, p3d and inference
# extras (torch 2.5.1+cu121 from PyTorch's index, kaolin from NVIDIA's wheel index for that
# torch), then the hydra patch.
ARG SAM3D_REPO=https://github.com/facebookresearch/sam-3d-objects.git
ARG SAM3D_COMMIT=cf066761706cd02b07e2fc6274570ec8cdafb683
ENV SAM3D_SOURCE_DIR=/opt/sam-3d-objects
RUN git clone "${SAM3D_REPO}" "${SAM3D_SOURCE_DIR}" \
    && git -C "${SAM3D_SOURCE_DIR}" checkout "${SAM3D_COMMIT}"
RUN micromamba create -y -f "${SAM3D_SOURCE_DIR}/environments/default.yml" \
    && micromamba clean -a -y
WORKDIR /opt/sam-3d-objects
RUN PIP_EXTRA_INDEX_URL="https://pypi.ngc.nvidia.com https://download.pytorch.org/whl/cu121" \
      pip install -e '.[dev]' \
    && PIP_EXTRA_INDEX_URL="https://pypi.ngc.nvidia.com https://download.pytorch.org/whl/cu121" \
      pip install -e '.[p3d]' \
    && PIP_EXTRA_INDEX_URL="https://pypi.ngc.nvidia.com https://download.pytorch.org/whl/cu121" \
      PIP_FIND_LINKS="https://nvidia-kaolin.s3.us-east-2.amazonaws.com/torch-2.5.1_cu121.html" \
      pip install -e '.[inference]' \
    && ./patching/hydra
# nvdiffrast: mesh post-processing and texture baking rasterise with it (through utils3d).
# v0.4.0 compiles its CUDA extension at install, for TORCH_CUDA_ARCH_LIST; v0.3.x compiled
# on first use, for the GPU present, minutes into the first GLB request of every container.
# Later installs are constrained to the numpy that SAM 3D Objects and kaolin installed, so
# rembg (and our own dependencies) resolve to releases that work with it.
ARG NVDIFFRAST_COMMIT=253ac4fcea7de5f396371124af597e6cc957bfae
RUN pip install ninja==1.11.1.4 \
    && pip install --no-build-isolation "git+https://github.com/NVlabs/nvdiffrast.git@${NVDIFFRAST_COMMIT}" \
    && pip freeze | grep -i '^numpy==' > /etc/pip-constraints.txt \
    && pip install -c /etc/pip-constraints.txt "rembg[gpu]==2.0.61"
ENV PIP_CONSTRAINT=/etc/pip-constraints.txt
# Fail the build, not the first request, if a CUDA extension was not compiled.
COPY scripts/check_cuda_extensions.py /tmp/
RUN python /tmp/check_cuda_extensions.py

# Our dependencies: only pyproject.toml is copied, so this layer survives code changes.
WORKDIR /app
# The Lotus-D stack is pinned to the versions CI tests (requirements-serverless.txt): the
# same diffusers, transformers and hub as the serverless worker; numpy stays kaolin's. The
# runpod SDK comes too: this image also starts as a serverless worker (`python handler.py`).
COPY pyproject.toml requirements-serverless.txt ./
RUN grep -E '^(diffusers|transformers|huggingface-hub|accelerate|safetensors)==' \
      requirements-serverless.txt >> /etc/pip-constraints.txt \
    && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['serverless']))" \
      > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

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
    PORT=8000

COPY app.py queue_manager.py settings.py schemas.py handler.py metrics.py webhooks.py \
     gunicorn.conf.py ./
COPY pipelines/ ./pipelines/
COPY workers/ ./workers/
COPY jobs/ ./jobs/
COPY front/ ./front/
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

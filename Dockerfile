# syntax=docker/dockerfile:1
# birdops images. `serve`: the exported model behind `birdops serve` (onnxruntime-gpu, no torch).
# `train`: the environment that runs the DVC pipeline (`dvc repro`) on a GPU runner.
#
# Serve (build after `dvc repro` or `dvc pull`, so that models/export/model.onnx exists):
#   docker build --target serve -t birdops-serve .
#   docker run --rm --gpus all -p 8000:8000 birdops-serve
#   docker run --rm -p 8000:8000 -e BIRDOPS_SERVE_DEVICE=cpu birdops-serve      # no GPU
#   curl -F file=@recording.mp3 http://localhost:8000/predict ; open http://localhost:8000/docs
#   Settings: -e BIRDOPS_SERVE_MAX_UPLOAD_BYTES=... -e BIRDOPS_SERVE_MAX_AUDIO_SECONDS=... (see
#   birdops/serve/settings.py); another model: -v "$PWD/model.onnx:/opt/birdops/model.onnx:ro".
#
# Train (the checkout is mounted, so DVC sees its git history, data and cache):
#   docker build --target train -t birdops-train .
#   docker run --rm --gpus all --shm-size 8g -v "$PWD:/app" birdops-train             # dvc repro
#   docker run --rm --gpus all -v "$PWD:/app" birdops-train dvc exp run -S train_full.epochs=30
#   Without the mount it runs the embedded synthetic corpus from the copied code.
#
# Both targets install the exact versions of requirements.lock (resolved for Python 3.11). `train`
# runs on the lock's Python 3.11 image: PyTorch's wheels bring their own CUDA 13 libraries, and the
# export stage's onnxruntime-gpu runs its parity gates on the CPU. `serve` keeps the CUDA 13 + cuDNN 9
# base that onnxruntime-gpu 1.31 needs for its CUDA provider (its Python is 3.12; every locked serving
# package has a wheel for it). The host needs an NVIDIA driver for CUDA 13 and the NVIDIA Container
# Toolkit (for --gpus).

ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------- base
FROM ${CUDA_IMAGE} AS base
# apt versions are pinned by the base image's tag (one Ubuntu release), not one by one
# hadolint global ignore=DL3008
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
WORKDIR /app

# --------------------------------------------------------------------------------------------- wheel
FROM base AS wheel
COPY pyproject.toml README.md requirements.lock ./
COPY birdops ./birdops
COPY pipeline ./pipeline
RUN pip wheel --no-deps --wheel-dir /wheels .

# --------------------------------------------------------------------------------------------- serve
FROM base AS serve
COPY --from=wheel /wheels /wheels
COPY requirements.lock /tmp/requirements.lock
# the package and its `serve` extra only: numpy, soundfile, soxr, onnxruntime-gpu, FastAPI, uvicorn -- no torch
RUN pip install -c /tmp/requirements.lock "$(ls /wheels/birdops-*.whl)[serve]" && rm -rf /wheels \
 && groupadd --system --gid 10001 birdops \
 && useradd --system --uid 10001 --gid 10001 --no-create-home birdops
COPY --chmod=444 models/export/model.onnx /opt/birdops/model.onnx
ENV BIRDOPS_SERVE_MODEL_PATH=/opt/birdops/model.onnx \
    BIRDOPS_SERVE_PORT=8000
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('BIRDOPS_SERVE_PORT', '8000'); sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=4).status != 200)"]
CMD ["birdops", "serve", "--host", "0.0.0.0"]

# --------------------------------------------------------------------------------------------- train
FROM ${PYTHON_IMAGE} AS train
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends git libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && git config --system --add safe.directory '*' \
 && python3 -m venv /opt/venv
WORKDIR /app
COPY . .
# editable: a checkout mounted over /app is the code that runs (and that DVC hashes). The `train`
# extra is everything a stage imports, onnxruntime included (tests/pipeline/test_docker.py checks it).
RUN pip install -c requirements.lock -e ".[train]" \
 && dvc config --local core.no_scm true
# root on purpose: the job writes data/, models/ and metrics/ into the mounted checkout, whatever its owner
CMD ["dvc", "repro"]

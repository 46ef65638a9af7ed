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
#   Without the mount it runs the embedded synthetic corpus from the copied code (no git: the
#   export records BIRDOPS_SOURCE_REVISION, set with --build-arg BIRDOPS_SOURCE_REVISION=$(git rev-parse HEAD)).
#
# onnxruntime-gpu 1.31 is built for CUDA 13 and cuDNN 9, which the base image provides; the host needs
# an NVIDIA driver for CUDA 13 and the NVIDIA Container Toolkit (for --gpus).

ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04

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
COPY pyproject.toml README.md ./
COPY birdops ./birdops
COPY pipeline ./pipeline
RUN pip wheel --no-deps --wheel-dir /wheels .

# --------------------------------------------------------------------------------------------- serve
FROM base AS serve
COPY --from=wheel /wheels /wheels
# the package and its `serve` extra only: numpy, soundfile, onnxruntime-gpu, FastAPI, uvicorn -- no torch
RUN pip install "$(ls /wheels/birdops-*.whl)[serve]" && rm -rf /wheels \
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
FROM base AS train
RUN apt-get update \
 && apt-get install -y --no-install-recommends git \
 && rm -rf /var/lib/apt/lists/* \
 && git config --system --add safe.directory '*'
COPY . .
# editable: a checkout mounted over /app is the code that runs (and that DVC hashes)
RUN pip install -e ".[train]" \
 && dvc config --local core.no_scm true
ARG BIRDOPS_SOURCE_REVISION=unknown
ENV BIRDOPS_SOURCE_REVISION=${BIRDOPS_SOURCE_REVISION}
# root on purpose: the job writes data/, models/ and metrics/ into the mounted checkout, whatever its owner
CMD ["dvc", "repro"]

# syntax=docker/dockerfile:1
# gradserve server image, multi-stage: the build stage makes the wheel, a slim runtime
# stage installs it with the pinned constraints, and the final stage runs it as a
# non-root user.
#
#   docker build -t gradserve:cpu .                              CPU: python slim + CPU torch
#   docker build --build-arg VARIANT=cuda -t gradserve:cuda .    CUDA: nvidia/cuda runtime + CUDA torch
#
# No Docker engine runs in CI, so tests/e2e/test_image_steps.py replays these steps: the
# build stage's COPY and `pip wheel` lines, the runtime stage's `pip install` line (minus
# the index URL), the final stage's ENV and ENTRYPOINT as an unprivileged user, then the
# HEALTHCHECK command. Keep each of those on one line.

ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# The CUDA base and torch's CUDA index must agree on the CUDA major version; the host's
# driver must support it (NVIDIA Container Toolkit: `--gpus all`).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

# -- build: the wheel (no dependencies; the runtime stage resolves them, pinned) --------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY constraints.txt pyproject.toml README.md ./
COPY service ./service
RUN pip install "setuptools>=77"
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

# -- runtime, CPU: CPU-only torch from PyTorch's index (the PyPI wheel bundles CUDA) -----
FROM ${PYTHON_IMAGE} AS runtime-cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY constraints.txt ./
COPY --from=build /wheels /wheels
RUN pip install -c constraints.txt --extra-index-url ${TORCH_INDEX_URL} /wheels/gradserve-*.whl

# -- runtime, CUDA: NVIDIA's runtime base (driver-facing libraries) + a CUDA torch -------
FROM ${CUDA_IMAGE} AS runtime-cuda
ARG TORCH_CUDA_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
WORKDIR /app
COPY constraints.txt ./
COPY --from=build /wheels /wheels
RUN pip install -c constraints.txt --extra-index-url ${TORCH_CUDA_INDEX_URL} /wheels/gradserve-*.whl

# -- final: the chosen runtime, non-root, with its health check and drain ---------------
FROM runtime-${VARIANT} AS final
RUN useradd --system --create-home --uid 10001 gradserve && rm -rf /wheels
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 GRADSERVE_HOST=0.0.0.0 GRADSERVE_HTTP_PORT=8000 GRADSERVE_GRPC_PORT=8001
USER 10001
EXPOSE 8000 8001
# Ready = every op warm and not draining; the port follows GRADSERVE_HTTP_PORT.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('GRADSERVE_HTTP_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=2).status == 200 else 1)"]
# SIGTERM starts the drain: readiness 503 (for GRADSERVE_DRAIN_DELAY_S), queued work
# finishes, then exit 0. Give `docker stop -t` more than delay + drain timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gradserve", "serve"]

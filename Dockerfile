# syntax=docker/dockerfile:1
#
# GPU image for the Kafka worker `astroclf stream` (DESIGN.md): onnxruntime-gpu, no torch.
# Operators' guide: docs/operations.md.
#
#   docker build -t astroclf-stream:0.3.0 .
#   docker run --gpus all -v "$PWD/stream.yaml:/etc/astroclf/stream.yaml:ro" -p 9108:9108 astroclf-stream:0.3.0
#
# CUDA base and ONNX Runtime move together. onnxruntime-gpu 1.19-1.26 on PyPI are built for
# CUDA 12 + cuDNN 9 (1.26.0 with CUDA 12.8); from 1.27 on, the PyPI wheels need CUDA 13
# (libcudart.so.13) and would silently fall back to the CPU on this base. Hence
# cuda 12.8.1 + cuDNN 9 here and ORT_SPEC below; raise both together (cuda 13.x base,
# onnxruntime-gpu>=1.27) when the hosts' drivers support CUDA 13 (>= 580).
# Python 3.12 comes from Ubuntu 24.04; builder and runtime share the base, so the venv's
# interpreter path (/usr/bin/python3.12) exists in both.

ARG ORT_SPEC="onnxruntime-gpu>=1.20,<1.27"

# --- builder: the virtual environment ------------------------------------------------------
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS builder

ARG ORT_SPEC
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Versions come with the pinned base image's Ubuntu release; pinning Debian revisions of
# python3 would break the build whenever Ubuntu ships a security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY astro_classifier ./astro_classifier

# Exactly the extras `gpu` (onnxruntime-gpu) and `stream` (confluent-kafka,
# pydantic-settings, prometheus-client); never `train` (torch). Every dependency has a
# manylinux wheel for CPython 3.12, so no compiler is needed.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir ".[gpu,stream]" "${ORT_SPEC}" \
    && /opt/venv/bin/python -c "import astro_classifier, confluent_kafka, onnxruntime" \
    && if /opt/venv/bin/python -c "import torch" 2>/dev/null; then \
         echo "torch must not be in the stream image" >&2; exit 1; \
       fi

# --- runtime --------------------------------------------------------------------------------
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS runtime

ARG VERSION=0.3.0
LABEL org.opencontainers.image.title="astroclf-stream" \
      org.opencontainers.image.description="astroclf Kafka worker: classifies astronomical alerts with ONNX Runtime (CUDA)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="astroclf" \
      org.opencontainers.image.base.name="docker.io/nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04"

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH="/opt/venv/bin:${PATH}"

# Same reason as in the builder: the base image tag pins the Ubuntu release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 astroclf \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/astroclf \
         --shell /usr/sbin/nologin astroclf \
    && mkdir -p /etc/astroclf

COPY --from=builder /opt/venv /opt/venv

USER 10001:10001
WORKDIR /home/astroclf

# Prometheus /metrics, liveness /healthz, readiness /ready (metrics_port in the config).
EXPOSE 9108

# No curl in the image: ask the readiness endpoint with the standard library. urlopen raises
# (exit 1) on a refused connection, a timeout or any non-2xx answer.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('ASTROCLF_METRICS_PORT', '9108'); urllib.request.urlopen(f'http://127.0.0.1:{port}/ready', timeout=4)"]

# SIGTERM: the worker finishes its batch, flushes, commits and exits 0 (give it time:
# `docker stop -t 60`).
STOPSIGNAL SIGTERM
ENTRYPOINT ["astroclf", "stream"]
CMD ["--config", "/etc/astroclf/stream.yaml"]

# syntax=docker/dockerfile:1
# sait-serve image: one sparse ViT classifier behind HTTP/JSON + KServe v2 on port 8000.
#
#   docker build -t sait-serve .                                  # weights come from a volume
#   docker build --build-arg BAKE_MODEL=deit_tiny_patch16_224 -t sait-serve:deit-tiny .
#
# Weights are NOT baked in by default: mount a Hugging Face cache at /models/hf-cache (HF_HOME)
# or a directory with a .safetensors file and set SAIT_WEIGHTS. BAKE_MODEL downloads timm's
# pretrained weights for one model at build time into the same HF_HOME path.

ARG PYTORCH_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime

# ---- build: install the package into a venv that reuses the base image's torch ----------
FROM ${PYTORCH_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# --system-site-packages: torch/torchvision (several GB) come from the base image and are not
# downloaded again; the venv holds only sait-serve and its small dependencies. The `gpu`
# extra (nvidia-ml-py) lets the service export GPU utilization.
RUN python -m venv --system-site-packages /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY models ./models
COPY service ./service
RUN /opt/venv/bin/pip install --no-cache-dir ".[gpu]" \
    && /opt/venv/bin/python -c "import models, service"

# ---- weights: empty unless BAKE_MODEL names a timm model ----------------------------------
FROM build AS weights
ARG BAKE_MODEL=""
ENV HF_HOME=/models/hf-cache
RUN mkdir -p /models/hf-cache \
    && if [ -n "${BAKE_MODEL}" ]; then \
         /opt/venv/bin/python -c "import sys, timm; timm.create_model(sys.argv[1], pretrained=True)" "${BAKE_MODEL}"; \
       fi

# ---- runtime: base image + venv + (optional) weights; no compilers, no pip cache -----------
FROM ${PYTORCH_IMAGE} AS runtime
ARG BAKE_MODEL=""
LABEL org.opencontainers.image.title="sait-serve" \
      org.opencontainers.image.description="Weight-shared sparse ViT classifier with a per-request token-density dial" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 sait \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /home/sait --shell /usr/sbin/nologin sait \
    && mkdir -p /home/sait /models/hf-cache \
    && chown -R 10001:10001 /home/sait /models
COPY --from=build /opt/venv /opt/venv
COPY --from=weights --chown=10001:10001 /models/hf-cache /models/hf-cache
# The server binds all interfaces inside the container (the settings' default is loopback).
# HF_HUB_OFFLINE is on when a model was baked so that start-up never reaches the network.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    HOME=/home/sait \
    HF_HOME=/models/hf-cache \
    SAIT_HOST=0.0.0.0 \
    SAIT_PORT=8000 \
    SAIT_MODEL=${BAKE_MODEL:-deit_tiny_patch16_224} \
    HF_HUB_OFFLINE=${BAKE_MODEL:+1}
USER 10001:10001
WORKDIR /home/sait
EXPOSE 8000
# Readiness, not liveness: the container is healthy once the model is loaded and warmed up.
# python's urllib because the runtime image has no curl; the port follows SAIT_PORT.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, ssl, sys, urllib.request; tls = bool(os.environ.get('SAIT_TLS_CERT_FILE')); url = '%s://127.0.0.1:%s/v2/health/ready' % ('https' if tls else 'http', os.environ.get('SAIT_PORT', '8000')); ctx = ssl._create_unverified_context() if tls else None; sys.exit(0 if urllib.request.urlopen(url, timeout=4, context=ctx).status == 200 else 1)"]
# Exec form: sait-serve itself is PID 1 and receives SIGTERM directly (no shell in between),
# so it can drain in-flight requests (SAIT_DRAIN_TIMEOUT_S) before exiting.
ENTRYPOINT ["sait-serve"]

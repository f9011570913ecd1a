# tta-cli for x86_64 machines with an NVIDIA GPU (for Jetson boards see Dockerfile.jetson).
# PyTorch's and onnxruntime-gpu's wheels carry their own CUDA libraries, so the base image only
# has to provide the driver interface and Python 3.11+; the host needs the NVIDIA Container
# Toolkit.
#   docker build -t tta-cli .
#   docker run --gpus all -v "$PWD/runs:/runs" tta-cli adapt --model /opt/tta-cli/sample_models/cifar10-airnet-ce \
#       --source /opt/tta-cli/sample_models/data --run /runs/demo
# or: docker compose up (docker-compose.yml).
ARG CUDA_BASE=nvidia/cuda:12.6.3-runtime-ubuntu24.04
FROM ${CUDA_BASE}

# The base image is pinned by tag; its distribution's Python is what that tag ships.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv "$VIRTUAL_ENV" \
    && python -c 'import sys; sys.exit(sys.version_info < (3, 11) and "tta-cli needs Python 3.11 or newer in the base image")'

WORKDIR /opt/tta-cli
COPY pyproject.toml README.md ./
COPY tta_cli ./tta_cli
RUN pip install --no-cache-dir . \
    && tta-cli --version
COPY sample_models ./sample_models

# Runs (history, predictions, summaries) belong on a volume, not in the container.
VOLUME ["/runs"]
# 'docker stop' sends SIGTERM: the run commits its step in flight and exits with 143.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tta-cli"]
CMD ["--help"]

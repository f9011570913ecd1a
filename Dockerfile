# tta-cli for x86_64 machines with an NVIDIA GPU. PyTorch's wheels carry their own CUDA
# libraries, so the base only needs to provide the driver interface and Python.
#   docker build -t tta-cli .
#   docker run --gpus all -v "$PWD/runs:/runs" tta-cli adapt --model /opt/tta-cli/sample_models/cifar10-airnet \
#       --source /opt/tta-cli/sample_models/data --run /runs/demo
FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
RUN python3 -m venv "$VIRTUAL_ENV"

WORKDIR /opt/tta-cli
COPY pyproject.toml README.md ./
COPY tta_cli ./tta_cli
RUN pip install --no-cache-dir .
COPY sample_models ./sample_models

ENTRYPOINT ["tta-cli"]
CMD ["--help"]

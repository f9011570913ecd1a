#!/usr/bin/env bash
# Everything that needs CUDA, in one run on a GPU machine, results under $OUT (at most 8 files):
# the CUDA tests, and the learned update's and the guard's step time and peak memory against
# Tent's at batch 200 and 64 on both sample bundles (scripts/step_times.py; docs/benchmarks.md,
# "What a step costs"). The images are the shipped sample's, under Gaussian noise: what is
# timed is the step, not the images.
#   scripts/gpu/fetch-wheels.sh   (here, once; then carry .whl)
#   run: command "bash scripts/gpu/checks.sh", carry [".whl"], timeout_s 540
set -uo pipefail
out=${OUT:?the folder whose files come back}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$out/gpu.txt"
timeout 180 python3 -m pytest -q -o addopts="--import-mode=importlib" -m cuda tests 2>&1 | tee "$out/cuda-tests.log"
for bundle in airnet-ce airnet_gn-ce; do
  timeout 150 python3 scripts/step_times.py --model "sample_models/cifar10-$bundle" --data sample_models/data \
    --out "$out/steps-$bundle" --device cuda 2>&1 | tail -20
done

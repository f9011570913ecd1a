#!/usr/bin/env bash
# Pre-training curves of the Meta Gradient Generator (docs/harmonized-updates.md, "What
# pre-training learns") and the generators shipped in sample_models/.
#   docs/bench/mgg/run.sh CIFAR10_DIR OUT
# OUT/*.safetensors are the generators (their metadata holds the curves); OUT/curves.md the tables.
set -euo pipefail
data=${1:?CIFAR10_DIR}; out=${2:?OUT}; mkdir -p "$out"
train() { tta-cli train-mgg --data "$data/train" --device cpu "$@"; }
ce=sample_models/cifar10-airnet-ce
# The former recipe: batch 2, α 1e-4 in training and 1e-3 in use, 128 images, the test-time
# objective as the meta-loss, one-step unroll, generator lr 1e-2 (10 of its 40 epochs).
train --model "$ce" --num-images 128 --batch-size 2 --step-size 1e-3 --train-step-size 1e-4 --unroll 1 --lr 1e-2 \
  --meta-objective test-time --epochs 10 --out "$out/former.safetensors"
# The meta-loss, at a step size where Tent moves the accuracy (α 1e-2).
train --model "$ce" --step-size 1e-2 --epochs 8 --out "$out/cross-entropy-1e-2.safetensors"
train --model "$ce" --step-size 1e-2 --epochs 8 --meta-objective test-time --out "$out/test-time-1e-2.safetensors"
# The shipped generators: the defaults, with and without the memory.
train --model "$ce" --out "$out/airnet-ce.safetensors"
train --model "$ce" --no-memory --out "$out/airnet-ce-no-memory.safetensors"
train --model sample_models/cifar10-airnet_gn-ce --out "$out/airnet_gn-ce.safetensors"
python scripts/mgg_curves.py "$out"/*.safetensors > "$out/curves.md"

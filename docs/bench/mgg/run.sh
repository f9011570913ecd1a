#!/usr/bin/env bash
# Pre-training curves of the Meta Gradient Generator (docs/harmonized-updates.md, "What
# pre-training learns") and the generators shipped in sample_models/.
#   docs/bench/mgg/run.sh CIFAR10_DIR OUT
# OUT/*.safetensors are the generators (their metadata holds the curves; a file already there is
# kept, so a killed run resumes); OUT/curves.md the tables. Copy the shipped ones into the bundles:
#   cp OUT/airnet-ce.safetensors sample_models/cifar10-airnet-ce/mgg.safetensors  (and so on)
set -euo pipefail
data=${1:?CIFAR10_DIR}; out=${2:?OUT}; mkdir -p "$out"
train() {
  local file=$out/$1; shift
  [[ -f $file ]] || tta-cli train-mgg --data "$data/train" --device cpu --out "$file" "$@"
}
ce=sample_models/cifar10-airnet-ce
gn=sample_models/cifar10-airnet_gn-ce
# The shipped generators: the defaults on the BatchNorm sample, with and without the memory;
# α 1e-2 on the GroupNorm bundle, where θ is the only lever, and for both its generators episodes
# of four passes with the clean images in the meta-loss, which hold θ on long streams
# (docs/bench/mgg/long-streams.sh); the defaults on the suite's other two bundles (grayscale,
# ResNet-20). The others were trained before the pull towards the source existed (their files
# say nothing of it: ρ = 0); with the defaults now they would learn one.
train airnet-ce.safetensors --model "$ce"
train airnet-ce-no-memory.safetensors --model "$ce" --no-memory
train airnet_gn-ce.safetensors --model "$gn" --step-size 1e-2 --epochs 12 --passes 4 --meta-objective cross-entropy+clean
train airnet_gn-ce-no-memory.safetensors --model "$gn" --step-size 1e-2 --epochs 12 --no-memory --passes 4 \
  --meta-objective cross-entropy+clean
train airnet_gray-ce.safetensors --model sample_models/cifar10-airnet_gray-ce
train resnet20-ce.safetensors --model sample_models/cifar10-resnet20-ce
# The meta-loss, at a step size where Tent moves the held-out accuracy (α 1e-2).
train cross-entropy-1e-2.safetensors --model "$ce" --step-size 1e-2 --epochs 8
train test-time-1e-2.safetensors --model "$ce" --step-size 1e-2 --epochs 8 --meta-objective test-time
# The former recipe: batch 2, α 1e-4 in training and 1e-3 in use, 128 images, the test-time
# objective as the meta-loss, one-step unroll, generator lr 1e-2 (10 of its 40 epochs).
train former.safetensors --model "$ce" --num-images 128 --batch-size 2 --step-size 1e-3 --train-step-size 1e-4 \
  --unroll 1 --lr 1e-2 --meta-objective test-time --epochs 10
python scripts/mgg_curves.py "$out"/*.safetensors > "$out/curves.md"

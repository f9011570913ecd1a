#!/usr/bin/env bash
# The generator with memory on the continual protocol once its memory restarts after each
# pre-training episode's worth of steps (docs/benchmarks.md, "The learned update on BatchNorm and
# GroupNorm bundles"): the settings of docs/bench/mgtta/run.sh, continual only (under reset every
# corruption is shorter than an episode, so nothing changes there).
#   docs/bench/mgtta/memory/run.sh CIFAR10_DIR OUT
set -euo pipefail
data=${1:?CIFAR10_DIR}; out=${2:?OUT}
tta-cli bench --model sample_models/cifar10-airnet_gn-ce --data "$data/test" --out "$out/airnet_gn-ce" \
  --num-examples 500 --batch-size 64 --protocols continual --no-speed --methods mgtta
tta-cli bench --model sample_models/cifar10-airnet-ce --data "$data/test" --out "$out/airnet-ce" \
  --num-examples 2000 --batch-size 200 --protocols continual --no-speed --methods mgtta

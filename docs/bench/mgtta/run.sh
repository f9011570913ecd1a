#!/usr/bin/env bash
# The learned update against hand-made ones on the suite's BatchNorm and GroupNorm bundles
# (docs/benchmarks.md, "The learned update on BatchNorm and GroupNorm bundles"): every corruption
# at severity 5, reset and continual, seed 0, 2 CPU cores. Shorter than the full protocol (2,000
# images per corruption at batch 200 for the BatchNorm bundle, 500 at batch 64 for the GroupNorm
# one, whose CPU steps are about ten times slower).
#   docs/bench/mgtta/run.sh CIFAR10_DIR OUT
set -euo pipefail
data=${1:?CIFAR10_DIR}; out=${2:?OUT}
tta-cli bench --model sample_models/cifar10-airnet_gn-ce --data "$data/test" --out "$out/airnet_gn-ce" \
  --num-examples 500 --batch-size 64 --source-data "$data/train" --no-speed \
  --methods source,tent,eata,sar,harmonized,mgtta,mgtta-sum,mgtta-nomem
tta-cli bench --model sample_models/cifar10-airnet-ce --data "$data/test" --out "$out/airnet-ce" \
  --num-examples 2000 --batch-size 200 --source-data "$data/train" --no-speed \
  --methods source,norm,tent,eata,sar,harmonized,mgtta,mgtta-sum,mgtta-nomem

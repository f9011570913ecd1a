#!/usr/bin/env bash
# Each harmonizer against the plain sum on the GroupNorm bundle, where θ is the only lever and
# the two objectives' gradients conflict on a third to a half of the steps (docs/benchmarks.md,
# "Which harmonizer"): the learned update without memory (what `auto` runs there) and the
# hand-made one (Adam), each with sum, GH, GH++, SAM-GS, PCGrad, UPGrad and MGDA; every
# corruption at severity 5, 500 images per corruption at batch 64 (the streams of "Three
# seeds"), reset and continual, seed 0.
#   docs/bench/harmonizers/run.sh CIFAR10_DIR OUT
set -euo pipefail
data=${1:?CIFAR10_DIR}; out=${2:?OUT}
harmonizers="sum gh gh++ sam-gs pcgrad upgrad mgda"
methods=source
for base in mgtta-nomem harmonized; do
  for harmonizer in $harmonizers; do methods+=",$base:$harmonizer"; done
done
tta-cli bench --model sample_models/cifar10-airnet_gn-ce --data "$data/test" --out "$out" \
  --num-examples 500 --batch-size 64 --seed 0 --no-speed --methods "$methods"

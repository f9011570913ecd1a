#!/usr/bin/env bash
# What the alignment objective's weight and layers do to the conflict between the two
# objectives and to what harmonizing it is worth (docs/benchmarks.md, "The alignment's weight
# and layers"): on the GroupNorm bundle, where θ is the only lever, the hand-made update (Adam)
# and the learned one without memory, each with the plain sum and GH++, the alignment weighed
# 0.1, 0.4 (the default), 1.6 and 6.4 over all three feature layers, and at 0.4 over each layer
# alone; Tent (entropy alone) beside them. The streams of "Which harmonizer": every corruption
# at severity 5, 500 images per corruption at batch 64, reset and continual, seed 0.
#   docs/bench/harmonizers/alignment.sh CIFAR10_DIR OUT [BUNDLE]
set -euo pipefail
data=${1:?CIFAR10_DIR}; out=${2:?OUT}; bundle=${3:-sample_models/cifar10-airnet_gn-ce}
methods=source,tent
for base in harmonized mgtta-nomem; do
  for harmonizer in sum gh++; do
    for variant in align0.1 align0.4 align1.6 align6.4 features1 features2 features3; do
      methods+=",$base:$harmonizer+$variant"
    done
  done
done
tta-cli bench --model "$bundle" --data "$data/test" --out "$out" \
  --num-examples 500 --batch-size 64 --seed 0 --no-speed --methods "$methods"

#!/usr/bin/env bash
# Which gradient method serves a model without BatchNorm: tent, EATA (here without its Fisher
# term, i.e. ETA), SAR and the learned update (the bundle's MGG, with and without its memory),
# each guarded, on the suite's GroupNorm bundle; severity 5, 200 images per corruption,
# continual, shuffled and class-sorted at batch 64.
# Usage: docs/bench/suite/groupnorm/run.sh CIFAR10_DIR OUT   (from the repository root)
set -euo pipefail
data=${1:?CIFAR10_DIR}; out=${2:?OUT}
for order in shuffled sorted; do
  tta-cli bench --model sample_models/cifar10-airnet_gn-ce --data "$data/test" --num-examples 200 --severity 5 \
    --protocols continual --methods source,tent+guard,eata+guard,sar+guard,mgtta+guard,mgtta-nomem+guard --order "$order" --batch-size 64 \
    --no-speed --out "$out/gn-$order-64-5"
done

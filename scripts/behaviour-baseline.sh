#!/usr/bin/env bash
# A fixed reduced benchmark whose error cells and predictions must not change under a refactor:
# 3 corruptions x 600 images, every normalisation and update path, shuffled and sorted, both
# protocols; then `adapt` on the sample data. Compare two outputs with
# `python scripts/compare_behaviour.py BEFORE AFTER`.
#   scripts/behaviour-baseline.sh CIFAR10_DIR OUT
set -euo pipefail
data=${1:?CIFAR10_DIR}; out=${2:?OUT}
methods=source,norm,norm+weighted,tent,eata,sar,mgtta,mgtta+weighted+memory+guard,tent+balanced,tent+robust,tent+tbr,rdumb+reset5,harmonized:sam-gs
for order in shuffled sorted; do
  tta-cli bench --model sample_models/cifar10-airnet-ce --data "$data/test" --out "$out/$order" \
    --corruptions gaussian_noise,defocus_blur,fog --num-examples 600 --batch-size 64 \
    --order "$order" --methods "$methods" --no-speed
done
for order in shuffled sorted; do
  tta-cli adapt --model sample_models/cifar10-airnet-ce --source sample_models/data --order "$order" \
    --run "$out/adapt-$order"
done

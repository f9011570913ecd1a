#!/usr/bin/env bash
# What the learned update's step and the guard cost against Tent's, and what harmonizing on one
# step in two (`+harmonize2`) changes in error (docs/benchmarks.md, "Speed of the learned update
# and of the guard"). The error runs repeat docs/bench/mgtta/run.sh's settings for the variants
# only; the exact-harmonization rows to compare with are in docs/bench/mgtta. Run it on an idle
# machine: the step times are ratios within one run, but a second job makes them noisy.
#   docs/bench/speed/run.sh CIFAR10_DIR OUT
set -euo pipefail
data=${1:?CIFAR10_DIR}; out=${2:?OUT}
for model in cifar10-airnet-ce cifar10-airnet_gn-ce; do
  python scripts/step_times.py --model "sample_models/$model" --data "$data/test" --out "$out/steps-$model"
done
[[ -f $out/airnet_gn-ce/bench.json ]] || tta-cli bench --model sample_models/cifar10-airnet_gn-ce \
  --data "$data/test" --out "$out/airnet_gn-ce" --num-examples 500 --batch-size 64 --no-speed \
  --methods mgtta+harmonize2,mgtta-nomem+harmonize2
[[ -f $out/airnet-ce/bench.json ]] || tta-cli bench --model sample_models/cifar10-airnet-ce \
  --data "$data/test" --out "$out/airnet-ce" --num-examples 2000 --batch-size 200 --no-speed \
  --methods mgtta+harmonize2

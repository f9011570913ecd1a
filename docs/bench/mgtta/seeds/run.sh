#!/usr/bin/env bash
# The learned update against hand-made ones over three seeds (docs/benchmarks.md, "Three seeds"):
# the streams of docs/bench/mgtta/run.sh (every corruption at severity 5, reset and continual;
# 500 images per corruption at batch 64 on the GroupNorm bundle, 2,000 at batch 200 on the
# BatchNorm one), drawn with seeds 0, 1 and 2 (the images, their order and the corruptions'
# randomness). OUT/seedS/BUNDLE/bench.json per run (a run already there is kept, so a killed
# script resumes); OUT/table.md the means, spreads and ratios (scripts/seed_table.py).
#   docs/bench/mgtta/seeds/run.sh CIFAR10_DIR OUT [BUNDLE...]
set -euo pipefail
data=${1:?CIFAR10_DIR}; out=${2:?OUT}; shift 2
bundles=("$@"); [[ ${#bundles[@]} -gt 0 ]] || bundles=(airnet_gn-ce airnet-ce)
for bundle in "${bundles[@]}"; do
  case $bundle in
    airnet_gn-ce) size=(--num-examples 500 --batch-size 64)
      methods=source,tent,eata,sar,harmonized,mgtta,mgtta-sum,mgtta-nomem ;;
    *) size=(--num-examples 2000 --batch-size 200)
      methods=source,norm,tent,eata,sar,harmonized,mgtta,mgtta-sum,mgtta-nomem ;;
  esac
  for seed in 0 1 2; do
    run=$out/seed$seed/$bundle
    [[ -f $run/bench.json ]] || tta-cli bench --model "sample_models/cifar10-$bundle" --data "$data/test" \
      --out "$run" "${size[@]}" --seed "$seed" --source-data "$data/train" --no-speed --methods "$methods"
  done
done
python scripts/seed_table.py "$out" > "$out/table.md"

#!/usr/bin/env bash
# The learned update against hand-made ones over three seeds (docs/benchmarks.md, "Three seeds"):
# every corruption at severity 5, reset and continual, the streams drawn with seeds 0, 1 and 2
# (the images, their order and the corruptions' randomness). By default the streams of
# docs/bench/mgtta/run.sh: 500 images per corruption at batch 64 on the GroupNorm bundle (and the
# LayerNorm one), 2,000 at batch 200 on the BatchNorm one; IMAGES=10000 BATCH=200 is the full protocol.
#   [IMAGES=N] [BATCH=B] [SEEDS="0 1 2"] [METHODS="a b"] docs/bench/mgtta/seeds/run.sh CIFAR10_DIR OUT [BUNDLE...]
# One bench per bundle, seed and method, in OUT/seedS/BUNDLE/METHOD/, so that a killed script
# resumes where it stopped (a method measured there already, or in OUT/seedS/BUNDLE/bench.json,
# is kept); OUT/table.md the means, spreads and ratios (scripts/seed_table.py).
set -euo pipefail
data=${1:?CIFAR10_DIR}; out=${2:?OUT}; shift 2
bundles=("$@"); [[ ${#bundles[@]} -gt 0 ]] || bundles=(airnet_gn-ce airnet-ce)
for bundle in "${bundles[@]}"; do
  case $bundle in
    airnet_gn-ce | airnet_ln-ce) size=(--num-examples "${IMAGES:-500}" --batch-size "${BATCH:-64}")
      methods="source tent eata sar harmonized mgtta mgtta-sum mgtta-nomem" ;;
    *) size=(--num-examples "${IMAGES:-2000}" --batch-size "${BATCH:-200}")
      methods="source norm tent eata sar harmonized mgtta mgtta-sum mgtta-nomem" ;;
  esac
  for seed in ${SEEDS:-0 1 2}; do
    for method in ${METHODS:-$methods}; do
      run=$out/seed$seed/$bundle
      [[ -f $run/$method/bench.json ]] && continue
      [[ -f $run/bench.json ]] && python -c 'import json, sys; sys.exit(sys.argv[2] not in json.load(open(sys.argv[1]))["methods"])' \
        "$run/bench.json" "$method" && continue
      tta-cli bench --model "sample_models/cifar10-$bundle" --data "$data/test" --out "$run/$method" "${size[@]}" \
        --seed "$seed" --source-data "$data/train" --no-speed --methods "$method"
    done
  done
done
python scripts/seed_table.py "$out" > "$out/table.md"

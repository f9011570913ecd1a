#!/usr/bin/env bash
# The development suite's CIFAR-10 models, trained one after another on the CPU with plain
# cross-entropy (the recipe of scripts/train_sample_model.py), then prepared as bundles.
#   scripts/train-suite.sh CIFAR10_DIR OUT [EPOCHS]
set -euo pipefail
data=${1:?CIFAR10_DIR}; out=${2:?OUT}; epochs=${3:-10}
for architecture in airnet airnet_gn airnet_gray; do
  python scripts/train_sample_model.py --data "$data" --out "$out/train-$architecture" --epochs "$epochs" \
    --seed 0 --architecture "$architecture" --label-smoothing 0
  statistics=$(python -c "import json, sys; r = json.load(open(sys.argv[1])); print(','.join(map(str, r['mean'])), ','.join(map(str, r['std'])))" "$out/train-$architecture/training.json")
  read -r mean std <<< "$statistics"
  tta-cli prepare --arch "$architecture" --weights "$out/train-$architecture/weights.safetensors" \
    --source-data "$data/train" --mean "$mean" --std "$std" --num-images 5000 --out "$out/cifar10-$architecture-ce"
  cp "$out/train-$architecture/training.json" "$out/cifar10-$architecture-ce/training.json"
done

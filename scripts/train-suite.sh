#!/usr/bin/env bash
# The development suite's CIFAR-10 models, trained one after another on the CPU with plain
# cross-entropy (the recipe of scripts/train_sample_model.py), then prepared as bundles.
#   scripts/train-suite.sh CIFAR10_DIR OUT [ARCHITECTURE:EPOCHS ...]
# The default list is what the shipped suite was trained with on two CPU cores (airnet 60 min,
# airnet_gn 41, the others 12 to 25 min each). resnet20 takes batches of 256, as ResNets are usually
# trained, and so do airnet_gn (at 1024, 48 steps an epoch, it reached 45.7 % test accuracy in 4
# epochs) and airnet_ln, trained as airnet_gn is.
set -euo pipefail
data=${1:?CIFAR10_DIR}; out=${2:?OUT}; shift 2
for entry in "${@:-airnet:10 airnet_gn:6 airnet_ln:6 airnet_gray:4 resnet20:4}"; do
  for item in $entry; do
    architecture=${item%%:*}; epochs=${item##*:}
    case $architecture in resnet20 | airnet_gn | airnet_ln) batch=256 ;; *) batch=1024 ;; esac
    python scripts/train_sample_model.py --data "$data" --out "$out/train-$architecture" --epochs "$epochs" \
      --batch-size "$batch" --seed 0 --architecture "$architecture" --label-smoothing 0
    statistics=$(python -c "import json, sys; r = json.load(open(sys.argv[1])); print(','.join(map(str, r['mean'])), ','.join(map(str, r['std'])))" "$out/train-$architecture/training.json")
    read -r mean std <<< "$statistics"
    tta-cli prepare --arch "$architecture" --weights "$out/train-$architecture/weights.safetensors" \
      --source-data "$data/train" --mean "$mean" --std "$std" --num-images 5000 --out "$out/cifar10-$architecture-ce"
    cp "$out/train-$architecture/training.json" "$out/cifar10-$architecture-ce/training.json"
  done
done

#!/usr/bin/env bash
# The learned update on long continual streams (docs/harmonized-updates.md, "Long streams"):
# how far θ drifts, and what longer pre-training episodes, the clean-images meta-loss and the
# pull towards the source do about it, on the GroupNorm bundle (every corruption at severity 5,
# 500 images each, batch 64, reset and continual, seed 0).
#   docs/bench/mgg/long-streams.sh CIFAR10_DIR OUT
# OUT/NAME.safetensors are the generators (a file already there is kept, so a killed run
# resumes), OUT/bench-NAME the bench tables of a copy of the bundle that ships it, OUT/drift-*.json
# θ's distance from the source after every step (scripts/theta_drift.py).
set -euo pipefail
data=${1:?CIFAR10_DIR}; out=${2:?OUT}; mkdir -p "$out"
gn=sample_models/cifar10-airnet_gn-ce
train() {
  local file=$out/$1.safetensors; shift
  [[ -f $file ]] || tta-cli train-mgg --model "$gn" --data "$data/train" --device cpu --step-size 1e-2 --epochs 12 \
    --out "$file" "$@"
}
evaluate() {  # NAME [METHOD]: the bench on a copy of the bundle that ships OUT/NAME.safetensors as
  # the generator of METHOD (mgtta, or mgtta-nomem)
  local bundle=$out/bundle-$1 method=${2:-mgtta} file=mgg.safetensors
  [[ $method == mgtta-nomem ]] && file=mgg-no-memory.safetensors
  rm -rf "$bundle"; cp -r "$gn" "$bundle"; cp "$out/$1.safetensors" "$bundle/$file"
  [[ -f $out/bench-$1/bench.json ]] || tta-cli bench --model "$bundle" --data "$data/test" --out "$out/bench-$1" \
    --num-examples 500 --batch-size 64 --no-speed --methods "$method"
}
# Episodes of one pass (32 steps; the bundle's generator until this experiment), unanchored.
train passes1 --no-anchor
# Episodes of four passes (128 steps, as long as the 120 of the continual stream), unanchored.
train passes4 --passes 4 --no-anchor
# ... anchored (the pull ρ learned), with the clean images in the meta-loss: the bundle's generator now.
train passes4-clean --passes 4 --meta-objective cross-entropy+clean
for name in passes1 passes4 passes4-clean; do evaluate "$name"; done
# The generator without memory: the former recipe, and the new one.
train passes1-no-memory --no-anchor --no-memory
train passes4-clean-no-memory --passes 4 --meta-objective cross-entropy+clean --no-memory
for name in passes1-no-memory passes4-clean-no-memory; do evaluate "$name" mgtta-nomem; done
drift() {  # BUNDLE METHOD NAME
  [[ -f $out/drift-$3.json ]] || python scripts/theta_drift.py --model "$1" --data "$data/test" --method "$2" \
    --out "$out/drift-$3.json"
}
drift "$out/bundle-passes1" mgtta passes1
drift "$out/bundle-passes4" mgtta passes4
drift "$out/bundle-passes1-no-memory" mgtta-nomem passes1-no-memory
drift "$out/bundle-passes4-clean" mgtta passes4-clean
drift "$out/bundle-passes4-clean-no-memory" mgtta-nomem passes4-clean-no-memory
# A fixed pull on the unanchored four-pass generator: what ρ does when it is not learned.
for rho in 0.02 0.1; do
  [[ -f $out/passes4-pull$rho.safetensors ]] || python - "$out/passes4.safetensors" "$rho" "$out/passes4-pull$rho.safetensors" <<'EOF'
import sys

import torch

from tta_cli.mgg import MetaGradientGenerator, load_generator, read_metadata, save_generator

source, rho, target = sys.argv[1], float(sys.argv[2]), sys.argv[3]
plain = load_generator(source)
anchored = MetaGradientGenerator(plain.hidden, memory=plain.uses_memory, anchored=True)
anchored.load_state_dict(plain.state_dict() | {"pull_weight": torch.tensor(rho)})
save_generator(anchored, target, read_metadata(source) | {"pull": rho, "anchored": True})
EOF
  evaluate "passes4-pull$rho"
done
drift "$out/bundle-passes4-pull0.1" mgtta passes4-pull0.1

#!/usr/bin/env bash
# A model with LayerNorm only, which no constant of the default was chosen on
# (docs/benchmarks.md, "A model with LayerNorm only"): the airnet with LayerNorm over each
# position's channels (ConvNeXt's normalisation, `airnet_ln`), trained by the suite's recipe,
# prepared, its generator without memory pre-trained by the GroupNorm bundle's recipe unchanged,
# then the learned update against the hand-made ones on the streams of "Three seeds" (seed 0) and
# the development suite's 16 streams.
#   docs/bench/layernorm/run.sh CIFAR10_DIR
# Each stage is skipped when its result is there, so a killed run resumes.
set -euo pipefail
data=${1:?CIFAR10_DIR}
bundle=sample_models/cifar10-airnet_ln-ce
if [[ ! -d $bundle ]]; then
  scripts/train-suite.sh "$data" .cache/layernorm airnet_ln:6
  cp -r .cache/layernorm/cifar10-airnet_ln-ce "$bundle.partial" && mv "$bundle.partial" "$bundle"
fi
[[ -f $bundle/mgg-no-memory.safetensors ]] || tta-cli train-mgg --model "$bundle" --data "$data/train" --device cpu \
  --step-size 1e-2 --epochs 12 --no-memory --passes 4 --meta-objective cross-entropy+clean --scale
python scripts/mgg_curves.py "$bundle/mgg-no-memory.safetensors" > docs/bench/layernorm/curve.md
SEEDS=0 METHODS="source tent eata sar harmonized mgtta-nomem" \
  docs/bench/mgtta/seeds/run.sh "$data" docs/bench/mgtta/seeds airnet_ln-ce
python scripts/suite.py run --bundle "$bundle" --data "$data/test" --out docs/bench/suite
python scripts/suite.py tables docs/bench/suite

#!/usr/bin/env bash
# Transfer and interference on the sample model (docs/benchmarks.md, "Mixed shifts: transfer and
# interference"): `analyze` on five corruptions at severity 5, then the `mixed` protocol against
# each corruption alone over all 15, with and without --domain-weighting, at batch 200 and 64.
#   docs/bench/mixed/run.sh CIFAR10_DIR OUT [IMAGES_PER_CORRUPTION] [BATCH_SIZES]
# Every run uses IMAGES_PER_CORRUPTION images of each corruption (default all 10,000), at each of
# BATCH_SIZES (default "200 64"). A run whose bench.json exists is skipped.
set -euo pipefail
data=${1:?CIFAR10_DIR}; out=${2:?OUT}; images=${3:-10000}; batch_sizes=${4:-200 64}
model=sample_models/cifar10-airnet-ce
[[ -f $out/analyze/analysis.json ]] || tta-cli analyze --model "$model" --data "$data/test" --out "$out/analyze" \
  --domain gaussian_noise --domain defocus_blur --domain fog --domain contrast --domain jpeg_compression \
  --method tent --method mgtta --num-examples "$images"
for batch in $batch_sizes; do
  # source and norm weigh nothing: the weighted run repeats only the methods it changes.
  for weighting in no-domain-weighting domain-weighting; do
    run=$out/b$batch-$weighting
    methods=source,norm,tent,mgtta
    [[ $weighting == domain-weighting ]] && methods=tent,mgtta
    [[ -f $run/bench.json ]] || tta-cli bench --model "$model" --data "$data/test" --out "$run" \
      --protocols reset,mixed --methods "$methods" --batch-size "$batch" \
      --num-examples "$images" --no-speed --"$weighting"
  done
done

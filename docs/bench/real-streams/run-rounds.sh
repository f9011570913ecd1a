#!/usr/bin/env bash
# Ten rounds of the continual sequence (severity 5, shuffled, batch 64) of docs/benchmarks.md.
# RDumb resets every 50 steps here: one round is 47 steps of 64 images (200 per corruption),
# so its published period of 1000 steps would never come round.
# Usage: [MODEL=BUNDLE] [METHODS=a,b] [IMAGES=N] [OUT=DIR] docs/bench/real-streams/run-rounds.sh CIFAR10_DIR
# (from the repository root; the table in docs/benchmarks.md was measured on the former sample,
# MODEL=sample_models/cifar10-airnet, no longer shipped)
set -euo pipefail
data=${1:?give the CIFAR-10 folder with train/ and test/}
tta-cli bench --model "${MODEL:-sample_models/cifar10-airnet-ce}" --data "$data/test" --num-examples "${IMAGES:-200}" \
  --severity 5 --protocols continual --order shuffled --batch-size 64 --rounds 10 \
  --methods "${METHODS:-source,tent,rdumb+reset50,mgtta+tbr+memory+guard,mgtta+robust+memory+guard,mgtta+balanced+guard}" \
  --no-speed --out "${OUT:-docs/bench/real-streams}/rounds"

#!/usr/bin/env bash
# Mild shifts (severities 1 and 3) of docs/benchmarks.md, shuffled, batch 64, continual.
# Usage: [MODEL=BUNDLE] [METHODS=a,b] [OUT=DIR] docs/bench/real-streams/run-mild.sh CIFAR10_DIR
# (from the repository root; the tables in docs/benchmarks.md were measured on the former sample,
# MODEL=sample_models/cifar10-airnet, no longer shipped)
set -euo pipefail
data=${1:?give the CIFAR-10 folder with train/ and test/}
for severity in 1 3; do
  tta-cli bench --model "${MODEL:-sample_models/cifar10-airnet-ce}" --data "$data/test" --num-examples 600 \
    --severity "$severity" --protocols continual --order shuffled --batch-size 64 \
    --methods "${METHODS:-source,norm,tent,mgtta,mgtta+tbr+memory+guard,mgtta+robust+memory+guard,mgtta+balanced+guard}" \
    --no-speed --out "${OUT:-docs/bench/real-streams}/severity$severity"
done

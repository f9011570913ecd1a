#!/usr/bin/env bash
# The real-stream tables of docs/benchmarks.md: one `tta-cli bench` per stream protocol.
# Usage: [MODEL=BUNDLE] [METHODS=a,b] [OUT=DIR] docs/bench/real-streams/run.sh CIFAR10_DIR [PROTOCOL...]
# (from the repository root; the tables in docs/benchmarks.md were measured on the former sample,
# MODEL=sample_models/cifar10-airnet, no longer shipped)
set -euo pipefail
data=${1:?give the CIFAR-10 folder with train/ and test/}
shift
out=${OUT:-docs/bench/real-streams}
methods=${METHODS:-source,norm,tent,eata,sar,rdumb,mgtta,mgtta+tbr+memory+guard,mgtta+robust+memory+guard,mgtta+balanced+guard}
declare -A settings=(
  [shuffled-b200]="--order shuffled --batch-size 200"
  [sorted-b64]="--order sorted --batch-size 64"
  [dirichlet0.1-b64]="--order dirichlet:0.1 --batch-size 64"
  [shuffled-b16]="--order shuffled --batch-size 16"
)
for name in "${@:-shuffled-b200 sorted-b64 dirichlet0.1-b64 shuffled-b16}"; do
  for protocol in $name; do
    # shellcheck disable=SC2086
    tta-cli bench --model "${MODEL:-sample_models/cifar10-airnet-ce}" --data "$data/test" --source-data "$data/train" \
      --num-examples 600 --severity 5 --protocols continual --methods "$methods" \
      ${settings[$protocol]} --no-speed --out "$out/$protocol"
  done
done

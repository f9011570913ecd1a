#!/usr/bin/env bash
# Every figure of the README's tour, from the shipped sample bundle and images, on this machine:
# the default run and its history, a rollback and export, and the online accuracy of each method.
#   scripts/readme-figures.sh OUT    (OUT/*.txt hold the commands' outputs)
set -euo pipefail
out=${1:?OUT}; mkdir -p "$out"
model=sample_models/cifar10-airnet-ce
tour=$out/runs/tour
rm -rf "$out/runs"
tta-cli adapt --model "$model" --source sample_models/data --order shuffled --run "$tour" > "$out/adapt.txt" 2>&1
tta-cli history "$tour" --last 3 > "$out/history.txt"
tta-cli rollback "$tour" --to 8 > "$out/rollback.txt"
tta-cli export "$tour" --out "$out/runs/tour.onnx" > "$out/export.txt" 2>&1
tta-cli adapt --model "$model" --source sample_models/data --order sorted --run "$out/runs/sorted" > "$out/adapt-sorted.txt" 2>&1
for method in source norm tent eata sar harmonized mgtta mgtta-sum mgtta-nomem; do
  tta-cli adapt --model "$model" --source sample_models/data --order shuffled --method "$method" \
    --run "$out/runs/$method" > "$out/method-$method.txt" 2>&1
done
tta-cli adapt --model "$model" --source sample_models/data --order sorted --method norm --run "$out/runs/norm-sorted" \
  > "$out/norm-sorted.txt" 2>&1
grep -H "online accuracy" "$out"/*.txt

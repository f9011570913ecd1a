#!/usr/bin/env bash
# A source model that collapses onto one class, and what the default does about it: each shift
# beyond CIFAR-10-C (and Gaussian noise at severity 5) applied to 50 test images per class,
# shuffled, batch 64, adapted with the source model, test-batch normalisation, tent, and the
# default, the default without `jump` and without `jump` and `confidence_near_source` (the
# default before either); online accuracy, the default's returns to the source's statistics
# and its jumps to a batch's own. `confidence_near_source` was removed with the return on
# confidence (docs/benchmarks.md, "Fewer mechanisms"): the last variant runs as this script is
# at commit 5de1af2, and is left out here.
# Usage: docs/bench/collapse/run.sh BUNDLE CIFAR10_DIR OUT   (from the repository root)
set -euo pipefail
bundle=${1:?BUNDLE}; data=${2:?CIFAR10_DIR}; out=${3:?OUT}
mkdir -p "$out"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
printf '[adapt.weighted_norm]\njump = false\n' > "$scratch/without-jump.toml"
echo "shift,method,online_accuracy,returns,jumps,rollbacks" > "$out/accuracy.csv"
for shift in extreme_noise low_light inverted grayscale gaussian_noise; do
  python -c "import sys; from pathlib import Path; from tta_cli.corruptions import corrupt_folder
corrupt_folder(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], 5, 0, limit_per_class=50)" \
    "$data/test" "$scratch/$shift" "$shift"
  for method in source norm tent auto auto-without-jump; do
    run="$scratch/run-$shift-$method"
    config=()
    name=$method
    if [ "${method#auto-}" != "$method" ]; then config=(--config "$scratch/${method#auto-}.toml"); name=auto; fi
    tta-cli adapt --model "$bundle" --source "$scratch/$shift" --order shuffled --method "$name" --run "$run" \
      "${config[@]}" > /dev/null
    accuracy=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['online_accuracy'])" "$run/summary.json")
    counts=$(tta-cli history "$run" --json | python -c "import json, sys; events = json.load(sys.stdin)['events']
print(*(sum(e['kind'] == kind for e in events) for kind in ('norm-return', 'norm-jump', 'rollback')))")
    echo "$shift,$method,$accuracy,${counts// /,}" >> "$out/accuracy.csv"
  done
done
cat "$out/accuracy.csv"

#!/usr/bin/env bash
# A camera on one scene: each CIFAR-10 test class alone, clean, 500 images in file order, batch 64,
# adapted with the default and with the source model; prints the online accuracy of each.
# Usage: docs/bench/real-streams/one-class.sh CIFAR10_DIR [OUT]   (from the repository root)
set -euo pipefail
data=${1:?give the CIFAR-10 folder with train/ and test/}
out=${2:-docs/bench/real-streams/one-class}
mkdir -p "$out"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
echo "class,method,online_accuracy,returns" > "$out/accuracy.csv"
for class in airplane automobile bird cat deer dog frog horse ship truck; do
  mkdir -p "$scratch/$class/data/$class"
  find "$data/test/$class" -maxdepth 1 -type f | sort | sed -n '1,500p' | xargs cp -t "$scratch/$class/data/$class"
  for method in source auto; do
    run="$scratch/$class/run-$method"
    tta-cli adapt --model sample_models/cifar10-airnet --source "$scratch/$class/data" \
      --method "$method" --run "$run" > /dev/null
    accuracy=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['online_accuracy'])" "$run/summary.json")
    returns=$(tta-cli history "$run" --json | python -c "import json, sys; print(sum(event['kind'] == 'norm-return' for event in json.load(sys.stdin)['events']))")
    echo "$class,$method,$accuracy,$returns" >> "$out/accuracy.csv"
  done
done
cat "$out/accuracy.csv"

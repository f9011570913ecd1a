#!/usr/bin/env bash
# A camera on one scene: each CIFAR-10 test class alone, clean, 500 images in file order, batch 64,
# adapted with each variant; prints the online accuracy of each and the norm's returns to the
# source statistics. A variant is a method, or `auto-without-SWITCH` for the default with one
# switch of the weighted norm off (`[adapt.weighted_norm]`, docs/normalisation.md).
# Usage: [MODEL=BUNDLE] [VARIANTS="source auto ..."] docs/bench/real-streams/one-class.sh CIFAR10_DIR [OUT]
# (from the repository root; the table in docs/benchmarks.md was made with the former sample
# model, MODEL=sample_models/cifar10-airnet, no longer shipped)
set -euo pipefail
data=${1:?give the CIFAR-10 folder with train/ and test/}
out=${2:-docs/bench/real-streams/one-class}
model=${MODEL:-sample_models/cifar10-airnet-ce}
variants=${VARIANTS:-source auto}
mkdir -p "$out"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
echo "class,method,online_accuracy,returns" > "$out/accuracy.csv"
for class in airplane automobile bird cat deer dog frog horse ship truck; do
  mkdir -p "$scratch/$class/data/$class"
  find "$data/test/$class" -maxdepth 1 -type f | sort | sed -n '1,500p' | xargs cp -t "$scratch/$class/data/$class"
  for variant in $variants; do
    run="$scratch/$class/run-$variant"
    options=(--method "$variant")
    if [[ $variant == auto-without-* ]]; then
      printf '[adapt.weighted_norm]\n%s = false\n' "${variant#auto-without-}" > "$scratch/$variant.toml"
      options=(--method auto --config "$scratch/$variant.toml")
    fi
    tta-cli adapt --model "$model" --source "$scratch/$class/data" "${options[@]}" --run "$run" > /dev/null
    accuracy=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['online_accuracy'])" "$run/summary.json")
    returns=$(tta-cli history "$run" --json | python -c "import json, sys; print(sum(event['kind'] == 'norm-return' for event in json.load(sys.stdin)['events']))")
    echo "$class,$variant,$accuracy,$returns" >> "$out/accuracy.csv"
  done
done
cat "$out/accuracy.csv"

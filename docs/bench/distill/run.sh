#!/usr/bin/env bash
# distill → adapt → export on the sample model (docs/benchmarks.md, "A small student for the
# edge"): the teacher is `tent` adapted on sample_models/data (1,000 test images under four
# corruptions at severity 5: one student for their mix), with BatchNorm statistics re-estimated
# on those images (a tent run predicts with test-batch statistics; exported with the source's,
# it would not be the model that adapted); students are distilled with UNI-KD, plain KD, or
# source labels only, from IMAGES_PER_CLASS training images per class (default 500) for EPOCHS
# epochs (default 8) at Adam step size LR (default 1e-3). STUDENT is an architecture (default
# resnet20, a fresh one) or a bundle to start from (then its unadapted accuracy is measured too).
# The UNI-KD student is then adapted on the same images (the default method) and exported, and
# onnxruntime times student against teacher.
#   docs/bench/distill/run.sh CIFAR10_DIR OUT [EPOCHS] [IMAGES_PER_CLASS] [STUDENT] [LR]
set -euo pipefail
data=${1:?CIFAR10_DIR}; out=${2:?OUT}; epochs=${3:-8}; per_class=${4:-500}; student=${5:-resnet20}; lr=${6:-1e-3}
target=sample_models/data
mkdir -p "$out"
if [[ ! -d $out/source ]]; then
  train=$(realpath "$data/train")
  for folder in "$train"/*/; do
    class=$(basename "$folder"); mkdir -p "$out/source/$class"
    # shellcheck disable=SC2046  # file names without spaces: CIFAR-10's NNNN.jpg
    ln -s $(find "$folder" -type f | sort | head -"$per_class") "$out/source/$class/"
  done
fi
[[ -d $out/source-run ]] || tta-cli adapt --model sample_models/cifar10-airnet-ce --source "$target" --order shuffled \
  --method source --run "$out/source-run"
[[ -d $out/teacher ]] || tta-cli adapt --model sample_models/cifar10-airnet-ce --source "$target" --order shuffled \
  --method tent --run "$out/teacher"
[[ -f $out/teacher.onnx ]] || tta-cli export "$out/teacher" --out "$out/teacher.onnx"
for kd in unikd plain none; do
  [[ -d $out/student-$kd ]] || tta-cli distill "$out/teacher" --student "$student" --source-data "$out/source" \
    --out "$out/student-$kd" --kd "$kd" --epochs "$epochs" --lr "$lr" --bn-stats target
done
if [[ -f $student/model.toml && ! -d $out/student-source-run ]]; then
  tta-cli adapt --model "$student" --source "$target" --order shuffled --method source --run "$out/student-source-run"
fi
[[ -d $out/student-run ]] || tta-cli adapt --model "$out/student-unikd" --source "$target" --order shuffled \
  --run "$out/student-run"
[[ -f $out/student.onnx ]] || tta-cli export "$out/student-run" --out "$out/student.onnx"
python docs/bench/distill/latency.py "$out/teacher.onnx" "$out/student.onnx" > "$out/latency.json"

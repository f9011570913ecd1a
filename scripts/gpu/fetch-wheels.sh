#!/usr/bin/env bash
# The wheels a GPU machine without network needs beside the packages its image has (PyTorch,
# onnx, onnxruntime, typer, rich, scipy, scikit-learn, ...): into .whl/ (ignored), for Python
# 3.12 on x86-64 Linux. Versions as the project's own environment resolved them.
#   scripts/gpu/fetch-wheels.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d .whl pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  tomli-w==1.2.0 onnxslim==0.1.98 torchjd==0.18.0 quadprog==0.1.14
du -sh .whl

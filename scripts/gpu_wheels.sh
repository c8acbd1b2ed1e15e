#!/usr/bin/env bash
# Download the Python 3.12 / x86_64 wheels that pipelines/gpu_run.py needs on the lent GPU machine and that its
# image lacks (it has torch, torchvision, timm, numpy, pillow, safetensors, tqdm, huggingface_hub), pinned to
# requirements/constraints.txt. Usage: scripts/gpu_wheels.sh [DEST]  (default: wheels/, gitignored)
#   pydantic + pydantic_core (compiled) + annotated-types + typing-inspection: segpipe.models validates options
#   typing_extensions: pydantic 2.14 needs a newer one than torch's minimum
#   segmentation_models_pytorch: the smp baselines
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$root/wheels}"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
packages=(pydantic pydantic-core annotated-types typing-inspection typing-extensions segmentation-models-pytorch)

pins=()
for name in "${packages[@]}"; do
  # constraints spell names with - or _ and any case: compare them normalised
  pin="$(awk -F'==' -v want="$name" '{ n = tolower($1); gsub(/[_.]/, "-", n) } n == want { print; exit }' \
    "$root/requirements/constraints.txt")"
  [ -n "$pin" ] || { echo "error: $name is not pinned in requirements/constraints.txt" >&2; exit 1; }
  pins+=("$pin")
done

mkdir -p "$dest"
rm -f "$dest"/*.whl  # one version of each: two of a package stop the install on the GPU machine
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$dest" "${pins[@]}"
ls -l "$dest"/*.whl
du -ch "$dest"/*.whl | tail -n 1

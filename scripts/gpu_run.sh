#!/usr/bin/env bash
# Launch pipelines/gpu_run.py on the lent GPU machine (Python 3.12, torch, no network): install the wheels that
# scripts/gpu_wheels.sh downloaded (carried in wheels/) into a scratch folder, put them and src/ on PYTHONPATH,
# and pass every argument on. Example (device tool, carry: ["pack", "wheels"]):
#   bash scripts/gpu_run.sh --smoke --device cuda --out /tmp/smoke && bash scripts/gpu_run.sh --out "$OUT/gpu" --minutes-total 8
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
if [ -z "${PYTHON:-}" ] && [ -x /opt/torch/.venv/bin/python ]; then python=/opt/torch/.venv/bin/python; fi  # the lent machine's torch
site="${SEGPIPE_SITE:-/tmp/segpipe-site}"
if compgen -G "$root/wheels/*.whl" > /dev/null; then
  "$python" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$root"/wheels/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$python" "$root/pipelines/gpu_run.py" "$@"

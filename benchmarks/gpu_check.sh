#!/usr/bin/env bash
# One GPU check: every speed goal of CRNet on one GPU, unattended, in at most 8 minutes.
#
#   bash benchmarks/gpu_check.sh --out=/tmp/gpu_check [--budget_s=480] [--tiny]
#
# Prints a table of the goal figures (and skipped stages) and one JSON line; --out gets
# summary.json (rewritten after every stage), records.jsonl, kernels-*.md and the logs
# (benchmarks/gpu_check.py says what each stage measures).
#
# A GPU machine without internet access (an air-gapped cluster) often has jax and torch but not
# ml-collections, clu, grain or tensorflow-datasets: run `bash benchmarks/device_wheels.sh` on a
# machine with internet, copy the repository with its .whl/ folder over, and this script installs
# those wheels into a temporary folder on PYTHONPATH when the imports fail. PYTHON picks the
# interpreter (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import ml_collections, clu, grain, tensorflow_datasets' 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "ml_collections, clu, grain or tensorflow_datasets is missing and there is no .whl/:" \
      "pip install -r requirements.txt, or run benchmarks/device_wheels.sh where there is" \
      "internet and copy .whl/ here" >&2
    exit 1
  fi
  site=$(mktemp -d "${TMPDIR:-/tmp}/crnet_site.XXXXXX")
  echo "# installing the missing requirements from .whl/ into $site" >&2
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl || exit 1
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  "$PY" -c 'import ml_collections, clu, grain, tensorflow_datasets' || exit 1
fi
exec "$PY" benchmarks/gpu_check.py "$@"

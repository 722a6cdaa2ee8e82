#!/usr/bin/env bash
# The device check: one 7B-shaped audit (rtn:8, rtn:4, bnb:nf4, bnb:int8) on the machine's GPU, timed per
# phase, with batch sizes and peak GPU memory (see benchmarks/gpu_check.py). Target: under 8 minutes on
# one H200. Nothing is downloaded: if the package is not importable, wheels carried in ./wheels are
# installed without an index. Results: $OUT/gpu_check.json (and report.json beside it).
#
#   OUT=/tmp/gpu-check bash benchmarks/gpu_check.sh                 # on the GPU machine
#   SHAPE=tiny DEVICE=cpu OUT=/tmp/x bash benchmarks/gpu_check.sh   # the same code on a CPU (tests run this)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-check-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
if ! "$PY" -c "import unlearn_audit, bitsandbytes" 2>/dev/null; then
    if [ -d wheels ]; then
        "$PY" -m pip install -q --no-index --find-links wheels -e '.' bitsandbytes
    else
        echo "unlearn_audit or bitsandbytes is not importable and no ./wheels folder was carried" >&2
        exit 2
    fi
fi
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" || true
fi
exec timeout "${LIMIT_S:-570}" "$PY" benchmarks/gpu_check.py --out "$OUT" --shape "${SHAPE:-7b}" \
    --device "${DEVICE:-auto}" --max-items "${MAX_ITEMS:-20}" --quant "${QUANT:-rtn:8,rtn:4,bnb:nf4,bnb:int8}"

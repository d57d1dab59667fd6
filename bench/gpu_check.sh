#!/usr/bin/env bash
# GPU check: hf backend throughput on the toy student and pipeline overhead, one table, under 5 minutes.
# Needs the project installed (make install) and a CUDA device; prints what it measured.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 290 "$PY" bench/gpu_check.py --device cuda "$@"

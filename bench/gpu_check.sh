#!/usr/bin/env bash
# GPU check: hf (default) or vllm (--backend vllm) throughput of a student (--student MODEL, default the toy student), and the hf pipeline overhead,
# one table, under 5 minutes. --json FILE writes the rows for `odiag plan --measurements FILE`.
# Needs the project installed (make install) and a CUDA device; prints what it measured.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 290 "$PY" bench/gpu_check.py --device cuda "$@"

#!/usr/bin/env bash
# GPU check: hf (default) or vllm (--backend vllm) throughput of a student (--student MODEL, default the toy student), and the hf pipeline overhead,
# one table, under 5 minutes. --json FILE writes the rows for `odiag plan --measurements FILE`.
# Needs the project installed (make install) and a CUDA device; prints what it measured.
# Paths (--json, --student, and PYTHON=) are read from the folder it is started in, as odiag reads them.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)" || exit 1
PY=${PYTHON:-$ROOT/.venv/bin/python}
LIMIT=290
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout "$LIMIT" "$PY" "$ROOT/bench/gpu_check.py" --device cuda "$@"
rc=$?
if [ "$rc" -eq 124 ]; then
  echo "gpu_check: stopped after $LIMIT s; the rows above are what it measured (--quick measures fewer batch sizes)" >&2
fi
exit "$rc"

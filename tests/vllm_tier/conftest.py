"""The vllm tier (``make test-vllm``): vLLM's CPU build on the toy models, in ``.venv-vllm``.

Elsewhere (no importable vLLM) every test here is skipped. The environment the CPU engine needs is
set before vLLM is imported: a 1 GiB KV cache (``VLLM_CPU_KVCACHE_SPACE``; the default memory check
fails) and the engine core in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: no second
start-up of vLLM per engine).
"""

import os

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/vllm_tier/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.vllm)

"""`harness.core` (and `import harness`) never import a model library (STYLE.md)."""

import subprocess
import sys

BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'torch', 'transformers', 'vllm', 'lm_eval'}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import harness, harness.core, harness.exact_lm, harness.selfcheck, harness.cli
harness.cli.build_parser()
assert harness.cli.main(['tasks-dir']) == 0  # a path, printed without lm_eval or torch
print('ok')
"""


def test_core_imports_with_model_libraries_blocked():
    out = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "ok" and out.stdout.strip().splitlines()[0].endswith("/tasks")

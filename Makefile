# One-command entry points. uv is installed from PyPI if it is missing; every install is the
# exact set pinned in uv.lock (`uv sync --frozen`). Bytecode is compiled at install so that a
# process does not spend seconds recompiling torch modules when .pyc writing is disabled.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")

.PHONY: setup test test-fast repro sensitivity ui bench

setup:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || \
		python3 -m pip install --quiet --user uv || \
		python3 -m pip install --quiet --user --break-system-packages uv
	$(UV) sync --frozen --compile-bytecode

# The report's browser test renders report.html in Debian's headless chromium, installed here if
# missing (needs root and the Debian registry); without it that one test is skipped, saying why.
test: setup
	@command -v chromium >/dev/null 2>&1 || \
		(apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1)) || \
		echo "note: could not install Debian's chromium; the report's browser test will be skipped"
	$(UV) run --frozen pytest

# The in-process unit tests (under a minute on 2 cores), for development; `make test` runs them all.
test-fast: setup
	$(UV) run --frozen pytest -q -m "not slow and not pipeline"

# The whole pipeline on the embedded default (digits): train, merge, evaluate (see dvc.yaml).
repro: setup
	$(UV) run --frozen dvc repro
	@echo
	@echo "Report:  reports/audit/report.html (and report.md, figures/)"
	@echo "Results: results/evaluation.csv (one row per model x metric x eps), results/models.csv,"
	@echo "         results/claims.csv (verdicts), results/compare.csv, results/barriers.csv, metrics/*.json (dvc metrics show), results/plots/ (dvc plots show)"
	@echo "Models:  models/ (safetensors, tracked by DVC)"
	@echo "MLflow:  make ui  ->  http://127.0.0.1:5000"

# The confound map: every setting of params.yaml's sensitivity section as a DVC experiment, then the
# claim x setting table (README, "The confound map"); resumes where an earlier call stopped.
sensitivity: setup
	$(UV) run --frozen audit sensitivity

ui: setup
	$(UV) run --frozen audit ui

bench: setup
	cd benchmarks && $(UV) run --frozen python rebasin.py && $(UV) run --frozen python zoo.py && \
		$(UV) run --frozen python evaluate.py && $(UV) run --frozen python zoo_scale.py

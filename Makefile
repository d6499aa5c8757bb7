# One-command entry points. uv is installed from PyPI if it is missing; every install is the
# exact set pinned in uv.lock (`uv sync --frozen`). Bytecode is compiled at install so that a
# process does not spend seconds recompiling torch modules when .pyc writing is disabled.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")

.PHONY: setup test bench

setup:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || \
		python3 -m pip install --quiet --user uv || \
		python3 -m pip install --quiet --user --break-system-packages uv
	$(UV) sync --frozen --compile-bytecode

test: setup
	$(UV) run --frozen pytest

bench: setup
	cd benchmarks && $(UV) run --frozen python rebasin.py && $(UV) run --frozen python zoo.py && \
		$(UV) run --frozen python evaluate.py

# The two commands of the README: `make run` (the main job on the embedded default) and
# `make test` (the whole test suite). Both create/update the virtual environment first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export TF_USE_LEGACY_KERAS := 1

.PHONY: venv browser run up stop status test bench lock clean

$(STAMP): requirements.txt requirements-lock.txt requirements-nodeps.txt pyproject.toml web/package-lock.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv==0.13.8
	$(BIN)/uv pip install --python $(BIN)/python -r requirements.txt -c requirements-lock.txt -e .
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -r requirements-nodeps.txt
	npm ci --prefix web --no-audit --no-fund
	touch $@

# TF.js exports are checked in headless Chromium (Debian's package; needs root to install).
# Without it, the browser checks skip and say so.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium is not installed (needs root: apt-get install chromium); browser checks will skip"

venv: $(STAMP)

run: venv  ## start the stack (reusing what runs) and run tf_offline_retrain once
	$(BIN)/python scripts/stack.py run

up: venv  ## start the stack only
	$(BIN)/python scripts/stack.py up

stop:  ## stop every service of the stack
	@test -x $(BIN)/python && $(BIN)/python scripts/stack.py stop || true

status:
	@$(BIN)/python scripts/stack.py status

test: venv browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: venv
	$(BIN)/python benchmarks/bench_dag_parse.py
	$(BIN)/python benchmarks/bench_offline_pipeline.py
	$(BIN)/python benchmarks/bench_serving.py
	$(BIN)/python benchmarks/bench_formats.py
	$(BIN)/python benchmarks/bench_rollout.py

lock: venv  ## refresh the full resolved pin set after changing requirements.txt
	$(BIN)/uv pip freeze --python $(BIN)/python --exclude-editable > requirements-lock.txt

clean: stop
	rm -rf var

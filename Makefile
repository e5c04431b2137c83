# The two commands of the README: `make run` (the main job on the embedded default) and
# `make test` (the whole test suite). Both create/update the virtual environment first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export TF_USE_LEGACY_KERAS := 1

.PHONY: venv system-deps run loop up stop status lint test test-quick bench lock clean docker-up docker-up-isolated docker-down docker-purge prod-up prod-down

$(STAMP): requirements.txt requirements-dev.txt requirements-lock.txt requirements-nodeps.txt pyproject.toml web/package-lock.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv==0.13.8
	$(BIN)/uv pip install --python $(BIN)/python -r requirements-dev.txt -c requirements-lock.txt -e .
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -r requirements-nodeps.txt
	npm ci --prefix web --no-audit --no-fund
	touch $@

# System packages some tests use, from Debian (installed only when missing and running as root;
# otherwise those tests skip and say what to install): chromium (TF.js in a real browser),
# postgresql (the Postgres-backed end-to-end run), docker-compose (`config -q` of the stack),
# prometheus (promtool checks of docker/prometheus/, and a real Prometheus scraping the local server),
# haproxy (the traffic router of gray releases).
# Debian starts the packaged prometheus (all interfaces, :9090) and haproxy daemons where systemd
# runs: they are stopped and disabled right after the install (the tests start their own, on loopback).
SYSTEM_PACKAGES := chromium:chromium postgresql:/usr/lib/postgresql docker-compose:docker-compose prometheus:promtool haproxy:haproxy
system-deps:
	@missing=""; for entry in $(SYSTEM_PACKAGES); do pkg=$${entry%%:*}; probe=$${entry#*:}; \
	  { command -v $$probe >/dev/null || [ -e $$probe ]; } || missing="$$missing $$pkg"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } || \
	  echo "could not install$$missing; the tests that need them skip"; \
	  if [ -d /run/systemd/system ]; then \
	    systemctl disable --now prometheus prometheus-node-exporter haproxy >/dev/null 2>&1 || true; fi; \
	else echo "not installed:$$missing (needs root: apt-get install$$missing); the tests that need them skip"; fi

venv: $(STAMP)

run: venv  ## start the stack (reusing what runs) and run tf_offline_retrain once
	$(BIN)/python scripts/stack.py run

loop: venv  ## after `make run`: drifted partition -> online update (canary) -> monitoring, via the scheduler
	$(BIN)/python scripts/stack.py loop

up: venv  ## start the stack only
	$(BIN)/python scripts/stack.py up

stop:  ## stop every service of the stack
	@test -x $(BIN)/python && $(BIN)/python scripts/stack.py stop || true

status:
	@$(BIN)/python scripts/stack.py status

# The project's own Docker engine (root + Debian; scripts/docker_engine.py): dockerd from Debian's
# docker.io under var/docker, no change to the machine's network, plus the local images that stand in
# for hub images (local/debian:bookworm from debootstrap, local/tf-serving-local). Idempotent; where
# it cannot run it says why (exit status 3). Use it with `export DOCKER_HOST=unix://$(CURDIR)/var/docker/docker.sock`.
docker-up: venv
	$(BIN)/python scripts/docker_engine.py up --images

# and a second engine in a network namespace of its own (Docker's bridge, published ports and
# user-defined networks stay inside it; nothing in it reaches out), the tf-serving-local image copied in
docker-up-isolated: venv
	$(BIN)/python scripts/docker_engine.py up --isolated

# The production stack (docker-compose.yaml) on this machine, with the local stand-ins of the hub
# images (docker/compose.stand-ins.yaml) and two Celery workers, on the isolated engine
# (scripts/prod_stack.py): builds what is missing (first time ~15 min), waits until every service is healthy.
prod-up: venv
	$(BIN)/python scripts/prod_stack.py up

prod-down:  ## the stack's containers, networks and volumes
	@if test -x $(BIN)/python; then $(BIN)/python scripts/prod_stack.py down; fi

docker-down:  ## remove their containers, stop both engines, unmount what they left (images stay cached)
	@if test -x $(BIN)/python; then $(BIN)/python scripts/docker_engine.py down; fi

# the image archives of ~/.cache/tfmlops/images stay (scripts/image_cache.py): the next docker-up loads them
docker-purge:  ## docker-down and remove var/docker and var/docker-isolated (images and layers)
	@if test -x $(BIN)/python; then $(BIN)/python scripts/docker_engine.py down --purge; fi

lint: venv  ## ruff (configured in pyproject.toml)
	$(BIN)/ruff check .

# Two pytest-xdist workers: most of the suite waits on servers, subprocesses and the disk, so two
# streams keep both cores busy. Tests that share fixtures run in one worker (groups and order in
# tests/conftest.py); TEST_WORKERS=0 runs everything in one process, in file order.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder)

test: venv system-deps lint  ## the whole suite (what CI runs); ends with the slowest tests and time per folder
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

test-quick: venv system-deps lint  ## the suite without the end-to-end runs and the Docker engine's tests (-m "not e2e and not stack")
	$(BIN)/python -m pytest $(XDIST) -m "not e2e and not stack" $(PYTEST_ARGS)

bench: venv
	$(BIN)/python benchmarks/bench_dag_parse.py
	$(BIN)/python benchmarks/bench_offline_pipeline.py
	$(BIN)/python benchmarks/bench_serving.py
	$(BIN)/python benchmarks/bench_serving_before_after.py
	$(BIN)/python benchmarks/bench_formats.py
	$(BIN)/python benchmarks/bench_observability.py
	$(BIN)/python benchmarks/bench_router.py
	$(BIN)/python benchmarks/bench_rollout.py
	$(BIN)/python benchmarks/bench_search.py
	$(BIN)/python benchmarks/bench_data_scale.py

lock: venv  ## refresh the full resolved pin set after changing requirements*.txt
	$(BIN)/uv pip freeze --python $(BIN)/python --exclude-editable > requirements-lock.txt

clean: stop prod-down docker-down
	rm -rf var

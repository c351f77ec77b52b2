# gridop: the two commands are `make up` (start gridop on a kind cluster) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CLUSTER ?= gridop
IMAGE ?= gridop:dev
NAMESPACE ?= gridop-system

.PHONY: help venv test unit integration e2e lint crds up down image bench clean test-prereqs up-prereqs

help:
	@echo "make up      - create a kind cluster, build and load the image, helm install gridop"
	@echo "make test    - install dependencies into $(VENV) and run the whole test suite"
	@echo "make crds    - regenerate crds/ (and the chart's copy) from the API models"
	@echo "make e2e     - run tests/e2e against the cluster in KUBECONFIG"
	@echo "make lint    - ruff, mypy and the import contracts (run by make test too)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# What `make test` needs and cannot get from PyPI: Python 3.11+ and redis-server (installed here with
# apt-get when run as root, as CI does; otherwise named, one line each).
test-prereqs:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || \
	  { echo "make test needs Python 3.11 or newer as $(PYTHON) (set PYTHON=python3.12, say)"; exit 2; }
	@command -v redis-server >/dev/null && command -v redis-cli >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { echo "installing redis-server (apt-get)"; DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }; } || \
	  { echo "make test needs redis-server and redis-cli on PATH: apt-get install redis-server (or brew install redis)"; exit 2; }

# The checks the project configures in pyproject.toml: ruff (style and bugs), mypy (types) and
# import-linter (the layers and what may import what).
lint: venv
	$(BIN)/ruff check --quiet .
	$(BIN)/mypy
	$(BIN)/lint-imports pyproject.toml

test: test-prereqs venv lint
	$(BIN)/python -m pytest -q

unit: venv
	$(BIN)/python -m pytest -q tests/unit

integration: venv
	$(BIN)/python -m pytest -q tests/integration

e2e: venv
	$(BIN)/python -m pytest -q tests/e2e

crds: venv
	$(BIN)/gridop crds --output crds
	$(BIN)/gridop crds --chart --output charts/gridop/templates/crds

image:
	docker build -t $(IMAGE) .

up-prereqs:
	@missing=0; for tool in kind docker helm kubectl; do command -v $$tool >/dev/null || \
	  { echo "make up needs $$tool on PATH: install it (kind, docker, helm 3+ and kubectl)"; missing=1; }; done; \
	  exit $$missing

up: up-prereqs venv
	kind get clusters | grep -qx $(CLUSTER) || kind create cluster --name $(CLUSTER) --config kind-config.yaml
	docker build -t $(IMAGE) .
	kind load docker-image $(IMAGE) --name $(CLUSTER)
	helm upgrade --install gridop charts/gridop --namespace $(NAMESPACE) --create-namespace \
	  --set image.repository=$(firstword $(subst :, ,$(IMAGE))) --set image.tag=$(lastword $(subst :, ,$(IMAGE))) \
	  --set image.pullPolicy=Never --wait
	@echo "gridop is running. Next: export PATH=\"$$PWD/$(BIN):\$$PATH\" and follow the README's quick start"

down:
	kind delete cluster --name $(CLUSTER)

clean:
	rm -rf $(VENV) .pytest_cache

bench: venv
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python -m bench.tasks --tasks 100000 --celery-tasks 10000 --latency 1000 --shards 1 2 3
	$(BIN)/python -m bench.rtt_floor --round-trips 1000 --rounds 5 --baseline 86efa6c
	$(BIN)/python -m bench.session_start --sessions 20
	$(BIN)/python -m bench.console

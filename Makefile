# gridop: the two commands are `make up` (start gridop on a kind cluster) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CLUSTER ?= gridop
IMAGE ?= gridop:dev
NAMESPACE ?= gridop-system

.PHONY: help venv test unit integration e2e lint crds up down image bench clean

help:
	@echo "make up      - create a kind cluster, build and load the image, helm install gridop"
	@echo "make test    - install dependencies into $(VENV) and run the whole test suite"
	@echo "make crds    - regenerate crds/ (and the chart's copy) from the API models"
	@echo "make e2e     - run tests/e2e against the cluster in KUBECONFIG"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(BIN)/lint-imports --config pyproject.toml
	$(BIN)/python -m pytest -q

unit: venv
	$(BIN)/python -m pytest -q tests/unit

integration: venv
	$(BIN)/python -m pytest -q tests/integration

e2e: venv
	$(BIN)/python -m pytest -q tests/e2e

crds: venv
	$(BIN)/gridop crds --output crds
	$(BIN)/gridop crds --output charts/gridop/crds

image:
	docker build -t $(IMAGE) .

up: venv
	kind get clusters | grep -qx $(CLUSTER) || kind create cluster --name $(CLUSTER) --config kind-config.yaml
	docker build -t $(IMAGE) .
	kind load docker-image $(IMAGE) --name $(CLUSTER)
	helm upgrade --install gridop charts/gridop --namespace $(NAMESPACE) --create-namespace \
	  --set image.repository=$(firstword $(subst :, ,$(IMAGE))) --set image.tag=$(lastword $(subst :, ,$(IMAGE))) \
	  --set image.pullPolicy=Never --wait
	@echo "gridop is running. Try: kubectl apply -f examples/gridsession.yaml && kubectl get grid"

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

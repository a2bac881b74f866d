# The two commands a newcomer needs: `make cluster` and `make test`.
# Both create .venv and install the project first, so they work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: cluster test lint soak clean image

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

cluster: $(STAMP)
	$(BIN)/kv cluster up --config cluster.toml

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -n 2 --dist loadgroup

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

soak: $(STAMP)
	$(BIN)/python -m tests.sim.soak --seeds $${SEEDS:-2000}

# The node image (Dockerfile); needs docker or podman: `make image ENGINE=podman`.
ENGINE ?= docker
IMAGE ?= pyraftkv
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
image:
	$(ENGINE) build -t $(IMAGE):$(VERSION) -t $(IMAGE):latest .

clean:
	rm -rf $(VENV) data

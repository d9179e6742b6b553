# modelreg developer commands. `make run` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTO_SRC := $(wildcard protos/modelreg/v1/*.proto)
GEN_DIR := clients/python/modelreg/v1

.PHONY: all install protos check-protos lint typecheck buflint test pytest run bench clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[server,embedded,dev,mlflow]'
	touch $(STAMP)

install: $(STAMP)

# Generated code is committed (installing the SDK needs no protoc); regenerate after editing protos/.
protos: $(STAMP)
	$(BIN)/python -m modelreg_server.tools.genproto protos $(GEN_DIR)

check-protos: $(STAMP)
	$(BIN)/python -m modelreg_server.tools.genproto --check protos $(GEN_DIR)

buflint: $(STAMP)
	$(BIN)/buf lint protos

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# A private base temp dir: concurrent pytest runs on one machine rotate /tmp/pytest-of-<user> and would
# delete each other's live directories (data dirs of the PostgreSQL and S3 servers the tests start).
pytest: $(STAMP)
	$(BIN)/pytest -q --basetemp="$$(mktemp -d /tmp/modelreg-pytest.XXXXXX)"

test: check-protos buflint lint typecheck pytest

run: $(STAMP)
	$(BIN)/modelreg-server dev

# Benchmarks (not run in CI): each prints JSON and writes it under bench/results/; see bench/README.md.
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	mkdir -p bench/results
	$(BIN)/python bench/catalog.py --out bench/results/catalog.json
	$(BIN)/python bench/resolve.py --out bench/results/resolve.json
	$(BIN)/python bench/soak.py --out bench/results/soak.json
	$(BIN)/python bench/scale.py --out bench/results/scale.json
	$(BIN)/python bench/artifacts.py --out bench/results/artifacts.json
	$(BIN)/python bench/vs_mlflow.py --out bench/results/vs_mlflow.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

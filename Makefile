# The two commands that matter: `make demo` and `make test`. Both work on a fresh machine:
# they create the virtualenv, install PrismOps, generate the gRPC stubs, and the stack installs itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test unit integration install proto stack-up stack-down clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) proto

proto: $(STAMP)
	$(BIN)/prismops proto

demo: install
	$(BIN)/prismops demo

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider

unit: install
	$(BIN)/python -m pytest -q -m "not integration"

integration: install
	$(BIN)/python -m pytest -q -m integration

stack-up: install
	$(BIN)/prismops stack up

stack-down: install
	$(BIN)/prismops stack down

clean:
	rm -rf $(VENV) build *.egg-info

# The two commands that matter: `make demo` and `make test`. Both work on a fresh machine:
# they create the virtualenv, install PrismOps with its platform and dev extras (the build generates the
# gRPC stubs), and the stack installs itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test unit integration install proto stack-up stack-down clean ui ui-build

# PYTHONWARNINGS: setuptools explains editable installs in UserWarnings on every build; not for our users.
$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	PYTHONWARNINGS=ignore::UserWarning $(BIN)/pip install --quiet -e '.[platform,dev]'
	touch $(STAMP)

install: $(STAMP)

proto: $(STAMP)
	$(BIN)/prismops proto

demo: install
	$(BIN)/prismops demo

test: install
	$(BIN)/pytest -q -p no:cacheprovider

unit: install
	$(BIN)/pytest -q -m "not integration"

integration: install
	$(BIN)/pytest -q -m integration

stack-up: install
	$(BIN)/prismops stack up

stack-down: install
	$(BIN)/prismops stack down

clean:
	rm -rf $(VENV) build *.egg-info

ui-build: install
	$(BIN)/prismops ui build

ui: install
	$(BIN)/prismops ui

# Two commands set up and use a fresh machine: `make serve` and `make test`.
# Both create the virtual environment themselves (make install).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ASSETS ?= $(abspath ../shared/assets)

export HF_HOME ?= $(ASSETS)/hf-cache
export HF_HUB_OFFLINE ?= 1

.PHONY: install lint format test serve evaluate clean

install: $(STAMP)

# Re-runs pip only when pyproject.toml changes, so a second `make install` is instant.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Formatting and lint (ruff, configured in pyproject.toml); `make format` fixes what it can.
lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: install lint
	$(PY) -m pytest -q -ra

serve: install
	$(PY) -m service --host 127.0.0.1 --port 8000

clean:
	rm -rf $(VENV) .pytest_cache

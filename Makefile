# Two commands set up and use a fresh machine: `make serve` and `make test`.
# Both create the virtual environment themselves (make install).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ASSETS ?= $(abspath ../shared/assets)

export HF_HOME ?= $(ASSETS)/hf-cache
export HF_HUB_OFFLINE ?= 1

.PHONY: install lint format test serve evaluate card train clean

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

# The level card of a weights file: every level on both evaluation sets (progress bars), written
# beside the weights, where the server finds it. About 15 minutes on 2 CPU cores; DEVICE=cuda on a GPU.
#   make card WEIGHTS=out/train/model.safetensors        -> out/train/model.safetensors.card.json
#   make card                                             -> models/cards/$(MODEL).json (pretrained)
MODEL   ?= deit_tiny_patch16_224
WEIGHTS ?=
CARD    ?= $(if $(WEIGHTS),$(WEIGHTS).card.json,models/cards/$(MODEL).json)
DEVICE  ?= cpu
card: install
	$(PY) -m models.make_card --model $(MODEL) $(if $(WEIGHTS),--weights $(WEIGHTS)) --device $(DEVICE) \
	  --sets $(ASSETS)/imagenet-samples $(ASSETS)/imagenet-val --out $(CARD)

# The whole SaiT recipe in one go: 30 epochs over the pool, then every level of the exported fp16
# weights on both evaluation sets, their card beside them (OUT/model.safetensors.card.json).
# On one H100/H200 an estimated 3-4 minutes (docs/training.md); on a CPU, days.
OUT ?= out/train
train: install
	$(PY) -m models.train --data-dir $(ASSETS)/distill-pool --out-dir $(OUT) \
	  --eval-sets $(ASSETS)/imagenet-samples $(ASSETS)/imagenet-val $(TRAIN_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache

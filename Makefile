# Two commands: `make app` and `make test`. Both set up .venv, install, and prepare the offline models.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: app test install prepare notebook clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned to 2.13.0 (CPU build); a looser spec would pull a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

prepare: install
	$(BIN)/workbench prepare

app: prepare
	$(BIN)/workbench app

test: prepare
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

notebook: prepare
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf $(VENV) .pytest_cache

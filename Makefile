# Set-up and everyday commands. Every target installs what it needs first, so each
# works on a fresh machine: `make serve` runs facestream, `make test` runs the tests.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= $(abspath ../shared)
# Debian packages the tests use: a real browser, CJK and emoji fonts for names, systemd-analyze,
# ffmpeg to make the browser's fake-camera file, PostgreSQL and HAProxy for the several-boxes tests.
DEB_PACKAGES := chromium fonts-noto-cjk fonts-symbola fonts-dejavu-core fontconfig systemd ffmpeg xvfb xdotool postgresql haproxy

# The tests' Triton server (tests/triton_support.py) runs from a venv of its own:
# nvidia-pytriton needs numpy < 2, which .venv cannot have.
TRITON_VENV ?= .venv-triton

.PHONY: serve test bench lint install install-test system-packages triton-env

$(BIN)/facestream: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[trainer]'
	touch $@

install: $(BIN)/facestream

install-test: install
	$(BIN)/pip install --quiet -c constraints.txt -e '.[trainer,test]'

$(TRITON_VENV)/.installed: constraints-triton.txt
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install --quiet -c constraints-triton.txt nvidia-pytriton onnxruntime
	touch $@

triton-env: $(TRITON_VENV)/.installed

system-packages:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

# the server, and beside it the trainer that adds people enrolled meanwhile to the model
# (as the two systemd services do); Ctrl-C stops both
serve: install
	$(BIN)/facestream models prepare
	$(BIN)/facestream trainer & trainer=$$!; \
	trap 'kill $$trainer 2>/dev/null; wait $$trainer' EXIT; \
	trap 'exit 130' INT; trap 'exit 143' TERM; \
	$(BIN)/facestream serve

test: install-test system-packages triton-env
	$(BIN)/facestream models prepare --models-dir $(SHARED)/models
	FACESTREAM_SHARED=$(SHARED) $(BIN)/python -m pytest

bench: install-test triton-env
	FACESTREAM_SHARED=$(SHARED) $(BIN)/python bench/detect_embed.py
	FACESTREAM_SHARED=$(SHARED) $(BIN)/python bench/pipeline.py --detector onnxruntime,opencv
	FACESTREAM_SHARED=$(SHARED) $(BIN)/python bench/webrtc.py
	FACESTREAM_SHARED=$(SHARED) $(BIN)/python bench/webrtc.py --workers 1,2 --sessions 4,8 --recognition onnxruntime,triton
	FACESTREAM_SHARED=$(SHARED) $(BIN)/python bench/triton_recognition.py
	FACESTREAM_SHARED=$(SHARED) $(BIN)/python bench/heads.py
	FACESTREAM_SHARED=$(SHARED) $(BIN)/python bench/clip_reference.py
	FACESTREAM_SHARED=$(SHARED) $(BIN)/python bench/enroll_latency.py
	FACESTREAM_SHARED=$(SHARED) $(BIN)/python bench/soak.py
	FACESTREAM_SHARED=$(SHARED) $(BIN)/python bench/store.py

lint: install-test
	$(BIN)/ruff check .

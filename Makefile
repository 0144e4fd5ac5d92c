# Two entry points do all set-up on a fresh machine with Python 3.11: `make run` and `make test`.
# `make test-fast` is the lane to run while working: no Ray, no processes, no real data (under 3 minutes).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: run test test-fast install clean

FAST_LANE := not slow and not ray and not processes and not deployment and not realdata

$(BIN)/fedprofile: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or make PYTHON=/path/to/python3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Install torch alone first: on a CPU machine pip takes the local CPU wheel;
	# without this step a bare `torch` requirement pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/fedprofile

run: install
	$(BIN)/fedprofile simulate --merchants 4 --out runs/simulate-demo

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "$(FAST_LANE)"

clean:
	rm -rf $(VENV) runs .pytest_cache

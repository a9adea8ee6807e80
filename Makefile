# Two commands do all set-up on a machine that has Python 3.11:
#   make demo   -- runs the system end to end on a generated sample dataset (offline)
#   make test   -- runs the test suite (make test-integration: the slow end-to-end tests; make lint: ruff)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.imcap-installed
DEMO_DIR ?= demo_out
# pytest-xdist processes (each imports TensorFlow once); worksteal evens out the few long tests
TEST_WORKERS ?= 2

.PHONY: setup test test-integration test-all lint demo clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# the suite without the slow end-to-end tests (under 90 s on 2 cores); CI also runs test-integration
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not integration" tests

test-integration: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m integration tests

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal tests

lint: $(STAMP)
	$(BIN)/python -m ruff check .

demo: $(STAMP)
	$(BIN)/python -m beam_jobs.tools.demo --output_dir $(DEMO_DIR)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache build dist *.egg-info

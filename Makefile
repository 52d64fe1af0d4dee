# Newcomer entry points. `make demo` sets up and scans a bundled sample, embedded (no services needed);
# `make test` runs the test suite (needs the loopback services: see README.md).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup tools demo test bench

$(BIN)/stoq: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/stoq

setup: $(BIN)/stoq tools
	@# bytecode for the checkout's modules (environments with PYTHONDONTWRITEBYTECODE never cache it)
	@$(BIN)/python -m compileall -q stoq plugins

# The external programs the bundled plugins run (7z, unar, bsdtar...): the Debian packages of
# .ci/apt-packages, installed when missing (sudo when not root); one line says so where it cannot.
tools:
	@.ci/install-tools

demo: setup
	$(BIN)/stoq scan samples/invoice.zip --workers yara -o yara.rules=samples/demo.yar --format table

# The suite on TEST_JOBS pytest-xdist workers, a module per worker at a time (tests/conftest.py gives
# each worker its own Redis, RabbitMQ vhost and PostgreSQL databases); `make test TEST_JOBS=0` runs it serially.
TEST_JOBS ?= 3
test: setup
	$(BIN)/pytest -q -n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder --durations=25

bench: setup
	$(BIN)/python bench/run.py

# The README's two set-up commands: `make demo` and `make test`. Each creates .venv when
# missing and installs the project into it with the pins in constraints.txt.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,accelerate,federated]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/trainguard demo

# Two workers, one test file per worker at a time (files share module fixtures such as a
# trained model or a running agent); the 15 slowest tests are listed at the end.
PYTEST_ARGS ?= -q -n 2 --dist loadfile --durations=15

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest $(PYTEST_ARGS) -m "not slow"

# mypy cannot follow setuptools' editable import hook, so it checks a symlink tree that mirrors
# the installed `trainguard` namespace.
TYPECHECK := build/typecheck
lint: install
	$(BIN)/ruff check .
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/trainguard
	for a in core crypto policy evidence integrity agent report cli anomaly adversarial trainer; do ln -s ../../../$$a $(TYPECHECK)/trainguard/$$a; done
	MYPYPATH=$(TYPECHECK) $(BIN)/mypy --explicit-package-bases \
	  -p trainguard.core -p trainguard.crypto -p trainguard.policy -p trainguard.evidence \
	  -p trainguard.integrity -p trainguard.agent

bench: install
	@for b in tests/bench/bench_*.py; do echo "== $$b" >&2; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build dist *.egg-info

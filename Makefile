# The README's commands. CI (.ci/run) calls `make test` and nothing else.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install test test-all demo

install:
	$(PIP) install -q -c constraints.txt -e '.[test]'

test: install
	$(PYTHON) -m pytest -m "not slow"

test-all: install
	$(PYTHON) -m pytest

demo:
	$(PIP) install -q -c constraints.txt . && unlearn-audit demo

# The README's commands. CI (.ci/run) calls `make test` and nothing else.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install test test-all demo browser

install:
	$(PIP) install -q -c constraints.txt -e '.[test]'

test: install browser
	$(PYTHON) -m pytest -m "not slow"

# The HTML report is tested in Debian's headless Chromium; install it where we can (root with apt).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1; } || \
	  echo "chromium not installed: the browser tests will be skipped (see the pytest summary)"

test-all: install
	$(PYTHON) -m pytest

demo:
	$(PIP) install -q -c constraints.txt . && unlearn-audit demo

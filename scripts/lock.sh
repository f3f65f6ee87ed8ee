#!/usr/bin/env bash
# Refresh requirements.lock, the one list of exact versions every install reads (scripts/setup.sh,
# cluster/Dockerfile, ray-cluster.yaml), then commit it with the change that asked for it:
#   bash scripts/lock.sh             after changing a dependency in pyproject.toml or
#                                    requirements-pins.in: the other packages keep their versions
#   bash scripts/lock.sh --upgrade   to take the newest releases of everything, on purpose
# pip-tools resolves from pyproject.toml (dependencies, the `test` extra)
# and requirements-pins.in, through pip and pip's own configuration; tests/test_lock.py fails
# while the lock's recorded inputs differ from those files.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv-lock/bin/pip-compile ]; then
    "$PY" -m venv .venv-lock
    .venv-lock/bin/python -m pip install -q pip==25.3 pip-tools==7.6.2
fi
.venv-lock/bin/pip-compile -q "$@" --extra test --allow-unsafe --strip-extras \
    --no-emit-index-url --no-emit-find-links --output-file requirements.lock pyproject.toml requirements-pins.in
.venv-lock/bin/python scripts/lockfile.py stamp requirements.lock
echo "requirements.lock: $(grep -c '==' requirements.lock) packages"

#!/usr/bin/env bash
# Static checks CI runs before the tests: ruff lint, ruff format, mypy (config in pyproject.toml).
# Stops at the first failing check and names it; fix with `.venv/bin/ruff format FILES`,
# `.venv/bin/ruff check --fix FILES`, or the annotations mypy asks for.
set -uo pipefail
cd "$(dirname "$0")/.."
run_check() {
    local name=$1
    shift
    if ! "$@"; then
        echo "static checks: '$name' failed (command: $*); fix the findings above before running the tests" >&2
        exit 1
    fi
}
run_check "ruff lint" .venv/bin/ruff check .
run_check "ruff format" .venv/bin/ruff format --check .
run_check "mypy" .venv/bin/mypy

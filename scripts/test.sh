#!/usr/bin/env bash
# Set up, run the static checks (ruff, mypy), then the whole test suite (slow integration tests
# included). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/check_static.sh
# The browser test drives Debian's Chromium; install it when we may (root with apt).
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null \
        || echo "warning: could not install chromium; the browser test will be skipped" >&2
fi
exec .venv/bin/python -m pytest -q -rs --timeout 900 "$@"

#!/usr/bin/env bash
# Set up, then map the bundled synthetic demo scene end to end (see README: "The demo").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/landslide-batch demo --out "${1:-demo-output}"

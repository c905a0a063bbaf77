#!/usr/bin/env bash
# Set up gated with its test extras and the Mosquitto broker, then lint and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/ruff check .
exec .venv/bin/pytest -q -p no:cacheprovider "$@"

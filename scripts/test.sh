#!/usr/bin/env bash
# Set up gated with its test extras and the Mosquitto broker, then lint and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/ruff check .
.venv/bin/lint-imports --no-cache   # the dependency rule (pyproject [tool.importlinter])
.venv/bin/mypy                      # pyproject [tool.mypy]
exec .venv/bin/pytest -q -p no:cacheprovider "$@"

#!/usr/bin/env bash
# Set up gated and run it on simulated hardware (relays, cameras, traffic) with its SQLite journal.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/gated demo "$@"

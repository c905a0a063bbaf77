#!/usr/bin/env bash
# Set up everything gated needs on a fresh Debian / Raspberry Pi OS machine:
# a virtual environment in .venv with gated installed, and (with --test) the
# test extras plus the Mosquitto broker the integration tests start.
# Safe to run again: it only installs what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        as_root apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

PY=${PYTHON:-python3}
if ! command -v "$PY" >/dev/null; then
    echo "setup: python3 not found; installing it with apt-get" >&2
    apt_install python3 python3-venv
fi
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    echo "setup: gated needs Python 3.11 or newer; $("$PY" --version) found" >&2
    exit 1
fi

if [ ! -x .venv/bin/python ]; then
    if ! "$PY" -m venv .venv 2>/dev/null; then
        # Debian splits venv/ensurepip into its own package.
        rm -rf .venv
        apt_install python3-venv
        "$PY" -m venv .venv
    fi
fi

extras=""
[ "$want_test" -eq 1 ] && extras="[test]"
stamp=".venv/.gated-installed${extras:+-test}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".${extras}"
    touch "$stamp"
fi

if [ "$want_test" -eq 1 ] && ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
    echo "setup: installing the Mosquitto broker for the integration tests" >&2
    apt_install mosquitto
    # The tests start their own broker on a free port; the packaged service is not needed.
    (as_root systemctl disable --now mosquitto >/dev/null 2>&1) || true
fi

if [ "$want_test" -eq 1 ] && ! command -v initdb >/dev/null \
        && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    # tests/central start their own PostgreSQL (initdb in a temporary folder, a Unix socket,
    # no TCP): only Debian's binaries are needed, not the packaged cluster or its service.
    echo "setup: installing PostgreSQL for the central service's tests" >&2
    apt_install postgresql
    (as_root systemctl disable --now postgresql >/dev/null 2>&1) || true
fi

if [ "$want_test" -eq 1 ] && { ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; }; then
    # tests/web/test_browser.py drives Debian's headless Chromium through its own driver:
    # nothing is downloaded at test time.
    echo "setup: installing chromium and chromium-driver for the status page's browser tests" >&2
    apt_install chromium chromium-driver
fi
if [ "$want_test" -eq 1 ] && ! command -v strace >/dev/null; then
    # tests/daemon/test_io_errors.py and test_power_loss_order.py inject I/O errors into
    # gated run and trace its write/fsync order with strace.
    echo "setup: installing strace for the journal's fault and write-order tests" >&2
    apt_install strace
fi

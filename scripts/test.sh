#!/usr/bin/env bash
# Set up and run the whole test suite on a fresh machine (Python 3.11+).
# Installs tshark from Debian when possible (the Wireshark interop tests need it; they skip with a
# clear reason when it cannot be had), creates .venv, installs ipsecsa with its dev extra, runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v tshark >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing tshark (for the Wireshark interop tests)..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tshark >/dev/null) \
    || echo "warning: tshark could not be installed; its tests will be skipped"
fi
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
exec .venv/bin/python -m pytest "$@"

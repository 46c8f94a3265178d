#!/usr/bin/env bash
# Set up and run the main job: an end-to-end demonstration of ipsecsa's data path.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
exec .venv/bin/python -m ipsecsa.demo "$@"

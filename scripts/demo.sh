#!/usr/bin/env bash
# Set up and run the main job: an end-to-end demonstration of ipsecsa's data path.
set -euo pipefail
cd "$(dirname "$0")/.."
# The native ESP fast path needs the libcrypto headers (without them: the pure-Python path).
if ! dpkg -s libssl-dev >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev \
    >/dev/null) || echo "warning: libssl-dev could not be installed; native fast path off"
fi
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
exec .venv/bin/python -m ipsecsa.demo "$@"

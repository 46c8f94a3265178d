#!/usr/bin/env bash
# Set up and run the main job: the ipsecsa service (ipsecsa serve) started, two SA-context pairs
# created through its API, packets sent both ways, the counters shown, the service stopped.
# The data-path demonstration of before is `ipsecsa demo` (python -m ipsecsa.demo).
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
exec .venv/bin/python -m ipsecsa.service.demo "$@"

#!/usr/bin/env bash
# Set up and run the whole test suite on a fresh machine (Python 3.11+).
# Installs tshark from Debian when possible (the Wireshark interop tests need it; they skip with a
# clear reason when it cannot be had), creates .venv, installs ipsecsa with its dev extra (pytest,
# ruff, mypy, ...), runs ruff and mypy, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# The gateway's namespace tests need ping, tcpdump and ss (iproute2) as well; they skip with the
# reason when they cannot have them.
need=()
command -v tshark >/dev/null 2>&1 || need+=(tshark)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
command -v ss >/dev/null 2>&1 || need+=(iproute2)
# docs/guide.md's service examples (tests/service/test_guide.py runs them) use curl and jq.
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v jq >/dev/null 2>&1 || need+=(jq)
# strongSwan for the gateway's live interop test: charon, swanctl, and the plugins it loads
# (kernel-libipsec: userspace ESP, since the kernel may have no XFRM; openssl/gcm, chapoly,
# curve25519).
[ -x /usr/lib/ipsec/charon ] || need+=(strongswan-charon)
command -v swanctl >/dev/null 2>&1 || need+=(strongswan-swanctl)
[ -e /usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so ] || need+=(libcharon-extra-plugins)
[ -e /usr/lib/ipsec/plugins/libstrongswan-chapoly.so ] || need+=(libstrongswan-extra-plugins)
[ -e /usr/lib/ipsec/plugins/libstrongswan-openssl.so ] || need+=(libstrongswan-standard-plugins)
# The native ESP fast path (ipsecsa._fastesp) is C over OpenSSL libcrypto >= 3.0: a compiler and
# the libcrypto headers. Without them the package still installs, on the pure-Python path.
command -v cc >/dev/null 2>&1 || need+=(gcc)
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
if [ ${#need[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing ${need[*]} (for the interop and gateway tests)..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${need[@]}" >/dev/null) || echo "warning: ${need[*]} could not be installed; their tests will be skipped"
fi
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
# Where the extension can be built, the suite must run on it: a build that silently failed would
# otherwise leave CI testing only the fallback (tests/native/test_native_path.py checks).
if command -v cc >/dev/null 2>&1 && dpkg -s libssl-dev >/dev/null 2>&1; then
  export IPSECSA_REQUIRE_NATIVE=1
fi
# The configured quality gates (pyproject: [tool.ruff], [tool.mypy]) run first; they take seconds.
echo "ruff..." && .venv/bin/python -m ruff check src tests benchmarks
echo "mypy..." && .venv/bin/python -m mypy
.venv/bin/python -m pytest "$@"
# The full run (no arguments) also builds the native extension with ASan+UBSan and runs the
# data-path tests and a 1,000,000-packet fuzz against it (a few minutes; IPSECSA_SKIP_SANITIZE=1
# leaves it out).
if [ $# -eq 0 ] && [ "${IPSECSA_REQUIRE_NATIVE:-0}" = 1 ] && [ "${IPSECSA_SKIP_SANITIZE:-0}" != 1 ]; then
  bash scripts/sanitize.sh
fi

#!/usr/bin/env bash
# Memory safety of the C extensions: build ipsecsa._fastesp (the ESP fast path),
# ipsecsa._capio (the capture tools' record loops), ipsecsa._storejson (the store's JSON
# writer) and ipsecsa._structcopy (the WFP structures' copier) once more with AddressSanitizer +
# UndefinedBehaviorSanitizer (in a scratch copy of the tree), then run the data-path and
# capture-batch tests, the store writer's and the copier's differential tests (more random
# trees than the suite's), a bounded fuzz of >= 1,000,000 mutated packets (scripts/fuzz_native.py)
# and one of 300,000 damaged capture records (scripts/fuzz_capio.py) against those builds.
# PYTHONMALLOC=malloc gives every bytes object its own ASan red zones, so a read past a packet
# is caught even for small packets; any finding aborts with a non-zero exit.
# Usage: bash scripts/sanitize.sh [fuzz packet count]   (called by scripts/test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
py=${PYTHON:-$root/.venv/bin/python}
packets=${1:-1000000}
if [ ! -x "$py" ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q -e '.[dev]'
fi
asan=$(cc -print-file-name=libasan.so)
if [ ! -e "$asan" ]; then
  echo "sanitize: no libasan for this compiler; skipped" >&2
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r src "$work/"
rm -f "$work"/src/ipsecsa/*.so
# Compiled directly (the flags of setup.py's IPSECSA_SANITIZE=1 build), independent of the
# setuptools version in the venv.
inc=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
suffix=$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
cc -shared -fPIC -std=c11 -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers \
  -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
  -I"$inc" src/ipsecsa/_fastesp.c -o "$work/src/ipsecsa/_fastesp$suffix" -lcrypto \
  || { echo "sanitize: the ASan/UBSan build failed" >&2; exit 1; }
cc -shared -fPIC -std=c11 -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers \
  -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
  -I"$inc" src/ipsecsa/_capio.c -o "$work/src/ipsecsa/_capio$suffix" \
  || { echo "sanitize: the ASan/UBSan build of _capio failed" >&2; exit 1; }
cc -shared -fPIC -std=c11 -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers \
  -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
  -I"$inc" src/ipsecsa/_storejson.c -o "$work/src/ipsecsa/_storejson$suffix" \
  || { echo "sanitize: the ASan/UBSan build of _storejson failed" >&2; exit 1; }
cc -shared -fPIC -std=c11 -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers \
  -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
  -I"$inc" src/ipsecsa/_structcopy.c -o "$work/src/ipsecsa/_structcopy$suffix" \
  || { echo "sanitize: the ASan/UBSan build of _structcopy failed" >&2; exit 1; }
export PYTHONPATH="$work/src" LD_PRELOAD="$asan" PYTHONMALLOC=malloc IPSECSA_REQUIRE_NATIVE=1
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:verify_asan_link_order=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
for mod in _fastesp _capio _storejson _structcopy; do
  loaded=$("$py" -c "import ipsecsa.$mod as m; print(m.__file__)")
  case "$loaded" in
    "$work"/*) echo "sanitize: testing $loaded (ASan+UBSan)" ;;
    *) echo "sanitize: the sanitized build was not the one loaded ($loaded)" >&2; exit 1 ;;
  esac
done
"$py" -m pytest -q -p no:cacheprovider -o addopts="" \
  tests/native tests/datapath/test_replay.py tests/datapath/test_esp_vectors.py \
  tests/datapath/test_esp_behaviour.py tests/datapath/test_edge_cases.py \
  tests/sad/test_database_batch.py tests/io/test_pcapbatch.py tests/wfp/test_route.py \
  tests/wfp/test_batch.py
IPSECSA_CODEC_SEEDS=60 "$py" -m pytest -q -p no:cacheprovider -o addopts="" \
  tests/store/test_codec_native.py tests/store/test_codec.py tests/store/test_restart.py \
  tests/store/test_journal.py
IPSECSA_CLONE_SEEDS=40 "$py" -m pytest -q -p no:cacheprovider -o addopts="" \
  tests/wfp/test_clone_native.py tests/wfp/test_clone.py tests/wfp/test_filters.py tests/wfp/test_contexts.py
"$py" scripts/fuzz_native.py --packets "$packets"
"$py" scripts/fuzz_capio.py --records 300000

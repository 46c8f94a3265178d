"""The RPC boundary's structure copies: the C copier (``ipsecsa._structcopy``) against the Python
copiers (``_structbase.clone_py``/``clone_but_py``, the reference), measured in one process.

Per structure of benchmarks/control.py's SA-context life cycle (its FWPM_FILTER0 with two
conditions, its IPSEC_SA_BUNDLE1, its IPSEC_TRAFFIC1): microseconds per ``clone``. Then that life
cycle (two FwpmFilterAdd0, IPsecSaContextCreate1, GetSpi1, AddInbound1, AddOutbound1, DeleteById0,
two FwpmFilterDeleteById0) per second, in memory and with the SQLite store, with the engine's
copiers switched between the two. The machine is shared, so the two sides alternate in short
slices and CPU time of this process (``time.process_time``) is what is counted; the ratio is the
result, the absolute rates are disturbed by the others.

Usage: python benchmarks/clone.py [--rounds N] [--slice SECONDS]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import control

from ipsecsa import wfp
from ipsecsa.wfp import _structbase as SB
from ipsecsa.wfp import filters as F
from ipsecsa.wfp import types as T


def use(native: bool) -> None:
    """Bind the engine's copiers (every name they are reached by) to C or to Python."""
    assert SB._native is not None
    clone = SB._native.clone if native else SB.clone_py
    clone_but = SB._native.clone_but if native else SB.clone_but_py
    SB.clone = T.clone = F.clone = clone  # type: ignore[attr-defined]
    SB.clone_but = F.clone_but = clone_but  # type: ignore[assignment]


def per_call_us(fn: Callable[[], Any], budget: float) -> float:
    n = 0
    start = time.process_time()
    while True:
        for _ in range(200):
            fn()
        n += 200
        spent = time.process_time() - start
        if spent >= budget:
            return spent / n * 1e6


def cycles_per_s(bfe: wfp.Engine, h: int, budget: float, key: bytes) -> float:
    n = 0
    start = time.process_time()
    while True:
        for _ in range(20):
            control.life_cycle(bfe, h, "198.51.100.2", key)
        n += 20
        spent = time.process_time() - start
        if spent >= budget:
            return n / spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--slice", type=float, default=0.4, help="CPU seconds per side per round")
    args = ap.parse_args()
    if SB._native is None:
        sys.exit("ipsecsa._structcopy is not in use (not built, or IPSECSA_PURE_PYTHON=1)")
    key = os.urandom(20)
    conds = control.conditions(control.A, "198.51.100.2")
    structures = {
        "FWPM_FILTER0": control.ipsec_filter(True, conds),
        "IPSEC_SA_BUNDLE1": control.gcm_bundle(0x1234, key),
        "IPSEC_TRAFFIC1": control.traffic(control.A, "198.51.100.2", 7),
    }
    rows: dict[str, dict[bool, list[float]]] = {}
    for name, obj in structures.items():
        rows[f"clone {name} (us)"] = {True: [], False: []}
        for _ in range(args.rounds):
            for native in (False, True):
                fn = SB._native.clone if native else SB.clone_py
                rows[f"clone {name} (us)"][native].append(
                    per_call_us(lambda f=fn, o=obj: f(o), args.slice / 4))
    with tempfile.TemporaryDirectory() as tmp:
        engines = {"in memory": wfp.Engine(),
                   "durable": wfp.Engine(database=os.path.join(tmp, "bench.db"))}
        for label, bfe in engines.items():
            _, h = bfe.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, None, None)
            row = rows[f"life cycles/s {label}"] = {True: [], False: []}
            for native in (False, True):  # warm-up
                use(native)
                cycles_per_s(bfe, h, 0.1, key)
            for _ in range(args.rounds):
                for native in (False, True):
                    use(native)
                    row[native].append(cycles_per_s(bfe, h, args.slice, key))
            use(True)
            bfe.close()
    print(f"{'':34} {'Python':>10} {'C':>10} {'C/Python':>9}")
    for name, row in rows.items():
        py, c = sorted(row[False])[len(row[False]) // 2], sorted(row[True])[len(row[True]) // 2]
        print(f"{name:34} {py:10.2f} {c:10.2f} {c / py:9.2f}")
    print("(medians of alternating slices of process CPU time; a time per call: C/Python < 1 "
          "is faster, a rate: > 1 is faster)")


if __name__ == "__main__":
    main()

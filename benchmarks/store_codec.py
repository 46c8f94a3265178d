"""Benchmark of the durable store's JSON writer: ``ipsecsa._storejson`` (C) against its Python
reference (``codec.dumps_py``), per structure and in a durable SA-context life cycle.

Usage: ``python benchmarks/store_codec.py [--rounds R] [--cycles N]``

* **Per structure**: ``codec.dumps`` of what one life cycle of ``benchmarks/control.py`` writes
  (an IPsec FWPM_FILTER0 with two conditions, an IPSEC_SA_BUNDLE1 with one AES-GCM SA, an
  IPSEC_TRAFFIC1), C and reference alternating, best round of each; the text is checked equal.
* **Life cycles**: ``control.life_cycle`` on a durable engine (SQLite in a temp directory),
  rounds alternating the C writer on and off in the same process; best round of each (other
  processes on the machine take the CPU at random; the best round is the least disturbed).
Prints microseconds and the ratio; the C writer is required (it says so and stops otherwise).
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

import control  # the life cycle and structures of the control-plane benchmark

from ipsecsa import wfp
from ipsecsa.store import codec


def best_us(fn: Callable[[], Any], n: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    return best


def per_structure(rounds: int) -> None:
    native = codec._native
    values = {
        "FWPM_FILTER0 (2 conditions)": control.ipsec_filter(
            True, control.conditions(control.A, control.B)),
        "IPSEC_SA_BUNDLE1 (1 GCM SA)": control.gcm_bundle(0x1234, os.urandom(20)),
        "IPSEC_TRAFFIC1": control.traffic(control.A, control.B, 5),
    }
    print("codec.dumps per structure      reference        C   ratio")
    for name, value in values.items():
        assert codec.dumps(value) == codec.dumps_py(value)
        c_best = py_best = float("inf")
        for _ in range(rounds):  # alternating, best of each
            codec._native = native
            c_best = min(c_best, best_us(lambda v=value: codec.dumps(v), 2000, 1))
            codec._native = None
            py_best = min(py_best, best_us(lambda v=value: codec.dumps(v), 2000, 1))
        codec._native = native
        print(f"{name:28} {py_best:9.2f} us {c_best:6.2f} us  x{py_best / c_best:.1f}")


def life_cycles(rounds: int, cycles: int) -> None:
    native = codec._native
    with tempfile.TemporaryDirectory() as tmp:
        bfe = wfp.Engine(database=Path(tmp) / "bench.db")
        _, h = bfe.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, None, None)
        key = os.urandom(20)
        for _ in range(200):
            control.life_cycle(bfe, h, control.B, key)
        best = {True: float("inf"), False: float("inf")}
        for _ in range(rounds):
            for on in (True, False):
                codec._native = native if on else None
                best[on] = min(best[on], best_us(
                    lambda: control.life_cycle(bfe, h, control.B, key), cycles, 1))
        codec._native = native
        bfe.close()
    print(f"durable life cycle (1 caller)  reference {best[False]:7.0f} us ({1e6 / best[False]:,.0f}/s)"
          f"   C {best[True]:7.0f} us ({1e6 / best[True]:,.0f}/s)"
          f"   saved {best[False] - best[True]:.0f} us, x{best[False] / best[True]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--cycles", type=int, default=300, help="life cycles per round")
    args = ap.parse_args()
    if not codec.native():
        raise SystemExit("the C writer (ipsecsa._storejson) is not in use: nothing to compare")
    per_structure(args.rounds)
    life_cycles(args.rounds, args.cycles)


if __name__ == "__main__":
    main()

"""Concurrency through the Pythonic API: 8 threads creating, using and deleting contexts at
once (nothing lost, nothing left over, no (SPI, sequence number) sent twice), and 8 threads
sending on one context (every sequence number used exactly once)."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from ipsecsa import api
from tests.api.helpers import esp_of, sa, udp4

THREADS, ROUNDS, PACKETS = 8, 6, 15


def test_eight_threads_create_use_delete() -> None:
    sent: list[tuple[int, int]] = []
    delivered = Counter[str]()
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    with api.Engine() as a, api.Engine() as b:
        def worker(i: int) -> None:
            try:
                here, there = f"10.0.{i}.1", f"10.0.{i}.2"
                with a.session() as sa_, b.session() as sb:
                    start.wait()
                    for r in range(ROUNDS):
                        out = sa(0x100000 * (i + 1) + 2 * r + 1, here, there)
                        back = sa(0x100000 * (i + 1) + 2 * r + 2, there, here)
                        ca = sa_.create_context(outbound=out, inbound=back)
                        cb = sb.create_context(outbound=back, inbound=out)
                        for n in range(PACKETS):
                            wire = a.outbound(udp4(here, there, b"%d" % n, ident=n))
                            got = b.inbound(wire.packet)
                            reply = b.outbound(udp4(there, here, b"re %d" % n, ident=n))
                            got_back = a.inbound(reply.packet)
                            with lock:
                                sent.extend((esp_of(wire.packet), esp_of(reply.packet)))
                                delivered["ab" if got.drop is None else "lost"] += 1
                                delivered["ba" if got_back.drop is None else "lost"] += 1
                        assert sa_.context(ca.id).packets_out == PACKETS
                        assert sb.context(cb.id).packets_in == PACKETS
                        sa_.delete(ca.id)
                        sb.delete(cb.id)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        total = THREADS * ROUNDS * PACKETS
        assert delivered == {"ab": total, "ba": total}
        assert len(sent) == 2 * total and len(set(sent)) == len(sent)  # no (SPI, seq) twice
        for engine in (a, b):
            assert engine.contexts() == []
            with engine.session() as s:
                _status, enum = engine.wfp.FwpmFilterCreateEnumHandle0(s.handle, None)
                assert engine.wfp.FwpmFilterEnum0(s.handle, enum, 1000)[2] == 0  # none left


def test_eight_threads_on_one_context_never_share_a_sequence_number() -> None:
    per_thread = 150
    with api.Engine() as a, api.Engine() as b:
        out, back = sa(0x1001, "192.0.2.1", "198.51.100.2"), sa(0x2002, "198.51.100.2",
                                                                "192.0.2.1")
        a.create_context(outbound=out, inbound=back)
        b.create_context(outbound=back, inbound=out)
        wires: list[Any] = []
        lock = threading.Lock()

        def worker(i: int) -> None:
            mine = [a.outbound(udp4("192.0.2.1", "198.51.100.2", b"x", sport=1000 + i)).packet
                    for _ in range(per_thread)]
            with lock:
                wires.extend(mine)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        seqs = sorted(esp_of(w)[1] for w in wires)
        assert seqs == list(range(1, THREADS * per_thread + 1))
        for w in sorted(wires, key=lambda w: esp_of(w)[1]):
            assert b.inbound(w).drop is None
        assert a.contexts()[0].outbound[0].seq == THREADS * per_thread

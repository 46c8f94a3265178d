"""``wfp.Engine.outbound_batch``: the verdicts of ``outbound`` packet by packet, in input order,
with each context's packets numbered in arrival order and every ESP packet opened by the peer
engine; a durable engine's batch never passes the reserved sequence numbers (it reserves the
next block and goes on); a packet lifetime reached inside a batch ends the context as one
packet at a time would. (The peer is ipsecsa too; the wire format is proven independently in
test_traffic.py and the interop tests.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from ipsecsa import api, wfp
from ipsecsa.errors import DropReason
from ipsecsa.wfp.persist import SEQ_BLOCK, SEQ_BLOCK_MAX
from tests.api.helpers import A, B, esp_of, pair, udp4

C = "203.0.113.7"


def hosts(database: Path | None = None) -> tuple[api.Engine, api.Engine, api.Engine]:
    a, b, c = api.Engine(database), api.Engine(), api.Engine()
    ab, ba = pair()
    a.create_context(outbound=ab, inbound=ba)
    b.create_context(outbound=ba, inbound=ab)
    ac, ca = pair(0x3001, 0x3002, A, C)
    a.create_context(outbound=ac, inbound=ca)
    c.create_context(outbound=ca, inbound=ac)
    return a, b, c


def test_mixed_batch_gives_the_per_packet_verdicts_in_order() -> None:
    a, b, c = hosts()
    try:
        bfe = a.wfp
        clear = udp4(A, "192.0.2.99")  # no filter: permitted in clear
        packets = []
        for i in range(40):
            packets.append(udp4(A, B if i % 3 else C, f"p{i}".encode(), ident=i))
            if i % 7 == 0:
                packets.append(clear)
            if i % 11 == 0:
                packets.append(b"\x45\x00")  # malformed
        results = bfe.outbound_batch(packets)
        assert len(results) == len(packets)
        seqs: dict[int, list[int]] = {}
        for packet, result in zip(packets, results, strict=True):
            if packet == clear:
                assert result.packet == clear and result.drop is None
            elif len(packet) < 20:
                assert result.packet is None and result.drop is not None
            else:
                spi, seq = esp_of(result.packet)
                seqs.setdefault(spi, []).append(seq)
                peer = b if packet[16:20] == udp4(A, B)[16:20] else c
                assert peer.inbound(result.packet).packet == packet
        assert all(s == list(range(1, len(s) + 1)) for s in seqs.values())
        assert len(seqs) == 2
        # The same packets one by one now continue the same numbering.
        single = bfe.outbound(packets[0])
        assert esp_of(single.packet)[1] == len(seqs[esp_of(single.packet)[0]]) + 1
        with pytest.raises(TypeError, match="iterable of packets"):
            bfe.outbound_batch(packets[0])
    finally:
        for e in (a, b, c):
            e.close()


def test_a_durable_batch_reserves_block_after_block(tmp_path: Path) -> None:
    a, b, c = hosts(tmp_path / "a.db")
    try:
        n = SEQ_BLOCK * 2 + 100
        results = a.wfp.outbound_batch([udp4(A, B, ident=i) for i in range(n)])
        assert [esp_of(r.packet)[1] for r in results] == list(range(1, n + 1))
        ctx = next(x for x in a.wfp._contexts.values() if x.remote == bytes([198, 51, 100, 2]))
        sa = ctx.outbound_bundle.sas[0]
        assert sa.seq_limit_hook is not None and sa.seq_limit >= n  # reserved before use
        stored = a.wfp._store.sa_state(ctx.id, "out")[0][0]
        assert stored == sa.seq_limit <= n + SEQ_BLOCK_MAX  # on disk, at most a block ahead
        inbound = b.wfp.inbound
        assert all(inbound(r.packet).drop is None for r in results[-10:])
    finally:
        for e in (a, b, c):
            e.close()
    again = api.Engine(tmp_path / "a.db")
    try:
        nxt = again.outbound(udp4(A, B))
        assert esp_of(nxt.packet)[1] > n  # after a restart: beyond everything sent
    finally:
        again.close()


def test_a_packet_lifetime_reached_inside_a_batch_ends_the_context() -> None:
    a, b = api.Engine(), api.Engine()
    try:
        ab, ba = pair(lifetime={"hard": {"packets": 5}})
        ctx = a.create_context(outbound=ab, inbound=ba)
        b.create_context(outbound=ba, inbound=ab)
        results = a.outbound_batch([udp4(A, B, ident=i) for i in range(8)])
        assert [r.drop is None for r in results] == [True] * 5 + [False] * 3
        assert all(r.drop is not None for r in results[5:])
        assert a.context(ctx.id).state == "expiring"
        assert a.outbound(udp4(A, B)).drop is DropReason.NO_POLICY
    finally:
        a.close()
        b.close()


def test_bundles_go_one_by_one_with_the_same_result() -> None:
    from tests.api.helpers import sa

    a, b = api.Engine(), api.Engine()
    try:
        ah_key = "11" * 20
        out = [sa(0x4001, A, B), {"spi": 0x4001, "protocol": "ah", "src": A, "dst": B,
                                  "integrity": {"algorithm": "hmac-sha1-96", "key": ah_key}}]
        inb = [sa(0x4002, B, A), {"spi": 0x4002, "protocol": "ah", "src": B, "dst": A,
                                  "integrity": {"algorithm": "hmac-sha1-96", "key": ah_key}}]
        a.create_context(outbound=out, inbound=inb)
        b.create_context(outbound=inb, inbound=out)
        packets = [udp4(A, B, ident=i) for i in range(5)]
        results = a.wfp.outbound_batch(packets)
        assert [r.packet[9] for r in results] == [51] * 5  # AH outermost
        assert [b.inbound(r.packet).packet for r in results] == packets
    finally:
        a.close()
        b.close()


def test_a_closed_engine_drops_the_batch() -> None:
    a = wfp.Engine()
    a.close()
    assert [r.drop for r in a.outbound_batch([udp4(A, B)])] == [DropReason.SA_UNUSABLE]

"""``SaDatabase.outbound_batch`` / ``inbound_batch``: grouped per SA, the same verdicts as the
per-packet entry points in order.

Two databases are built from the same descriptions and deterministic IVs
(``unsafe_iv_source``); one is driven packet by packet, the other in batches, and the results,
the SAs' counters and the database's own drops must be equal. Runs on both data paths.
"""

from __future__ import annotations

import random

import pytest
from scapy.layers.inet import IP, UDP, fragment
from scapy.packet import Raw

from ipsecsa.datapath.sa import SecurityAssociation
from ipsecsa.sad import SaDatabase

pytestmark = pytest.mark.usefixtures("backend")

HOSTS = [(f"192.0.2.{i}", f"198.51.100.{i}") for i in range(1, 5)]
ALGS = {1: ("aes-gcm-16", 20, None), 2: ("chacha20-poly1305", 36, None),
        3: ("aes-cbc", 16, "hmac-sha256-128"), 4: ("aes-gcm-16", 36, None)}


def _iv(seq: int) -> bytes:
    return (seq * 2654435761 & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big") * 2


def _sa(spi: int, direction: str) -> SecurityAssociation:
    enc, klen, integ = ALGS[spi]
    src, dst = HOSTS[spi - 1]
    d: dict = {"spi": 0x100 + spi, "protocol": "esp", "mode": "transport", "direction": direction,
               "src": src, "dst": dst, "replay_window": 32,
               "encryption": {"algorithm": enc, "key": bytes([spi]) .hex() * klen}}
    if integ:
        d["integrity"] = {"algorithm": integ, "key": bytes([spi + 9]).hex() * 32}
    ivlen = 16 if enc == "aes-cbc" else 8
    return SecurityAssociation.from_dict(d, now=0.0,
                                         unsafe_iv_source=lambda s, n=ivlen: _iv(s)[:n])


def _db(direction: str) -> SaDatabase:
    db = SaDatabase()
    for spi in ALGS:
        (db.add_outbound if direction == "outbound" else db.add_inbound)(_sa(spi, direction))
    return db


def _traffic(rnd: random.Random, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        k = rnd.randrange(6)
        if k < 4:
            src, dst = HOSTS[k]
            out.append(bytes(IP(src=src, dst=dst, id=rnd.randrange(65536)) /
                             UDP(sport=1000, dport=2000) / Raw(bytes(rnd.randrange(300)))))
        elif k == 4:
            out.append(bytes(IP(src="203.0.113.1", dst="203.0.113.2") / UDP()))  # no policy
        else:
            out.append(rnd.randbytes(rnd.randrange(30)))  # garbage
    return out


def _counters(db: SaDatabase) -> list:
    return [[sa.counters for sa in bundle.sas] for _, _, bundle in db] + [db.drops]


@pytest.mark.parametrize("seed", range(2))
def test_batches_equal_packet_by_packet(seed: int) -> None:
    rnd = random.Random(seed)
    packets = _traffic(rnd, 300)
    one, many = _db("outbound"), _db("outbound")
    expect = [one.outbound(p, 1.0) for p in packets]
    got: list = []
    i = 0
    while i < len(packets):
        n = rnd.randrange(1, 70)
        got.extend(many.outbound_batch(packets[i:i + n], 1.0))
        i += n
    assert got == expect
    assert _counters(one) == _counters(many)

    # Inbound: the protected stream reordered, duplicated, some of it fragmented.
    wire = [r.packet for r in expect if r.packet is not None]
    arriving: list[bytes] = []
    for w in wire:
        roll = rnd.random()
        if roll < 0.1:
            arriving.extend(bytes(f) for f in fragment(IP(w), fragsize=64))
        elif roll < 0.2 and arriving:
            arriving.insert(rnd.randrange(len(arriving)), w)
        else:
            arriving.append(w)
        if rnd.random() < 0.05:
            arriving.append(w)  # a replay
    one, many = _db("inbound"), _db("inbound")
    expect = [one.inbound(p, 1.0) for p in arriving]
    got = []
    i = 0
    while i < len(arriving):
        n = rnd.randrange(1, 70)
        got.extend(many.inbound_batch(arriving[i:i + n], 1.0))
        i += n
    assert got == expect
    assert _counters(one) == _counters(many)
    assert sum(r.packet is not None for r in got) > len(wire) // 2


def test_a_batch_is_not_one_packet() -> None:
    with pytest.raises(TypeError):
        _db("outbound").outbound_batch(b"\x45" * 40)
    with pytest.raises(TypeError):
        _db("inbound").inbound_batch(b"\x45" * 40)

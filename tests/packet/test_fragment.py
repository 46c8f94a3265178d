"""Fragment reassembly tests.

Reference values: scapy 2.x (test-only oracle) fragments packets with ``fragment()`` (IPv4) and
``fragment6()`` (IPv6); reassembling the shuffled fragments must give back the original bytes.
Refusal rules come from RFC 5722 (overlap: whole datagram dropped), RFC 8200 §4.5 (non-last
fragment length a multiple of 8, reassembled payload at most 65535, exact duplicates may be
ignored), RFC 791 (IPv4 total length ≤ 65535) and RFC 6946 (atomic fragments).
"""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP, fragment
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)

from ipsecsa.errors import DropReason
from ipsecsa.packet.checksum import internet_checksum
from ipsecsa.packet.fragment import Reassembler, is_fragment
from ipsecsa.packet.ipv4 import MF, build_ipv4_header, verify_ipv4_checksum

SRC4 = bytes([10, 0, 0, 1])
DST4 = bytes([10, 0, 0, 2])


def feed_all(r: Reassembler, frags, now=0.0):
    results = [r.feed(f, now) for f in frags]
    done = [w for w, _ in results if w is not None]
    drops = [d for _, d in results if d is not None]
    return done, drops


def v4_frag(ident, offset_bytes, data, more, proto=17, src=SRC4, dst=DST4):
    hdr = build_ipv4_header(
        tos=0,
        total_length=20 + len(data),
        ident=ident,
        flags=MF if more else 0,
        frag_offset=offset_bytes // 8,
        ttl=64,
        protocol=proto,
        src=src,
        dst=dst,
    )
    return hdr + data


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("size", [100, 1400, 5000])
def test_ipv4_scapy_fragments_shuffled(seed, size):
    orig = (
        IP(src="192.0.2.1", dst="198.51.100.2", id=0x1234 + seed, ttl=30)
        / UDP(sport=1, dport=2)
        / bytes(random.Random(seed).randbytes(size))
    )
    frags = [bytes(f) for f in fragment(orig, fragsize=504)]
    assert len(frags) > 1 or size == 100
    random.Random(seed).shuffle(frags)
    r = Reassembler()
    done, drops = feed_all(r, frags)
    assert drops == []
    assert done == [bytes(orig)] if len(frags) > 1 else done == [frags[0]]
    assert verify_ipv4_checksum(done[0])
    assert r.bytes_held == 0 and len(r) == 0


def test_ipv4_with_options_uses_first_fragment_header():
    orig = (
        IP(src="192.0.2.1", dst="198.51.100.2", id=77, options=b"\x94\x04\x00\x00")
        / UDP()
        / bytes(3000)
    )
    frags = [bytes(f) for f in fragment(orig, fragsize=1000)]
    done, drops = feed_all(Reassembler(), list(reversed(frags)))
    assert drops == [] and done == [bytes(orig)]


V6S, V6D = "2001:db8::1", "2001:db8::2"


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(
    "unfragmentable",
    [
        lambda: IPv6(src=V6S, dst=V6D),
        lambda: (
            IPv6(src=V6S, dst=V6D)
            / IPv6ExtHdrHopByHop()
            / IPv6ExtHdrRouting(addresses=[V6D], segleft=0)
        ),
    ],
)
def test_ipv6_scapy_fragments_shuffled(seed, unfragmentable):
    payload = random.Random(seed).randbytes(3000)
    orig = unfragmentable() / IPv6ExtHdrDestOpt() / UDP(sport=3, dport=4) / payload
    fragmentable = (
        unfragmentable()
        / IPv6ExtHdrFragment(id=0xABC0 + seed)
        / IPv6ExtHdrDestOpt()
        / UDP(sport=3, dport=4)
        / payload
    )
    frags = [bytes(f) for f in fragment6(fragmentable, 1280)]
    assert len(frags) >= 3
    random.Random(seed).shuffle(frags)
    r = Reassembler()
    done, drops = feed_all(r, frags)
    assert drops == []
    assert done == [bytes(orig)]
    assert r.bytes_held == 0


def test_non_fragments_pass_through_and_atomic_fragment():
    r = Reassembler()
    plain = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP())
    assert r.feed(plain, 0) == (plain, None)
    v6 = bytes(IPv6(src=V6S, dst=V6D) / UDP() / b"abc")
    assert r.feed(v6, 0) == (v6, None)
    atomic = bytes(
        IPv6(src=V6S, dst=V6D) / IPv6ExtHdrFragment(offset=0, m=0, id=9) / UDP() / b"abc"
    )
    assert r.feed(atomic, 0) == (v6, None)


def test_is_fragment():
    assert is_fragment(v4_frag(1, 0, bytes(8), True))
    assert is_fragment(v4_frag(1, 8, bytes(8), False))
    assert not is_fragment(v4_frag(1, 0, bytes(8), False))
    assert is_fragment(bytes(IPv6() / IPv6ExtHdrFragment(offset=0, m=0) / UDP()))
    assert not is_fragment(bytes(IPv6() / UDP()))


def test_exact_duplicate_ignored():
    r = Reassembler()
    a, b = v4_frag(5, 0, bytes(range(16)), True), v4_frag(5, 16, b"tail", False)
    assert r.feed(a, 0) == (None, None)
    assert r.feed(a, 0) == (None, None)
    whole, drop = r.feed(b, 0)
    assert drop is None and whole[20:] == bytes(range(16)) + b"tail"
    assert internet_checksum(whole[:20]) == 0


@pytest.mark.parametrize(
    "frags",
    [
        # overlap with a previous piece (RFC 5722)
        [v4_frag(7, 0, bytes(16), True), v4_frag(7, 8, bytes(16), True)],
        # overlap with a following piece
        [v4_frag(7, 16, bytes(16), True), v4_frag(7, 8, bytes(16), True)],
        # same offset, different data
        [v4_frag(7, 0, bytes(16), True), v4_frag(7, 0, b"\x01" * 16, True)],
        # non-last fragment whose length is not a multiple of 8
        [v4_frag(7, 0, bytes(16), True), v4_frag(7, 16, bytes(12), True)],
        # two last fragments disagreeing on the total
        [v4_frag(7, 16, bytes(8), False), v4_frag(7, 32, bytes(8), False)],
        # a piece beyond the known end
        [v4_frag(7, 16, bytes(8), False), v4_frag(7, 24, bytes(8), True)],
        # a last fragment ending before an existing piece
        [v4_frag(7, 32, bytes(8), True), v4_frag(7, 8, bytes(8), False)],
    ],
)
def test_refusals_drop_whole_datagram(frags):
    r = Reassembler()
    *head, last = frags
    for f in head:
        assert r.feed(f, 0) == (None, None)
    assert r.feed(last, 0) == (None, DropReason.FRAGMENT)
    assert r.bytes_held == 0
    # Tombstone: the rest of the datagram is refused too, until the timeout.
    assert r.feed(v4_frag(7, 1000, bytes(8), True), 1) == (None, DropReason.FRAGMENT)
    assert r.expire(r.timeout + 1) == 0 and len(r) == 0
    assert r.feed(v4_frag(7, 1000, bytes(8), True), r.timeout + 2) == (None, None)


def test_oversized_reassembly_refused():
    r = Reassembler()
    assert r.feed(v4_frag(8, 65528, bytes(16), False), 0) == (None, DropReason.FRAGMENT)
    # header 20 + 65512 payload = 65532 fine; 65520 + 20 > 65535 refused at completion.
    r = Reassembler()
    frags = [v4_frag(9, off, bytes(1480), True) for off in range(0, 65120, 1480)]
    frags.append(v4_frag(9, 65120, bytes(400), False))  # total payload 65520
    done, drops = feed_all(r, frags)
    assert done == [] and drops == [DropReason.FRAGMENT]
    assert r.bytes_held == 0


def test_ipv6_overlap_refused():
    base = IPv6(src=V6S, dst=V6D)
    f1 = bytes(base / IPv6ExtHdrFragment(offset=0, m=1, id=1, nh=17) / bytes(16))
    f2 = bytes(base / IPv6ExtHdrFragment(offset=1, m=0, id=1, nh=17) / bytes(16))
    r = Reassembler()
    assert r.feed(f1, 0) == (None, None)
    assert r.feed(f2, 0) == (None, DropReason.FRAGMENT)


def test_ipv6_key_ignores_fragment_next_header():
    # RFC 8200 §4.5: only the offset-0 fragment's Next Header is used.
    base = IPv6(src=V6S, dst=V6D)
    f1 = bytes(base / IPv6ExtHdrFragment(offset=0, m=1, id=2, nh=59) / bytes(16))
    f2 = bytes(base / IPv6ExtHdrFragment(offset=2, m=0, id=2, nh=6) / bytes(4))
    r = Reassembler()
    assert r.feed(f2, 0) == (None, None)
    whole, drop = r.feed(f1, 0)
    assert drop is None and whole[6] == 59 and len(whole) == 60


def test_timeout_and_lazy_expiry():
    r = Reassembler(timeout=10.0)
    assert r.feed(v4_frag(1, 0, bytes(8), True), 0.0) == (None, None)
    assert r.feed(v4_frag(2, 0, bytes(8), True), 5.0) == (None, None)
    assert r.expire(9.9) == 0
    assert r.expire(10.0) == 1 and len(r) == 1
    # the second datagram is expired lazily by feed; its last fragment starts a new one
    assert r.feed(v4_frag(2, 8, bytes(8), False), 15.0) == (None, None)
    assert len(r) == 1 and r.bytes_held == 8


def test_datagram_cap():
    r = Reassembler(max_datagrams=3)
    for i in range(3):
        assert r.feed(v4_frag(i, 0, bytes(8), True), 0) == (None, None)
    assert r.feed(v4_frag(99, 0, bytes(8), True), 0) == (None, DropReason.FRAGMENT)
    whole, reason = r.feed(v4_frag(0, 8, bytes(8), False), 0)  # existing ones still finish
    assert reason is None and whole is not None and whole[20:] == bytes(16)


def test_memory_bound_under_flood():
    rng = random.Random(1)
    r = Reassembler(max_datagrams=200, max_bytes=64 * 1024, timeout=5.0)
    refused = 0
    for i in range(20000):
        size = 8 * rng.randint(1, 180)
        pkt = v4_frag(
            rng.randrange(1 << 16),
            8 * rng.randrange(4000),
            bytes(size),
            True,
            src=bytes([10, 0, rng.randrange(256), 1]),
        )
        _, drop = r.feed(pkt, i * 0.001)
        refused += drop is not None
        assert r.bytes_held <= r.max_bytes
        assert len(r) <= r.max_datagrams
    assert refused > 0
    assert r.expire(1e9) >= 0 and r.bytes_held == 0 and len(r) == 0


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_property_random_split_and_order(data):
    payload = data.draw(st.binary(min_size=1, max_size=3000))
    cuts = sorted(
        set(data.draw(st.lists(st.integers(1, (len(payload) - 1) // 8 or 1), max_size=10)))
    )
    bounds = [0] + [8 * c for c in cuts if 8 * c < len(payload)] + [len(payload)]
    frags = [
        v4_frag(42, bounds[i], payload[bounds[i] : bounds[i + 1]], i + 2 < len(bounds))
        for i in range(len(bounds) - 1)
    ]
    order = data.draw(st.permutations(frags))
    done, drops = feed_all(Reassembler(), order)
    if len(frags) == 1:
        assert done == [frags[0]]
    else:
        assert drops == [] and len(done) == 1 and done[0][20:] == payload


@settings(max_examples=300)
@given(st.binary(max_size=120))
def test_random_bytes_never_raise(data):
    r = Reassembler()
    for buf in (data, b"\x45" + data, b"\x60" + data):
        whole, drop = r.feed(buf, 0)
        assert whole is None or drop is None

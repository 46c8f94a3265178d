"""ESP properties over random SAs and random packets (hypothesis).

1. protect -> unprotect is the identity, for every ESP encryption x integrity family of the
   registry, transport/tunnel, IPv4/IPv6 outer (any inner in tunnel mode), ESN on/off, UDP
   encapsulation on/off, random initial sequence numbers, and random UDP/TCP/ICMP packets with
   random TOS/TTL/flow label, IPv4 options and IPv6 extension headers.
2. A single flipped bit in a protected packet is never delivered as a different packet: it is
   dropped with ICV_FAILURE or with the more specific reason the flipped region calls for.
3. Random bytes and every truncation of a valid protected packet never raise, and the counters
   account for every call exactly once.

Packets are built with scapy (a test-only oracle; the package never imports it).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.packet import Raw

from ipsecsa import SecurityAssociation
from ipsecsa.crypto.algorithms import ENCRYPTION, INTEGRITY
from ipsecsa.datapath.result import Result
from ipsecsa.errors import DropReason

#: Every test here runs on the Python reference and on the native fast path (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("backend")

SETTINGS = settings(deadline=None, max_examples=150,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SEQ32_MAX = 2**32 - 1
SEQ64_MAX = 2**64 - 1

#: ESP integrity algorithms (``aes-gmac`` is AH-only: RFC 4543 puts GMAC in ESP as the
#: ``null-aes-gmac`` *encryption* algorithm, which is covered through ENCRYPTION).
ESP_MACS = sorted(n for n in INTEGRITY if n not in ("none", "aes-gmac"))


def _combined(enc_name: str) -> bool:
    alg = ENCRYPTION[enc_name]
    return alg.aead or alg.kind == "gmac"


def _combos() -> list[tuple[str, str]]:
    """Every (encryption, integrity) pair the registry allows for ESP."""
    out = []
    for enc in sorted(ENCRYPTION):
        if _combined(enc):
            out.append((enc, "none"))
            continue
        for mac in ESP_MACS:
            out.append((enc, mac))
        if enc != "null":
            out.append((enc, "none"))  # encryption-only ESP: allowed with a warning
    return out


COMBOS = _combos()
INTEGRITY_COMBOS = [c for c in COMBOS if c[1] != "none" or _combined(c[0])]

ADDRS = {4: ("192.0.2.1", "198.51.100.7"), 6: ("2001:db8::1", "2001:db8:ffff::7")}


@dataclass(frozen=True)
class SaParams:
    enc: str
    integ: str
    enc_key: bytes
    integ_key: bytes
    mode: str
    outer: int
    esn: bool
    encap: bool
    seq: int

    def sa_dict(self, direction: str, spi: int = 0x0BAD1DEA) -> dict:
        src, dst = ADDRS[self.outer]
        obj: dict = {
            "spi": spi, "protocol": "esp", "mode": self.mode, "direction": direction,
            "src": src, "dst": dst, "esn": self.esn, "seq": self.seq,
            "encryption": {"algorithm": self.enc, "key": self.enc_key.hex()},
        }
        if self.integ != "none":
            obj["integrity"] = {"algorithm": self.integ, "key": self.integ_key.hex()}
        if self.encap:
            obj["encapsulation"] = {"type": "udp", "sport": 4500, "dport": 4500}
        return obj

    def pair(self) -> tuple[SecurityAssociation, SecurityAssociation]:
        return (SecurityAssociation.from_dict(self.sa_dict("outbound")),
                SecurityAssociation.from_dict(self.sa_dict("inbound")))

    def inbound(self) -> SecurityAssociation:
        return SecurityAssociation.from_dict(self.sa_dict("inbound"))


def _seq_strategy(esn: bool) -> st.SearchStrategy[int]:
    top = (SEQ64_MAX if esn else SEQ32_MAX) - 4  # room for a few packets
    edges = [0, 1, 2**31, 2**32 - 5]
    if esn:
        edges += [2**32 - 3, 2**32 - 2, 2**32 - 1, 2**32, 2**33 - 2, 2**63, top]
    return st.one_of(st.integers(0, top), st.sampled_from(edges))


@st.composite
def sa_params(draw, combos=COMBOS) -> SaParams:
    enc, integ = draw(st.sampled_from(combos))
    ealg = ENCRYPTION[enc]
    ksize = draw(st.sampled_from(ealg.key_sizes)) + ealg.salt_len
    enc_key = draw(st.binary(min_size=ksize, max_size=ksize))
    integ_key = b""
    if integ != "none":
        n = INTEGRITY[integ].key_sizes[0]
        integ_key = draw(st.binary(min_size=n, max_size=n))
    esn = draw(st.booleans())
    return SaParams(enc, integ, enc_key, integ_key,
                    mode=draw(st.sampled_from(["transport", "tunnel"])),
                    outer=draw(st.sampled_from([4, 6])), esn=esn,
                    encap=draw(st.booleans()), seq=draw(_seq_strategy(esn)))


# --- packets -----------------------------------------------------------------------------------

V4_OPTIONS = [
    b"\x94\x04\x00\x00",                          # router alert (RFC 2113)
    b"\x01\x01\x01\x01",                          # NOPs
    b"\x07\x0b\x04" + bytes(8),                   # record route, 2 slots (padded by scapy)
    b"\x44\x0c\x05\x00" + bytes(8),               # timestamp, 2 slots
]


@st.composite
def l4(draw, family: int):
    payload = Raw(draw(st.one_of(
        st.binary(min_size=0, max_size=1500),
        st.integers(0, 1500).map(lambda n: (bytes(range(256)) * 6)[:n]),  # large sizes too
    )))
    kind = draw(st.sampled_from(["udp", "tcp", "icmp"]))
    sport, dport = draw(st.integers(1, 65535)), draw(st.integers(1, 65535))
    if kind == "udp":
        return UDP(sport=sport, dport=dport) / payload
    if kind == "tcp":
        return TCP(sport=sport, dport=dport, seq=draw(st.integers(0, 2**32 - 1)),
                   flags=draw(st.sampled_from(["S", "A", "PA", "FA"]))) / payload
    if family == 4:
        return ICMP(id=draw(st.integers(0, 65535))) / payload
    return ICMPv6EchoRequest(id=draw(st.integers(0, 65535)), data=bytes(payload))


def _addr(draw, family: int) -> str:
    if family == 4:
        return str(ipaddress.IPv4Address(draw(st.integers(1, 2**32 - 2))))
    return str(ipaddress.IPv6Address(draw(st.integers(1, 2**128 - 2))))


@st.composite
def ip_packet(draw, family: int, src: str | None = None, dst: str | None = None) -> bytes:
    src = src or _addr(draw, family)
    dst = dst or _addr(draw, family)
    if family == 4:
        opts = draw(st.one_of(st.just(b""), st.sampled_from(V4_OPTIONS)))
        hdr = IP(src=src, dst=dst, tos=draw(st.integers(0, 255)), ttl=draw(st.integers(1, 255)),
                 id=draw(st.integers(0, 65535)), flags=draw(st.sampled_from([0, 2])))
        if opts:
            hdr.options = [IPOption(opts)]
        return bytes(hdr / draw(l4(4)))
    pkt = IPv6(src=src, dst=dst, tc=draw(st.integers(0, 255)), fl=draw(st.integers(0, 2**20 - 1)),
               hlim=draw(st.integers(1, 255)))
    if draw(st.booleans()):
        pkt = pkt / IPv6ExtHdrHopByHop()
    routing = draw(st.booleans())
    if routing and draw(st.booleans()):
        pkt = pkt / IPv6ExtHdrDestOpt()  # destination options before a routing header
    if routing:
        pkt = pkt / IPv6ExtHdrRouting(type=0, segleft=0, addresses=[_addr(draw, 6)])
    if draw(st.booleans()):
        pkt = pkt / IPv6ExtHdrDestOpt()  # final-destination options
    return bytes(pkt / draw(l4(6)))


@st.composite
def sa_and_packets(draw, combos=COMBOS, max_packets: int = 3):
    p = draw(sa_params(combos))
    family = p.outer if p.mode == "transport" else draw(st.sampled_from([4, 6]))
    src, dst = ADDRS[p.outer] if p.mode == "transport" else (None, None)
    n = draw(st.integers(1, max_packets))
    return p, [draw(ip_packet(family, src, dst)) for _ in range(n)]


# --- 1. protect -> unprotect is the identity ---------------------------------------------------


@SETTINGS
@given(sa_and_packets())
def test_roundtrip_identity(case) -> None:
    params, packets = case
    out, inb = params.pair()
    for pkt in packets:
        prot = out.protect(pkt)
        assert prot.drop is None, prot
        assert prot.packet != pkt
        back = inb.unprotect(prot.packet)
        assert back.drop is None, (back, params)
        assert back.packet == pkt
    assert out.seq == params.seq + len(packets)
    assert inb.seq == params.seq + len(packets)
    assert out.counters.packets == inb.counters.packets == len(packets)
    assert out.counters.dropped == inb.counters.dropped == 0


@pytest.mark.parametrize(("enc", "integ"), COMBOS)
def test_roundtrip_every_combination(enc: str, integ: str) -> None:
    """Each registry combination once, deterministically (hypothesis samples them)."""
    ealg = ENCRYPTION[enc]
    key = bytes(range(ealg.key_sizes[-1] + ealg.salt_len))
    ikey = bytes(range(100, 100 + INTEGRITY[integ].key_sizes[0])) if integ != "none" else b""
    for mode in ("transport", "tunnel"):
        for outer in (4, 6):
            p = SaParams(enc, integ, key, ikey, mode, outer, esn=True, encap=False, seq=7)
            out, inb = p.pair()
            src, dst = ADDRS[outer]
            ip = IP(src=src, dst=dst) if outer == 4 else IPv6(src=src, dst=dst)
            pkt = bytes(ip / UDP(sport=1, dport=2) / Raw(b"x" * 33))
            assert inb.unprotect(out.protect(pkt).packet) == Result(pkt, None)


# --- 2. single bit flips -------------------------------------------------------------------------

_HEADER_REASONS = frozenset({
    DropReason.TRUNCATED, DropReason.MALFORMED, DropReason.WRONG_PROTOCOL, DropReason.BAD_SPI,
    DropReason.ICV_FAILURE, DropReason.BAD_LENGTH, DropReason.BAD_UDP, DropReason.REPLAY,
    DropReason.NATT_KEEPALIVE, DropReason.NON_ESP_MARKER, DropReason.FRAGMENT,
    DropReason.ECN_DROP, DropReason.BAD_CHECKSUM,  # IPv4 header checksum (RFC 1122 §3.2.1.2)
})


@dataclass(frozen=True)
class Layout:
    """Where the parts of a protected packet are: [start, end) byte ranges."""

    ip: tuple[int, int]
    udp: tuple[int, int] | None
    spi: tuple[int, int]
    seq: tuple[int, int]
    iv: tuple[int, int]
    ct: tuple[int, int]
    icv: tuple[int, int]


def layout(sa: SecurityAssociation, original: bytes, protected: bytes) -> Layout:
    t = sa.transform
    if protected[0] >> 4 == 4:
        ip_end = (protected[0] & 15) * 4
    else:
        # The unencrypted part: 40 bytes plus the extension headers ESP was inserted after.
        ip_end = 40
        if sa.mode == "transport":
            ip_end = _ipv6_insert_offset(original)
    udp = None
    esp = ip_end
    if sa.config.encapsulation is not None:
        udp = (ip_end, ip_end + 8)
        esp = ip_end + 8
    iv_end = esp + 8 + t.iv_len
    return Layout(ip=(0, ip_end), udp=udp, spi=(esp, esp + 4), seq=(esp + 4, esp + 8),
                  iv=(esp + 8, iv_end), ct=(iv_end, len(protected) - t.icv_len),
                  icv=(len(protected) - t.icv_len, len(protected)))


def _ipv6_insert_offset(packet: bytes) -> int:
    from ipsecsa.packet.ipv6 import parse_ipv6_chain

    return parse_ipv6_chain(packet, stop_at_ipsec=False).insert_offset


def flip(buf: bytes, bit: int) -> bytes:
    b = bytearray(buf)
    b[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(b)


def _mask_ecn(pkt: bytes) -> bytes:
    """The packet with its ECN field (and an IPv4 header checksum) zeroed."""
    b = bytearray(pkt)
    if b[0] >> 4 == 4:
        b[1] &= 0xFC
        b[10:12] = b"\0\0"
    else:
        b[1] &= 0xCF
    return bytes(b)


def _mask_l4_sum(pkt: bytes) -> bytes:
    """The packet with its TCP/UDP checksum field zeroed (found behind any IPv6 options)."""
    if pkt[0] >> 4 == 4:
        proto, off = pkt[9], (pkt[0] & 15) * 4
    else:
        from ipsecsa.packet.ipv6 import parse_ipv6_chain

        ch = parse_ipv6_chain(pkt, stop_at_ipsec=False)
        proto, off = ch.upper_protocol, ch.upper_offset
    at = {6: 16, 17: 6}.get(proto)
    b = bytearray(pkt)
    if at is not None and off + at + 2 <= len(b):
        b[off + at:off + at + 2] = b"\0\0"
    return bytes(b)


def _upper(pkt: bytes) -> bytes:
    if pkt[0] >> 4 == 4:
        return pkt[(pkt[0] & 15) * 4:]
    from ipsecsa.packet.ipv6 import parse_ipv6_chain

    return pkt[parse_ipv6_chain(pkt, stop_at_ipsec=False).insert_offset:]


def check_flip(params: SaParams, inb: SecurityAssociation, original: bytes, protected: bytes,
               lay: Layout, bit: int) -> SecurityAssociation:
    """Feed ``protected`` with ``bit`` flipped; assert the verdict fits the region. Returns the
    inbound SA to use next (a fresh one when this flip changed its state)."""
    byte = bit // 8
    expected_top = inb.seq
    res = inb.unprotect(flip(protected, bit))
    v6_udp = params.encap and params.outer == 6  # a receiver MAY also check the IPv6 UDP sum
    # The outer IP header is not protected by ESP: reasons from parsing, or delivery.
    if lay.ip[0] <= byte < lay.ip[1]:
        if res.drop is not None:
            assert res.drop in _HEADER_REASONS, (res, bit)
            return inb
        if res.packet is None:  # held as a fragment (flags / offset flipped)
            return params.inbound()
        if params.mode == "tunnel":
            # RFC 6040: the outer ECN field may legitimately change the inner one.
            assert _mask_ecn(res.packet) == _mask_ecn(original), bit
        else:
            # Transport mode: the header is the packet's own (unprotected) header; what ESP
            # carried must come out intact. With UDP encapsulation a changed address makes the
            # receiver fix the TCP/UDP checksum (RFC 3948 §3.1.2), hence bytes 0..15 aside.
            got, want = res.packet, original
            if params.encap:
                got, want = _mask_l4_sum(got), _mask_l4_sum(want)
            assert _upper(got) == _upper(want), bit
        return params.inbound()
    if lay.udp is not None and lay.udp[0] <= byte < lay.udp[1]:
        off = byte - lay.udp[0]
        if off < 4 or off >= 6:  # ports and checksum: not used by the receiver
            if res.drop is None:
                assert res.packet == original
                return params.inbound()
            assert v6_udp and res.drop is DropReason.BAD_UDP, (res, bit)
            return inb
        assert res.drop in {DropReason.BAD_UDP, DropReason.TRUNCATED, DropReason.ICV_FAILURE,
                            DropReason.BAD_LENGTH, DropReason.NATT_KEEPALIVE,
                            DropReason.NON_ESP_MARKER}, (res, bit)
        return inb
    if lay.spi[0] <= byte < lay.spi[1]:
        # Over IPv6 the UDP checksum covers the SPI and is checked first.
        assert res.drop is DropReason.BAD_SPI or (v6_udp and res.drop is DropReason.BAD_UDP), (
            res, bit)
        return inb
    allowed = {DropReason.ICV_FAILURE}
    if v6_udp:
        allowed.add(DropReason.BAD_UDP)
    if lay.seq[0] <= byte < lay.seq[1]:
        # RFC 4303 §3.4.3: the replay check precedes the ICV check, so a flipped number that
        # falls left of (or on) the window's right edge is dropped as REPLAY, exactly when the
        # receiver's window says so; any other number reaches the ICV and fails it.
        seq_lo = int.from_bytes(flip(protected, bit)[lay.seq[0]:lay.seq[1]], "big")
        probe = params.inbound()
        if probe._replay.check(seq_lo) is None:
            allowed = {DropReason.REPLAY} | ({DropReason.BAD_UDP} if v6_udp else set())
    assert res.drop in allowed, (res, bit, lay)
    assert inb.seq == expected_top
    return inb


def _region_bits(lay: Layout) -> list[tuple[str, tuple[int, int]]]:
    regions = [("ip", lay.ip), ("spi", lay.spi), ("seq", lay.seq), ("iv", lay.iv),
               ("ct", lay.ct), ("icv", lay.icv)]
    if lay.udp is not None:
        regions.append(("udp", lay.udp))
    return [(n, r) for n, r in regions if r[1] > r[0]]


@SETTINGS
@given(sa_and_packets(INTEGRITY_COMBOS, max_packets=1), st.data())
def test_single_bit_flip_never_delivers_a_different_packet(case, data) -> None:
    params, (pkt,) = case
    out, inb = params.pair()
    protected = out.protect(pkt).packet
    assert protected is not None
    lay = layout(out, pkt, protected)
    for _name, (start, end) in _region_bits(lay):
        for _ in range(3):  # a few random bits per region, every region every time
            bit = data.draw(st.integers(start * 8, end * 8 - 1))
            inb = check_flip(params, inb, pkt, protected, lay, bit)
    # The untouched packet still goes through afterwards: no flip changed the window.
    assert params.inbound().unprotect(protected) == Result(pkt, None)


@pytest.mark.parametrize(("enc", "integ"), INTEGRITY_COMBOS)
@pytest.mark.parametrize(("mode", "outer", "encap"),
                         [("transport", 4, False), ("tunnel", 6, True)])
def test_every_bit_flip_small_packet(enc: str, integ: str, mode: str, outer: int,
                                     encap: bool) -> None:
    """Every bit of one small protected packet, for every algorithm pair with integrity."""
    ealg = ENCRYPTION[enc]
    key = bytes(range(7, 7 + ealg.key_sizes[0] + ealg.salt_len))
    ikey = bytes(range(50, 50 + INTEGRITY[integ].key_sizes[0])) if integ != "none" else b""
    params = SaParams(enc, integ, key, ikey, mode, outer, esn=False, encap=encap, seq=1000)
    out, inb = params.pair()
    src, dst = ADDRS[outer]
    ip = IP(src=src, dst=dst, tos=0x02) if outer == 4 else IPv6(src=src, dst=dst, tc=0x02)
    pkt = bytes(ip / UDP(sport=1234, dport=53) / Raw(b"query"))
    protected = out.protect(pkt).packet
    lay = layout(out, pkt, protected)
    for bit in range(len(protected) * 8):
        inb = check_flip(params, inb, pkt, protected, lay, bit)


# --- 3. garbage and truncations never raise; counters add up ---------------------------------


def _account(sa: SecurityAssociation, results: list[Result]) -> None:
    held = sum(1 for r in results if r.packet is None and r.drop is None)
    delivered = sum(1 for r in results if r.packet is not None)
    dropped = sum(1 for r in results if r.drop is not None)
    for r in results:
        assert isinstance(r, Result)
        assert (r.packet is None) != (r.drop is None) or (r.packet is None and r.drop is None)
        assert r.drop is None or isinstance(r.drop, DropReason)
    assert held + delivered + dropped == len(results)
    c = sa.counters
    assert c.dropped == dropped
    assert c.packets == delivered
    by_reason: dict[DropReason, int] = {}
    for r in results:
        if r.drop is not None:
            by_reason[r.drop] = by_reason.get(r.drop, 0) + 1
    assert c.drops == by_reason


_bytes_like_ip = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda v, rest: bytes([v]) + rest, st.sampled_from([0x45, 0x46, 0x4F, 0x60, 0x6F]),
              st.binary(max_size=200)),
)


@SETTINGS
@given(sa_params(), st.lists(_bytes_like_ip, min_size=1, max_size=20))
def test_random_bytes_to_unprotect_never_raise(params: SaParams, blobs: list[bytes]) -> None:
    inb = params.inbound()
    results = [inb.unprotect(b) for b in blobs]
    for r in results:
        assert r.packet is None  # random bytes never authenticate
    _account(inb, results)


@SETTINGS
@given(sa_params(), st.lists(_bytes_like_ip, min_size=1, max_size=20))
def test_random_bytes_to_protect_never_raise(params: SaParams, blobs: list[bytes]) -> None:
    out = SecurityAssociation.from_dict(params.sa_dict("outbound"))
    results = [out.protect(b) for b in blobs]
    for r in results:
        assert not (r.packet is None and r.drop is None)  # protect never holds
    _account(out, results)


@SETTINGS
@given(sa_and_packets(max_packets=1))
def test_every_truncation_is_dropped(case) -> None:
    params, (pkt,) = case
    out, inb = params.pair()
    protected = out.protect(pkt).packet
    assert protected is not None
    results = [inb.unprotect(protected[:n]) for n in range(len(protected))]
    for r in results:
        assert r.packet is None
    _account(inb, results)
    assert inb.unprotect(protected) == Result(pkt, None)  # nothing above touched the window


@SETTINGS
@given(sa_and_packets(max_packets=1), st.binary(min_size=1, max_size=64))
def test_trailing_garbage_and_splices_never_raise(case, junk: bytes) -> None:
    """Bytes appended after a valid packet (beyond its IP length) or spliced into it."""
    params, (pkt,) = case
    out, inb = params.pair()
    protected = out.protect(pkt).packet
    assume(protected is not None)
    mid = len(protected) // 2
    blobs = [protected + junk, protected[:mid] + junk + protected[mid:], junk + protected]
    results = [inb.unprotect(b) for b in blobs]
    _account(inb, results)
    # Trailing bytes beyond the IP length are link-layer padding: the packet is still good.
    assert results[0] == Result(pkt, None)
    if params.integ == "none" and not _combined(params.enc):
        # Encryption-only ESP has no ICV: a spliced block decrypts to garbage whose padding can
        # look valid (1 in 256 for a zero pad length), and RFC 4303 §3.2 warns exactly about
        # this. Such an SA can only promise not to raise and to count every packet.
        return
    assert all(r.packet is None for r in results[1:])

"""ESP behaviour through the SA, deterministic and numbered.

Groups: anti-replay (RFC 4303 §3.4.3, Appendix A), padding and dummy packets (§2.4, §2.6),
tunnel-mode outer headers (RFC 4301 §5.1.2, RFC 6040), UDP encapsulation (RFC 3948), fragmented
ESP (RFC 4303 §3.4.1), selectors (RFC 4301 §5.2), malformed inputs, and keys kept out of
representations and logs. scapy is the independent oracle for checksums and fragmentation.
"""

from __future__ import annotations

import ipaddress
import logging
import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, fragment6
from scapy.packet import Raw

from ipsecsa import SecurityAssociation
from ipsecsa.datapath.events import SequenceNumberExhausted
from ipsecsa.datapath.result import Result
from ipsecsa.datapath.state import SaState
from ipsecsa.errors import DropReason
from ipsecsa.packet.checksum import internet_checksum
from ipsecsa.packet.udp import udp_checksum

#: Every test here runs on the Python reference and on the native fast path (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("backend")

HELD = Result(None, None)
ESP = 50
GCM_KEY = "00112233445566778899aabbccddeeff" + "cafebabe"
CBC_KEY = "0f" * 16
SHA256_KEY = "a5" * 32
V4 = ("192.0.2.1", "198.51.100.7")
V6 = ("2001:db8::1", "2001:db8:ffff::7")


def sa_dict(direction: str | None, **kw) -> dict:
    obj = {
        "spi": 0xC0000101, "protocol": "esp", "mode": "transport", "direction": direction,
        "src": V4[0], "dst": V4[1],
        "encryption": {"algorithm": "aes-gcm-16", "key": GCM_KEY},
    }
    obj.update(kw)
    if obj["direction"] is None:
        del obj["direction"]
    return obj


def make(direction: str, **kw) -> SecurityAssociation:
    return SecurityAssociation.from_dict(sa_dict(direction, **kw))


def pair(out_seq: int = 0, in_seq: int = 0, **kw) -> tuple[SecurityAssociation,
                                                             SecurityAssociation]:
    """An outbound/inbound SA pair with the same keys (``kw`` are sa-format keys)."""
    return make("outbound", seq=out_seq, **kw), make("inbound", seq=in_seq, **kw)


def v4(payload: bytes = b"data", *, src: str = V4[0], dst: str = V4[1], tos: int = 0,
       flags: int = 0, l4=None) -> bytes:
    layer = UDP(sport=1234, dport=53) if l4 is None else l4
    return bytes(IP(src=src, dst=dst, tos=tos, flags=flags, ttl=61) / layer / Raw(payload))


def v6(payload: bytes = b"data", *, src: str = V6[0], dst: str = V6[1], tc: int = 0,
       fl: int = 0, l4=None) -> bytes:
    layer = UDP(sport=1234, dport=53) if l4 is None else l4
    return bytes(IPv6(src=src, dst=dst, tc=tc, fl=fl, hlim=61) / layer / Raw(payload))


def esp_offset(protected: bytes, encap: bool = False) -> int:
    off = (protected[0] & 15) * 4 if protected[0] >> 4 == 4 else 40
    return off + (8 if encap else 0)


def wire_seq(protected: bytes, encap: bool = False) -> int:
    return struct.unpack_from("!I", protected, esp_offset(protected, encap) + 4)[0]


def packet_numbered(seq: int, **kw) -> bytes:
    """A packet protected with sequence number ``seq`` (an outbound SA resumed at seq - 1)."""
    out = make("outbound", **kw, seq=seq - 1)
    return out.protect(v4(seq.to_bytes(8, "big"))).packet


def fix_v4_checksum(buf: bytearray) -> None:
    ihl = (buf[0] & 15) * 4
    buf[10:12] = b"\0\0"
    buf[10:12] = internet_checksum(bytes(buf[:ihl])).to_bytes(2, "big")


def v4_checksum_ok(pkt: bytes) -> bool:
    return internet_checksum(pkt[:(pkt[0] & 15) * 4]) == 0


# ================================================================ anti-replay through the SA


def test_01_in_window_out_of_order_is_delivered() -> None:
    out, inb = pair()
    packets = [out.protect(v4(bytes([i]))).packet for i in range(10)]
    for i in (9, 4, 6, 0, 1, 8, 2, 3, 5, 7):
        assert inb.unprotect(packets[i]).ok, i
    assert inb.seq == 10


def test_02_duplicate_is_replay() -> None:
    out, inb = pair()
    p = out.protect(v4()).packet
    assert inb.unprotect(p).ok
    assert inb.unprotect(p).drop is DropReason.REPLAY
    assert inb.counters.drops == {DropReason.REPLAY: 1}


def test_03_too_old_is_replay_window_edge_accepted() -> None:
    out, inb = pair()
    packets = [out.protect(v4()).packet for _ in range(100)]  # seq 1..100
    assert inb.unprotect(packets[99]).ok  # top = 100; window 37..100
    assert inb.unprotect(packets[35]).drop is DropReason.REPLAY  # seq 36
    assert inb.unprotect(packets[36]).ok  # seq 37, the left edge


def test_04_far_ahead_moves_the_window() -> None:
    _, inb = pair()
    assert inb.unprotect(packet_numbered(1)).ok
    assert inb.unprotect(packet_numbered(1_000_000)).ok
    assert inb.seq == 1_000_000
    assert inb.unprotect(packet_numbered(2)).drop is DropReason.REPLAY
    assert inb.unprotect(packet_numbered(999_999)).ok


@pytest.mark.parametrize("size", [32, 64, 4096])
def test_05_window_sizes(size: int) -> None:
    inb = make("inbound", replay_window=size)
    top = size + 100
    assert inb.unprotect(packet_numbered(top)).ok
    assert inb.unprotect(packet_numbered(top - size)).drop is DropReason.REPLAY
    assert inb.unprotect(packet_numbered(top - size + 1)).ok
    assert inb.unprotect(packet_numbered(top - size + 1)).drop is DropReason.REPLAY
    assert inb.unprotect(packet_numbered(top - 1)).ok


def test_06_window_zero_accepts_duplicates_and_old() -> None:
    out, inb = pair(replay_window=0)
    p1 = out.protect(v4()).packet
    many = [out.protect(v4()).packet for _ in range(200)]
    assert inb.unprotect(many[-1]).ok
    for _ in range(3):
        assert inb.unprotect(p1).ok
    assert inb.counters.dropped == 0


def test_07_esn_wrap_of_the_low_32_bits() -> None:
    start = 2**32 - 3
    out, inb = pair(esn=True, out_seq=start, in_seq=start)
    packets = [out.protect(v4(bytes([i]))).packet for i in range(6)]
    assert [wire_seq(p) for p in packets] == [2**32 - 2, 2**32 - 1, 0, 1, 2, 3]
    assert out.seq == 2**32 + 3
    # out of order across the wrap: a high-half-1 number first, then two from high half 0
    for i in (3, 0, 1, 2, 5, 4):
        assert inb.unprotect(packets[i]).ok, i
    assert inb.seq == 2**32 + 3
    assert inb.unprotect(packets[1]).drop is DropReason.REPLAY


def test_08_esn_wrong_high_half_fails_the_icv() -> None:
    """The high half enters the ICV: a receiver that infers another epoch cannot verify."""
    out = make("outbound", esn=True, seq=2**32 + 10)  # next packet: high 1, low 11
    inb = make("inbound", esn=True, seq=5)            # infers high 0 for low 11
    assert inb.unprotect(out.protect(v4()).packet).drop is DropReason.ICV_FAILURE


def test_09_without_esn_the_last_number_exhausts() -> None:
    out = make("outbound", seq=2**32 - 2)
    assert out.protect(v4()).ok  # uses 2^32 - 1
    assert out.protect(v4()).drop is DropReason.SEQ_EXHAUSTED
    exhausted = make("outbound", seq=2**32 - 1)
    assert exhausted.state is SaState.DEAD
    assert exhausted.protect(v4()).drop is DropReason.SEQ_EXHAUSTED
    assert [type(e) for e in exhausted.drain_events()] == [SequenceNumberExhausted]
    assert exhausted.counters.drops == {DropReason.SEQ_EXHAUSTED: 1}


def test_10_restored_sa_continues_numbering_and_refuses_old_numbers() -> None:
    out, inb = pair()
    packets = [out.protect(v4()).packet for _ in range(6)]  # 1..6
    for i in (0, 1, 4):  # receive 1, 2, 5; 3, 4, 6 still in flight
        assert inb.unprotect(packets[i]).ok
    out2 = SecurityAssociation.from_dict(out.to_dict())
    inb2 = SecurityAssociation.from_dict(inb.to_dict())
    assert out.to_dict()["seq"] == 6 and inb.to_dict()["seq"] == 5
    nxt = out2.protect(v4()).packet
    assert wire_seq(nxt) == 7
    for i in range(5):  # everything at or below the saved top counts as received
        assert inb2.unprotect(packets[i]).drop is DropReason.REPLAY, i
    assert inb2.unprotect(packets[5]).ok  # 6 > saved top
    assert inb2.unprotect(nxt).ok


def test_11_replay_check_before_icv_and_window_update_after_it() -> None:
    out, inb = pair()
    good = out.protect(v4()).packet
    bad = bytearray(good)
    bad[-1] ^= 1
    assert inb.unprotect(bytes(bad)).drop is DropReason.ICV_FAILURE
    assert inb.seq == 0  # a forged packet does not move the window
    assert inb.unprotect(good).ok
    assert inb.unprotect(bytes(bad)).drop is DropReason.REPLAY  # checked before the ICV


# ================================================================ padding and dummy packets

ALIGN = {"aes-cbc": 16, "3des-cbc": 8, "des-cbc": 8, "aes-ctr": 4, "null": 4,
         "aes-gcm-16": 4, "aes-ccm-8": 4, "chacha20-poly1305": 4, "null-aes-gmac": 4}
KEYS = {"aes-cbc": CBC_KEY, "3des-cbc": "1f" * 24, "des-cbc": "2f" * 8, "aes-ctr": "3f" * 20,
        "null": "", "aes-gcm-16": GCM_KEY, "aes-ccm-8": "4f" * 19,
        "chacha20-poly1305": "5f" * 36, "null-aes-gmac": "6f" * 20}


def _enc_kw(alg: str) -> dict:
    kw = {"encryption": {"algorithm": alg, "key": KEYS[alg]}}
    if alg in ("aes-cbc", "3des-cbc", "des-cbc", "aes-ctr", "null"):
        kw["integrity"] = {"algorithm": "hmac-sha256-128", "key": SHA256_KEY}
    return kw


@pytest.mark.parametrize("alg", sorted(ALIGN))
def test_20_sender_pads_to_the_algorithms_alignment(alg: str) -> None:
    out, inb = pair(**_enc_kw(alg))
    t = out.transform
    align = ALIGN[alg]
    assert t.block_size == align
    for n in range(40):
        pkt = v4(bytes(n))
        prot = out.protect(pkt).packet
        ct_len = len(prot) - 20 - 8 - t.iv_len - t.icv_len
        payload = len(pkt) - 20
        assert ct_len == -(-(payload + 2) // align) * align, (n, ct_len)  # minimal padding
        assert inb.unprotect(prot) == Result(pkt, None)


def test_21_padding_bytes_are_1_2_3_with_null_encryption() -> None:
    out, _ = pair(**_enc_kw("null"))
    for n in range(8):
        pkt = v4(bytes(n))
        prot = out.protect(pkt).packet
        trailer = prot[: len(prot) - 16]  # strip the ICV
        padlen, nh = trailer[-2], trailer[-1]
        assert nh == 17
        assert trailer[-2 - padlen:-2] == bytes(range(1, padlen + 1))
        assert (len(pkt) - 20 + 2 + padlen) % 4 == 0 and padlen < 4


def forge(out: SecurityAssociation, plaintext: bytes, seq: int = 1,
          outer: tuple[str, str] = V4) -> bytes:
    """Seal a hand-made ESP plaintext (payload, padding, pad length, next header) with the
    outbound SA's own transform: a packet with a valid ICV and whatever trailer we like."""
    esp_header = struct.pack("!II", out.spi, seq & 0xFFFFFFFF)
    iv, body = out.transform.seal(esp_header, seq, plaintext)
    esp = esp_header + iv + body
    return bytes(IP(src=outer[0], dst=outer[1], proto=ESP) / Raw(esp))


@pytest.mark.parametrize("alg", ["null", "aes-cbc", "aes-gcm-16", "chacha20-poly1305"])
@pytest.mark.parametrize(("trailer", "why"), [
    (bytes([1, 2, 4, 3, 17]), "pad bytes not 1, 2, 3"),
    (bytes([0, 0, 0, 3, 17]), "zero padding"),
    (bytes([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 255, 17]), "pad length beyond the payload"),
])
def test_22_bad_padding_with_a_valid_icv(alg: str, trailer: bytes, why: str) -> None:
    out, inb = pair(**_enc_kw(alg))
    payload = bytes(UDP(sport=1, dport=2) / Raw(b"abc"))
    pt = payload + trailer
    pt += bytes(-len(pt) % out.transform.block_size)  # keep the length aligned ...
    if len(pt) > len(payload + trailer):  # ... by shifting the trailer to the end
        pt = payload + bytes(len(pt) - len(payload) - len(trailer)) + trailer
    assert inb.unprotect(forge(out, pt)).drop is DropReason.BAD_PADDING, why


def test_23_good_forged_trailer_is_delivered() -> None:
    """Control for test 22: the same construction with correct padding is delivered."""
    out, inb = pair(**_enc_kw("null"))
    payload = bytes(UDP(sport=1, dport=2) / Raw(b"abc"))  # 11 bytes -> pad 3
    res = inb.unprotect(forge(out, payload + bytes([1, 2, 3, 3, 17])))
    assert res.ok
    assert res.packet[20:] == payload and res.packet[9] == 17


@pytest.mark.parametrize("mode", ["transport", "tunnel"])
def test_24_next_header_59_is_a_dummy_packet(mode: str) -> None:
    out, inb = pair(mode=mode, **_enc_kw("aes-gcm-16"))
    junk = b"\xaa" * 30
    res = inb.unprotect(forge(out, junk + bytes([0, 59])))  # pad length 0, next header 59
    assert res.drop is DropReason.DUMMY_PACKET
    assert inb.counters.drops == {DropReason.DUMMY_PACKET: 1}


# ================================================================ tunnel mode

OUTERS = {4: V4, 6: V6}


def tunnel_pair(outer: int, **kw):
    src, dst = OUTERS[outer]
    return pair(mode="tunnel", src=src, dst=dst, **kw)


def inner(family: int, tos: int = 0, flags: int = 0, fl: int = 0, payload=b"in") -> bytes:
    if family == 4:
        return v4(payload, src="10.1.0.1", dst="10.2.0.1", tos=tos, flags=flags)
    return v6(payload, src="fd00:1::1", dst="fd00:2::1", tc=tos, fl=fl)


def outer_tos(pkt: bytes) -> int:
    if pkt[0] >> 4 == 4:
        return pkt[1]
    return (pkt[0] & 15) << 4 | pkt[1] >> 4


def set_outer_ecn(pkt: bytes, ecn: int) -> bytes:
    b = bytearray(pkt)
    if b[0] >> 4 == 4:
        b[1] = (b[1] & 0xFC) | ecn
        fix_v4_checksum(b)  # ESP does not cover the outer header; a router would fix it
    else:
        b[1] = (b[1] & 0xCF) | (ecn << 4)
    return bytes(b)


@pytest.mark.parametrize("outer", [4, 6])
@pytest.mark.parametrize("fam", [4, 6])
def test_30_dscp_copied_or_fixed(outer: int, fam: int) -> None:
    out, inb = tunnel_pair(outer)
    pkt = inner(fam, tos=0xB8 | 2)  # EF, ECT(0)
    prot = out.protect(pkt).packet
    assert outer_tos(prot) == 0xB8 | 2
    assert inb.unprotect(prot) == Result(pkt, None)
    out, inb = tunnel_pair(outer, dscp=10)
    prot = out.protect(pkt).packet
    assert outer_tos(prot) == (10 << 2) | 2
    assert inb.unprotect(prot) == Result(pkt, None)  # the inner DSCP is untouched


NOT_ECT, ECT1, ECT0, CE = 0, 1, 2, 3
#: RFC 6040 §4.2, Figure 4, written out independently of ipsecsa.packet.ecn.
#: (arriving inner, arriving outer) -> forwarded inner, None = drop.
RFC6040 = {
    NOT_ECT: {NOT_ECT: NOT_ECT, ECT0: NOT_ECT, ECT1: NOT_ECT, CE: None},
    ECT0: {NOT_ECT: ECT0, ECT0: ECT0, ECT1: ECT1, CE: CE},
    ECT1: {NOT_ECT: ECT1, ECT0: ECT1, ECT1: ECT1, CE: CE},
    CE: {NOT_ECT: CE, ECT0: CE, ECT1: CE, CE: CE},
}


@pytest.mark.parametrize("outer", [4, 6])
@pytest.mark.parametrize("fam", [4, 6])
@pytest.mark.parametrize("inner_ecn", [NOT_ECT, ECT1, ECT0, CE])
@pytest.mark.parametrize("arriving_outer", [NOT_ECT, ECT1, ECT0, CE])
def test_31_ecn_rfc6040_every_cell(outer: int, fam: int, inner_ecn: int,
                                   arriving_outer: int) -> None:
    out, inb = tunnel_pair(outer)
    pkt = inner(fam, tos=0x28 | inner_ecn)
    prot = out.protect(pkt).packet
    assert outer_tos(prot) & 3 == inner_ecn  # §4.1 normal mode: copy on encapsulation
    res = inb.unprotect(set_outer_ecn(prot, arriving_outer))
    want = RFC6040[inner_ecn][arriving_outer]
    if want is None:
        assert res.drop is DropReason.ECN_DROP
        return
    assert res.ok
    got = res.packet
    assert outer_tos(got) == 0x28 | want
    if fam == 4:
        assert v4_checksum_ok(got)  # the inner header checksum follows the ECN change
        assert got[:1] + got[2:10] + got[12:] == pkt[:1] + pkt[2:10] + pkt[12:]
    else:
        assert got[:1] + got[2:] == pkt[:1] + pkt[2:]


@pytest.mark.parametrize(("df_mode", "inner_df", "want"), [
    ("copy", True, True), ("copy", False, False),
    ("set", True, True), ("set", False, True),
    ("clear", True, False), ("clear", False, False),
])
def test_32_df_copy_set_clear(df_mode: str, inner_df: bool, want: bool) -> None:
    out, inb = tunnel_pair(4, df=df_mode)
    pkt = inner(4, flags=2 if inner_df else 0)
    prot = out.protect(pkt).packet
    assert bool(prot[6] & 0x40) is want
    assert prot[6] & 0xBF == 0 and prot[7] == 0  # never a fragment, reserved bit clear
    assert v4_checksum_ok(prot)
    assert inb.unprotect(prot) == Result(pkt, None)


def test_33_df_copy_for_an_ipv6_inner_sets_df() -> None:
    out, _ = tunnel_pair(4)
    assert out.protect(inner(6)).packet[6] & 0x40


@pytest.mark.parametrize("outer", [4, 6])
def test_34_ttl(outer: int) -> None:
    hop = 8 if outer == 4 else 7
    out, inb = tunnel_pair(outer)
    pkt = inner(4)
    assert out.protect(pkt).packet[hop] == 64  # default
    out, inb = tunnel_pair(outer, ttl=17)
    prot = out.protect(pkt).packet
    assert prot[hop] == 17
    if outer == 4:
        assert v4_checksum_ok(prot)
    assert inb.unprotect(prot).packet[8] == 61  # the inner TTL is not IPsec's business


def test_35_ipv6_flow_label_copied() -> None:
    out, inb = tunnel_pair(6)
    pkt = inner(6, fl=0xABCDE)
    prot = out.protect(pkt).packet
    assert struct.unpack_from("!I", prot)[0] & 0xFFFFF == 0xABCDE
    assert inb.unprotect(prot) == Result(pkt, None)
    assert struct.unpack_from("!I", out.protect(inner(4)).packet)[0] & 0xFFFFF == 0


@pytest.mark.parametrize(("outer", "fam"), [(4, 4), (6, 6), (4, 6)])
@pytest.mark.parametrize("size", [10, 200, 511, 512, 513, 1400])
def test_36_tfc_padding(outer: int, fam: int, size: int) -> None:
    out, inb = tunnel_pair(outer, tfc_padding=512)
    pkt = inner(fam, payload=bytes(size))
    prot = out.protect(pkt).packet
    t = out.transform
    hdr = 20 if outer == 4 else 40
    esp_payload = len(prot) - hdr - 8 - t.iv_len - t.icv_len
    assert esp_payload >= 512
    assert esp_payload - 2 - 3 <= max(512, len(pkt))  # no more than needed plus alignment
    assert inb.unprotect(prot) == Result(pkt, None)  # the receiver strips the TFC padding


@pytest.mark.parametrize(("outer", "fam"), [(6, 4), (4, 6), (4, 4), (6, 6)])
def test_37_families_in_tunnel(outer: int, fam: int) -> None:
    out, inb = tunnel_pair(outer, **_enc_kw("null"))
    pkt = inner(fam, payload=b"q" * 30)
    prot = out.protect(pkt).packet
    assert prot[0] >> 4 == outer
    assert (prot[9] if outer == 4 else prot[6]) == ESP
    assert prot[-16 - 1] == (4 if fam == 4 else 41)  # next header in the (null) trailer
    assert inb.unprotect(prot) == Result(pkt, None)


def test_38_inner_family_mismatch_in_trailer_is_bad_inner() -> None:
    out, inb = tunnel_pair(4, **_enc_kw("null"))
    pkt = inner(4, payload=b"abcdefgh")
    payload_trailer = pkt + bytes(-(len(pkt) + 2) % 4)
    pad = len(payload_trailer) - len(pkt)
    body = pkt + bytes(range(1, pad + 1)) + bytes([pad, 41])  # says IPv6, carries IPv4
    assert inb.unprotect(forge(out, body)).drop is DropReason.BAD_INNER


# ================================================================ UDP encapsulation

ENCAP = {"type": "udp", "sport": 4501, "dport": 4500}


@pytest.mark.parametrize("mode", ["transport", "tunnel"])
def test_40_ipv4_udp_header(mode: str) -> None:
    out, inb = pair(mode=mode, encapsulation=ENCAP)
    pkt = v4(b"x" * 50)
    prot = out.protect(pkt).packet
    assert prot[9] == 17
    sport, dport, length, csum = struct.unpack_from("!HHHH", prot, 20)
    assert (sport, dport) == (4501, 4500)
    assert length == len(prot) - 20
    assert csum == 0  # RFC 3948 §2.1
    assert v4_checksum_ok(prot)
    assert IP(prot)[UDP].len == length  # scapy parses it the same way
    assert inb.unprotect(prot) == Result(pkt, None)


@pytest.mark.parametrize("mode", ["transport", "tunnel"])
def test_41_ipv6_udp_checksum_valid(mode: str) -> None:
    out, inb = pair(mode=mode, src=V6[0], dst=V6[1], encapsulation=ENCAP)
    pkt = v6(b"y" * 77)
    prot = out.protect(pkt).packet
    parsed = IPv6(prot)
    udp = parsed[UDP]
    assert (udp.sport, udp.dport) == (4501, 4500)
    sent = udp.chksum
    assert sent != 0
    udp.chksum = None
    assert IPv6(bytes(parsed))[UDP].chksum == sent  # scapy recomputes the same checksum
    assert inb.unprotect(prot) == Result(pkt, None)


def _udp_to_sa(payload: bytes) -> bytes:
    return bytes(IP(src=V4[0], dst=V4[1]) / UDP(sport=4501, dport=4500) / Raw(payload))


def test_42_natt_keepalive() -> None:
    _, inb = pair(encapsulation=ENCAP)
    assert inb.unprotect(_udp_to_sa(b"\xff")).drop is DropReason.NATT_KEEPALIVE
    assert inb.counters.drops == {DropReason.NATT_KEEPALIVE: 1}


def test_43_non_esp_marker() -> None:
    _, inb = pair(encapsulation=ENCAP)
    ike = bytes(4) + bytes(range(28))  # marker + an IKE header's worth of bytes
    assert inb.unprotect(_udp_to_sa(ike)).drop is DropReason.NON_ESP_MARKER


def test_44_plain_esp_to_an_encapsulating_sa_is_wrong_protocol() -> None:
    out, _ = pair()
    _, inb = pair(encapsulation=ENCAP)
    assert inb.unprotect(out.protect(v4()).packet).drop is DropReason.WRONG_PROTOCOL


def _nat_rewrite(prot: bytes, new_src: str, new_dst: str) -> bytes:
    b = bytearray(prot)
    b[12:16] = ipaddress.IPv4Address(new_src).packed
    b[16:20] = ipaddress.IPv4Address(new_dst).packed
    fix_v4_checksum(b)
    return bytes(b)


@pytest.mark.parametrize("l4", ["tcp", "udp", "udp-nosum", "icmp"])
def test_45_transport_mode_through_a_nat(l4: str) -> None:
    """RFC 3948 §3.1.2: the NAT changed the addresses the inner checksum covered; after
    decapsulation the TCP/UDP checksum must be valid for the addresses the packet now has."""
    out, inb = pair(src="10.0.0.5", dst=V4[1], encapsulation=ENCAP)
    layer = {"tcp": TCP(sport=40000, dport=443, flags="PA"),
             "udp": UDP(sport=40000, dport=53),
             "udp-nosum": UDP(sport=40000, dport=53, chksum=0),
             "icmp": ICMP()}[l4]
    pkt = v4(b"hello through the NAT", src="10.0.0.5", dst=V4[1], l4=layer)
    prot = out.protect(pkt).packet
    natted = _nat_rewrite(prot, "203.0.113.9", V4[1])
    res = inb.unprotect(natted)
    assert res.ok
    got = IP(res.packet)
    assert got.src == "203.0.113.9"
    assert v4_checksum_ok(res.packet)
    upper = got.payload
    sent = upper.chksum
    if l4 == "udp-nosum":
        assert sent == 0  # an IPv4 UDP datagram without checksum stays without
        return
    upper.chksum = None
    assert IP(bytes(got))[type(upper)].chksum == sent, "inner checksum not valid after NAT"
    assert bytes(got[type(upper)].payload) == b"hello through the NAT"


@pytest.mark.parametrize("dest_opts", [False, True])
@pytest.mark.parametrize("l4", ["tcp", "udp"])
def test_46_ipv6_transport_mode_through_an_address_rewrite(l4: str, dest_opts: bool) -> None:
    """The same for IPv6 (an NPTv6-style rewrite), also with destination options after ESP
    (RFC 4303 §3.1.1): the checksum behind them is the one to fix."""
    out, inb = pair(src=V6[0], dst=V6[1], encapsulation=ENCAP)
    layer = TCP(sport=40000, dport=443) if l4 == "tcp" else UDP(sport=40000, dport=53)
    head = IPv6(src=V6[0], dst=V6[1])
    if dest_opts:
        head = head / IPv6ExtHdrDestOpt()
    pkt = bytes(head / layer / Raw(b"v6 payload"))
    prot = bytearray(out.protect(pkt).packet)
    prot[8:24] = ipaddress.IPv6Address("2001:db8:aaaa::5").packed
    # The rewriting box also fixes the outer UDP checksum, which covers the addresses over IPv6
    # (RFC 8200 §8.1); the receiver verifies it.
    prot[46:48] = udp_checksum(bytes(prot[8:24]), bytes(prot[24:40]), bytes(prot[40:])).to_bytes(
        2, "big")
    res = inb.unprotect(bytes(prot))
    assert res.ok
    got = IPv6(res.packet)
    upper = got[TCP] if l4 == "tcp" else got[UDP]
    sent = upper.chksum
    upper.chksum = None
    assert IPv6(bytes(got))[type(upper)].chksum == sent


# ================================================================ fragmented ESP


@pytest.mark.parametrize("mode", ["transport", "tunnel"])
def test_50_fragmented_ipv4_esp(mode: str) -> None:
    out, inb = pair(mode=mode)
    pkt = v4(bytes(range(256)) * 4)
    prot = out.protect(pkt).packet
    frags = [bytes(f) for f in fragment(IP(prot), fragsize=256)]
    assert len(frags) >= 4
    order = [2, 0, 3] + list(range(4, len(frags))) + [1]
    results = [inb.unprotect(frags[i]) for i in order]
    assert results[:-1] == [HELD] * (len(frags) - 1)
    assert results[-1] == Result(pkt, None)
    assert inb.counters.packets == 1 and inb.counters.dropped == 0


@pytest.mark.parametrize("mode", ["transport", "tunnel"])
def test_51_fragmented_ipv6_esp(mode: str) -> None:
    out, inb = pair(mode=mode, src=V6[0], dst=V6[1])
    pkt = v6(bytes(range(256)) * 4)
    prot = out.protect(pkt).packet
    assert prot[6] == ESP
    hdr = IPv6(prot[:40])  # the same fixed header, now with a Fragment header after it
    with_frag = (IPv6(src=hdr.src, dst=hdr.dst, tc=hdr.tc, fl=hdr.fl, hlim=hdr.hlim)
                 / IPv6ExtHdrFragment(id=0x1234, nh=ESP) / Raw(prot[40:]))
    frags = [bytes(f) for f in fragment6(with_frag, 300)]
    assert len(frags) >= 4
    order = list(reversed(range(len(frags))))
    results = [inb.unprotect(frags[i]) for i in order]
    assert results[:-1] == [HELD] * (len(frags) - 1)
    assert results[-1] == Result(pkt, None)


# ================================================================ selectors (RFC 4301 §5.2)

SEL = [{"src": "10.1.0.0/16", "dst": "10.2.0.0/16"}]


def test_60_inbound_inner_outside_selectors_tunnel() -> None:
    out, _ = tunnel_pair(4)
    _, inb = tunnel_pair(4, selectors=SEL)
    good = v4(src="10.1.2.3", dst="10.2.3.4")
    bad = v4(src="10.9.2.3", dst="10.2.3.4")
    assert inb.unprotect(out.protect(good).packet) == Result(good, None)
    assert inb.unprotect(out.protect(bad).packet).drop is DropReason.SELECTOR_MISMATCH
    assert inb.counters.drops == {DropReason.SELECTOR_MISMATCH: 1}


def test_61_outbound_outside_selectors() -> None:
    out, _ = tunnel_pair(4, selectors=SEL)
    assert out.protect(v4(src="10.1.2.3", dst="10.2.3.4")).ok
    assert out.protect(v4(src="10.1.2.3", dst="10.3.3.4")).drop is DropReason.SELECTOR_MISMATCH
    assert out.protect(inner(6)).drop is DropReason.SELECTOR_MISMATCH  # family is part of it
    assert out.seq == 1  # a refused packet uses no sequence number


@pytest.mark.parametrize(("direction", "mode"), [("inbound", "transport"), ("inbound", "tunnel"),
                                                 ("outbound", "transport"),
                                                 ("outbound", "tunnel")])
def test_62_protocol_and_port_wildcards(direction: str, mode: str) -> None:
    sel = [{"protocol": 17, "dport": 53}, {"protocol": 6}]  # any address; UDP/53, or any TCP
    plain_out, _ = pair(mode=mode)
    sel_out, sel_in = pair(mode=mode, selectors=sel)
    cases = [
        (v4(l4=UDP(sport=9, dport=53)), True),
        (v4(l4=UDP(sport=9, dport=54)), False),
        (v4(l4=TCP(sport=9, dport=80)), True),
        (v4(l4=ICMP()), False),
    ]
    for pkt, ok in cases:
        if direction == "outbound":
            res = sel_out.protect(pkt)
            assert res.ok is ok and (ok or res.drop is DropReason.SELECTOR_MISMATCH)
        else:
            res = sel_in.unprotect(plain_out.protect(pkt).packet)
            assert res == (Result(pkt, None) if ok else Result(None,
                                                                 DropReason.SELECTOR_MISMATCH))


def test_63_empty_selector_matches_everything() -> None:
    out, inb = tunnel_pair(4, selectors=[{}])
    for pkt in (inner(4), inner(6), v4(l4=ICMP())):
        assert inb.unprotect(out.protect(pkt).packet) == Result(pkt, None)


def test_64_explicit_zero_fields_are_wildcards() -> None:
    out, inb = pair(mode="tunnel", selectors=[{"protocol": 0, "sport": 0, "dport": 0}])
    for pkt in (inner(4), v4(l4=TCP(sport=1, dport=2)), v4(l4=ICMP())):
        assert inb.unprotect(out.protect(pkt).packet) == Result(pkt, None)


@pytest.mark.parametrize("direction", ["outbound", "inbound"])
def test_65_ipv6_selector_sees_through_destination_options(direction: str) -> None:
    """Transport mode puts final-destination options after ESP (RFC 4303 §3.1.1); the
    selector's protocol and ports are the upper layer's behind them, in both directions."""
    sel = [{"protocol": 17, "dport": 53}]
    plain_out, _ = pair(src=V6[0], dst=V6[1])
    sel_out, sel_in = pair(src=V6[0], dst=V6[1], selectors=sel)
    for dport, ok in ((53, True), (54, False)):
        pkt = bytes(IPv6(src=V6[0], dst=V6[1]) / IPv6ExtHdrDestOpt()
                    / UDP(sport=5, dport=dport) / Raw(b"q"))
        if direction == "outbound":
            res = sel_out.protect(pkt)
            assert res.ok is ok
        else:
            res = sel_in.unprotect(plain_out.protect(pkt).packet)
            assert res == (Result(pkt, None) if ok
                           else Result(None, DropReason.SELECTOR_MISMATCH))


# ================================================================ malformed inputs


def test_70_wrong_spi() -> None:
    out, _ = pair()
    inb = make("inbound", spi=0xC0000102)
    assert inb.unprotect(out.protect(v4()).packet).drop is DropReason.BAD_SPI


def test_71_ah_packet_to_an_esp_sa() -> None:
    _, inb = pair()
    ah = bytes([17, 4, 0, 0]) + struct.pack("!II", 0xC0000101, 1) + bytes(12) + bytes(20)
    pkt = bytes(IP(src=V4[0], dst=V4[1], proto=51) / Raw(ah))
    assert inb.unprotect(pkt).drop is DropReason.WRONG_PROTOCOL


def test_72_ipv6_packet_to_an_ipv4_sa_and_back() -> None:
    out6, _ = pair(src=V6[0], dst=V6[1])
    _, inb4 = pair()
    assert inb4.unprotect(out6.protect(v6()).packet).drop is DropReason.WRONG_PROTOCOL
    out4, _ = pair()
    _, inb6 = pair(src=V6[0], dst=V6[1])
    assert inb6.unprotect(out4.protect(v4()).packet).drop is DropReason.WRONG_PROTOCOL
    assert out4.protect(v6()).drop is DropReason.WRONG_PROTOCOL  # transport SA, other family


@pytest.mark.parametrize("n", [0, 1, 10, 19])
def test_73_short_is_truncated(n: int) -> None:
    out, inb = pair()
    assert inb.unprotect(out.protect(v4()).packet[:n]).drop is DropReason.TRUNCATED
    assert inb.unprotect(bytes([0x45]) + bytes(max(n - 1, 0))).drop is DropReason.TRUNCATED


def test_74_esp_shorter_than_header_iv_icv_is_truncated() -> None:
    _, inb = pair()
    for n in (0, 4, 8, 16, 8 + 8 + 4 + 15):  # SPI/seq, IV 8, min payload 4, ICV 16
        pkt = bytes(IP(src=V4[0], dst=V4[1], proto=ESP) / Raw(struct.pack("!I", 0xC0000101)
                                                             + bytes(max(n - 4, 0))))
        assert inb.unprotect(pkt).drop is DropReason.TRUNCATED, n


@pytest.mark.parametrize("cut", [1, 3, 15])
def test_75_cbc_ciphertext_not_a_block_multiple(cut: int) -> None:
    out, inb = pair(**_enc_kw("aes-cbc"))
    prot = bytearray(out.protect(v4(b"z" * 40)).packet)
    start = 20 + 8 + 16  # ciphertext after the IV
    del prot[start:start + cut]
    struct.pack_into("!H", prot, 2, len(prot))
    fix_v4_checksum(prot)
    assert inb.unprotect(bytes(prot)).drop is DropReason.BAD_LENGTH


def test_76_ip_length_beyond_buffer_is_malformed() -> None:
    out, inb = pair()
    prot = bytearray(out.protect(v4()).packet)
    struct.pack_into("!H", prot, 2, len(prot) + 1)
    fix_v4_checksum(prot)
    assert inb.unprotect(bytes(prot)).drop is DropReason.MALFORMED


def test_77_too_big_is_counted_once() -> None:
    """A packet that no longer fits a 16-bit IP length after ESP is dropped as TOO_BIG and
    counted once: under drops, not also as a carried packet."""
    for kw, pkt in (({}, v4(bytes(65480))),
                    ({"mode": "tunnel"}, v4(bytes(65480))),
                    ({"mode": "tunnel", "src": V6[0], "dst": V6[1]}, v4(bytes(65480)))):
        out = make("outbound", **kw)
        res = out.protect(pkt)
        assert res.drop is DropReason.TOO_BIG, kw
        assert out.counters.packets == 0 and out.counters.bytes == 0, kw
        assert out.counters.drops == {DropReason.TOO_BIG: 1}, kw


@pytest.mark.parametrize(("encap", "inner_len", "ok"), [
    (False, 65494, True),    # ESP payload 65528: fits the IPv6 payload length exactly enough
    (False, 65502, False),   # 65536: one too many
    (True, 65486, True),     # UDP + ESP 65528
    (True, 65494, False),    # UDP + ESP 65536
])
def test_78_ipv6_tunnel_size_limit(encap: bool, inner_len: int, ok: bool) -> None:
    kw = {"encapsulation": ENCAP} if encap else {}
    out, inb = tunnel_pair(6, **kw)
    pkt = v4(bytes(inner_len - 28), src="10.0.0.1", dst="10.0.0.2")
    res = out.protect(pkt)
    if ok:
        assert res.ok and len(res.packet) - 40 <= 0xFFFF
        assert inb.unprotect(res.packet) == Result(pkt, None)
    else:
        assert res.drop is DropReason.TOO_BIG
        assert out.counters.packets == 0


# ================================================================ keys stay secret


def _key_forms(hexkey: str) -> list[str]:
    raw = bytes.fromhex(hexkey)
    return [hexkey.lower(), hexkey.upper(), repr(raw), raw.hex(":"), str(list(raw))[1:20]]


@pytest.mark.parametrize("kw", [
    {"encryption": {"algorithm": "aes-gcm-16", "key": GCM_KEY}},
    {"encryption": {"algorithm": "aes-cbc", "key": CBC_KEY},
     "integrity": {"algorithm": "hmac-sha256-128", "key": SHA256_KEY}},
])
def test_80_keys_never_shown(kw: dict, caplog: pytest.LogCaptureFixture) -> None:
    keys = [kw["encryption"]["key"]] + ([kw["integrity"]["key"]] if "integrity" in kw else [])
    caplog.set_level(logging.DEBUG)
    life = {"soft": {"packets": 2}, "hard": {"packets": 3}}
    out, inb = pair(mode="tunnel", lifetime=life, **kw)
    for _ in range(4):
        res = out.protect(inner(4))
        if res.ok:
            inb.unprotect(res.packet)
    inb.unprotect(b"\x45" + bytes(40))
    events = out.drain_events() + inb.drain_events()
    assert events  # soft and hard lifetime events were raised (and logged)
    assert "SoftLifetimeExpired" in caplog.text
    shown = [repr(out), str(out), out.describe(), repr(inb), str(inb), inb.describe(),
             repr(out.config), str(out.config), repr(out.transform), repr(events),
             caplog.text, " ".join(r.getMessage() for r in caplog.records)]
    for key in keys:
        for form in _key_forms(key):
            for text in shown:
                assert form not in text
    exported = out.to_dict()
    assert exported["encryption"]["key"] == kw["encryption"]["key"]
    if "integrity" in kw:
        assert exported["integrity"]["key"] == kw["integrity"]["key"]


# ================================================================ outer header checks


@pytest.mark.parametrize("protocol", ["esp", "ah"])
def test_80_bad_outer_ipv4_checksum_is_dropped(protocol: str) -> None:
    """RFC 1122 §3.2.1.2: a datagram whose header checksum fails is discarded, before any
    IPsec processing (so it can neither consume nor probe the replay window)."""
    if protocol == "esp":
        out, inb = pair()
    else:
        cfg = {"spi": 0x2001, "protocol": "ah", "src": V4[0], "dst": V4[1],
               "integrity": {"algorithm": "hmac-sha256-128", "key": "11" * 32}}
        out = SecurityAssociation.from_dict(dict(cfg, direction="outbound"))
        inb = SecurityAssociation.from_dict(dict(cfg, direction="inbound"))
    pkt = v4(b"checksum")
    wire = bytearray(out.protect(pkt).packet)
    wire[8] -= 1  # a TTL decrement without the checksum update a router owes
    assert inb.unprotect(bytes(wire)).drop is DropReason.BAD_CHECKSUM
    fix_v4_checksum(wire)
    # Transport mode: the delivered header is the one that arrived, TTL decrement included.
    expected = bytearray(pkt)
    expected[8] -= 1
    fix_v4_checksum(expected)
    assert inb.unprotect(bytes(wire)).packet == bytes(expected)


def test_81_ipv6_esp_in_udp_checksum_is_verified() -> None:
    """RFC 8200 §8.1: over IPv6 a zero or wrong UDP checksum is discarded (RFC 3948's zero
    checksum is an IPv4 allowance)."""
    out, inb = pair(src=V6[0], dst=V6[1], encapsulation=ENCAP)
    wire = out.protect(bytes(IPv6(src=V6[0], dst=V6[1]) / UDP(sport=1, dport=2) / b"x")).packet
    zero = bytearray(wire)
    zero[46:48] = b"\0\0"
    assert inb.unprotect(bytes(zero)).drop is DropReason.BAD_UDP
    wrong = bytearray(wire)
    wrong[47] ^= 1
    assert inb.unprotect(bytes(wrong)).drop is DropReason.BAD_UDP
    assert inb.unprotect(wire).ok

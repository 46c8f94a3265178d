"""ipsecsa.ndis.OffloadTransport + Miniport against pure-software SecurityAssociation pairs.

Offloaded SAs must put exactly the bytes of their software twins on the wire (same keys, same
deterministic CBC IVs), receive what the software sends, keep replay and ICV verdicts in the SA,
refuse what offload v1 cannot carry with a clear error, and stop using the NIC after remove().
"""

from __future__ import annotations

import random
import struct
import warnings

import pytest
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from ipsecsa import DropReason, SecurityAssociation
from ipsecsa.errors import IpsecsaError
from ipsecsa.ndis import (
    Miniport,
    NdisStatus,
    NotOffloadableError,
    OffloadError,
    OffloadTransport,
    Oid,
    UnknownHandleError,
    build_add_request,
)
from ipsecsa.ndis.constants import OffloadConf, OffloadIntegrity, OffloadSaFlags, UdpEncapType
from ipsecsa.ndis.structs import (
    DeleteSa,
    NblInfoReceive,
    decode_add_sa,
    decode_add_udpesp_sa,
    encode_delete_sa,
)
from ipsecsa.packet.ipv4 import build_ipv4_header
from ipsecsa.sad import Bundle, filters_for
from ipsecsa.selectors import Selector

warnings.filterwarnings("ignore", message=".*TripleDES.*")

LOCAL, PEER = "192.0.2.1", "198.51.100.7"
KEYS = {"des-cbc": bytes(range(1, 9)), "3des-cbc": bytes(range(10, 34)), "null": b"",
        "aes-cbc": bytes(16), "hmac-md5-96": bytes(range(40, 56)),
        "hmac-sha1-96": bytes(range(60, 80)), "hmac-sha256-128": bytes(32)}


def unsafe_iv_source(seq: int) -> bytes:
    return (seq * 0x0301030103).to_bytes(8, "big")


def sa_dict(direction: str, *, side: str, spi: int, protocol: str = "esp",
            enc: str = "3des-cbc", integ: str = "hmac-sha1-96", mode: str = "transport",
            encap: bool = False, **extra: object) -> dict:
    """An SA of ``side`` ("a" = LOCAL, "b" = PEER) in ``direction``."""
    me, other = (LOCAL, PEER) if side == "a" else (PEER, LOCAL)
    src, dst = (me, other) if direction == "outbound" else (other, me)
    obj: dict = {"spi": spi, "protocol": protocol, "mode": mode, "direction": direction,
                 "src": src, "dst": dst, **extra}
    if protocol == "esp":
        obj["encryption"] = {"algorithm": enc, "key": KEYS[enc].hex()}
    if integ != "none":
        obj["integrity"] = {"algorithm": integ, "key": KEYS[integ].hex()}
    if encap:
        obj["encapsulation"] = {"type": "udp", "sport": 4500, "dport": 4500}
    return obj


def make(obj: dict) -> SecurityAssociation:
    cbc = obj.get("encryption", {}).get("algorithm") in ("des-cbc", "3des-cbc", "aes-cbc")
    return SecurityAssociation.from_dict(obj, unsafe_iv_source=unsafe_iv_source if cbc else None)


def pair(side: str, spi_out: int, spi_in: int, **kw: object
         ) -> tuple[SecurityAssociation, SecurityAssociation]:
    return (make(sa_dict("outbound", side=side, spi=spi_out, **kw)),
            make(sa_dict("inbound", side=side, spi=spi_in, **kw)))


def packet(rng: random.Random, src: str = LOCAL, dst: str = PEER) -> bytes:
    return bytes(IP(src=src, dst=dst, id=rng.randrange(65536), tos=rng.choice((0, 0x10, 0x2)))
                 / UDP(sport=rng.randrange(1, 65536), dport=53)
                 / Raw(rng.randbytes(rng.randrange(0, 400))))


CASES = [
    ("esp", "3des-cbc", "hmac-sha1-96", "transport", False),
    ("esp", "des-cbc", "hmac-md5-96", "transport", False),
    ("esp", "null", "hmac-sha1-96", "transport", False),
    ("esp", "3des-cbc", "hmac-md5-96", "tunnel", False),
    ("esp", "des-cbc", "hmac-sha1-96", "tunnel", False),
    ("esp", "3des-cbc", "hmac-sha1-96", "transport", True),
    ("esp", "3des-cbc", "hmac-sha1-96", "tunnel", True),
    ("ah", "null", "hmac-sha1-96", "transport", False),
    ("ah", "null", "hmac-md5-96", "tunnel", False),
]


@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_offloaded_pair_matches_software(case: tuple) -> None:
    protocol, enc, integ, mode, encap = case
    kw = {"protocol": protocol, "enc": enc, "integ": integ, "mode": mode, "encap": encap}
    mp = Miniport(unsafe_iv_source=unsafe_iv_source)
    transport = OffloadTransport(mp)
    a_out, a_in = pair("a", 0x1111, 0x2222, **kw)       # offloaded, our side
    sw_out, sw_in = pair("a", 0x1111, 0x2222, **kw)     # software twin of our side
    b_out, b_in = pair("b", 0x2222, 0x1111, **kw)       # the peer, in software
    h_out, h_in = transport.offload(a_out, a_in)
    assert mp.sa_handles() == (h_out, h_in)
    rng = random.Random(hash(case) & 0xFFFF)
    for _ in range(120):
        p = packet(rng)
        wire = a_out.protect(p).packet
        assert wire is not None and wire == sw_out.protect(p).packet
        assert b_in.unprotect(wire).packet == p
        q = packet(rng, PEER, LOCAL)
        back = b_out.protect(q).packet
        got = a_in.unprotect(back)
        assert got.drop is None and got.packet == sw_in.unprotect(back).packet == q
    assert mp.stats.sent == 120 and mp.stats.received == 120
    assert mp.stats.passed_up == 0 and mp.stats.send_errors == 0
    # replay is still detected by the SA (the NIC does no replay checks)
    replay = b_out.protect(packet(rng, PEER, LOCAL)).packet
    assert a_in.unprotect(replay).drop is None
    assert a_in.unprotect(replay).drop is DropReason.REPLAY
    # a tampered packet: the NIC reports the failure, the SA drops it as ICV_FAILURE
    bad = bytearray(b_out.protect(packet(rng, PEER, LOCAL)).packet)
    bad[-3] ^= 0x10
    assert a_in.unprotect(bytes(bad)).drop is DropReason.ICV_FAILURE
    assert mp.stats.receive_failures == 1
    # remove(): the NIC forgets the SAs, traffic carries on in software, identically
    transport.remove([h_out, h_in])
    assert mp.sa_handles() == () and transport.handles == ()
    assert mp.parser_entries() == ()
    sent, received = mp.stats.sent, mp.stats.received
    assert received == 121  # the replayed copy never reached the NIC
    for _ in range(5):
        p = packet(rng)
        assert a_out.protect(p).packet == sw_out.protect(p).packet
        q = packet(rng, PEER, LOCAL)
        assert a_in.unprotect(b_out.protect(q).packet).packet == q
    assert mp.stats.sent == sent and mp.stats.received == received


def test_add_buffers_as_a_windows_transport_builds_them() -> None:
    sa = make(sa_dict("inbound", side="a", spi=0xC0000001, mode="tunnel", selectors=[
        {"src": "10.2.0.0/16", "dst": "10.1.1.0/24", "protocol": 6, "sport": 0, "dport": 443}]))
    oid, buf = build_add_request(sa, inbound=True)
    assert oid == Oid.TCP_TASK_IPSEC_ADD_SA
    req = decode_add_sa(buf)
    assert (str(req.SrcAddr), str(req.SrcMask)) == ("10.2.0.0", "255.255.0.0")
    assert (str(req.DestAddr), str(req.DestMask)) == ("10.1.1.0", "255.255.255.0")
    assert (req.Protocol, req.SrcPort, req.DestPort) == (6, 0, 443)
    assert (str(req.SrcTunnelAddr), str(req.DestTunnelAddr)) == (PEER, LOCAL)
    assert req.Flags == OffloadSaFlags.INBOUND_SA and req.NumSAs == 1
    e = req.SecAssoc[0]
    assert (e.Operation, e.SPI) == (2, 0xC0000001)
    assert (e.ConfAlgo.algoIdentifier, e.ConfAlgo.algoKeylen) == (OffloadConf.THREE_DES, 24)
    assert (e.IntegrityAlgo.algoIdentifier, e.IntegrityAlgo.algoKeylen) == (
        OffloadIntegrity.SHA, 20)
    assert req.KeyMat == KEYS["3des-cbc"] + KEYS["hmac-sha1-96"] and req.KeyLen == 44
    _, swapped = build_add_request(sa, inbound=True, keymat_order="integrity-first")
    assert decode_add_sa(swapped).KeyMat == KEYS["hmac-sha1-96"] + KEYS["3des-cbc"]
    # filter= is given as the outbound SA sees it and swapped for the inbound request
    f = Selector(src="10.1.1.0/24", dst="10.2.0.0/16", protocol=17, sport=500, dport=0)
    req = decode_add_sa(build_add_request(sa, inbound=True, filter=f)[1])
    assert (str(req.SrcAddr), str(req.DestAddr), req.SrcPort, req.DestPort) == (
        "10.2.0.0", "10.1.1.0", 0, 500)
    # transport mode, no selectors: host to host (as the SAD's filters_for), no tunnel addresses
    ah = make(sa_dict("outbound", side="a", spi=0x500, protocol="ah", integ="hmac-md5-96"))
    req = decode_add_sa(build_add_request(ah, inbound=False)[1])
    assert (str(req.SrcAddr), str(req.SrcMask), str(req.DestAddr), str(req.DestMask)) == (
        LOCAL, "255.255.255.255", PEER, "255.255.255.255")
    assert (str(req.DestTunnelAddr), req.Protocol) == ("0.0.0.0", 0)
    assert (req.SecAssoc[0].Operation, req.SecAssoc[0].ConfAlgo.algoIdentifier) == (1, 0)
    udp = make(sa_dict("inbound", side="a", spi=0x600, encap=True))
    oid, buf = build_add_request(udp, inbound=True, entry_handle=77)
    assert oid == Oid.TCP_TASK_IPSEC_ADD_UDPESP_SA
    u = decode_add_udpesp_sa(buf)
    assert (u.EncapTypeEntry.UdpEncapType, u.EncapTypeEntry.DstEncapPort) == (
        UdpEncapType.OTHER, 4500)
    assert u.EncapTypeEntryOffldHandle == 77


@pytest.mark.parametrize(("over", "field"), [
    ({"enc": "aes-cbc"}, "outbound.encryption.algorithm"),
    ({"integ": "hmac-sha256-128"}, "outbound.integrity.algorithm"),
    ({"integ": "none"}, "outbound.integrity.algorithm"),
    ({"esn": True}, "outbound.esn"),
    ({"selectors": [{"dst": "10.0.0.0/8"}, {"dst": "10.1.0.0/16"}]}, "outbound.selectors"),
], ids=["aes", "sha256", "no-integrity", "esn", "two-selectors"])
def test_not_offloadable_refused_before_any_request(over: dict, field: str) -> None:
    mp = Miniport()
    transport = OffloadTransport(mp)
    kw = {k: v for k, v in over.items() if k in ("enc", "integ")}
    extra = {k: v for k, v in over.items() if k not in ("enc", "integ")}
    a_out = make(sa_dict("outbound", side="a", spi=0x700, **kw, **extra))
    a_in = make(sa_dict("inbound", side="a", spi=0x701, **kw, **extra))
    with pytest.raises(NotOffloadableError) as err:
        transport.offload(a_out, a_in)
    assert err.value.field == field
    assert mp.sa_handles() == () and a_out._nic is None and a_in._nic is None


def test_ipv6_and_wrong_direction_refused() -> None:
    transport = OffloadTransport(Miniport())
    v6 = {"spi": 0x800, "protocol": "esp", "src": "2001:db8::1", "dst": "2001:db8::2",
          "encryption": {"algorithm": "3des-cbc", "key": KEYS["3des-cbc"].hex()},
          "integrity": {"algorithm": "hmac-sha1-96", "key": KEYS["hmac-sha1-96"].hex()}}
    out6 = SecurityAssociation.from_dict({**v6, "direction": "outbound"})
    in6 = SecurityAssociation.from_dict({**v6, "direction": "inbound"})
    with pytest.raises(NotOffloadableError, match="IPv6"):
        transport.offload(out6, in6)
    a_out, a_in = pair("a", 0x900, 0x901)
    with pytest.raises(NotOffloadableError, match="outbound"):
        transport.offload(a_in, a_out)


def test_nic_refusal_raises_with_status_and_rolls_back() -> None:
    mp = Miniport()
    transport = OffloadTransport(mp)
    x_out, x_in = pair("a", 0xA00, 0xA01)
    transport.offload(x_out, x_in)
    before = mp.snapshot()
    handles = mp.sa_handles()
    y_out, y_in = pair("a", 0xB00, 0xA01)  # inbound SPI clashes with a live inbound SA
    with pytest.raises(OffloadError) as err:
        transport.offload(y_out, y_in)
    assert err.value.status is NdisStatus.INVALID_DATA
    assert err.value.oid is Oid.TCP_TASK_IPSEC_ADD_SA
    assert mp.sa_handles() == handles  # the outbound ADD was deleted again
    assert mp.snapshot()[0] == before[0]
    assert y_out._nic is None and y_in._nic is None
    small = OffloadTransport(Miniport(conf_algorithms=[OffloadConf.THREE_DES]))
    d_out, d_in = pair("a", 0xC00, 0xC01, enc="des-cbc")
    with pytest.raises(OffloadError) as err:
        small.offload(d_out, d_in)
    assert err.value.status is NdisStatus.NOT_SUPPORTED


def test_udp_parser_entries_reference_counted() -> None:
    mp = Miniport()
    transport = OffloadTransport(mp)
    p1 = pair("a", 0xD00, 0xD01, encap=True)
    p2 = pair("a", 0xD10, 0xD11, encap=True)
    h1 = transport.offload(*p1)
    h2 = transport.offload(*p2)
    assert len(mp.parser_entries()) == 1
    transport.remove(h1)
    assert len(mp.parser_entries()) == 1  # still used by the second pair
    transport.remove(h2)
    assert mp.parser_entries() == () and mp.sa_handles() == ()


def test_sa_delete_request_honoured_and_software_carries_on() -> None:
    mp = Miniport(capacity=2, unsafe_iv_source=unsafe_iv_source)
    transport = OffloadTransport(mp)
    a_out, a_in = pair("a", 0xE00, 0xE01)
    b_out, _b_in = pair("b", 0xE01, 0xE00)
    h_out, h_in = transport.offload(a_out, a_in)
    with pytest.raises(OffloadError) as err:
        transport.offload(*pair("a", 0xF00, 0xF01))
    assert err.value.status is NdisStatus.RESOURCES
    rng = random.Random(5)
    q = packet(rng, PEER, LOCAL)
    assert a_in.unprotect(b_out.protect(q).packet).packet == q  # carries SaDeleteReq
    assert transport.delete_requests_honoured == [h_in, h_out]
    assert mp.sa_handles() == () and a_in._nic is None and a_out._nic is None
    q = packet(rng, PEER, LOCAL)
    assert a_in.unprotect(b_out.protect(q).packet).packet == q  # now in software


def test_fallbacks_when_the_nic_lost_the_sa() -> None:
    """CryptoDone = 0 on receive and an unprocessed send both fall back to software."""
    mp = Miniport(unsafe_iv_source=unsafe_iv_source)
    transport = OffloadTransport(mp)
    a_out, a_in = pair("a", 0x1A00, 0x1A01)
    sw_out, _ = pair("a", 0x1A00, 0x1A01)
    b_out, _ = pair("b", 0x1A01, 0x1A00)
    h_out, h_in = transport.offload(a_out, a_in)
    for h in (h_out, h_in):  # deleted behind the transport's back
        assert mp.oid_request(Oid.TCP_TASK_IPSEC_DELETE_SA,
                              encode_delete_sa(DeleteSa(h)))[0] == NdisStatus.SUCCESS
    rng = random.Random(9)
    p = packet(rng)
    assert a_out.protect(p).packet == sw_out.protect(p).packet
    assert mp.stats.send_unknown_handle == 1
    q = packet(rng, PEER, LOCAL)
    assert a_in.unprotect(b_out.protect(q).packet).packet == q
    assert mp.stats.passed_up == 1


def test_handles_in_returned_buffers_are_the_ones_used_for_send() -> None:
    mp = Miniport(unsafe_iv_source=unsafe_iv_source)
    transport = OffloadTransport(mp)
    a_out, a_in = pair("a", 0x2A00, 0x2A01)
    h_out, h_in = transport.offload(a_out, a_in)
    assert (h_out, h_in) == (1, 2)
    assert mp.sa(h_out).inbound is False and mp.sa(h_in).inbound is True
    assert struct.pack("<Q", h_out) != struct.pack("<Q", 0)
    with pytest.raises(UnknownHandleError) as err:
        transport.remove([h_out, 99])
    assert isinstance(err.value, IpsecsaError) and not isinstance(err.value, KeyError)
    assert err.value.field == "handles" and "99" in str(err.value)
    assert mp.sa_handles() == (h_out, h_in)  # nothing removed when a handle is unknown
    assert transport.handles == (h_out, h_in) and a_out._nic is not None


# --- review fixes: filters, fallbacks, failure handling ---------------------------------------


def _ndis(req: object) -> tuple:
    return (int(req.SrcAddr), int(req.SrcMask), int(req.DestAddr), int(req.DestMask),
            req.Protocol, req.SrcPort, req.DestPort)


@pytest.mark.parametrize("selectors", [
    [], [{"protocol": 17, "dport": 53}],
    [{"dst": "198.51.100.0/24", "protocol": 6, "sport": 1234}],
    [{"dst": "10.0.0.0/8"}, {"protocol": 1}],  # the first leaves out the peer: skipped
], ids=["none", "proto-port", "prefix-covering", "one-covers"])
def test_transport_filter_is_the_sads_host_to_host_filter(selectors: list) -> None:
    """A transport SA's ADD filter is filters_for's: the SA's own addresses with all-ones
    masks, plus its one selector's protocol and ports; each SA in its own direction."""
    swap = {"src": "dst", "dst": "src", "sport": "dport", "dport": "sport"}
    for direction in ("outbound", "inbound"):
        sels = selectors if direction == "outbound" else [
            {swap.get(k, k): v for k, v in sel.items()} for sel in selectors]
        sa = make(sa_dict(direction, side="a", spi=0x3A00, selectors=sels))
        (f,) = filters_for(Bundle((sa,)))
        req = decode_add_sa(build_add_request(sa, inbound=direction == "inbound")[1])
        assert _ndis(req) == (f.src, f.src_mask, f.dst, f.dst_mask, f.protocol, f.sport,
                              f.dport)
        src, dst = (LOCAL, PEER) if direction == "outbound" else (PEER, LOCAL)
        assert (str(req.SrcAddr), str(req.DestAddr)) == (src, dst)
        assert str(req.SrcMask) == str(req.DestMask) == "255.255.255.255"


def test_transport_selectors_refused_when_no_or_several_filters() -> None:
    transport = OffloadTransport(Miniport())
    for sels in ([{"protocol": 6}, {"protocol": 17}], [{"dst": "10.0.0.0/8"}]):
        a_out = make(sa_dict("outbound", side="a", spi=0x3B00, selectors=sels))
        a_in = make(sa_dict("inbound", side="a", spi=0x3B01, selectors=sels))
        with pytest.raises(NotOffloadableError) as err:
            transport.offload(a_out, a_in)
        assert err.value.field == "outbound.selectors"
    assert transport.miniport.sa_handles() == ()


def test_same_inbound_spi_on_two_local_addresses() -> None:
    """SPIs are unique per destination (A.1, F.4): two pairs with one inbound SPI on different
    local addresses both offload, and each receives its own traffic."""
    mp = Miniport(unsafe_iv_source=unsafe_iv_source)
    transport = OffloadTransport(mp)
    local2, peer2 = "192.0.2.2", "198.51.100.8"

    def sa(direction: str, spi: int, src: str, dst: str) -> SecurityAssociation:
        return make({"spi": spi, "protocol": "esp", "direction": direction, "src": src,
                     "dst": dst, "encryption": {"algorithm": "3des-cbc",
                                                "key": KEYS["3des-cbc"].hex()},
                     "integrity": {"algorithm": "hmac-sha1-96",
                                   "key": KEYS["hmac-sha1-96"].hex()}})

    in1, in2 = sa("inbound", 0x2002, PEER, LOCAL), sa("inbound", 0x2002, peer2, local2)
    transport.offload(sa("outbound", 0x1001, LOCAL, PEER), in1)
    transport.offload(sa("outbound", 0x1003, local2, peer2), in2)
    assert len(mp.sa_handles()) == 4
    rng = random.Random(3)
    for sa_in, src, dst in ((in1, PEER, LOCAL), (in2, peer2, local2)):
        peer_out = sa("outbound", 0x2002, src, dst)
        q = packet(rng, src, dst)
        assert sa_in.unprotect(peer_out.protect(q).packet).packet == q
    assert mp.stats.received == 2 and mp.stats.passed_up == 0


def _lsrr_packet(final: str) -> bytes:
    opt = bytes([0x83, 11, 4]) + bytes([10, 9, 9, 9]) + bytes(int(x) for x in final.split("."))
    udp = struct.pack("!HHHH", 5000, 53, 12, 0) + b"abcd"
    return build_ipv4_header(tos=0, total_length=20 + 12 + len(udp), ident=1, flags=0,
                             frag_offset=0, ttl=64, protocol=17, src=bytes([192, 0, 2, 1]),
                             dst=bytes([10, 9, 9, 9]), options=opt + b"\x01") + udp


def test_ah_send_fallback_is_the_sas_own_software_path() -> None:
    """The NIC returns the packet unprocessed: the AH SA's software ICV is used, source-route
    prediction included (RFC 4302 §3.3.3.1.1.1), byte for byte as the software twin."""
    kw = {"protocol": "ah", "integ": "hmac-sha1-96"}
    for lost in (False, True):
        mp = Miniport()
        transport = OffloadTransport(mp)
        a_out, a_in = pair("a", 0x4A00, 0x4A01, **kw)
        sw_out, _ = pair("a", 0x4A00, 0x4A01, **kw)
        h_out, _h_in = transport.offload(a_out, a_in)
        if lost:  # deleted behind the transport's back
            mp.oid_request(Oid.TCP_TASK_IPSEC_DELETE_SA, encode_delete_sa(DeleteSa(h_out)))
        p = _lsrr_packet(PEER)
        assert a_out.protect(p).packet == sw_out.protect(p).packet
        assert (mp.stats.sent, mp.stats.send_unknown_handle) == ((0, 1) if lost else (1, 0))


class _Flaky:
    """A MiniportLike around a Miniport whose ``fail(oid, buffer)`` may refuse a request
    (return a status) or raise (return an exception)."""

    def __init__(self, mp: Miniport, fail: object) -> None:
        self.mp, self.fail = mp, fail
        self.keymat_order = mp.keymat_order

    def oid_request(self, oid: int, buffer: bytes) -> tuple[int, bytes]:
        verdict = self.fail(oid, buffer)  # type: ignore[operator]
        if isinstance(verdict, BaseException):
            raise verdict
        if verdict is not None:
            return verdict, bytes(buffer)
        return self.mp.oid_request(oid, buffer)

    def send(self, packet: bytes, offload_handle: int) -> bytes:
        return self.mp.send(packet, offload_handle)

    def receive(self, packet: bytes) -> tuple[bytes, NblInfoReceive]:
        return self.mp.receive(packet)


def test_failed_delete_leaves_everything_for_a_retry() -> None:
    mp = Miniport(unsafe_iv_source=unsafe_iv_source)
    refuse: set[int] = set()

    def fail(oid: int, buf: bytes) -> object:
        if oid == Oid.TCP_TASK_IPSEC_DELETE_UDPESP_SA and \
                struct.unpack_from("<Q", buf)[0] in refuse:
            return NdisStatus.FAILURE
        return None

    transport = OffloadTransport(_Flaky(mp, fail))
    a_out, a_in = pair("a", 0x5A00, 0x5A01, encap=True)
    h_out, h_in = transport.offload(a_out, a_in)
    refuse.add(h_in)
    with pytest.raises(OffloadError) as err:
        transport.remove([h_out, h_in])
    assert err.value.status is NdisStatus.FAILURE
    # the outbound SA went; the inbound one is exactly as it was
    assert transport.handles == (h_in,) and mp.sa_handles() == (h_in,)
    assert a_out._nic is None and a_in._nic is not None
    assert len(mp.parser_entries()) == 1 and transport._entries == {(1, 4500): [
        mp.parser_entries()[0].handle, 1]}
    b_out, _ = pair("b", 0x5A01, 0x5A00, encap=True)
    q = packet(random.Random(1), PEER, LOCAL)
    assert a_in.unprotect(b_out.protect(q).packet).packet == q
    assert mp.stats.received == 1  # still offloaded
    refuse.clear()
    transport.remove([h_in])  # the retry names the parser entry: it goes too (A.7)
    assert transport.handles == () and mp.sa_handles() == () and mp.parser_entries() == ()
    assert transport._entries == {} and a_in._nic is None


@pytest.mark.parametrize("exc", [RuntimeError("driver crashed"), KeyboardInterrupt()],
                         ids=["runtime-error", "keyboard-interrupt"])
def test_offload_rolls_back_the_first_add_on_any_exception(exc: BaseException) -> None:
    mp = Miniport()
    adds = []

    def fail(oid: int, buf: bytes) -> object:
        if oid == Oid.TCP_TASK_IPSEC_ADD_SA:
            adds.append(oid)
            if len(adds) == 2:
                return exc
        return None

    transport = OffloadTransport(_Flaky(mp, fail))
    a_out, a_in = pair("a", 0x6A00, 0x6A01)
    with pytest.raises(type(exc)):
        transport.offload(a_out, a_in)
    assert mp.sa_handles() == () and transport.handles == ()
    assert a_out._nic is None and a_in._nic is None
    transport.offload(a_out, a_in)  # nothing left behind: the pair offloads afterwards
    assert len(mp.sa_handles()) == 2


@pytest.mark.parametrize("nic, sas, field", [
    ({"conf_algorithms": [OffloadConf.DES]}, {}, "outbound.encryption.algorithm"),
    ({"integrity_algorithms": [OffloadIntegrity.MD5]}, {}, "outbound.integrity.algorithm"),
    ({"tunnel": False}, {"mode": "tunnel"}, "outbound.mode"),
    ({"ah": False}, {"protocol": "ah"}, "outbound.direction"),
    ({"udp_esp": False}, {"encap": True}, "outbound.encapsulation"),
], ids=["3des", "sha1", "tunnel", "ah", "udp-esp"])
def test_capabilities_refuse_before_any_request(nic: dict, sas: dict, field: str) -> None:
    """A.9/A.11: with the NIC's NDIS_IPSEC_OFFLOAD_V1 given, what it does not advertise is a
    NotOffloadableError naming the field, and nothing reaches the NIC."""
    mp = Miniport(**nic)
    asked: list[int] = []
    transport = OffloadTransport(_Flaky(mp, lambda oid, buf: asked.append(oid)),
                                 capabilities=mp.capabilities())
    with pytest.raises(NotOffloadableError) as err:
        transport.offload(*pair("a", 0x7A00, 0x7A01, **sas))
    assert err.value.field == field and asked == []
    assert OffloadTransport(Miniport(), capabilities=Miniport().capabilities()).offload(
        *pair("a", 0x7A00, 0x7A01, **sas))  # the default NIC offers all of it


def test_sa_delete_request_hook_and_a_refused_delete_never_escape_the_packet() -> None:
    mp = Miniport(capacity=2, unsafe_iv_source=unsafe_iv_source)
    refuse = [True]
    transport = OffloadTransport(_Flaky(mp, lambda oid, buf: NdisStatus.FAILURE if refuse[0]
                                        and oid == Oid.TCP_TASK_IPSEC_DELETE_SA else None))
    told: list[tuple[int, ...]] = []
    transport.on_delete_request = told.append
    a_out, a_in = pair("a", 0x8A00, 0x8A01)
    b_out, _ = pair("b", 0x8A01, 0x8A00)
    h_out, h_in = transport.offload(a_out, a_in)
    with pytest.raises(OffloadError):
        transport.offload(*pair("a", 0x8B00, 0x8B01))  # RESOURCES: the NIC will ask for room
    q = packet(random.Random(2), PEER, LOCAL)
    assert a_in.unprotect(b_out.protect(q).packet).packet == q  # delivered, nothing raised
    assert told == [] and transport.handles == (h_out, h_in)  # still bound: retry possible
    refuse[0] = False
    with pytest.raises(UnknownHandleError):
        transport.remove([h_out, 12345])
    transport.remove([h_out, h_in, 12345], missing_ok=True)
    assert transport.handles == () and mp.sa_handles() == ()
    # and a request that succeeds is reported to the hook once, with both handles
    h_out, h_in = transport.offload(a_out, a_in)
    with pytest.raises(OffloadError):
        transport.offload(*pair("a", 0x8C00, 0x8C01))
    assert a_in.unprotect(b_out.protect(packet(random.Random(3), PEER, LOCAL)).packet).drop \
        is None
    assert told == [(h_in, h_out)] and mp.sa_handles() == ()


def test_offloaded_bytes_count_what_the_nic_processed_and_outlive_remove() -> None:
    mp = Miniport(unsafe_iv_source=unsafe_iv_source)
    transport = OffloadTransport(mp)
    a_out, a_in = pair("a", 0x9A00, 0x9A01)
    b_out, b_in = pair("b", 0x9A01, 0x9A00)
    handles = transport.offload(a_out, a_in)
    rng = random.Random(4)
    wire = a_out.protect(packet(rng, LOCAL, PEER)).packet
    back = b_out.protect(packet(rng, PEER, LOCAL)).packet
    assert b_in.unprotect(wire).drop is None and a_in.unprotect(back).drop is None
    assert a_in.unprotect(back).drop is DropReason.REPLAY  # caught before the NIC: not counted
    bad = bytearray(b_out.protect(packet(rng, PEER, LOCAL)).packet)
    bad[-1] ^= 1
    assert a_in.unprotect(bytes(bad)).drop is DropReason.ICV_FAILURE  # the NIC failed it
    assert transport.offloaded_bytes() == (len(wire), len(back))
    transport.remove(handles)
    a_out.protect(packet(rng, LOCAL, PEER))  # software now: not counted
    assert transport.offloaded_bytes() == (len(wire), len(back))

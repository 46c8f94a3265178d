"""Two engines as two hosts, established through the manual-keying procedure of reference C.1
(filters → Create → GetSpi → AddInbound → AddOutbound with the peer's SPI), with traffic both
ways. The ESP on the wire is checked by an independent decryption with pyca/cryptography's AEAD
and cipher primitives directly (RFC 4106 §3–5 nonce and AAD layout; RFC 4303 §2 trailer), not by
ipsecsa's own data path.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import threading
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ipsecsa import wfp
from ipsecsa.errors import DropReason

from .helpers import (
    A4,
    A6,
    B4,
    B6,
    add_filter,
    addr_conditions,
    ah_sa,
    bundle,
    cbc_sha1_sa,
    gcm_sa,
    ipsec_filter,
    open_engine,
    traffic,
    udp4,
    udp6,
)


@dataclass
class Host:
    bfe: wfp.Engine
    h: int
    ctx: int = 0
    spi: int = 0
    fin: int = 0
    fout: int = 0


def prepare(local: str, remote: str, tunnel: bool = False, inner: tuple[str, str] | None = None,
            encap: tuple[int, int] | None = None) -> Host:
    """Steps 1–3 of C.1 on one host: filters, Create, GetSpi."""
    bfe = wfp.Engine()
    h = open_engine(bfe)
    conds = addr_conditions(*(inner or (local, remote)))
    v6 = ":" in local
    host = Host(bfe, h)
    host.fin = add_filter(bfe, h, ipsec_filter("inbound", conds, v6=v6, tunnel=tunnel))
    host.fout = add_filter(bfe, h, ipsec_filter("outbound", conds, v6=v6, tunnel=tunnel))
    status, cached, host.ctx = bfe.IPsecSaContextCreate1(
        h, traffic(local, remote, host.fout, tunnel=tunnel), None)
    assert status == wfp.ERROR_SUCCESS
    assert cached == host.fin  # F.16: the inbound filter with the same conditions
    getspi = wfp.IPSEC_GETSPI1(
        inboundIpsecTraffic=traffic(local, remote, host.fin, tunnel=tunnel),
        ipVersion=wfp.FWP_IP_VERSION_V6 if v6 else wfp.FWP_IP_VERSION_V4,
        inboundUdpEncapsulation=None if encap is None else wfp.IPSEC_V4_UDP_ENCAPSULATION0(
            localUdpEncapPort=encap[0], remoteUdpEncapPort=encap[1]))
    status, host.spi = bfe.IPsecSaContextGetSpi1(h, host.ctx, getspi)
    assert status == wfp.ERROR_SUCCESS
    assert 0xC0000000 <= host.spi <= 0xCFFFFFFF  # F.4
    return host


def establish(a: Host, b: Host, make_sa, v6: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Steps 4–5 on both hosts: each host's inbound key is the peer's outbound key."""
    ka, kb = make_sa.keys()
    assert a.bfe.IPsecSaContextAddInbound1(a.h, a.ctx, bundle(*make_sa(a.spi, ka), v6=v6)) == 0
    assert b.bfe.IPsecSaContextAddInbound1(b.h, b.ctx, bundle(*make_sa(b.spi, kb), v6=v6)) == 0
    assert a.bfe.IPsecSaContextAddOutbound1(a.h, a.ctx, bundle(*make_sa(b.spi, kb), v6=v6)) == 0
    assert b.bfe.IPsecSaContextAddOutbound1(b.h, b.ctx, bundle(*make_sa(a.spi, ka), v6=v6)) == 0


class Gcm:
    def keys(self) -> tuple[bytes, bytes]:
        self.ka, self.kb = os.urandom(20), os.urandom(20)
        return self.ka, self.kb

    def __call__(self, spi: int, key: bytes) -> list[wfp.IPSEC_SA0]:
        return [gcm_sa(spi, key)]


def gcm_open(esp: bytes, key: bytes) -> tuple[int, int, bytes]:
    """RFC 4106: nonce = salt ‖ IV, AAD = SPI ‖ seq, tag 16 bytes; returns (spi, seq, payload
    without the RFC 4303 trailer) and checks the trailer's padding."""
    spi, seq = struct.unpack_from("!II", esp)
    iv = esp[8:16]
    plain = AESGCM(key[:16]).decrypt(key[16:] + iv, esp[16:], esp[:8])
    padlen = plain[-2]
    assert plain[-2 - padlen:-2] == bytes(range(1, padlen + 1))
    return spi, seq, plain[:-2 - padlen]


def test_c1_procedure_transport_v4_both_ways_checked_independently() -> None:
    a, b = prepare(A4, B4), prepare(B4, A4)
    gcm = Gcm()
    establish(a, b, gcm)
    for i in range(3):
        p = udp4(A4, B4, b"ping %d" % i)
        wire = a.bfe.outbound(p)
        assert wire.drop is None and wire.packet[9] == 50  # ESP
        spi, seq, payload = gcm_open(wire.packet[20:], gcm.kb)
        assert (spi, seq) == (b.spi, i + 1)
        assert payload == p[20:]  # the UDP segment, untouched
        got = b.bfe.inbound(wire.packet)
        assert got.packet == p
    back = udp4(B4, A4, b"pong")
    wire = b.bfe.outbound(back)
    spi, seq, payload = gcm_open(wire.packet[20:], gcm.ka)
    assert (spi, seq, payload) == (a.spi, 1, back[20:])
    assert a.bfe.inbound(wire.packet).packet == back


def test_tunnel_mode_v4_inner_selectors_from_the_filter() -> None:
    # F.22: the tunnel filter's conditions are the inner selectors; the traffic's addresses are
    # the tunnel endpoints.
    inner_a, inner_b = "10.1.0.5", "10.2.0.7"
    a = prepare(A4, B4, tunnel=True, inner=(inner_a, inner_b))
    b = prepare(B4, A4, tunnel=True, inner=(inner_b, inner_a))
    gcm = Gcm()
    establish(a, b, gcm)
    p = udp4(inner_a, inner_b, b"through the tunnel")
    wire = a.bfe.outbound(p)
    assert wire.drop is None
    assert wire.packet[12:16] == bytes([192, 0, 2, 1]) and wire.packet[16:20] == bytes(
        [198, 51, 100, 2])
    _, _, payload = gcm_open(wire.packet[20:], gcm.kb)
    assert payload[:2] != b"" and payload[9] == 17 and payload[12:] == p[12:]  # inner IPv4
    assert b.bfe.inbound(wire.packet).packet[12:] == p[12:]
    # Traffic the tunnel filter does not cover is not tunnelled.
    other = udp4(inner_a, "10.9.9.9", b"elsewhere")
    assert a.bfe.outbound(other).packet == other


def test_ipv6_transport() -> None:
    a, b = prepare(A6, B6), prepare(B6, A6)
    gcm = Gcm()
    establish(a, b, gcm, v6=True)
    p = udp6(A6, B6, b"six")
    wire = a.bfe.outbound(p)
    assert wire.drop is None and wire.packet[6] == 50
    spi, seq, payload = gcm_open(wire.packet[40:], gcm.kb)
    assert (spi, seq, payload) == (b.spi, 1, p[40:])
    assert b.bfe.inbound(wire.packet).packet == p


def test_nat_t_udp_encapsulation() -> None:
    a = prepare(A4, B4, encap=(4500, 4501))
    b = prepare(B4, A4, encap=(4501, 4500))
    gcm = Gcm()
    establish(a, b, gcm)
    p = udp4(A4, B4, b"behind a NAT")
    wire = a.bfe.outbound(p).packet
    assert wire[9] == 17
    sport, dport = struct.unpack_from("!HH", wire, 20)
    assert (sport, dport) == (4500, 4501)  # RFC 3948: UDP header, then ESP
    spi, _seq, payload = gcm_open(wire[28:], gcm.kb)
    assert (spi, payload) == (b.spi, p[20:])
    assert b.bfe.inbound(wire).packet == p
    _st, ctx = a.bfe.IPsecSaContextGetById1(a.h, a.ctx)
    assert ctx.inboundSa.udpEncapsulation == wfp.IPSEC_V4_UDP_ENCAPSULATION0(
        localUdpEncapPort=4500, remoteUdpEncapPort=4501)


class EspAh:
    """An ESP (AES-128-CBC + HMAC-SHA1-96) + AH (HMAC-SHA1-96) bundle (C.4: index 0 ESP)."""

    def keys(self) -> tuple[bytes, bytes]:
        self.ka, self.kb = os.urandom(56), os.urandom(56)
        return self.ka, self.kb

    def __call__(self, spi: int, k: bytes) -> list[wfp.IPSEC_SA0]:
        return [cbc_sha1_sa(spi, k[:16], k[16:36]), ah_sa(spi, k[36:56])]


def test_esp_ah_bundle_both_ways() -> None:
    a, b = prepare(A4, B4), prepare(B4, A4)
    keys = EspAh()
    establish(a, b, keys)
    p = udp4(A4, B4, b"bundle" * 10)
    wire = a.bfe.outbound(p).packet
    assert wire[9] == 51  # [IP][AH][ESP] (A.1)
    ah_len = (wire[21] + 2) * 4
    assert wire[20] == 50  # AH's next header is ESP
    # Independent check of the AH ICV (RFC 4302 §3.3.3: mutable IPv4 fields zeroed).
    icv = wire[32:44]
    zeroed = bytearray(wire)
    zeroed[1] = 0  # TOS
    zeroed[6:8] = b"\0\0"  # flags/fragment offset
    zeroed[8] = 0  # TTL
    zeroed[10:12] = b"\0\0"  # header checksum
    zeroed[32:44] = bytes(12)
    assert hmac.compare_digest(hmac.new(keys.kb[36:56], bytes(zeroed), hashlib.sha1)
                               .digest()[:12], icv)
    esp = wire[20 + ah_len:]
    # ESP: AES-CBC (RFC 3602) with HMAC-SHA1-96 over SPI..ciphertext (RFC 2404).
    mac = hmac.new(keys.kb[16:36], esp[:-12], hashlib.sha1).digest()[:12]
    assert hmac.compare_digest(mac, esp[-12:])
    dec = Cipher(algorithms.AES(keys.kb[:16]), modes.CBC(esp[8:24])).decryptor()
    plain = dec.update(esp[24:-12]) + dec.finalize()
    assert plain[:len(p) - 20] == p[20:]
    assert b.bfe.inbound(wire).packet == p
    back = udp4(B4, A4, b"ok")
    assert a.bfe.inbound(b.bfe.outbound(back).packet).packet == back


def test_clear_text_where_ipsec_is_demanded_is_dropped_and_unknown_traffic_passes() -> None:
    a, b = prepare(A4, B4), prepare(B4, A4)
    establish(a, b, Gcm())
    assert b.bfe.inbound(udp4(A4, B4, b"clear")).drop is DropReason.CLEAR_TEXT
    stranger = udp4("203.0.113.5", B4, b"not covered")
    assert b.bfe.inbound(stranger).packet == stranger
    _status, stats = b.bfe.IPsecGetStatistics1(b.h)
    assert stats.aggregateDropPacketStatistics.invalidClearTextInbound == 1


def test_outbound_before_established_is_blocked_not_sent_in_clear() -> None:
    a = prepare(A4, B4)
    r = a.bfe.outbound(udp4(A4, B4, b"too early"))
    assert r.drop is DropReason.NO_POLICY


def test_tampering_and_replay_are_dropped_and_counted() -> None:
    a, b = prepare(A4, B4), prepare(B4, A4)
    establish(a, b, Gcm())
    wire = a.bfe.outbound(udp4(A4, B4, b"once")).packet
    assert b.bfe.inbound(wire).drop is None
    assert b.bfe.inbound(wire).drop is DropReason.REPLAY
    bad = bytearray(a.bfe.outbound(udp4(A4, B4, b"twice")).packet)
    bad[-1] ^= 1
    assert b.bfe.inbound(bytes(bad)).drop is DropReason.ICV_FAILURE
    _, st = b.bfe.IPsecGetStatistics1(b.h)
    assert st.espDropPacketStatistics.replayCheckFailuresOnInbound == 1
    assert st.espDropPacketStatistics.authenticationFailuresOnInbound == 1
    assert st.aggregateDropPacketStatistics.totalDropPacketsInbound == 2


def test_concurrent_packets_on_one_sa_never_share_a_sequence_number() -> None:
    a, b = prepare(A4, B4), prepare(B4, A4)
    gcm = Gcm()
    establish(a, b, gcm)
    seen: list[int] = []
    lock = threading.Lock()

    def send(n: int) -> None:
        local = []
        for i in range(n):
            wire = a.bfe.outbound(udp4(A4, B4, b"x%d" % i)).packet
            local.append(struct.unpack_from("!I", wire, 24)[0])
        with lock:
            seen.extend(local)

    threads = [threading.Thread(target=send, args=(300,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == list(range(1, 1201))
    _, _st = a.bfe.IPsecSaContextGetById1(a.h, a.ctx)
    _, stats = a.bfe.IPsecGetStatistics1(a.h)
    assert stats.outboundTrafficStatistics.totalSuccessfulPackets == 1200


@pytest.mark.parametrize("direction", ["outbound", "inbound"])
def test_deleting_or_expiring_stops_outbound_at_once(direction: str) -> None:
    a, b = prepare(A4, B4), prepare(B4, A4)
    establish(a, b, Gcm())
    wire = a.bfe.outbound(udp4(A4, B4, b"before")).packet
    assert wire is not None
    if direction == "outbound":
        assert a.bfe.IPsecSaContextExpire0(a.h, a.ctx) == 0
    else:
        assert a.bfe.IPsecSaContextDeleteById0(a.h, a.ctx) == 0
    after = a.bfe.outbound(udp4(A4, B4, b"after"))
    assert after.drop is DropReason.NO_POLICY


def test_flow_cache_keys_on_the_flow_not_on_per_packet_header_fields() -> None:
    a, b = prepare(A4, B4), prepare(B4, A4)
    establish(a, b, Gcm())
    for ident in range(50):
        p = bytearray(udp4(A4, B4, b"same flow"))
        p[4:6] = ident.to_bytes(2, "big")  # identification (checksum now stale: not checked)
        assert a.bfe.outbound(bytes(p)).drop is None
    assert len(a.bfe._flows) == 1


def test_silent_drop_callout_blocks_even_when_permit_if_unregistered() -> None:
    bfe = wfp.Engine()
    h = open_engine(bfe)
    flt = wfp.FWPM_FILTER0(
        displayData=wfp.FWPM_DISPLAY_DATA0(name="silent drop"),
        layerKey=wfp.FWPM_LAYER_OUTBOUND_TRANSPORT_V4,
        flags=wfp.FWPM_FILTER_FLAG_PERMIT_IF_CALLOUT_UNREGISTERED,
        action=wfp.FWPM_ACTION0(type=wfp.FWP_ACTION_CALLOUT_TERMINATING,
                                calloutKey=wfp.FWPM_CALLOUT_WFP_TRANSPORT_LAYER_V4_SILENT_DROP))
    add_filter(bfe, h, flt)
    assert bfe.outbound(udp4(A4, B4, b"dropped")).drop is DropReason.BLOCKED
    bfe.close()

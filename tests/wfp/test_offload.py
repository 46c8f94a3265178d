"""SA contexts created through WFP and offloaded to an NDIS IPsec-offload NIC (issue 13).

Hosts are wfp.Engines established through the manual-keying procedure of reference C.1 (filters →
Create → GetSpi → AddInbound → AddOutbound), one of them with an ``ipsecsa.ndis.Miniport``
attached. What the offloaded host puts on the wire is compared byte for byte with an
all-software twin engine holding the same SAs (same SPIs and keys, the same deterministic IVs
through the engine's and the Miniport's ``unsafe_iv_source`` test hooks), and is decrypted
independently with pyca/cryptography's primitives directly: 3DES-CBC (RFC 2451) with
HMAC-SHA1-96 (RFC 2404) over SPI ‖ seq ‖ IV ‖ ciphertext (RFC 4303 §2, §3.3.2), and AES-GCM-128
with RFC 4106's nonce and AAD (``gcm_open`` of test_traffic).
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from ipsecsa import wfp
from ipsecsa.errors import DropReason
from ipsecsa.ndis import Miniport, NdisStatus, Oid
from ipsecsa.ndis.constants import OffloadConf, OffloadSaFlags
from ipsecsa.ndis.structs import decode_add_sa

from .helpers import (
    A4,
    B4,
    add_filter,
    addr_conditions,
    bundle,
    cbc_sha1_sa,
    gcm_sa,
    ipsec_filter,
    open_engine,
    traffic,
    udp4,
)
from .test_traffic import gcm_open

try:
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # cryptography < 43
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES  # type: ignore

warnings.filterwarnings("ignore", message=".*TripleDES.*")

C4 = "203.0.113.9"
OFFLOADED = wfp.IPSEC_SA_BUNDLE_FLAG_SA_OFFLOADED


def ivs(seq: int) -> bytes:
    """Deterministic 8-byte IVs (known-answer comparison only): 3DES-CBC and GCM both take 8."""
    return hashlib.sha256(b"iv" + seq.to_bytes(8, "big")).digest()[:8]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Host:
    bfe: wfp.Engine
    h: int
    ctx: int = 0
    spi: int = 0


def host(local: str, remote: str, nic: Any = None, clock: Any = None, bfe: Any = None,
         spi: int | None = None, encap: tuple[int, int] | None = None) -> Host:
    """C.1 steps 1–3 on one host (``spi``: SetSpi0 instead of GetSpi1, for the twin)."""
    if bfe is None:
        bfe = wfp.Engine(offload=nic, clock=clock)
        bfe._unsafe_iv_source = ivs  # test hook: the same IVs as the Miniport's
    h = open_engine(bfe)
    conds = addr_conditions(local, remote)
    fin = add_filter(bfe, h, ipsec_filter("inbound", conds))
    fout = add_filter(bfe, h, ipsec_filter("outbound", conds))
    status, _, ctx = bfe.IPsecSaContextCreate1(h, traffic(local, remote, fout), None)
    assert status == wfp.ERROR_SUCCESS
    getspi = wfp.IPSEC_GETSPI1(
        inboundIpsecTraffic=traffic(local, remote, fin), ipVersion=wfp.FWP_IP_VERSION_V4,
        inboundUdpEncapsulation=None if encap is None else wfp.IPSEC_V4_UDP_ENCAPSULATION0(
            localUdpEncapPort=encap[0], remoteUdpEncapPort=encap[1]))
    if spi is None:
        status, spi = bfe.IPsecSaContextGetSpi1(h, ctx, getspi)
    else:
        status = bfe.IPsecSaContextSetSpi0(h, ctx, getspi, spi)
    assert status == wfp.ERROR_SUCCESS
    return Host(bfe, h, ctx, spi)


def tdes(spi: int, key: bytes) -> wfp.IPSEC_SA0:
    return cbc_sha1_sa(spi, key[:24], key[24:], cipher=wfp.IPSEC_CIPHER_TRANSFORM_ID_CBC_3DES)


def gcm(spi: int, key: bytes) -> wfp.IPSEC_SA0:
    return gcm_sa(spi, key[:20])


def add(x: Host, make: Any, spi_in: int, k_in: bytes, spi_out: int, k_out: bytes,
        **kw: Any) -> None:
    """C.1 steps 4–5: AddInbound with this host's SPI, AddOutbound with the peer's."""
    assert x.bfe.IPsecSaContextAddInbound1(x.h, x.ctx, bundle(make(spi_in, k_in), **kw)) == 0
    assert x.bfe.IPsecSaContextAddOutbound1(x.h, x.ctx, bundle(make(spi_out, k_out), **kw)) == 0


def establish(a: Host, b: Host, make: Any, **kw: Any) -> tuple[bytes, bytes]:
    """Both hosts; returns (a's inbound key, b's inbound key)."""
    ka, kb = os.urandom(44), os.urandom(44)
    add(a, make, a.spi, ka, b.spi, kb, **kw)
    add(b, make, b.spi, kb, a.spi, ka, **kw)
    return ka, kb


def tdes_open(esp: bytes, key: bytes) -> tuple[int, int, bytes]:
    """RFC 4303/2451/2404: check the HMAC-SHA1-96 ICV, decrypt 3DES-CBC, check the trailer;
    returns (spi, seq, payload)."""
    mac = hmac.HMAC(key[24:], hashes.SHA1())
    mac.update(esp[:-12])
    assert mac.finalize()[:12] == esp[-12:]
    spi, seq = struct.unpack_from("!II", esp)
    dec = Cipher(TripleDES(key[:24]), modes.CBC(esp[8:16])).decryptor()
    plain = dec.update(esp[16:-12]) + dec.finalize()
    padlen = plain[-2]
    assert plain[-2 - padlen:-2] == bytes(range(1, padlen + 1))
    return spi, seq, plain[:-2 - padlen]


def flags(x: Host) -> tuple[int | None, int | None]:
    """(inbound, outbound) bundle flags & OFFLOADED as GetById1 reports them (None: no SA)."""
    status, c = x.bfe.IPsecSaContextGetById1(x.h, x.ctx)
    assert status == wfp.ERROR_SUCCESS
    return tuple(None if d is None else d.saBundle.flags & OFFLOADED  # type: ignore[return-value]
                 for d in (c.inboundSa, c.outboundSa))


def offloaded_sas(x: Host) -> int:
    status, st = x.bfe.IPsecGetStatistics1(x.h)
    assert status == wfp.ERROR_SUCCESS
    return int(st.aggregateSaStatistics.offloadedSas)


def nic_spis(nic: Miniport) -> set[tuple[bool, int]]:
    """(inbound, SPI) of every SA on the NIC."""
    out = set()
    for h in nic.sa_handles():
        sa = nic.sa(h)
        assert sa is not None
        out |= {(sa.inbound, op.spi) for op in sa.ops}
    return out


class RecordingNic(Miniport):
    """A Miniport that records the OIDs it is asked and refuses ADDs as told."""

    def __init__(self, refuse: str = "", **kw: Any) -> None:
        super().__init__(unsafe_iv_source=ivs, **kw)
        self.refuse = refuse  # "", "all", "inbound" or "raise"
        self.refuse_delete = ""  # "", "status" or "raise"
        self.oids: list[int] = []

    def oid_request(self, oid: int, buffer: Any) -> tuple[int, bytes]:
        self.oids.append(oid)
        if oid in (Oid.TCP_TASK_IPSEC_DELETE_SA, Oid.TCP_TASK_IPSEC_DELETE_UDPESP_SA):
            if self.refuse_delete == "raise":
                raise RuntimeError("the driver fell over")
            if self.refuse_delete == "status":
                return int(NdisStatus.FAILURE), bytes(buffer)
        if oid == Oid.TCP_TASK_IPSEC_ADD_SA:
            if self.refuse == "raise":
                raise RuntimeError("the driver fell over")
            inbound = decode_add_sa(bytes(buffer)).Flags & OffloadSaFlags.INBOUND_SA
            if self.refuse == "all" or (self.refuse == "inbound" and inbound):
                return int(NdisStatus.FAILURE), bytes(buffer)
        return super().oid_request(oid, buffer)


# ---------------------------------------------------------------- the proof's first part
@pytest.mark.parametrize("suite", ["3des-sha1", "aes-gcm-128"])
def test_offloaded_or_not_the_wire_is_the_software_engines(suite: str) -> None:
    make = tdes if suite == "3des-sha1" else gcm
    nic = Miniport(unsafe_iv_source=ivs)
    a, b = host(A4, B4, nic), host(B4, A4)
    ka, kb = establish(a, b, make)
    twin = host(A4, B4, spi=a.spi)  # all software, a's SAs (SetSpi0 gives it a's inbound SPI)
    add(twin, make, a.spi, ka, b.spi, kb)
    if suite == "3des-sha1":
        assert nic_spis(nic) == {(False, b.spi), (True, a.spi)}  # exactly this context's pair
        assert flags(a) == (OFFLOADED, OFFLOADED)
        assert offloaded_sas(a) == 2
    else:  # AES-GCM is not an offload v1 algorithm: nothing was sent to the NIC
        assert nic.sa_handles() == ()
        assert flags(a) == (0, 0)
        assert offloaded_sas(a) == 0
    assert offloaded_sas(twin) == 0 and flags(twin) == (0, 0)
    opener = tdes_open if suite == "3des-sha1" else lambda esp, k: gcm_open(esp, k[:20])
    sent = received = 0  # bytes of ESP on the wire each way
    for i in range(4):
        p = udp4(A4, B4, b"ping %d" % i + bytes(i * 7))
        wire = a.bfe.outbound(p)
        assert wire.drop is None
        assert wire.packet == twin.bfe.outbound(p).packet  # byte-identical to software
        assert opener(wire.packet[20:], kb) == (b.spi, i + 1, p[20:])
        assert b.bfe.inbound(wire.packet).packet == p
        q = udp4(B4, A4, b"pong %d" % i)
        back = b.bfe.outbound(q).packet
        sent, received = sent + len(wire.packet), received + len(back)
        assert opener(back[20:], ka) == (a.spi, i + 1, q[20:])
        assert a.bfe.inbound(back).packet == q
        assert twin.bfe.inbound(back).packet == q
    if suite == "3des-sha1":
        assert (nic.stats.sent, nic.stats.received) == (4, 4)  # the NIC did the crypto
    else:
        assert (nic.stats.sent, nic.stats.received) == (0, 0)
    _, st = a.bfe.IPsecGetStatistics1(a.h)
    assert st.outboundTrafficStatistics.totalSuccessfulPackets == 4
    assert st.inboundTrafficStatistics.totalSuccessfulPackets == 4
    on_nic = suite == "3des-sha1"
    assert st.outboundTrafficStatistics.offloadByteCount == (sent if on_nic else 0)
    assert st.inboundTrafficStatistics.offloadByteCount == (received if on_nic else 0)
    assert a.bfe.IPsecSaContextDeleteById0(a.h, a.ctx) == 0  # the count outlives the SAs
    _, st = a.bfe.IPsecGetStatistics1(a.h)
    assert st.outboundTrafficStatistics.offloadByteCount == (sent if on_nic else 0)


def test_nat_t_pair_goes_through_add_udpesp_sa() -> None:
    nic = RecordingNic()
    a, b = host(A4, B4, nic, encap=(4500, 4501)), host(B4, A4, encap=(4501, 4500))
    _, kb = establish(a, b, tdes)
    assert nic.oids == [Oid.TCP_TASK_IPSEC_ADD_UDPESP_SA] * 2
    assert len(nic.parser_entries()) == 1 and offloaded_sas(a) == 2
    p = udp4(A4, B4, b"behind a NAT")
    wire = a.bfe.outbound(p).packet
    assert struct.unpack_from("!HH", wire, 20) == (4500, 4501)
    assert tdes_open(wire[28:], kb)[::2] == (b.spi, p[20:])
    q = udp4(B4, A4, b"back")
    assert a.bfe.inbound(b.bfe.outbound(q).packet).packet == q
    assert nic.stats.received == 1
    assert a.bfe.IPsecSaContextDeleteById0(a.h, a.ctx) == 0
    assert nic.sa_handles() == () and nic.parser_entries() == ()


def test_offload_happens_at_add_outbound_never_before() -> None:
    nic = RecordingNic()
    a, b = host(A4, B4, nic), host(B4, A4)
    ka, kb = os.urandom(44), os.urandom(44)
    assert a.bfe.IPsecSaContextAddInbound1(a.h, a.ctx, bundle(tdes(a.spi, ka))) == 0
    assert nic.oids == [] and offloaded_sas(a) == 0 and flags(a) == (0, None)
    assert a.bfe.IPsecSaContextAddOutbound1(a.h, a.ctx, bundle(tdes(b.spi, kb))) == 0
    assert nic.oids == [Oid.TCP_TASK_IPSEC_ADD_SA] * 2  # outbound first, then inbound
    first = nic.sa(nic.sa_handles()[0])
    assert first is not None and not first.inbound
    assert offloaded_sas(a) == 2


# ---------------------------------------------------------------- leaving the NIC
def test_delete_removes_both_sas_from_the_nic_at_once() -> None:
    nic = RecordingNic()
    a, b = host(A4, B4, nic), host(B4, A4)
    establish(a, b, tdes)
    assert len(nic.sa_handles()) == 2
    assert a.bfe.IPsecSaContextDeleteById0(a.h, a.ctx) == 0
    assert nic.sa_handles() == ()
    assert nic.oids[-2:] == [Oid.TCP_TASK_IPSEC_DELETE_SA] * 2
    assert offloaded_sas(a) == 0


def test_expire_removes_outbound_at_once_and_inbound_after_the_linger() -> None:
    clock, nic = Clock(), Miniport(unsafe_iv_source=ivs)
    a, b = host(A4, B4, nic, clock), host(B4, A4, clock=clock)
    establish(a, b, tdes)
    assert a.bfe.IPsecSaContextExpire0(a.h, a.ctx) == 0
    assert nic_spis(nic) == {(True, a.spi)}  # the outbound SA left the NIC
    assert flags(a) == (OFFLOADED, None) and offloaded_sas(a) == 1
    q = udp4(B4, A4, b"in flight")
    assert a.bfe.inbound(b.bfe.outbound(q).packet).packet == q  # the linger, on the NIC
    assert nic.stats.received == 1
    clock.now += 60
    assert offloaded_sas(a) == 0  # this call ended the linger
    assert nic.sa_handles() == ()


def test_lifetime_seconds_and_packets_remove_sas_from_the_nic() -> None:
    clock, nic = Clock(), Miniport(unsafe_iv_source=ivs)
    a, b = host(A4, B4, nic, clock), host(B4, A4, clock=clock)
    establish(a, b, tdes, lifetime=wfp.IPSEC_SA_LIFETIME0(lifetimeSeconds=300))
    clock.now += 301
    assert a.bfe.outbound(udp4(A4, B4, b"late")).drop is DropReason.NO_POLICY  # a packet
    assert nic_spis(nic) == {(True, a.spi)}
    clock.now += 60
    clear = udp4(C4, A4, b"clear text nothing covers")
    assert a.bfe.inbound(clear).packet == clear  # any packet ends the linger
    assert nic.sa_handles() == ()
    # A hard packet limit (F.7) behaves like Expire: the packet that reaches it is the last one
    # the NIC encrypts.
    nic2 = Miniport(unsafe_iv_source=ivs)
    c, d = host(A4, B4, nic2), host(B4, A4)
    establish(c, d, tdes, lifetime=wfp.IPSEC_SA_LIFETIME0(lifetimePackets=3))
    sent = [c.bfe.outbound(udp4(A4, B4, b"p")).drop for _ in range(4)]
    assert sent == [None, None, None, DropReason.NO_POLICY]
    assert nic2.stats.sent == 3
    assert nic_spis(nic2) == {(True, c.spi)}


def test_close_removes_everything_from_the_nic() -> None:
    nic = Miniport(unsafe_iv_source=ivs)
    a, b = host(A4, B4, nic), host(B4, A4)
    establish(a, b, tdes)
    a.bfe.close()
    assert nic.sa_handles() == ()


# ---------------------------------------------------------------- best effort
def test_room_for_one_pair_offloads_the_first_context_only(caplog: Any) -> None:
    nic = Miniport(capacity=2, unsafe_iv_source=ivs)
    a, b = host(A4, B4, nic), host(B4, A4)
    with caplog.at_level(logging.INFO, logger="ipsecsa.wfp.offload"):
        _, kb = establish(a, b, tdes)
        a2, c = host(A4, C4, bfe=a.bfe), host(C4, A4)
        _, kc_out = establish(a2, c, tdes)  # AddOutbound returns ERROR_SUCCESS
    assert nic_spis(nic) == {(False, b.spi), (True, a.spi)}
    assert flags(a) == (OFFLOADED, OFFLOADED) and flags(a2) == (0, 0)
    assert offloaded_sas(a) == 2
    refusals = [r for r in caplog.records if f"context {a2.ctx} " in r.getMessage()]
    assert len(refusals) == 1 and "RESOURCES" in refusals[0].getMessage()
    for peer, spi, k in ((b, b.spi, kb), (c, c.spi, kc_out)):
        dst = B4 if peer is b else C4
        p = udp4(A4, dst, b"to " + dst.encode())
        wire = a.bfe.outbound(p).packet
        assert tdes_open(wire[20:], k)[::2] == (spi, p[20:])
        assert peer.bfe.inbound(wire).packet == p
    q = udp4(C4, A4, b"from C, in software")
    assert a.bfe.inbound(c.bfe.outbound(q).packet).packet == q
    assert nic.stats.sent == 1


@pytest.mark.parametrize("refuse", ["all", "inbound", "raise"])
def test_a_refusing_nic_leaves_everything_in_software(refuse: str, caplog: Any) -> None:
    nic = RecordingNic(refuse=refuse)
    a, b = host(A4, B4, nic), host(B4, A4)
    with caplog.at_level(logging.INFO, logger="ipsecsa.wfp.offload"):
        _, kb = establish(a, b, tdes)
    mine = [r for r in caplog.records if r.name == "ipsecsa.wfp.offload"]
    assert len(mine) == 1 and f"context {a.ctx} stays in software" in mine[0].getMessage()
    if refuse == "inbound":  # the outbound ADD succeeded: deleted again (whole or not at all)
        assert nic.oids == [Oid.TCP_TASK_IPSEC_ADD_SA, Oid.TCP_TASK_IPSEC_ADD_SA,
                            Oid.TCP_TASK_IPSEC_DELETE_SA]
    assert nic.sa_handles() == ()
    assert flags(a) == (0, 0) and offloaded_sas(a) == 0
    p = udp4(A4, B4, b"in software")
    wire = a.bfe.outbound(p).packet
    assert tdes_open(wire[20:], kb) == (b.spi, 1, p[20:])
    q = udp4(B4, A4, b"back")
    assert a.bfe.inbound(b.bfe.outbound(q).packet).packet == q
    assert nic.stats.sent == nic.stats.received == 0


@pytest.mark.parametrize("how", ["status", "raise"])
def test_a_refused_delete_is_retried_and_never_the_callers_error(how: str) -> None:
    nic = RecordingNic()
    a, b = host(A4, B4, nic), host(B4, A4)
    establish(a, b, tdes)
    nic.refuse_delete = how
    assert a.bfe.IPsecSaContextDeleteById0(a.h, a.ctx) == wfp.ERROR_SUCCESS
    assert len(nic.sa_handles()) == 2 and offloaded_sas(a) == 2  # still there, still counted
    nic.refuse_delete = ""
    assert offloaded_sas(a) == 0 and nic.sa_handles() == ()  # retried at this call
    # a hard limit reached in the data path: the refused DELETE does not escape the packet
    c, d = host(A4, B4, nic), host(B4, A4)
    establish(c, d, tdes, lifetime=wfp.IPSEC_SA_LIFETIME0(lifetimePackets=1))
    nic.refuse_delete = how
    assert c.bfe.outbound(udp4(A4, B4, b"last")).drop is None
    assert c.bfe.outbound(udp4(A4, B4, b"over")).drop is DropReason.NO_POLICY
    assert offloaded_sas(c) == 2
    nic.refuse_delete = ""
    assert offloaded_sas(c) == 1  # the outbound SA left; the inbound one lingers


def test_what_the_nic_does_not_advertise_is_never_asked() -> None:
    nic = RecordingNic(conf_algorithms=[OffloadConf.DES])  # no 3DES (A.9)
    a, b = host(A4, B4, nic), host(B4, A4)
    establish(a, b, tdes)
    assert nic.oids == [] and offloaded_sas(a) == 0


def test_engine_without_a_nic_is_unchanged_and_a_non_nic_is_refused() -> None:
    with pytest.raises(TypeError, match="capabilities"):
        wfp.Engine(offload=object())


# ---------------------------------------------------------------- SaDeleteReq (A.10)
def test_sa_delete_req_mid_stream_loses_no_packet() -> None:
    # A full NIC (room for one pair) refuses the second context's ADD with RESOURCES; it then
    # asks for room on the next packet received on the first context's inbound SA.
    nic = Miniport(capacity=2, unsafe_iv_source=ivs)
    a, b = host(A4, B4, nic), host(B4, A4)
    ka, kb = establish(a, b, tdes)
    twin = host(A4, B4, spi=a.spi)
    add(twin, tdes, a.spi, ka, b.spi, kb)
    a2, c = host(A4, C4, bfe=a.bfe), host(C4, A4)
    establish(a2, c, tdes)
    assert nic.stats.delete_requests == 0 and offloaded_sas(a) == 2
    wires_in, wires_out = [], []
    for i in range(6):
        p = udp4(A4, B4, b"out %d" % i)
        wire = a.bfe.outbound(p).packet
        assert wire == twin.bfe.outbound(p).packet  # NIC or software: the same bytes
        wires_out.append(wire)
        assert tdes_open(wire[20:], kb) == (b.spi, i + 1, p[20:])  # the numbers continue
        assert b.bfe.inbound(wire).packet == p
        q = udp4(B4, A4, b"in %d" % i)
        back = b.bfe.outbound(q).packet
        wires_in.append(back)
        assert a.bfe.inbound(back).packet == q  # the packet with SaDeleteReq is delivered too
        if i == 0:
            assert nic.stats.delete_requests == 1
            assert nic.sa_handles() == ()  # both SAs left the NIC by now
            assert flags(a) == (0, 0) and offloaded_sas(a) == 0
    assert nic.stats.sent == 1 and nic.stats.received == 1  # the first of each, then software
    _, st = a.bfe.IPsecGetStatistics1(a.h)
    assert st.outboundTrafficStatistics.offloadByteCount == len(wires_out[0])  # on the NIC
    assert st.inboundTrafficStatistics.offloadByteCount == len(wires_in[0])
    for old in wires_in:  # the replay window came along
        assert a.bfe.inbound(old).drop is DropReason.REPLAY
    _, st = a.bfe.IPsecGetStatistics1(a.h)
    assert st.inboundTrafficStatistics.totalSuccessfulPackets == 6
    assert st.aggregateDropPacketStatistics.replayCheckFailuresOnInbound == 6


def test_sa_delete_req_while_other_threads_send_loses_and_repeats_nothing() -> None:
    nic = Miniport(capacity=2, unsafe_iv_source=ivs)
    a, b = host(A4, B4, nic), host(B4, A4)
    _, kb = establish(a, b, tdes)
    establish(host(A4, C4, bfe=a.bfe), host(C4, A4), tdes)  # RESOURCES: the NIC wants room
    inbound = [b.bfe.outbound(udp4(B4, A4, b"in %d" % i)).packet for i in range(150)]
    wires: list[bytes] = []
    delivered: list[bytes] = []

    def send(tag: int) -> None:
        for i in range(150):
            r = a.bfe.outbound(udp4(A4, B4, b"out %d %d" % (tag, i)))
            assert r.drop is None
            wires.append(r.packet)

    def receive() -> None:
        for w in inbound:
            r = a.bfe.inbound(w)
            assert r.drop is None
            delivered.append(r.packet)

    threads = [threading.Thread(target=send, args=(t,)) for t in range(2)]
    threads.append(threading.Thread(target=receive))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert nic.stats.delete_requests == 1 and nic.sa_handles() == ()
    assert len(delivered) == 150
    seqs = sorted(tdes_open(w[20:], kb)[1] for w in wires)
    assert seqs == list(range(1, 301))  # every number once, across the NIC and software

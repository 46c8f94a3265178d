"""The SA-context family (reference C.2–C.6, F.4–F.8, F.11, F.13, F.14, F.16): the state machine
walked pair by pair, every transform id of C.5, key-blob and bundle rules, lifetimes and the
expire linger with an injected clock, enumeration, notifications, statistics, Update0.

Expected values come from the reference (the Windows documentation and headers it cites, and
its F.* choices); known-answer keys are random, since correctness of the bytes is proven by the
independent decryption of test_traffic.py.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

from ipsecsa import wfp
from ipsecsa.errors import DropReason
from ipsecsa.wfp.contexts import TRANSITIONS, CtxOp, CtxState

from .helpers import (
    A4,
    B4,
    add_filter,
    addr_conditions,
    ah_sa,
    bundle,
    gcm_sa,
    ip4,
    ipsec_filter,
    open_engine,
    traffic,
    udp4,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def eng(clock: Clock) -> Any:
    bfe = wfp.Engine(clock=clock)
    yield bfe
    bfe.close()


def filters(bfe: wfp.Engine, h: int, local: str = A4, remote: str = B4) -> tuple[int, int]:
    conds = addr_conditions(local, remote)
    return (add_filter(bfe, h, ipsec_filter("inbound", conds)),
            add_filter(bfe, h, ipsec_filter("outbound", conds)))


def getspi(fin: int, local: str = A4, remote: str = B4) -> wfp.IPSEC_GETSPI1:
    return wfp.IPSEC_GETSPI1(inboundIpsecTraffic=traffic(local, remote, fin),
                             ipVersion=wfp.FWP_IP_VERSION_V4)


def created(bfe: wfp.Engine, h: int) -> tuple[int, int, int]:
    fin, fout = filters(bfe, h)
    status, _, cid = bfe.IPsecSaContextCreate1(h, traffic(A4, B4, fout), None)
    assert status == 0
    return cid, fin, fout


def established(bfe: wfp.Engine, h: int, **bkw: Any) -> tuple[int, int]:
    cid, fin, _ = created(bfe, h)
    status, spi = bfe.IPsecSaContextGetSpi1(h, cid, getspi(fin))
    assert status == 0
    assert bfe.IPsecSaContextAddInbound1(h, cid, bundle(gcm_sa(spi, os.urandom(20)), **bkw)) == 0
    assert bfe.IPsecSaContextAddOutbound1(h, cid, bundle(gcm_sa(0xC1000001, os.urandom(20)),
                                                         **bkw)) == 0
    return cid, spi


# ---------------------------------------------------------------- the state machine (C.2)
def _drive(bfe: wfp.Engine, h: int, cid: int, fin: int, op: CtxOp, spi: int) -> int:
    if op is CtxOp.GET_SPI:
        return bfe.IPsecSaContextGetSpi1(h, cid, getspi(fin))[0]
    if op is CtxOp.SET_SPI:
        return bfe.IPsecSaContextSetSpi0(h, cid, getspi(fin), spi or 0xC2000001)
    if op is CtxOp.ADD_INBOUND:
        return bfe.IPsecSaContextAddInbound1(h, cid, bundle(gcm_sa(spi or 0xC2000001,
                                                                   bytes(20))))
    if op is CtxOp.ADD_OUTBOUND:
        return bfe.IPsecSaContextAddOutbound1(h, cid, bundle(gcm_sa(0xC3000001, bytes(20))))
    if op is CtxOp.UPDATE:
        return bfe.IPsecSaContextUpdate0(h, 0, wfp.IPSEC_SA_CONTEXT1(saContextId=cid))
    return bfe.IPsecSaContextExpire0(h, cid)


def _reach(bfe: wfp.Engine, h: int, state: CtxState) -> tuple[int, int, int]:
    cid, fin, _ = created(bfe, h)
    spi = 0
    path = {CtxState.CREATED: [], CtxState.SPI_ASSIGNED: [CtxOp.GET_SPI],
            CtxState.INBOUND: [CtxOp.GET_SPI, CtxOp.ADD_INBOUND],
            CtxState.ESTABLISHED: [CtxOp.GET_SPI, CtxOp.ADD_INBOUND, CtxOp.ADD_OUTBOUND],
            CtxState.EXPIRING: [CtxOp.EXPIRE]}[state]
    for op in path:
        if op is CtxOp.GET_SPI:
            status, spi = bfe.IPsecSaContextGetSpi1(h, cid, getspi(fin))
        else:
            status = _drive(bfe, h, cid, fin, op, spi)
        assert status == 0
    return cid, fin, spi


@pytest.mark.parametrize("state", list(CtxState))
@pytest.mark.parametrize("op", list(CtxOp))
def test_every_state_operation_pair(eng: wfp.Engine, state: CtxState, op: CtxOp) -> None:
    h = open_engine(eng)
    cid, fin, spi = _reach(eng, h, state)
    status = _drive(eng, h, cid, fin, op, spi)
    if (state, op) in TRANSITIONS:
        assert status == wfp.ERROR_SUCCESS
    else:
        assert status == wfp.FWP_E_INCOMPATIBLE_SA_STATE


def test_unknown_context_is_not_found_everywhere(eng: wfp.Engine) -> None:
    h = open_engine(eng)
    fin, _ = filters(eng, h)
    assert eng.IPsecSaContextGetSpi1(h, 99, getspi(fin)) == (wfp.FWP_E_NOT_FOUND, None)
    assert eng.IPsecSaContextAddInbound1(h, 99, bundle(gcm_sa(0xC0000001, bytes(20)))) \
        == wfp.FWP_E_NOT_FOUND
    assert eng.IPsecSaContextExpire0(h, 99) == wfp.FWP_E_NOT_FOUND
    assert eng.IPsecSaContextDeleteById0(h, 99) == wfp.FWP_E_NOT_FOUND
    assert eng.IPsecSaContextGetById1(h, 99) == (wfp.FWP_E_NOT_FOUND, None)
    assert eng.IPsecSaContextGetById0(h, 99) == (wfp.FWP_E_NOT_FOUND, None)


# ---------------------------------------------------------------- Create / GetSpi / SetSpi
def test_create_checks_its_filter(eng: wfp.Engine) -> None:
    h = open_engine(eng)
    fin, fout = filters(eng, h)
    assert eng.IPsecSaContextCreate1(h, None, None) == (wfp.FWP_E_NULL_POINTER, None, None)
    assert eng.IPsecSaContextCreate1(h, traffic(A4, B4, 12345), None)[0] \
        == wfp.FWP_E_FILTER_NOT_FOUND
    # The inbound filter is not an outbound IPsec filter (F.16).
    assert eng.IPsecSaContextCreate1(h, traffic(A4, B4, fin), None)[0] \
        == wfp.FWP_E_INCOMPATIBLE_LAYER
    # A transport filter named by tunnel traffic (F.22).
    assert eng.IPsecSaContextCreate1(h, traffic(A4, B4, fout, tunnel=True), None)[0] \
        == wfp.FWP_E_INCOMPATIBLE_LAYER
    bad = traffic(A4, B4, fout)
    bad.ipVersion = 7
    assert eng.IPsecSaContextCreate1(h, bad, None)[0] == wfp.FWP_E_INVALID_ENUMERATOR
    bad = traffic(A4, B4, fout)
    bad.trafficType = 2
    assert eng.IPsecSaContextCreate1(h, bad, None)[0] == wfp.FWP_E_INVALID_ENUMERATOR
    bad = traffic(A4, B4, fout)
    bad.remotePort = 70000
    assert eng.IPsecSaContextCreate1(h, bad, None)[0] == wfp.FWP_E_OUT_OF_BOUNDS
    # Nothing was created by any of these.
    _status, eh = eng.IPsecSaContextCreateEnumHandle0(h, None)
    assert eng.IPsecSaContextEnum1(h, eh, 10)[2] == 0


def test_create_returns_zero_inbound_filter_when_none_matches(eng: wfp.Engine) -> None:
    h = open_engine(eng)
    fout = add_filter(eng, h, ipsec_filter("outbound", addr_conditions(A4, B4)))
    add_filter(eng, h, ipsec_filter("inbound", addr_conditions(A4, "203.0.113.1")))
    status, cached, cid = eng.IPsecSaContextCreate1(h, traffic(A4, B4, fout), None)
    assert (status, cached) == (0, 0) and cid == 1


def test_getspi_repeats_with_same_traffic_and_refuses_other_traffic(eng: wfp.Engine) -> None:
    h = open_engine(eng)
    cid, fin, _ = created(eng, h)
    status, spi = eng.IPsecSaContextGetSpi1(h, cid, getspi(fin))
    assert status == 0
    assert eng.IPsecSaContextGetSpi1(h, cid, getspi(fin)) == (0, spi)  # F.4
    other = getspi(fin)
    other.inboundIpsecTraffic.remotePort = 53
    assert eng.IPsecSaContextGetSpi1(h, cid, other) == (wfp.FWP_E_TRAFFIC_MISMATCH, None)
    spoofed = getspi(fin)
    spoofed.rngCryptoModuleID = wfp.GUID_NULL
    assert eng.IPsecSaContextGetSpi1(h, cid, spoofed)[0] == wfp.FWP_E_RESERVED


def test_getspi_allocates_unique_spis(eng: wfp.Engine) -> None:
    h = open_engine(eng)
    fin, fout = filters(eng, h)
    spis = set()
    for _ in range(200):
        _, _, cid = eng.IPsecSaContextCreate1(h, traffic(A4, B4, fout), None)
        status, spi = eng.IPsecSaContextGetSpi1(h, cid, getspi(fin))
        assert status == 0 and 0xC0000000 <= spi <= 0xCFFFFFFF
        spis.add(spi)
    assert len(spis) == 200


def test_setspi(eng: wfp.Engine) -> None:
    h = open_engine(eng)
    c1, fin, _ = created(eng, h)
    c2, _, _ = created(eng, h)
    assert eng.IPsecSaContextSetSpi0(h, c1, getspi(fin), 200) == wfp.FWP_E_INVALID_PARAMETER
    assert eng.IPsecSaContextSetSpi0(h, c1, getspi(fin), 0x1234) == 0
    assert eng.IPsecSaContextSetSpi0(h, c2, getspi(fin), 0x1234) == wfp.FWP_E_ALREADY_EXISTS
    # The inbound bundle must carry that SPI (F.5).
    assert eng.IPsecSaContextAddInbound1(h, c1, bundle(gcm_sa(0x1235, bytes(20)))) \
        == wfp.FWP_E_INVALID_PARAMETER
    assert eng.IPsecSaContextAddInbound1(h, c1, bundle(gcm_sa(0x1234, bytes(20)))) == 0


# ---------------------------------------------------------------- transforms (C.5, F.6)
def _cipher(tid: Any, key: bytes) -> wfp.IPSEC_SA_CIPHER_INFORMATION0:
    return wfp.IPSEC_SA_CIPHER_INFORMATION0(
        cipherTransform=wfp.IPSEC_CIPHER_TRANSFORM0(cipherTransformId=tid),
        cipherKey=wfp.FWP_BYTE_BLOB(data=key))


def _auth(tid: Any, key: bytes) -> wfp.IPSEC_SA_AUTH_INFORMATION0:
    return wfp.IPSEC_SA_AUTH_INFORMATION0(
        authTransform=wfp.IPSEC_AUTH_TRANSFORM0(authTransformId=tid),
        authKey=wfp.FWP_BYTE_BLOB(data=key))


CIPHERS = [("IPSEC_CIPHER_TRANSFORM_ID_CBC_DES", 8), ("IPSEC_CIPHER_TRANSFORM_ID_CBC_3DES", 24),
           ("IPSEC_CIPHER_TRANSFORM_ID_AES_128", 16), ("IPSEC_CIPHER_TRANSFORM_ID_AES_192", 24),
           ("IPSEC_CIPHER_TRANSFORM_ID_AES_256", 32)]
AUTHS = [("IPSEC_AUTH_TRANSFORM_ID_HMAC_MD5_96", 16), ("IPSEC_AUTH_TRANSFORM_ID_HMAC_SHA_1_96", 20),
         ("IPSEC_AUTH_TRANSFORM_ID_HMAC_SHA_256_128", 32)]
GCMS = [("128", 20), ("192", 28), ("256", 36)]


def _sa_cases() -> list[tuple[str, Any]]:
    cases: list[tuple[str, Any]] = []
    for cname, clen in CIPHERS:
        for aname, alen in AUTHS:
            cases.append((f"{cname}+{aname}", lambda spi, c=cname, cl=clen, a=aname, al=alen:
                          wfp.IPSEC_SA0(spi=spi,
                                        saTransformType=wfp.IPSEC_TRANSFORM_ESP_AUTH_AND_CIPHER,
                                        espAuthAndCipherInformation=(
                                            wfp.IPSEC_SA_AUTH_AND_CIPHER_INFORMATION0(
                                                saCipherInformation=_cipher(getattr(wfp, c),
                                                                            os.urandom(cl)),
                                                saAuthInformation=_auth(getattr(wfp, a),
                                                                        os.urandom(al)))))))
    for bits, klen in GCMS:
        cases.append((f"GCM-{bits}", lambda spi, b=bits, kl=klen: wfp.IPSEC_SA0(
            spi=spi, saTransformType=wfp.IPSEC_TRANSFORM_ESP_AUTH_AND_CIPHER,
            espAuthAndCipherInformation=wfp.IPSEC_SA_AUTH_AND_CIPHER_INFORMATION0(
                saCipherInformation=_cipher(getattr(wfp, f"IPSEC_CIPHER_TRANSFORM_ID_GCM_AES_{b}"),
                                            os.urandom(kl)),
                saAuthInformation=_auth(getattr(wfp, f"IPSEC_AUTH_TRANSFORM_ID_GCM_AES_{b}"),
                                        b"")))))
        cases.append((f"GMAC-ESP-{bits}", lambda spi, b=bits, kl=klen: wfp.IPSEC_SA0(
            spi=spi, saTransformType=wfp.IPSEC_TRANSFORM_ESP_AUTH,
            espAuthInformation=_auth(getattr(wfp, f"IPSEC_AUTH_TRANSFORM_ID_GCM_AES_{b}"),
                                     os.urandom(kl)))))
        cases.append((f"GMAC-AH-{bits}", lambda spi, b=bits, kl=klen: ah_sa(
            spi, os.urandom(kl), getattr(wfp, f"IPSEC_AUTH_TRANSFORM_ID_GCM_AES_{b}"))))
    for aname, alen in AUTHS:
        cases.append((f"ESP-AUTH-{aname}", lambda spi, a=aname, al=alen: wfp.IPSEC_SA0(
            spi=spi, saTransformType=wfp.IPSEC_TRANSFORM_ESP_AUTH,
            espAuthInformation=_auth(getattr(wfp, a), os.urandom(al)))))
        cases.append((f"AH-{aname}", lambda spi, a=aname, al=alen: ah_sa(
            spi, os.urandom(al), getattr(wfp, a))))
    cases.append(("ESP-CIPHER-AES-128", lambda spi: wfp.IPSEC_SA0(
        spi=spi, saTransformType=wfp.IPSEC_TRANSFORM_ESP_CIPHER,
        espCipherInformation=_cipher(wfp.IPSEC_CIPHER_TRANSFORM_ID_AES_128, os.urandom(16)))))
    return cases


@pytest.mark.parametrize("name,make", _sa_cases(), ids=[n for n, _ in _sa_cases()])
def test_every_transform_of_c5_carries_traffic_to_a_peer(name: str, make: Any) -> None:
    a, b = wfp.Engine(), wfp.Engine()
    ha, hb = open_engine(a), open_engine(b)
    ca, fa, _ = created(a, ha)
    fin_b, fout_b = filters(b, hb, B4, A4)
    _, _, cb = b.IPsecSaContextCreate1(hb, traffic(B4, A4, fout_b), None)
    _, spa = a.IPsecSaContextGetSpi1(ha, ca, getspi(fa))
    _, spb = b.IPsecSaContextGetSpi1(hb, cb, getspi(fin_b, B4, A4))
    sa_ab = make(spb)  # a → b, the same keys on both ends
    sa_ba = make(spa)
    assert a.IPsecSaContextAddInbound1(ha, ca, bundle(sa_ba)) == 0
    assert b.IPsecSaContextAddInbound1(hb, cb, bundle(sa_ab)) == 0
    assert a.IPsecSaContextAddOutbound1(ha, ca, bundle(sa_ab)) == 0
    assert b.IPsecSaContextAddOutbound1(hb, cb, bundle(sa_ba)) == 0
    p = udp4(A4, B4, b"transform " + name.encode())
    wire = a.outbound(p)
    assert wire.drop is None and wire.packet != p
    assert b.inbound(wire.packet).packet == p
    q = udp4(B4, A4, b"reply")
    assert a.inbound(b.outbound(q).packet).packet == q
    a.close()
    b.close()


@pytest.mark.parametrize("make,status", [
    # wrong key lengths (F.6) for each half
    (lambda: wfp.IPSEC_SA0(spi=0x1000, saTransformType=wfp.IPSEC_TRANSFORM_ESP_AUTH_AND_CIPHER,
                           espAuthAndCipherInformation=wfp.IPSEC_SA_AUTH_AND_CIPHER_INFORMATION0(
                               saCipherInformation=_cipher(wfp.IPSEC_CIPHER_TRANSFORM_ID_AES_128,
                                                           bytes(15)),
                               saAuthInformation=_auth(wfp.IPSEC_AUTH_TRANSFORM_ID_HMAC_SHA_1_96,
                                                       bytes(20)))),
     wfp.FWP_E_INVALID_CIPHER_TRANSFORM),
    (lambda: ah_sa(0x1000, bytes(19)), wfp.FWP_E_INVALID_AUTH_TRANSFORM),
    # GCM key blob without its salt
    (lambda: gcm_sa(0x1000, bytes(16)), wfp.FWP_E_INVALID_CIPHER_TRANSFORM),
    # GCM cipher with an HMAC auth id, and a GCM auth id of another size
    (lambda: wfp.IPSEC_SA0(spi=0x1000, saTransformType=wfp.IPSEC_TRANSFORM_ESP_AUTH_AND_CIPHER,
                           espAuthAndCipherInformation=wfp.IPSEC_SA_AUTH_AND_CIPHER_INFORMATION0(
                               saCipherInformation=_cipher(
                                   wfp.IPSEC_CIPHER_TRANSFORM_ID_GCM_AES_128, bytes(20)),
                               saAuthInformation=_auth(wfp.IPSEC_AUTH_TRANSFORM_ID_HMAC_SHA_1_96,
                                                       bytes(20)))),
     wfp.FWP_E_INVALID_TRANSFORM_COMBINATION),
    (lambda: wfp.IPSEC_SA0(spi=0x1000, saTransformType=wfp.IPSEC_TRANSFORM_ESP_AUTH_AND_CIPHER,
                           espAuthAndCipherInformation=wfp.IPSEC_SA_AUTH_AND_CIPHER_INFORMATION0(
                               saCipherInformation=_cipher(
                                   wfp.IPSEC_CIPHER_TRANSFORM_ID_GCM_AES_128, bytes(20)),
                               saAuthInformation=_auth(wfp.IPSEC_AUTH_TRANSFORM_ID_GCM_AES_256,
                                                       b""))),
     wfp.FWP_E_INVALID_TRANSFORM_COMBINATION),
    # GCM as ESP_CIPHER only
    (lambda: wfp.IPSEC_SA0(spi=0x1000, saTransformType=wfp.IPSEC_TRANSFORM_ESP_CIPHER,
                           espCipherInformation=_cipher(wfp.IPSEC_CIPHER_TRANSFORM_ID_GCM_AES_128,
                                                        bytes(20))),
     wfp.FWP_E_INVALID_TRANSFORM_COMBINATION),
    # an unknown transform id, an out-of-range transform type, a crypto module id
    (lambda: wfp.IPSEC_SA0(spi=0x1000, saTransformType=wfp.IPSEC_TRANSFORM_ESP_CIPHER,
                           espCipherInformation=_cipher(wfp.IPSEC_CIPHER_TRANSFORM_ID0(
                               cipherType=wfp.IPSEC_CIPHER_TYPE_AES_128, cipherConfig=9),
                               bytes(16))),
     wfp.FWP_E_INVALID_CIPHER_TRANSFORM),
    (lambda: wfp.IPSEC_SA0(spi=0x1000, saTransformType=9), wfp.FWP_E_INVALID_ENUMERATOR),
    (lambda: wfp.IPSEC_SA0(spi=0x1000, saTransformType=wfp.IPSEC_TRANSFORM_AH,
                           ahInformation=wfp.IPSEC_SA_AUTH_INFORMATION0(
                               authTransform=wfp.IPSEC_AUTH_TRANSFORM0(
                                   authTransformId=wfp.IPSEC_AUTH_TRANSFORM_ID_HMAC_SHA_1_96,
                                   cryptoModuleId=wfp.GUID_NULL),
                               authKey=wfp.FWP_BYTE_BLOB(data=bytes(20)))),
     wfp.FWP_E_RESERVED),
    (lambda: wfp.IPSEC_SA0(spi=0x1000, saTransformType=wfp.IPSEC_TRANSFORM_AH),
     wfp.FWP_E_NULL_POINTER),
    (lambda: wfp.IPSEC_SA0(spi=0x1000, saTransformType=wfp.IPSEC_TRANSFORM_ESP_AUTH_FW,
                           espAuthFwInformation=_auth(wfp.IPSEC_AUTH_TRANSFORM_ID_HMAC_SHA_1_96,
                                                      bytes(20))),
     wfp.ERROR_NOT_SUPPORTED),
])
def test_bad_transforms_are_refused_and_change_nothing(eng: wfp.Engine, make: Any,
                                                       status: int) -> None:
    h = open_engine(eng)
    cid, fin, _ = created(eng, h)
    assert eng.IPsecSaContextSetSpi0(h, cid, getspi(fin), 0x1000) == 0
    assert eng.IPsecSaContextAddInbound1(h, cid, bundle(make())) == status
    _, ctx = eng.IPsecSaContextGetById1(h, cid)
    assert ctx.inboundSa is None
    # and the context can still go on
    assert eng.IPsecSaContextAddInbound1(h, cid, bundle(gcm_sa(0x1000, bytes(20)))) == 0


def test_bundle_rules(eng: wfp.Engine) -> None:
    h = open_engine(eng)
    cid, fin, _ = created(eng, h)
    assert eng.IPsecSaContextSetSpi0(h, cid, getspi(fin), 0x1000) == 0
    g = gcm_sa(0x1000, bytes(20))
    assert eng.IPsecSaContextAddInbound1(h, cid, None) == wfp.FWP_E_NULL_POINTER
    assert eng.IPsecSaContextAddInbound1(h, cid, bundle()) \
        == wfp.FWP_E_INVALID_TRANSFORM_COMBINATION
    assert eng.IPsecSaContextAddInbound1(h, cid, bundle(g, g, g)) \
        == wfp.FWP_E_INVALID_TRANSFORM_COMBINATION
    assert eng.IPsecSaContextAddInbound1(h, cid, bundle(ah_sa(0x1000, bytes(20)), g)) \
        == wfp.FWP_E_INVALID_TRANSFORM_COMBINATION  # AH must be index 1
    assert eng.IPsecSaContextAddInbound1(h, cid, bundle(g, flags=0x100)) \
        == wfp.FWP_E_INVALID_FLAGS  # 0x100 is not a documented bundle flag
    assert eng.IPsecSaContextAddInbound1(h, cid, bundle(g, numSAs=2)) \
        == wfp.FWP_E_INVALID_PARAMETER  # a count that disagrees with the list
    assert eng.IPsecSaContextAddInbound1(h, cid, bundle(g, v6=True)) \
        == wfp.FWP_E_INVALID_PARAMETER  # ipVersion other than the traffic's
    assert eng.IPsecSaContextAddInbound1(h, cid, bundle(g, numSAs=1)) == 0


# ---------------------------------------------------------------- expire, delete, lifetimes
def test_expire_lingers_sixty_seconds_then_deletes(eng: wfp.Engine, clock: Clock) -> None:
    h = open_engine(eng)
    changes: list[tuple[int, int]] = []
    assert eng.IPsecSaContextSubscribe0(
        h, wfp.IPSEC_SA_CONTEXT_SUBSCRIPTION0(),
        lambda ctx, ch: changes.append((ch.changeType, ch.saContextId)), None)[0] == 0
    cid, _ = established(eng, h)
    assert eng.IPsecSaContextExpire0(h, cid) == 0
    _, ctx = eng.IPsecSaContextGetById1(h, cid)
    assert ctx.outboundSa is None and ctx.inboundSa is not None  # F.8
    clock.now += 59
    assert eng.IPsecSaContextGetById1(h, cid)[0] == 0
    clock.now += 2
    assert eng.IPsecSaContextGetById1(h, cid) == (wfp.FWP_E_NOT_FOUND, None)
    eng.flush_notifications()
    assert changes == [(wfp.IPSEC_SA_CONTEXT_EVENT_ADD, cid),
                       (wfp.IPSEC_SA_CONTEXT_EVENT_DELETE, cid)]


def test_expired_context_still_accepts_inbound_in_flight() -> None:
    clock = Clock()
    a, b = wfp.Engine(clock=clock), wfp.Engine(clock=clock)
    ha, hb = open_engine(a), open_engine(b)
    ca, fa, _ = created(a, ha)
    fin_b, fout_b = filters(b, hb, B4, A4)
    _, _, cb = b.IPsecSaContextCreate1(hb, traffic(B4, A4, fout_b), None)
    _, spa = a.IPsecSaContextGetSpi1(ha, ca, getspi(fa))
    _, spb = b.IPsecSaContextGetSpi1(hb, cb, getspi(fin_b, B4, A4))
    k1, k2 = os.urandom(20), os.urandom(20)
    assert a.IPsecSaContextAddInbound1(ha, ca, bundle(gcm_sa(spa, k1))) == 0
    assert b.IPsecSaContextAddInbound1(hb, cb, bundle(gcm_sa(spb, k2))) == 0
    assert a.IPsecSaContextAddOutbound1(ha, ca, bundle(gcm_sa(spb, k2))) == 0
    assert b.IPsecSaContextAddOutbound1(hb, cb, bundle(gcm_sa(spa, k1))) == 0
    in_flight = b.outbound(udp4(B4, A4, b"late")).packet
    assert a.IPsecSaContextExpire0(ha, ca) == 0
    assert a.outbound(udp4(A4, B4, b"x")).drop is DropReason.NO_POLICY
    clock.now += 30
    assert a.inbound(in_flight).drop is None
    clock.now += 31
    assert a.inbound(b.outbound(udp4(B4, A4, b"too late")).packet).drop is DropReason.BAD_SPI


def test_lifetime_seconds_behaves_like_expire(eng: wfp.Engine, clock: Clock) -> None:
    h = open_engine(eng)
    cid, _ = established(eng, h, lifetime=wfp.IPSEC_SA_LIFETIME0(lifetimeSeconds=300))
    clock.now += 299
    assert eng.outbound(udp4(A4, B4, b"ok")).drop is None
    clock.now += 2
    assert eng.outbound(udp4(A4, B4, b"expired")).drop is DropReason.NO_POLICY
    _, ctx = eng.IPsecSaContextGetById1(h, cid)
    assert ctx.outboundSa is None
    clock.now += 61
    assert eng.IPsecSaContextGetById1(h, cid)[0] == wfp.FWP_E_NOT_FOUND


def test_lifetime_packets_and_kilobytes(eng: wfp.Engine) -> None:
    h = open_engine(eng)
    cid, _ = established(eng, h, lifetime=wfp.IPSEC_SA_LIFETIME0(lifetimePackets=3))
    results = [eng.outbound(udp4(A4, B4, b"p")).drop for _ in range(5)]
    assert results[:3] == [None, None, None]
    assert all(r is not None for r in results[3:])
    _, ctx = eng.IPsecSaContextGetById1(h, cid)
    assert ctx.outboundSa is None  # the context expired (F.7)
    other = wfp.Engine()
    established(other, open_engine(other), lifetime=wfp.IPSEC_SA_LIFETIME0(lifetimeKilobytes=1))
    sent = 0
    while other.outbound(udp4(A4, B4, bytes(200))).drop is None:
        sent += 1
        assert sent < 10
    assert 3 <= sent <= 5  # 1 KiB of 228-byte packets
    other.close()


def test_idle_timeout(eng: wfp.Engine, clock: Clock) -> None:
    h = open_engine(eng)
    cid, _ = established(eng, h, idleTimeoutSeconds=10)
    for _ in range(5):
        clock.now += 8
        assert eng.outbound(udp4(A4, B4, b"keep alive")).drop is None
    clock.now += 11
    assert eng.IPsecSaContextGetById1(h, cid)[1].outboundSa is None


def test_delete_removes_both_sides_at_once(eng: wfp.Engine) -> None:
    h = open_engine(eng)
    cid, _ = established(eng, h)
    assert eng.IPsecSaContextDeleteById0(h, cid) == 0
    assert eng.IPsecSaContextGetById1(h, cid)[0] == wfp.FWP_E_NOT_FOUND
    _, st = eng.IPsecGetStatistics1(h)
    assert st.aggregateSaStatistics.activeSas == 0
    assert st.aggregateSaStatistics.totalSasAdded == 2
    assert st.aggregateSaStatistics.totalSasDeleted == 2


# ---------------------------------------------------------------- reading
def test_get_by_id_0_and_1(eng: wfp.Engine) -> None:
    h = open_engine(eng)
    cid, spi = established(eng, h)
    status, c1 = eng.IPsecSaContextGetById1(h, cid)
    assert status == 0 and c1.saContextId == cid
    assert c1.inboundSa.saDirection == wfp.FWP_DIRECTION_INBOUND
    assert c1.outboundSa.saDirection == wfp.FWP_DIRECTION_OUTBOUND
    assert c1.inboundSa.saBundle.saList[0].spi == spi
    assert c1.outboundSa.traffic.localV4Address == ip4(A4)
    assert c1.outboundSa.transportFilter.layerKey == wfp.FWPM_LAYER_OUTBOUND_TRANSPORT_V4
    assert not c1.inboundSa.saBundle.flags & wfp.IPSEC_SA_BUNDLE_FLAG_SA_OFFLOADED
    assert "data=<20 bytes>" in repr(c1) and "cipherKey" in repr(c1)
    status, c0 = eng.IPsecSaContextGetById0(h, cid)
    assert status == 0 and isinstance(c0, wfp.IPSEC_SA_CONTEXT0)
    assert isinstance(c0.inboundSa.traffic, wfp.IPSEC_TRAFFIC0)
    assert isinstance(c0.inboundSa.saBundle, wfp.IPSEC_SA_BUNDLE0)
    # A returned structure is a copy: changing it changes nothing inside.
    c1.inboundSa.saBundle.saList[0].spi = 1
    assert eng.IPsecSaContextGetById1(h, cid)[1].inboundSa.saBundle.saList[0].spi == spi


def test_context_enumeration_pages_snapshots_and_templates(eng: wfp.Engine) -> None:
    h = open_engine(eng)
    ids = [created(eng, h)[0] for _ in range(5)]
    status, eh = eng.IPsecSaContextCreateEnumHandle0(h, None)
    created(eng, h)  # after the snapshot (F.14)
    got = []
    while True:
        status, entries, n = eng.IPsecSaContextEnum1(h, eh, 2)
        assert status == 0 and n == len(entries)
        got += [e.saContextId for e in entries]
        if n < 2:
            break
    assert got == ids
    assert eng.IPsecSaContextDestroyEnumHandle0(h, eh) == 0
    assert eng.IPsecSaContextEnum1(h, eh, 2) == (wfp.ERROR_INVALID_HANDLE, None, None)
    tpl = wfp.IPSEC_SA_CONTEXT_ENUM_TEMPLATE0(remoteSubNet=wfp.FWP_CONDITION_VALUE0(
        type=wfp.FWP_V4_ADDR_MASK, v4AddrMask=wfp.FWP_V4_ADDR_AND_MASK(
            addr=ip4("198.51.100.0"), mask=0xFFFFFF00)))
    status, eh = eng.IPsecSaContextCreateEnumHandle0(h, tpl)
    assert eng.IPsecSaContextEnum0(h, eh, 100)[2] == 6
    tpl.remoteSubNet.v4AddrMask.addr = ip4("203.0.113.0")
    status, eh = eng.IPsecSaContextCreateEnumHandle0(h, tpl)
    assert eng.IPsecSaContextEnum0(h, eh, 100)[2] == 0
    tpl.remoteSubNet = wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_UINT32, uint32=1)
    assert eng.IPsecSaContextCreateEnumHandle0(h, tpl) == (wfp.FWP_E_TYPE_MISMATCH, None)


def test_sa_enumeration_by_direction(eng: wfp.Engine) -> None:
    h = open_engine(eng)
    established(eng, h)
    created(eng, h)
    for direction, count in ((None, 2), (wfp.FWP_DIRECTION_INBOUND, 1),
                             (wfp.FWP_DIRECTION_OUTBOUND, 1)):
        tpl = None if direction is None else wfp.IPSEC_SA_ENUM_TEMPLATE0(saDirection=direction)
        status, eh = eng.IPsecSaCreateEnumHandle0(h, tpl)
        status, _entries, n = eng.IPsecSaEnum1(h, eh, 10)
        assert (status, n) == (0, count)
        assert eng.IPsecSaEnum0(h, eh, 10)[2] == 0  # exhausted
        assert eng.IPsecSaDestroyEnumHandle0(h, eh) == 0
    assert eng.IPsecSaCreateEnumHandle0(h, wfp.IPSEC_SA_ENUM_TEMPLATE0(saDirection=5))[0] \
        == wfp.FWP_E_INVALID_ENUMERATOR


def test_subscriptions(eng: wfp.Engine) -> None:
    h = open_engine(eng)
    seen: list[Any] = []
    threads: set[int] = set()

    def cb(context: Any, change: Any) -> None:
        threads.add(threading.get_ident())
        seen.append((context, change.changeType, change.saContextId))

    sub = wfp.IPSEC_SA_CONTEXT_SUBSCRIPTION0(flags=1)
    assert eng.IPsecSaContextSubscribe0(h, sub, cb, "ctx")[0] == wfp.FWP_E_RESERVED
    status, ev = eng.IPsecSaContextSubscribe0(h, wfp.IPSEC_SA_CONTEXT_SUBSCRIPTION0(), cb,
                                              "ctx")
    assert status == 0
    status, entries, n = eng.IPsecSaContextSubscriptionsGet0(h)
    assert n == 1 and entries[0].sessionKey != wfp.GUID_NULL
    cid, _ = established(eng, h)
    assert eng.IPsecSaContextDeleteById0(h, cid) == 0
    eng.flush_notifications()
    assert seen == [("ctx", wfp.IPSEC_SA_CONTEXT_EVENT_ADD, cid),
                    ("ctx", wfp.IPSEC_SA_CONTEXT_EVENT_DELETE, cid)]
    assert threading.get_ident() not in threads  # F.13: a worker thread
    assert eng.IPsecSaContextUnsubscribe0(h, ev) == 0
    assert eng.IPsecSaContextUnsubscribe0(h, ev) == wfp.ERROR_INVALID_HANDLE
    assert eng.IPsecSaContextUnsubscribe0(h, None) == 0
    created(eng, h)
    eng.flush_notifications()
    assert len(seen) == 2


def test_update0(eng: wfp.Engine) -> None:
    h = open_engine(eng)
    cid, _ = established(eng, h)
    _, ctx = eng.IPsecSaContextGetById1(h, cid)
    ctx.outboundSa.saBundle.flags = wfp.IPSEC_SA_BUNDLE_FLAG_CLEAR_DF_ON_TUNNEL
    ctx.outboundSa.saBundle.mmSaId = 77
    flags = wfp.IPSEC_SA_BUNDLE_UPDATE_FLAGS | wfp.IPSEC_SA_BUNDLE_UPDATE_MM_SA_ID
    assert eng.IPsecSaContextUpdate0(h, 0x80, ctx) == wfp.FWP_E_INVALID_FLAGS
    assert eng.IPsecSaContextUpdate0(h, flags, None) == wfp.FWP_E_NULL_POINTER
    assert eng.IPsecSaContextUpdate0(h, flags, ctx) == 0
    _, after = eng.IPsecSaContextGetById1(h, cid)
    assert after.outboundSa.saBundle.flags == wfp.IPSEC_SA_BUNDLE_FLAG_CLEAR_DF_ON_TUNNEL
    assert after.outboundSa.saBundle.mmSaId == 77
    assert after.inboundSa.saBundle.mmSaId == 0  # each side from its own details
    ctx.outboundSa.traffic.remotePort = 53
    ctx.inboundSa = None
    assert eng.IPsecSaContextUpdate0(h, wfp.IPSEC_SA_DETAILS_UPDATE_TRAFFIC, ctx) == 0
    assert eng.outbound(udp4(A4, B4, b"dns?", dport=53)).drop is None
    assert eng.outbound(udp4(A4, B4, b"other", dport=54)).drop is DropReason.NO_POLICY
    assert eng.IPsecSaContextUpdate0(h, wfp.IPSEC_SA_DETAILS_UPDATE_UDP_ENCAPSULATION, ctx) \
        == wfp.ERROR_NOT_SUPPORTED


def test_statistics_need_no_transaction(eng: wfp.Engine) -> None:
    h = open_engine(eng)
    established(eng, h)
    status, st0 = eng.IPsecGetStatistics0(h)
    assert status == 0 and isinstance(st0, wfp.IPSEC_STATISTICS0)
    assert st0.aggregateSaStatistics.activeSas == 2
    assert eng.FwpmTransactionBegin0(h, 0) == 0
    assert eng.IPsecGetStatistics1(h) == (wfp.FWP_E_TXN_IN_PROGRESS, None)
    assert eng.FwpmTransactionAbort0(h) == 0


def test_a_due_timer_looks_only_at_the_contexts_it_is_for(eng: wfp.Engine, clock: Clock,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """Timers are kept in a heap: when one comes due, the engine looks at the contexts whose
    timers came up, not at every context (a gateway of 100,000 contexts with lifetimes has
    one due every few milliseconds)."""
    h = open_engine(eng)
    late = [established(eng, h, lifetime=wfp.IPSEC_SA_LIFETIME0(lifetimeSeconds=3600))[0]
            for _ in range(40)]
    soon, _ = established(eng, h, lifetime=wfp.IPSEC_SA_LIFETIME0(lifetimeSeconds=10))
    idle, _ = established(eng, h, idleTimeoutSeconds=20)
    looked: list[int] = []
    real = eng._tick_ctx
    monkeypatch.setattr(eng, "_tick_ctx", lambda ctx, now: (looked.append(ctx.id),
                                                             real(ctx, now))[1])
    clock.now += 11
    assert eng.IPsecSaContextGetById1(h, soon)[1].outboundSa is None  # expired on time
    assert looked == [soon]
    looked.clear()
    clock.now += 10  # the idle one's timer, and nothing else
    assert eng.IPsecSaContextGetById1(h, idle)[1].outboundSa is None
    assert looked == [idle]
    looked.clear()
    clock.now += 3600
    assert eng.IPsecGetStatistics1(h)[0] == 0  # any call runs the due timers
    assert sorted(looked) == sorted(late + [soon, idle])  # lifetimes, and the two lingers
    assert all(eng.IPsecSaContextGetById1(h, c)[1].outboundSa is None for c in late)

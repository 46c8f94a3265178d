"""SAs an Add leaves unbuilt (issue 12: ``contexts.AddedSas``): IPsecSaContextAddInbound*/
AddOutbound* and ``add_inbound_sas``/``add_outbound_sas`` check the SAs and keep their
descriptions; the data-path objects are built at first need (a packet either way, an offload).

The Add no longer parses the descriptions of a Windows bundle (``parse_sa``) nor builds the SAs
(``from_config``), so the first test is the proof that it needs neither: over random bundles of
every transform type, cipher and auth id (valid or not), key-blob size, SPI, lifetime, flag,
IP version, mode and UDP encapsulation, the engine's verdict (status and field) is the one the
former Add gave, computed here the former way (``check_bundle``, then each SA described and
built by ``SecurityAssociation.from_dict``, then ``Bundle``), and every SA it accepts builds,
field for field the SA the former way built. The second does the same for described SAs: every
configuration ``parse_sa`` accepts, ``from_config`` builds.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import pytest

from ipsecsa import wfp
from ipsecsa.config import parse_sa
from ipsecsa.crypto.algorithms import list_algorithms
from ipsecsa.crypto.transforms import COUNTER_IV
from ipsecsa.datapath import native
from ipsecsa.datapath.sa import SecurityAssociation
from ipsecsa.errors import ConfigError, DropReason
from ipsecsa.sad import Bundle, SadError
from ipsecsa.wfp.contexts import UNBUILT
from ipsecsa.wfp.sabuild import check_bundle, describe
from ipsecsa.wfp.status import Fail

from .helpers import (
    A4,
    A6,
    B4,
    B6,
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

CIPHER_IDS = [(getattr(wfp, f"IPSEC_CIPHER_TRANSFORM_ID_{n}"), size) for n, size in (
    ("CBC_DES", 8), ("CBC_3DES", 24), ("AES_128", 16), ("AES_192", 24), ("AES_256", 32),
    ("GCM_AES_128", 20), ("GCM_AES_192", 28), ("GCM_AES_256", 36))]
AUTH_IDS = [(getattr(wfp, f"IPSEC_AUTH_TRANSFORM_ID_{n}"), size) for n, size in (
    ("HMAC_MD5_96", 16), ("HMAC_SHA_1_96", 20), ("HMAC_SHA_256_128", 32),
    ("GCM_AES_128", 20), ("GCM_AES_192", 28), ("GCM_AES_256", 36))]
ODD_SIZES = (0, 1, 8, 15, 16, 19, 20, 24, 28, 32, 36, 40)
TRANSFORMS = (wfp.IPSEC_TRANSFORM_AH, wfp.IPSEC_TRANSFORM_ESP_AUTH, wfp.IPSEC_TRANSFORM_ESP_CIPHER,
              wfp.IPSEC_TRANSFORM_ESP_AUTH_AND_CIPHER)


def _cipher(rng: random.Random) -> tuple[Any, bytes]:
    if rng.random() < 0.08:
        tid = wfp.IPSEC_CIPHER_TRANSFORM_ID0(cipherType=rng.randrange(0, 10),
                                             cipherConfig=rng.randrange(0, 12))
        return tid, os.urandom(rng.choice(ODD_SIZES))
    tid, size = rng.choice(CIPHER_IDS)
    return tid, os.urandom(size if rng.random() < 0.7 else rng.choice(ODD_SIZES))


def _auth(rng: random.Random, cipher_key: bytes | None = None) -> tuple[Any, bytes]:
    if rng.random() < 0.08:
        tid = wfp.IPSEC_AUTH_TRANSFORM_ID0(authType=rng.randrange(0, 8),
                                           authConfig=rng.randrange(0, 8))
        return tid, os.urandom(rng.choice(ODD_SIZES))
    tid, size = rng.choice(AUTH_IDS)
    if cipher_key is not None and rng.random() < 0.6:  # a GCM auth id beside its cipher
        return tid, rng.choice((b"", cipher_key))
    return tid, os.urandom(size if rng.random() < 0.7 else rng.choice(ODD_SIZES))


def _cinfo(tid: Any, key: bytes) -> wfp.IPSEC_SA_CIPHER_INFORMATION0:
    return wfp.IPSEC_SA_CIPHER_INFORMATION0(
        cipherTransform=wfp.IPSEC_CIPHER_TRANSFORM0(cipherTransformId=tid),
        cipherKey=wfp.FWP_BYTE_BLOB(data=key))


def _ainfo(tid: Any, key: bytes) -> wfp.IPSEC_SA_AUTH_INFORMATION0:
    return wfp.IPSEC_SA_AUTH_INFORMATION0(
        authTransform=wfp.IPSEC_AUTH_TRANSFORM0(authTransformId=tid),
        authKey=wfp.FWP_BYTE_BLOB(data=key))


def random_sa(rng: random.Random, spi: int, transform: int | None = None) -> wfp.IPSEC_SA0:
    t = transform if transform is not None else rng.choice(TRANSFORMS)
    if t == wfp.IPSEC_TRANSFORM_AH:
        return wfp.IPSEC_SA0(spi=spi, saTransformType=t, ahInformation=_ainfo(*_auth(rng)))
    if t == wfp.IPSEC_TRANSFORM_ESP_AUTH:
        return wfp.IPSEC_SA0(spi=spi, saTransformType=t, espAuthInformation=_ainfo(*_auth(rng)))
    if t == wfp.IPSEC_TRANSFORM_ESP_CIPHER:
        return wfp.IPSEC_SA0(spi=spi, saTransformType=t,
                             espCipherInformation=_cinfo(*_cipher(rng)))
    ctid, ckey = _cipher(rng)
    atid, akey = _auth(rng, ckey)
    return wfp.IPSEC_SA0(spi=spi, saTransformType=t,
                         espAuthAndCipherInformation=wfp.IPSEC_SA_AUTH_AND_CIPHER_INFORMATION0(
                             saCipherInformation=_cinfo(ctid, ckey),
                             saAuthInformation=_ainfo(atid, akey)))


def _u32(rng: random.Random) -> int:
    return rng.choice((0, 0, 1, rng.randrange(1, 100_000), 0xFFFFFFFF))


def random_bundle(rng: random.Random, spi: int, v6: bool) -> wfp.IPSEC_SA_BUNDLE1:
    if rng.random() < 0.05:
        spi = rng.randrange(0, 256)
    sas = [random_sa(rng, spi)]
    if rng.random() < 0.25:  # a second SA: AH (mostly), after ESP (mostly)
        second = random_sa(rng, spi, wfp.IPSEC_TRANSFORM_AH if rng.random() < 0.9 else None)
        sas = [second, sas[0]] if rng.random() < 0.1 else [sas[0], second]
    lifetime = None if rng.random() < 0.3 else wfp.IPSEC_SA_LIFETIME0(
        lifetimeSeconds=_u32(rng), lifetimeKilobytes=_u32(rng), lifetimePackets=_u32(rng))
    flags = 0 if rng.random() < 0.8 else rng.choice((0x1, 0x40, 0x1000, 0x100))
    return bundle(*sas, v6=v6 if rng.random() < 0.97 else not v6, lifetime=lifetime, flags=flags,
                  idleTimeoutSeconds=_u32(rng))


class World:
    """One engine with an IPsec filter pair per (IP version, mode), on which contexts of every
    kind are made."""

    def __init__(self, bfe: wfp.Engine) -> None:
        self.bfe = bfe
        self.h = open_engine(bfe)
        self.filters: dict[tuple[bool, bool], tuple[int, int]] = {}
        for v6 in (False, True):
            for tunnel in (False, True):
                local, remote = (A6, B6) if v6 else (A4, B4)
                conds = addr_conditions(local, remote)
                self.filters[(v6, tunnel)] = (
                    add_filter(bfe, self.h, ipsec_filter("inbound", conds, v6=v6, tunnel=tunnel)),
                    add_filter(bfe, self.h, ipsec_filter("outbound", conds, v6=v6,
                                                         tunnel=tunnel)))

    def context(self, v6: bool, tunnel: bool, encap: tuple[int, int] | None
                ) -> tuple[int, int | None]:
        """A new context with its SPI: (id, SPI); None if GetSpi refused the encapsulation."""
        local, remote = (A6, B6) if v6 else (A4, B4)
        fin, fout = self.filters[(v6, tunnel)]
        status, _, cid = self.bfe.IPsecSaContextCreate1(
            self.h, traffic(local, remote, fout, tunnel=tunnel), None)
        assert status == 0
        getspi = wfp.IPSEC_GETSPI1(
            inboundIpsecTraffic=traffic(local, remote, fin, tunnel=tunnel),
            ipVersion=wfp.FWP_IP_VERSION_V6 if v6 else wfp.FWP_IP_VERSION_V4,
            inboundUdpEncapsulation=None if encap is None else wfp.IPSEC_V4_UDP_ENCAPSULATION0(
                localUdpEncapPort=encap[0], remoteUdpEncapPort=encap[1]))
        status, spi = self.bfe.IPsecSaContextGetSpi1(self.h, cid, getspi)
        if status:
            assert status == wfp.FWP_E_INVALID_PARAMETER and 0 in encap  # type: ignore[operator]
            return cid, None
        return cid, spi


def former_add(ctx: Any, b: wfp.IPSEC_SA_BUNDLE1, inbound: bool
               ) -> tuple[tuple[int, str], list[SecurityAssociation]]:
    """The verdict of the Add as it was before its SAs were left unbuilt, and the SAs it built:
    check_bundle, the context checks, each SA described and built (parse_sa and all), Bundle."""
    try:
        spec = check_bundle(b, True)
    except Fail as f:
        return (f.status, f.field), []
    if b.ipVersion != (wfp.FWP_IP_VERSION_V4 if ctx.version == 4 else wfp.FWP_IP_VERSION_V6):
        return (wfp.FWP_E_INVALID_PARAMETER, "ipVersion"), []
    if inbound and any(spi != ctx.spi for spi in spec.spis):
        return (wfp.FWP_E_INVALID_PARAMETER, "spi"), []
    import ipaddress

    local, remote = (str(ipaddress.ip_address(a)) for a in (ctx.local, ctx.remote))
    direction = "inbound" if inbound else "outbound"
    sas = []
    for part, spi in zip(spec.sas, spec.spis, strict=True):
        d = describe(part, spi, direction, "tunnel" if ctx.tunnel else "transport", local,
                     remote, ctx.udp_encap, spec)
        try:
            sas.append(SecurityAssociation.from_dict(d, now=0.0))
        except ConfigError as exc:
            return (wfp.FWP_E_INVALID_PARAMETER, exc.field), []
    try:
        Bundle(tuple(sas))
    except SadError:
        return (wfp.FWP_E_INVALID_TRANSFORM_COMBINATION, ""), []
    return (0, ""), sas


def config_warnings(caplog: pytest.LogCaptureFixture, since: int) -> list[str]:
    return [r.getMessage() for r in caplog.records[since:] if r.name == "ipsecsa.config"]


def _same_sas(built: Any, expected: list[SecurityAssociation]) -> None:
    assert [sa.to_dict() for sa in built.sas] == [sa.to_dict() for sa in expected]
    assert [type(sa) for sa in built.sas] == [type(sa) for sa in expected]


def test_an_add_refuses_exactly_what_the_build_would_and_what_it_accepts_builds(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    rng = random.Random(0x12C)
    bfe = wfp.Engine()
    world = World(bfe)
    verdicts: dict[str, int] = {}
    accepted_kinds: set[tuple[Any, ...]] = set()
    for _ in range(1500):
        v6 = rng.random() < 0.3
        tunnel = rng.random() < 0.4
        encap = None if v6 or rng.random() < 0.7 else (
            rng.choice((0, 1, 4500, 65535, rng.randrange(1, 65536))),
            rng.choice((0, 1, 4500, 65535, rng.randrange(1, 65536))))
        cid, spi = world.context(v6, tunnel, encap)
        if spi is None:  # ports GetSpi refuses (0): they never reach an Add
            bfe.IPsecSaContextDeleteById0(world.h, cid)
            continue
        ctx = bfe._contexts[cid]
        for inbound in (True, False):
            b = random_bundle(rng, spi if inbound else rng.randrange(256, 1 << 32), v6)
            mark = len(caplog.records)
            want, sas = former_add(ctx, b, inbound)
            warned = config_warnings(caplog, mark)
            mark = len(caplog.records)
            add = bfe.IPsecSaContextAddInbound1 if inbound else bfe.IPsecSaContextAddOutbound1
            status = add(world.h, cid, b)
            failure = bfe.last_failure()
            got = (status, failure.field if failure is not None else "")
            assert got == want, (b, inbound, v6, tunnel, encap)
            # The format's warnings (legacy algorithms, encryption without integrity): the
            # same, at the Add, as when the Add parsed the descriptions.
            assert config_warnings(caplog, mark) == warned
            verdicts[f"0x{status:08X}"] = verdicts.get(f"0x{status:08X}", 0) + 1
            if status:
                if inbound:
                    break  # the context cannot go on to AddOutbound
                continue
            name = "inbound_bundle" if inbound else "outbound_bundle"
            assert ctx.built(name) is UNBUILT  # the Add built nothing
            _same_sas(getattr(ctx, name), sas)  # ... and the build makes what the Add did
            accepted_kinds.add((v6, tunnel, encap is not None, len(sas),
                                tuple(sa.config.protocol for sa in sas),
                                sas[0].config.encryption and sas[0].config.encryption.name))
        bfe.IPsecSaContextDeleteById0(world.h, cid)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("legacy" in m for m in config_warnings(caplog, 0))
    assert any("encryption-only" in m for m in config_warnings(caplog, 0))
    # The cases covered what they were made to: acceptances of every kind, and refusals of
    # each status the Add gives, the bundle rule (UDP encapsulation beside AH) included.
    assert verdicts["0x00000000"] > 500
    for status in (wfp.FWP_E_INVALID_PARAMETER, wfp.FWP_E_INVALID_TRANSFORM_COMBINATION,
                   wfp.FWP_E_INVALID_CIPHER_TRANSFORM, wfp.FWP_E_INVALID_AUTH_TRANSFORM,
                   wfp.FWP_E_INVALID_ENUMERATOR, wfp.FWP_E_INVALID_FLAGS):
        assert verdicts.get(f"0x{status:08X}", 0) > 0, hex(status)
    assert {k[:3] for k in accepted_kinds} >= {(False, False, False), (False, True, False),
                                               (True, False, False), (True, True, False),
                                               (False, False, True), (False, True, True)}
    assert {k[4] for k in accepted_kinds} >= {("esp",), ("ah",), ("esp", "ah")}
    names = {k[5] for k in accepted_kinds}
    assert names >= {"des-cbc", "3des-cbc", "aes-cbc", "aes-gcm-16", "null", "null-aes-gmac"}
    bfe.close()


def test_every_configuration_the_format_accepts_builds() -> None:
    """add_inbound_sas/add_outbound_sas keep their validated configurations and build them
    later: every algorithm pair of the table at every key length it accepts, each protocol,
    direction and mode, ESN or not, parses and then builds."""
    algs = list_algorithms()
    encs = [a for a in algs if a["kind"] == "encryption"]
    integs = [a for a in algs if a["kind"] == "integrity"] + [None]
    parsed = 0
    for protocol in ("esp", "ah"):
        for enc in encs if protocol == "esp" else [None]:
            for integ in integs:
                for ekey in (enc["key_lengths"] if enc else [None]):  # type: ignore[union-attr]
                    for ikey in (integ["key_lengths"] if integ else [None]):  # type: ignore
                        for direction, mode, esn in (("inbound", "transport", False),
                                                     ("outbound", "tunnel", True)):
                            d: dict[str, Any] = {
                                "spi": 0x1234, "protocol": protocol, "mode": mode,
                                "direction": direction, "src": A4, "dst": B4, "esn": esn}
                            if enc is not None:
                                d["encryption"] = {"algorithm": enc["name"],
                                                   "key": os.urandom(ekey or 0).hex()}
                            if integ is not None:
                                d["integrity"] = {"algorithm": integ["name"],
                                                  "key": os.urandom(ikey or 0).hex()}
                            try:
                                cfg = parse_sa(d)
                            except ConfigError:
                                continue
                            parsed += 1
                            sa = SecurityAssociation.from_config(cfg, now=0.0)
                            assert sa.to_dict()["spi"] == 0x1234
    assert parsed > 100


# ------------------------------------------------------------------------- the unbuilt SAs
def _context_with_spi(bfe: wfp.Engine, h: int, local: str, remote: str) -> tuple[int, int]:
    """Its two IPsec filters, Create and GetSpi: (the context's id, its inbound SPI)."""
    fin = add_filter(bfe, h, ipsec_filter("inbound", addr_conditions(local, remote)))
    fout = add_filter(bfe, h, ipsec_filter("outbound", addr_conditions(local, remote)))
    status, _, cid = bfe.IPsecSaContextCreate1(h, traffic(local, remote, fout), None)
    assert status == 0
    status, spi = bfe.IPsecSaContextGetSpi1(h, cid, wfp.IPSEC_GETSPI1(
        inboundIpsecTraffic=traffic(local, remote, fin), ipVersion=wfp.FWP_IP_VERSION_V4))
    assert status == 0
    return cid, spi


def established(bfe: wfp.Engine, h: int, seconds: int = 0) -> tuple[int, int]:
    cid, spi = _context_with_spi(bfe, h, A4, B4)
    life = wfp.IPSEC_SA_LIFETIME0(lifetimeSeconds=seconds) if seconds else None
    assert bfe.IPsecSaContextAddInbound1(h, cid, bundle(gcm_sa(spi, bytes(20)),
                                                        lifetime=life)) == 0
    assert bfe.IPsecSaContextAddOutbound1(h, cid, bundle(gcm_sa(0xC0FFEE01, bytes(20)),
                                                         lifetime=life)) == 0
    return cid, spi


def _count_builds(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    built: list[Any] = []
    real = SecurityAssociation.from_config.__func__  # type: ignore[attr-defined]

    def counting(cls: Any, cfg: Any, **kw: Any) -> Any:
        built.append(cfg.spi)
        return real(cls, cfg, **kw)

    monkeypatch.setattr(SecurityAssociation, "from_config", classmethod(counting))
    return built


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "durable"])
def test_delete_expire_and_linger_never_build_unbuilt_sas(
        tmp_path: Path, durable: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    bfe = wfp.Engine(database=tmp_path / "d.db" if durable else None, clock=clock)
    h = open_engine(bfe)
    built = _count_builds(monkeypatch)
    deleted, _ = established(bfe, h)
    expired, _ = established(bfe, h)
    lapsed, _ = established(bfe, h, seconds=30)
    assert built == []
    assert bfe.IPsecSaContextDeleteById0(h, deleted) == 0
    assert bfe.IPsecSaContextExpire0(h, expired) == 0
    _, ctx = bfe.IPsecSaContextGetById1(h, expired)
    assert ctx.outboundSa is None and ctx.inboundSa is not None  # F.8, as ever
    clock.now += 31  # the lifetime of the third ends: it expires, and lingers
    assert bfe.IPsecSaContextGetById1(h, lapsed)[1].outboundSa is None
    clock.now += 61  # both lingers end
    _, stats = bfe.IPsecGetStatistics1(h)
    assert bfe.IPsecSaContextGetById1(h, expired)[0] == wfp.FWP_E_NOT_FOUND
    assert bfe.IPsecSaContextGetById1(h, lapsed)[0] == wfp.FWP_E_NOT_FOUND
    assert built == []  # nothing was built to be thrown away
    agg = stats.aggregateSaStatistics
    assert (agg.totalSasAdded, agg.totalSasDeleted, agg.activeSas) == (6, 6, 0)
    assert stats.outboundTrafficStatistics.totalSuccessfulPackets == 0
    assert len(bfe._sad) == 0 and not bfe._sad._encap_ports
    bfe.close()


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "durable"])
def test_packets_build_the_sas_with_lifetimes_from_the_add(
        tmp_path: Path, durable: bool) -> None:
    """Built by the first packet each way (native route included), counting their lifetimes
    from the Add: a soft lifetime of 10 s, 15 s after the Add, is crossed at the first packet;
    a durable engine arms the outbound SA's sequence-number reservation at the build."""
    clock = Clock()
    a = wfp.Engine(database=tmp_path / "a.db" if durable else None, clock=clock)
    b = wfp.Engine(clock=clock)
    ha, hb = open_engine(a), open_engine(b)
    life = {"soft": {"seconds": 10}}
    ca, _ = _context_with_spi(a, ha, A4, B4)
    cb, _ = _context_with_spi(b, hb, B4, A4)
    spi_a, spi_b = a._contexts[ca].spi, b._contexts[cb].spi
    key_ab, key_ba = os.urandom(20).hex(), os.urandom(20).hex()

    def gcm(spi: int, src: str, dst: str, key: str) -> dict[str, Any]:
        return {"spi": spi, "protocol": "esp", "src": src, "dst": dst, "lifetime": life,
                "encryption": {"algorithm": "aes-gcm-16", "key": key}}

    assert a.add_inbound_sas(ha, ca, [gcm(spi_a, B4, A4, key_ba)]) == 0
    assert a.add_outbound_sas(ha, ca, [gcm(spi_b, A4, B4, key_ab)]) == 0
    assert b.add_inbound_sas(hb, cb, [gcm(spi_b, A4, B4, key_ab)]) == 0
    assert b.add_outbound_sas(hb, cb, [gcm(spi_a, B4, A4, key_ba)]) == 0
    ctx = a._contexts[ca]
    assert ctx.built("inbound_bundle") is UNBUILT and ctx.built("outbound_bundle") is UNBUILT
    _, view = a.sa_context_view(ha, ca)
    assert [s["state"] for s in view["outbound"]] == ["mature"]
    clock.now += 15
    for i in range(3):
        p = udp4(A4, B4, b"out %d" % i)
        wire = a.outbound(p)
        assert wire.drop is None
        assert b.inbound(wire.packet).packet == p
        q = udp4(B4, A4, b"in %d" % i)
        assert a.inbound(b.outbound(q).packet).packet == q
    assert ctx.built("inbound_bundle") is not UNBUILT
    out = ctx.built("outbound_bundle")
    assert out is not UNBUILT and out.sas[0].packets == 3
    _, view = a.sa_context_view(ha, ca)
    assert [s["state"] for s in view["outbound"] + view["inbound"]] == ["dying", "dying"]
    if durable:
        assert type(out.sas[0].seq_limit_hook).__name__ == "_Reservation"
        reserved = a._store.sa_state(ca, "out")  # type: ignore[union-attr]
        assert reserved[0][0] >= 3  # reserved (and synced) before the numbers went out
    a.close()
    b.close()


def test_a_build_that_fails_is_logged_and_its_packets_dropped_and_counted(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing the Add accepted fails to build (the tests above), but a build may still meet
    a failure of its own (OpenSSL, memory): the packet is dropped and counted, the failure
    logged, and the engine goes on (other contexts, the broken one's delete)."""
    a, b = wfp.Engine(), wfp.Engine()
    ha, hb = open_engine(a), open_engine(b)
    ca, spi_a = established(a, ha)
    _peer(b, hb, spi_a)
    real = SecurityAssociation.from_config.__func__  # type: ignore[attr-defined]

    def broken(cls: Any, cfg: Any, **kw: Any) -> Any:
        raise MemoryError("no memory for the cipher context")

    monkeypatch.setattr(SecurityAssociation, "from_config", classmethod(broken))
    with caplog.at_level(logging.ERROR):
        for i in range(3):  # each packet tries the build again; the error is logged once
            out = a.outbound(udp4(A4, B4, b"x"))
            wire = b.outbound(udp4(B4, A4, b"y", sport=5000 + i))  # b's SAs are built
            assert wire.drop is None
            got = a.inbound(wire.packet)
            assert out.drop is DropReason.NO_POLICY and got.drop is DropReason.BAD_SPI
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2 and all("cannot be built" in r.getMessage() for r in errors)
    assert all(r.exc_info for r in errors)  # with the failure itself
    _, stats = a.IPsecGetStatistics1(ha)
    assert stats.aggregateDropPacketStatistics.invalidSpisOnInbound == 3
    monkeypatch.setattr(SecurityAssociation, "from_config", classmethod(real))
    p = udp4(A4, B4, b"after")
    wire = a.outbound(p)  # built now that it can be
    assert wire.drop is None and b.inbound(wire.packet).packet == p
    assert a.IPsecSaContextDeleteById0(ha, ca) == 0
    a.close()
    b.close()


def _peer(bfe: wfp.Engine, h: int, peer_spi: int) -> tuple[int, int]:
    fin = add_filter(bfe, h, ipsec_filter("inbound", addr_conditions(B4, A4)))
    fout = add_filter(bfe, h, ipsec_filter("outbound", addr_conditions(B4, A4)))
    _, _, cid = bfe.IPsecSaContextCreate1(h, traffic(B4, A4, fout), None)
    spi = 0xC0FFEE01  # what the other side sends to
    assert bfe.IPsecSaContextSetSpi0(h, cid, wfp.IPSEC_GETSPI1(
        inboundIpsecTraffic=traffic(B4, A4, fin), ipVersion=wfp.FWP_IP_VERSION_V4), spi) == 0
    assert bfe.IPsecSaContextAddInbound1(h, cid, bundle(gcm_sa(spi, bytes(20)))) == 0
    assert bfe.IPsecSaContextAddOutbound1(h, cid, bundle(gcm_sa(peer_spi, bytes(20)))) == 0
    ctx = bfe._contexts[cid]
    ctx.inbound_bundle, ctx.outbound_bundle  # noqa: B018 - built now
    return cid, spi


@pytest.mark.parametrize("path", [None, False], ids=["default", "python"])
def test_the_known_answer_hook_is_tried_at_the_add(path: bool | None) -> None:
    """``unsafe_iv_source`` (known-answer tests only) is refused for a CBC SA by the SA's
    build (on the Python path; a native SA builds its Python transform, which refuses it,
    only if it ever takes that path): an engine with the hook tries the build at the Add,
    which reports what that build says, as when the Add built the SAs."""
    old = native.set_default(path)
    try:
        bfe = wfp.Engine()
        bfe._unsafe_iv_source = COUNTER_IV
        h = open_engine(bfe)
        fin = add_filter(bfe, h, ipsec_filter("inbound", addr_conditions(A4, B4)))
        fout = add_filter(bfe, h, ipsec_filter("outbound", addr_conditions(A4, B4)))
        _, _, cid = bfe.IPsecSaContextCreate1(h, traffic(A4, B4, fout), None)
        _, spi = bfe.IPsecSaContextGetSpi1(h, cid, wfp.IPSEC_GETSPI1(
            inboundIpsecTraffic=traffic(A4, B4, fin), ipVersion=wfp.FWP_IP_VERSION_V4))
        desc = {"spi": spi, "protocol": "esp", "direction": "inbound", "src": B4, "dst": A4,
                "encryption": {"algorithm": "aes-cbc", "key": os.urandom(16).hex()},
                "integrity": {"algorithm": "hmac-sha256-128", "key": os.urandom(32).hex()}}
        try:
            SecurityAssociation.from_dict(desc, unsafe_iv_source=COUNTER_IV)
            refused = False
        except ConfigError as exc:
            assert exc.field == "unsafe_iv_source"
            refused = True
        assert refused == (path is False or not native.available())
        cbc = cbc_sha1_sa(spi, os.urandom(16), os.urandom(20))
        status = bfe.IPsecSaContextAddInbound1(h, cid, bundle(cbc))
        assert status == (wfp.FWP_E_INVALID_PARAMETER if refused else 0)
        if refused:
            assert bfe.last_failure().field == "unsafe_iv_source"  # type: ignore[union-attr]
            assert bfe.add_inbound_sas(h, cid, [desc]) == wfp.FWP_E_INVALID_PARAMETER
            assert bfe.last_failure().field == \
                "descriptions[0].unsafe_iv_source"  # type: ignore[union-attr]
            assert bfe.IPsecSaContextAddInbound1(h, cid, bundle(gcm_sa(spi, bytes(20)))) == 0
        bfe.close()
    finally:
        native.set_default(old)

"""Deferred inbound bundles (SaDatabase.add_inbound_deferred): installed as a promise, built by
the first lookup that needs them, then exactly like add_inbound's. Real SAs throughout; the
packets are made by the matching outbound SAs (their wire format is checked against scapy in
test_database.py)."""

from __future__ import annotations

import ipaddress
import threading

import pytest
from sad.test_database import HOST_A, HOST_B, pair, sa, tcp, udp

from ipsecsa.errors import DropReason
from ipsecsa.sad import Bundle, SaDatabase, SadError


def packed(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


class Builder:
    """A build callback that counts its calls."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.calls = 0

    def __call__(self) -> Bundle:
        self.calls += 1
        return self.bundle


def test_the_first_packet_builds_the_bundle_once_and_then_it_is_an_ordinary_entry() -> None:
    out, inb = pair(0x2001)
    sad = SaDatabase()
    build = Builder(Bundle((inb,)))
    h = sad.add_inbound_deferred(0x2001, packed(HOST_B), build)
    assert len(sad) == 1 and build.calls == 0
    assert sad.inbound(out.protect(tcp(payload=b"one"))[0]).packet is not None
    assert build.calls == 1
    assert sad.inbound(out.protect(tcp(payload=b"two"))[0]).packet is not None
    assert build.calls == 1
    assert sad.lookup_inbound(0x2001, 50, packed(HOST_B)) is inb
    assert sad.materialize(h).sas == (inb,)
    assert sad.delete(h).sas == (inb,) and len(sad) == 0
    assert sad.inbound(out.protect(tcp())[0]).drop is DropReason.BAD_SPI


def test_other_spis_and_protocols_never_build_it() -> None:
    out, inb = pair(0x2002)
    other, _ = pair(0x2003)
    sad = SaDatabase()
    build = Builder(Bundle((inb,)))
    sad.add_inbound_deferred(0x2002, packed(HOST_B), build)
    assert sad.inbound(other.protect(tcp())[0]).drop is DropReason.BAD_SPI
    assert sad.lookup_inbound(0x2002, 50, packed(HOST_A)) is None  # another destination
    assert build.calls == 0
    # The protocol is known only once built: an AH lookup of the SPI builds it, finds no AH SA.
    assert sad.lookup_inbound(0x2002, 51, packed(HOST_B)) is None
    assert build.calls == 1
    assert sad.lookup_inbound(0x2002, 50, packed(HOST_B)) is inb
    assert sad.inbound(out.protect(tcp())[0]).packet is not None


def test_its_spi_and_destination_are_reserved_until_built_and_after() -> None:
    _, inb = pair(0x2004)
    sad = SaDatabase()
    h = sad.add_inbound_deferred(0x2004, packed(HOST_B), Builder(Bundle((inb,))))
    for clash in (sa(0x2004, direction="inbound"),
                  sa(0x2004, protocol="ah", direction="inbound")):
        with pytest.raises(SadError, match="already installed"):
            sad.add_inbound(clash)
    with pytest.raises(SadError, match="not built yet"):
        sad.add_inbound_deferred(0x2004, packed(HOST_B), Builder(Bundle((inb,))))
    # Another destination is another SA.
    sad.add_inbound(sa(0x2004, direction="inbound", src=HOST_B, dst=HOST_A))
    sad.materialize(h)
    with pytest.raises(SadError, match="already installed"):
        sad.add_inbound_deferred(0x2004, packed(HOST_B), Builder(Bundle((inb,))))
    assert len(sad) == 2


def test_a_built_bundle_that_is_not_the_promised_one_is_refused_and_stays_deferred() -> None:
    _, wrong = pair(0x2005)
    out, right = pair(0x2006)
    sad = SaDatabase()
    build = Builder(Bundle((wrong,)))
    h = sad.add_inbound_deferred(0x2006, packed(HOST_B), build)
    with pytest.raises(SadError, match="not the one deferred"):
        sad.materialize(h)
    # A packet finds no SA (the failure is logged, never raised into the data path).
    assert sad.inbound(out.protect(tcp())[0]).drop is DropReason.BAD_SPI
    assert sad.lookup_inbound(0x2005, 50, packed(HOST_B)) is None
    build.bundle = Bundle((right,))
    assert sad.inbound(out.protect(tcp())[0]).packet is not None
    # A build that raises: the packet is dropped as an unknown SPI, nothing escapes.
    out2, _ = pair(0x2007)

    def broken() -> Bundle:
        raise RuntimeError("the store is gone")

    sad.add_inbound_deferred(0x2007, packed(HOST_B), broken)
    assert sad.inbound(out2.protect(tcp())[0]).drop is DropReason.BAD_SPI


def test_udp_ports_are_recognised_before_the_bundle_is_built() -> None:
    out, inb = pair(0x2008, encap=(4601, 4601))
    sad = SaDatabase()
    keepalive = udp(HOST_A, HOST_B, 4601, 4601, b"\xff")
    assert sad.inbound(keepalive).drop is DropReason.WRONG_PROTOCOL
    build = Builder(Bundle((inb,)))
    h = sad.add_inbound_deferred(0x2008, packed(HOST_B), build, (4601,))
    assert sad.inbound(keepalive).drop is DropReason.NATT_KEEPALIVE
    assert build.calls == 0
    assert sad.inbound(out.protect(tcp())[0]).packet is not None
    sad.delete(h)
    assert sad.inbound(keepalive).drop is DropReason.WRONG_PROTOCOL
    # Promised ports that the built bundle does not use: refused.
    _, plain = pair(0x2009)
    h = sad.add_inbound_deferred(0x2009, packed(HOST_B), Builder(Bundle((plain,))), (4602,))
    with pytest.raises(SadError, match="ports"):
        sad.materialize(h)


def test_delete_replace_and_iteration_build_it_first() -> None:
    _, inb = pair(0x200A)
    _, newer = pair(0x200B)
    sad = SaDatabase()
    build = Builder(Bundle((inb,)))
    h = sad.add_inbound_deferred(0x200A, packed(HOST_B), build)
    assert [(hh, d, b.sas) for hh, d, b in sad] == [(h, "inbound", (inb,))]
    assert build.calls == 1
    assert sad.replace(h, newer).sas == (inb,)
    assert sad.lookup_inbound(0x200B, 50, packed(HOST_B)) is newer
    h2 = sad.add_inbound_deferred(0x200A, packed(HOST_B), Builder(Bundle((inb,))))
    assert sad.delete(h2).sas == (inb,)
    with pytest.raises(SadError, match="handle"):
        sad.materialize(h2)


def test_concurrent_first_packets_build_it_once_and_all_are_delivered() -> None:
    out, inb = pair(0x200C)
    sad = SaDatabase()
    build = Builder(Bundle((inb,)))
    sad.add_inbound_deferred(0x200C, packed(HOST_B), build)
    wires = [out.protect(tcp(payload=b"%d" % i))[0] for i in range(64)]
    results: list = [None] * len(wires)
    start = threading.Barrier(8)

    def worker(k: int) -> None:
        start.wait()
        for i in range(k, len(wires), 8):
            results[i] = sad.inbound(wires[i])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert build.calls == 1
    assert all(r.packet is not None for r in results)

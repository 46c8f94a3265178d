"""Caller mistakes raise, bad packets drop (issue 10).

``ipsecsa.errors`` keeps two kinds of failure apart: a malformed packet is a counted drop, a
wrong call is an exception. This file holds the wrong calls to one rule: a packet that is not
bytes-like (str, int, None, a list) raises the *same* ``TypeError`` with the same words from every
packet entry point -- ``protect``/``unprotect`` on ESP and AH SAs in each mode and family and in
each life-cycle state, their batches, the SA database, the NDIS miniport, the WFP engine's
traffic calls -- and counts nothing;
a bytearray or memoryview is as good as bytes. Direction mistakes (DirectionError) are in
tests/datapath/test_lifecycle.py::test_direction_is_enforced.
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from ipsecsa import SecurityAssociation
from ipsecsa.errors import DropReason
from ipsecsa.ndis import Miniport
from ipsecsa.sad import SaDatabase
from ipsecsa.wfp import Engine

V4 = ("192.0.2.1", "198.51.100.2")
V6 = ("2001:db8::1", "2001:db8::2")
GCM = {"algorithm": "aes-gcm-16", "key": "11" * 20}
HMAC = {"algorithm": "hmac-sha256-128", "key": "22" * 32}
NOT_PACKETS = ["45000014", 0x45, None, [0x45, 0]]


def _expected(obj: object) -> str:
    return f"packet must be bytes, bytearray or memoryview, not {type(obj).__name__}"


def _sa(protocol: str, mode: str, family: int, direction: str, **extra: object):
    src, dst = V4 if family == 4 else V6
    obj: dict = {"spi": 0x501, "protocol": protocol, "mode": mode, "direction": direction,
                 "src": src, "dst": dst}
    if protocol == "esp":
        obj["encryption"] = GCM
    else:
        obj["integrity"] = HMAC
    obj.update(extra)
    return SecurityAssociation.from_dict(obj)


def _plain(family: int) -> bytes:
    src, dst = V4 if family == 4 else V6
    l3 = IP(src=src, dst=dst) if family == 4 else IPv6(src=src, dst=dst)
    return bytes(l3 / UDP(sport=5, dport=6) / Raw(b"payload"))


SHAPES = [(p, m, f, e) for p in ("esp", "ah") for m in ("transport", "tunnel") for f in (4, 6)
          for e in ((False, True) if p == "esp" and f == 4 else (False,))]
IDS = [f"{p}-{m}-v{f}{'-natt' if e else ''}" for p, m, f, e in SHAPES]


@pytest.mark.parametrize(("protocol", "mode", "family", "natt"), SHAPES, ids=IDS)
def test_every_sa_entry_point_raises_the_same_type_error(protocol: str, mode: str, family: int,
                                                        natt: bool) -> None:
    extra = {"encapsulation": {"type": "udp", "sport": 4500, "dport": 4500}} if natt else {}
    out = _sa(protocol, mode, family, "outbound", **extra)
    inb = _sa(protocol, mode, family, "inbound", **extra)
    calls = [out.protect, inb.unprotect, lambda p: out.protect_batch([p]),
             lambda p: inb.unprotect_batch([p])]
    for bad in NOT_PACKETS:
        for call in calls:
            with pytest.raises(TypeError) as exc:
                call(bad)
            assert str(exc.value) == _expected(bad)
    assert out.counters.drops == {} and inb.counters.drops == {}
    assert out.seq == 0  # nothing was numbered
    # bytes-like packets are packets: the same wire bytes and the same delivery.
    plain = _plain(family)
    for kind in (bytearray, memoryview):
        wire = out.protect(kind(plain)).packet
        assert type(wire) is bytes
        assert inb.unprotect(kind(wire)).packet == plain


def test_the_check_comes_before_the_life_cycle_gate() -> None:
    """A dead SA refuses packets (a drop); a non-packet is still the caller's mistake."""
    out = _sa("esp", "transport", 4, "outbound")
    out.delete()
    assert out.protect(_plain(4)).drop is DropReason.SA_UNUSABLE
    with pytest.raises(TypeError) as exc:
        out.protect("x")
    assert str(exc.value) == _expected("x")
    assert out.counters.drops == {DropReason.SA_UNUSABLE: 1}


def test_batches_refuse_a_single_packet_in_place_of_a_list() -> None:
    out = _sa("esp", "transport", 4, "outbound")
    with pytest.raises(TypeError, match="iterable of packets"):
        out.protect_batch(_plain(4))
    with pytest.raises(TypeError, match="iterable of packets"):
        _sa("esp", "transport", 4, "inbound").unprotect_batch(_plain(4))


def test_sa_database_entry_points_raise_the_same_type_error() -> None:
    sad = SaDatabase()
    sad.add_outbound(_sa("esp", "transport", 4, "outbound"))
    sad.add_inbound(_sa("esp", "transport", 4, "inbound"))
    for bad in NOT_PACKETS:
        for call in (sad.outbound, sad.inbound, sad.classify):
            with pytest.raises(TypeError) as exc:
                call(bad)
            assert str(exc.value) == _expected(bad)
    assert sad.drops == {}
    wire = sad.outbound(bytearray(_plain(4))).packet
    assert wire is not None and sad.inbound(memoryview(wire)).packet == _plain(4)


def test_miniport_packet_entry_points_raise_the_same_type_error() -> None:
    mp = Miniport()
    for bad in NOT_PACKETS:
        with pytest.raises(TypeError) as exc:
            mp.send(bad, 1)  # type: ignore[arg-type]
        assert str(exc.value) == _expected(bad)
        with pytest.raises(TypeError) as exc:
            mp.receive(bad)  # type: ignore[arg-type]
        assert str(exc.value) == _expected(bad)
    assert mp.stats.send_errors == 0


def test_wfp_engine_traffic_entry_points_raise_the_same_type_error() -> None:
    bfe = Engine()
    for bad in NOT_PACKETS:
        for call in (bfe.outbound, bfe.inbound):
            with pytest.raises(TypeError) as exc:
                call(bad)
            assert str(exc.value) == _expected(bad)

"""Traffic selectors: NDIS wildcard semantics, v4/v6 matching, parsing and errors."""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

import pytest

from ipsecsa.errors import ConfigError
from ipsecsa.selectors import Selector, selectors_match

TCP, UDP, ICMP = 6, 17, 1


class Flow(NamedTuple):
    version: int
    src: bytes
    dst: bytes
    protocol: int
    sport: int
    dport: int


def flow(src: str, dst: str, protocol: int = TCP, sport: int = 1234, dport: int = 80) -> Flow:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    return Flow(s.version, s.packed, d.packed, protocol, sport, dport)


MATCH_CASES = [
    # (selector object, flow, expected)
    ({}, flow("10.1.2.3", "192.0.2.9"), True),
    ({}, flow("2001:db8::1", "2001:db8::2"), True),
    ({"src": "10.0.0.0/8"}, flow("10.1.2.3", "192.0.2.9"), True),
    ({"src": "10.0.0.0/8"}, flow("11.1.2.3", "192.0.2.9"), False),
    ({"src": "10.0.0.0/8"}, flow("2001:db8::1", "2001:db8::2"), False),  # family differs
    ({"dst": "192.0.2.9"}, flow("10.1.2.3", "192.0.2.9"), True),  # bare address = /32
    ({"dst": "192.0.2.9"}, flow("10.1.2.3", "192.0.2.10"), False),
    ({"src": "0.0.0.0/0"}, flow("10.1.2.3", "192.0.2.9"), True),
    ({"src": "0.0.0.0/0"}, flow("2001:db8::1", "2001:db8::2"), False),  # /0 still means IPv4
    ({"src": "10.0.0.0/8", "dst": "192.0.2.0/24", "protocol": TCP, "dport": 80},
     flow("10.9.9.9", "192.0.2.200", TCP, 5555, 80), True),
    ({"src": "10.0.0.0/8", "dst": "192.0.2.0/24", "protocol": TCP, "dport": 80},
     flow("10.9.9.9", "192.0.2.200", UDP, 5555, 80), False),
    ({"src": "10.0.0.0/8", "dst": "192.0.2.0/24", "protocol": TCP, "dport": 80},
     flow("10.9.9.9", "192.0.2.200", TCP, 5555, 443), False),
    ({"protocol": UDP}, flow("10.0.0.1", "10.0.0.2", UDP, 53, 53), True),
    ({"protocol": UDP}, flow("10.0.0.1", "10.0.0.2", TCP, 53, 53), False),
    ({"sport": 500}, flow("10.0.0.1", "10.0.0.2", UDP, 500, 500), True),
    ({"sport": 500}, flow("10.0.0.1", "10.0.0.2", UDP, 4500, 500), False),
    ({"protocol": ICMP}, flow("10.0.0.1", "10.0.0.2", ICMP, 0, 0), True),
    ({"src": "2001:db8::/32"}, flow("2001:db8:ffff::1", "2001:db9::1"), True),
    ({"src": "2001:db8::/32"}, flow("2001:db9::1", "2001:db8::1"), False),
    ({"src": "2001:db8::/32"}, flow("32.1.13.184", "10.0.0.1"), False),  # same top bits, v4
    ({"dst": "2001:db8::1"}, flow("2001:db8::5", "2001:db8::1"), True),  # bare = /128
    ({"dst": "2001:db8::1"}, flow("2001:db8::5", "2001:db8::2"), False),
    ({"src": "fe80::/10", "dst": "ff02::/16", "protocol": 58},
     flow("fe80::1", "ff02::1", 58, 0, 0), True),
    ({"src": "::/0", "dport": 22}, flow("2001:db8::1", "2001:db8::2", TCP, 40000, 22), True),
]


@pytest.mark.parametrize(("obj", "f", "expected"), MATCH_CASES)
def test_matches(obj: dict, f: Flow, expected: bool) -> None:
    sel = Selector.from_dict(obj)
    assert sel.matches(*f) is expected
    assert selectors_match((sel,), f) is expected


def test_empty_selector_tuple_matches_everything() -> None:
    assert selectors_match((), flow("10.0.0.1", "10.0.0.2"))
    assert selectors_match((), flow("2001:db8::1", "2001:db8::2", UDP, 1, 2))


def test_any_of_several_selectors() -> None:
    sels = (Selector.from_dict({"dport": 80, "protocol": TCP}),
            Selector.from_dict({"dst": "2001:db8::/64"}))
    assert selectors_match(sels, flow("10.0.0.1", "10.0.0.2", TCP, 1, 80))
    assert selectors_match(sels, flow("2001:db8:1::1", "2001:db8::9", UDP, 1, 2))
    assert not selectors_match(sels, flow("10.0.0.1", "10.0.0.2", TCP, 1, 443))


def test_match_state_is_precomputed_integers() -> None:
    sel = Selector.from_dict({"src": "10.0.0.0/8", "dst": "192.0.2.0/24"})
    assert sel._src_net == 0x0A000000 and sel._src_mask == 0xFF000000
    assert sel._dst_net == 0xC0000200 and sel._dst_mask == 0xFFFFFF00
    assert sel.version == 4
    assert Selector().version == 0


def test_selector_is_frozen_slotted_and_hashable() -> None:
    sel = Selector.from_dict({"src": "10.0.0.0/8"})
    with pytest.raises(AttributeError):
        sel.protocol = 6  # type: ignore[misc]
    assert not hasattr(sel, "__dict__")
    assert hash(sel) == hash(Selector.from_dict({"src": "10.0.0.0/8"}))
    assert sel == Selector(src=ipaddress.ip_network("10.0.0.0/8"))


@pytest.mark.parametrize("obj", [
    {},
    {"src": "10.0.0.0/8"},
    {"src": "10.0.0.0/8", "dst": "192.0.2.1/32", "protocol": 6, "sport": 1, "dport": 65535},
    {"dst": "2001:db8::/48", "protocol": 17},
])
def test_to_dict_round_trip(obj: dict) -> None:
    sel = Selector.from_dict(obj)
    assert Selector.from_dict(sel.to_dict()) == sel
    assert sel.to_dict() == obj


def test_bare_address_is_host_prefix_in_to_dict() -> None:
    assert Selector.from_dict({"src": "10.0.0.1"}).to_dict() == {"src": "10.0.0.1/32"}


def test_constructor_accepts_addresses_and_networks() -> None:
    sel = Selector(src=ipaddress.ip_address("10.0.0.1"), dst=ipaddress.ip_network("10.0.0.0/8"))
    assert sel.src == ipaddress.ip_network("10.0.0.1/32")


ERROR_CASES = [
    ({"src": "10.0.0.0/8", "dst": "2001:db8::/32"}, "dst"),
    ({"src": "10.0.0.1/8"}, "src"),  # host bits set: almost always a typo
    ({"src": "10.0.0.0/33"}, "src"),
    ({"dst": "not-an-address"}, "dst"),
    ({"dst": 167772160}, "dst"),
    ({"protocol": 256}, "protocol"),
    ({"protocol": -1}, "protocol"),
    ({"protocol": True}, "protocol"),
    ({"protocol": "tcp"}, "protocol"),
    ({"sport": 65536}, "sport"),
    ({"dport": -1}, "dport"),
    ({"dport": 80.0}, "dport"),
    ({"dport": False}, "dport"),
    ({"port": 80}, "port"),
    ([], ""),
]


@pytest.mark.parametrize(("obj", "field"), ERROR_CASES)
def test_errors_name_the_field(obj: object, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        Selector.from_dict(obj)
    assert info.value.field == field

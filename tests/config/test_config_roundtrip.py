"""Property: for every valid description, parse_sa(cfg.to_dict()) == cfg."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsecsa.config import parse_sa
from ipsecsa.crypto.algorithms import ENCRYPTION, INTEGRITY, accepted_key_lengths

COMBINED = sorted(n for n, a in ENCRYPTION.items() if a.aead or a.kind == "gmac")
PLAIN = sorted(n for n, a in ENCRYPTION.items() if not (a.aead or a.kind == "gmac"))
ESP_INTEGRITY = sorted(n for n in INTEGRITY if n not in ("none", "aes-gmac"))
AH_INTEGRITY = sorted(n for n in INTEGRITY if n != "none")


def key_text(draw: st.DrawFn, alg: Any) -> str:
    """Key material of an accepted length, in any of the accepted text forms."""
    raw = draw(st.binary(min_size=(n := draw(st.sampled_from(accepted_key_lengths(alg)))),
                         max_size=n))
    form = draw(st.sampled_from(["plain", "0x", "colons", "upper", "spaces"]))
    if form == "0x":
        return "0x" + raw.hex()
    if form == "colons":
        return raw.hex(":")
    if form == "upper":
        return raw.hex().upper()
    if form == "spaces":
        return raw.hex(" ", 4)
    return raw.hex()


def address(draw: st.DrawFn, version: int) -> str:
    if version == 4:
        return str(draw(st.ip_addresses(v=4)))
    return str(draw(st.ip_addresses(v=6)))


def prefix(draw: st.DrawFn, version: int) -> str:
    addr = ipaddress.ip_address(address(draw, version))
    length = draw(st.integers(0, addr.max_prefixlen))
    return str(ipaddress.ip_network(f"{addr}/{length}", strict=False))


def algorithm(draw: st.DrawFn, name: str, alg: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"algorithm": name}
    if accepted_key_lengths(alg) != [0]:
        entry["key"] = key_text(draw, alg)
    return entry


def limits(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dim in ("bytes", "packets"):
        if draw(st.booleans()):
            out[dim] = draw(st.integers(0, 2**64))
    if draw(st.booleans()):
        out["seconds"] = draw(st.integers(0, 10**9) | st.floats(0, 1e9, allow_nan=False))
    return out


@st.composite
def sa_objects(draw: st.DrawFn) -> dict[str, Any]:
    protocol = draw(st.sampled_from(["esp", "ah"]))
    mode = draw(st.sampled_from(["transport", "tunnel"]))
    version = draw(st.sampled_from([4, 6]))
    obj: dict[str, Any] = {
        "spi": draw(st.integers(256, 2**32 - 1)),
        "protocol": protocol,
        "src": address(draw, version),
        "dst": address(draw, version),
    }
    if draw(st.booleans()):
        obj["spi"] = hex(obj["spi"])
    if mode == "tunnel" or draw(st.booleans()):
        obj["mode"] = mode
    if draw(st.booleans()):
        obj["direction"] = draw(st.sampled_from(["outbound", "inbound"]))

    if protocol == "esp":
        enc = draw(st.sampled_from(COMBINED + PLAIN))
        obj["encryption"] = algorithm(draw, enc, ENCRYPTION[enc])
        if enc in COMBINED:
            integ = draw(st.sampled_from([None, "none"]))
        elif enc == "null":
            integ = draw(st.sampled_from(ESP_INTEGRITY))
        else:
            integ = draw(st.sampled_from([None, "none", *ESP_INTEGRITY]))
        if draw(st.booleans()) and protocol == "esp":
            obj["encapsulation"] = {"type": "udp", "sport": draw(st.integers(1, 65535)),
                                    "dport": draw(st.integers(1, 65535))}
    else:
        integ = draw(st.sampled_from(AH_INTEGRITY))
    if integ is not None:
        obj["integrity"] = algorithm(draw, integ, INTEGRITY[integ])

    esn = draw(st.booleans())
    obj["esn"] = esn
    if draw(st.booleans()):
        obj["replay_window"] = draw(st.just(0) | st.integers(32, 65536))
    obj["seq"] = draw(st.integers(0, 2**64 - 1 if esn else 2**32 - 1))

    selectors = []
    for _ in range(draw(st.integers(0, 3))):
        sel_version = draw(st.sampled_from([4, 6])) if mode == "tunnel" else version
        sel: dict[str, Any] = {}
        if draw(st.booleans()):
            sel["src"] = prefix(draw, sel_version)
        if draw(st.booleans()):
            sel["dst"] = prefix(draw, sel_version)
        for name, top in (("protocol", 255), ("sport", 65535), ("dport", 65535)):
            if draw(st.booleans()):
                sel[name] = draw(st.integers(0, top))
        selectors.append(sel)
    if selectors or draw(st.booleans()):
        obj["selectors"] = selectors

    if draw(st.booleans()):
        soft, hard = limits(draw), limits(draw)
        for dim in set(soft) & set(hard):
            if soft[dim] > hard[dim]:
                soft[dim], hard[dim] = hard[dim], soft[dim]
        obj["lifetime"] = {"soft": soft, "hard": hard}

    if mode == "tunnel":
        if protocol == "esp" and draw(st.booleans()):
            obj["tfc_padding"] = draw(st.integers(0, 65535))
        if version == 4 and draw(st.booleans()):
            obj["df"] = draw(st.sampled_from(["copy", "set", "clear"]))
        if draw(st.booleans()):
            obj["ttl"] = draw(st.integers(1, 255))
        if draw(st.booleans()):
            obj["dscp"] = draw(st.just("copy") | st.integers(0, 63))
    return obj


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sa_objects())
def test_round_trip(obj: dict[str, Any]) -> None:
    cfg = parse_sa(obj)
    out = cfg.to_dict()
    assert json.loads(json.dumps(out)) == out  # plain JSON types only
    again = parse_sa(out)
    assert again == cfg
    assert again.to_dict() == out  # to_dict is canonical: a fixed point after one pass
    assert again.warnings == cfg.warnings
    # Keys come back byte-exact, whatever text form they were given in.
    for name in ("encryption_key", "integrity_key"):
        a, b = getattr(cfg, name), getattr(again, name)
        assert (a is None) == (b is None)
        if a is not None:
            assert a.bytes == b.bytes


@settings(max_examples=200, deadline=None)
@given(sa_objects())
def test_repr_never_shows_keys(obj: dict[str, Any]) -> None:
    cfg = parse_sa(obj)
    text = repr(cfg)
    for key in (cfg.encryption_key, cfg.integrity_key):
        if key is not None and len(key) >= 4:
            assert key.hex() not in text
            assert repr(key.bytes) not in text

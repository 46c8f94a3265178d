"""create_context validates each SA description once: a differential test against the code it
replaced.

Before, the API parsed the first SA of each bundle, the engine's ``parse_descriptions`` parsed
it again, and ``fit_to_context`` ran the whole validation a third time through
``dataclasses.replace``. Now the API hands its parsed SA to the engine and the context's
direction/encapsulation are set by ``SaConfig.completed``. The reference below is the replaced
code, kept verbatim (``_old_add``, and ``completed`` as a full ``dataclasses.replace``); every
generated case runs through both on fresh engines with the same fixed clock and must give the
same outcome: the same exception class, status, field and message, or the same context.

The cases are random mutations (seeded, so a failure reproduces) of valid ESP and ESP+AH,
transport and tunnel, plain and UDP-encapsulated description pairs: keys, algorithms, SPIs,
addresses that do not match the context, modes, directions, lifetimes, encapsulation,
selectors, outer-header options, bundle shapes and unknown keys.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from typing import Any

import pytest

from ipsecsa import api
from ipsecsa.api import engine as api_engine
from ipsecsa.config.model import SaConfig

A, B, C6 = "192.0.2.1", "198.51.100.2", "2001:db8::9"


def _old_add(self: Any, ctx_id: int, descriptions: Any, inbound: bool, name: str,
             first: Any = None) -> None:
    """``_Operations._add`` before: the raw descriptions to the engine, which parses them all."""
    bundle = api_engine._bundle(descriptions, name)
    method = self._bfe.add_inbound_sas if inbound else self._bfe.add_outbound_sas
    api_engine._check(self._bfe, method(self._handle, ctx_id, bundle),
                      api_engine._renamer({"id": "context_id"}, name,
                                          isinstance(descriptions, dict)))


def _old_completed(self: SaConfig, *, direction: str, encapsulation: Any = None) -> SaConfig:
    """``fit_to_context``'s step before: the whole validation again."""
    changes: dict[str, Any] = {"direction": direction}
    if encapsulation is not None:
        changes["encapsulation"] = encapsulation
    return dataclasses.replace(self, **changes)


def _key(n: int, rng: random.Random) -> str:
    return bytes(rng.randrange(256) for _ in range(n)).hex()


def _base(rng: random.Random) -> tuple[Any, Any]:
    """A valid (outbound, inbound) pair of this host A with B."""
    mode = rng.choice(["transport", "tunnel"])
    encap = rng.random() < 0.3
    ah = rng.random() < 0.3

    def bundle(spi: int, src: str, dst: str) -> Any:
        esp: dict[str, Any] = {"spi": spi, "protocol": "esp", "mode": mode, "src": src,
                               "dst": dst}
        if rng.random() < 0.5:
            esp["encryption"] = {"algorithm": "aes-gcm-16", "key": _key(20, rng)}
        else:
            esp["encryption"] = {"algorithm": "aes-cbc", "key": _key(16, rng)}
            esp["integrity"] = {"algorithm": "hmac-sha256-128", "key": _key(32, rng)}
        if rng.random() < 0.3:
            esp["lifetime"] = {"soft": {"seconds": 100}, "hard": {"seconds": 200}}
        if mode == "tunnel" and rng.random() < 0.4:
            esp["selectors"] = [{"src": "10.1.0.0/16", "dst": "10.2.0.0/16"}]
        if not ah:
            return esp
        return [esp, {"spi": spi, "protocol": "ah", "mode": mode, "src": src, "dst": dst,
                      "integrity": {"algorithm": "hmac-sha256-128", "key": _key(32, rng)}}]

    out, inb = bundle(0x1000, A, B), bundle(0x2000, B, A)
    if encap:
        for b, (s, d) in ((out, (4500, 4501)), (inb, (4501, 4500))):
            first = b[0] if isinstance(b, list) else b
            if rng.random() < 0.7:
                first["encapsulation"] = {"type": "udp", "sport": s, "dport": d}
        # one side may leave it out (filled in from the context), the inbound must say it:
        # SetSpi learns the ports from the inbound description
        first = inb[0] if isinstance(inb, list) else inb
        first["encapsulation"] = {"type": "udp", "sport": 4501, "dport": 4500}
    return out, inb


_BAD = [
    ("spi", 0), ("spi", 1), ("spi", 2**32), ("spi", "0xzz"), ("spi", True), ("spi", 0x2000),
    ("spi", 0x1000), ("spi", 0x3000), ("protocol", "gre"), ("protocol", "ah"),
    ("mode", "tunnel"), ("mode", "transport"), ("mode", "beet"), ("direction", "outbound"),
    ("direction", "inbound"), ("direction", "sideways"), ("src", "203.0.113.7"),
    ("dst", "203.0.113.7"), ("src", C6), ("dst", "not an address"), ("src", A), ("dst", B),
    ("encryption", {"algorithm": "aes-gcm-16", "key": "00" * 7}),
    ("encryption", {"algorithm": "rot13", "key": "00" * 16}),
    ("encryption", {"algorithm": "null"}),
    ("encryption", {"algorithm": "aes-cbc", "key": "00" * 16}),
    ("encryption", {"algorithm": "aes-gcm-16"}), ("encryption", "aes"),
    ("integrity", {"algorithm": "hmac-sha256-128", "key": "00" * 3}),
    ("integrity", {"algorithm": "aes-gmac", "key": "00" * 20}),
    ("integrity", {"algorithm": "none"}),
    ("lifetime", {"soft": {"seconds": 300}, "hard": {"seconds": 200}}),
    ("lifetime", {"hard": {"bytes": -1}}), ("lifetime", {"hard": {"packets": 10}}),
    ("lifetime", {"sometime": {}}),
    ("encapsulation", {"type": "udp", "sport": 4500, "dport": 4501}),
    ("encapsulation", {"type": "udp", "sport": 4501, "dport": 4500}),
    ("encapsulation", {"type": "udp", "sport": 1, "dport": 2}),
    ("encapsulation", {"type": "udp", "sport": 0, "dport": 70000}),
    ("encapsulation", {"type": "tcp"}),
    ("selectors", [{"src": "10.1.0.0/16"}, {"src": "10.3.0.0/16"}]),
    ("selectors", [{"src": "2001:db8:5::/48", "dst": "2001:db8:6::/48"}]),
    ("selectors", [{"src": "10.1.0.1/16"}]), ("replay_window", 3), ("replay_window", 64),
    ("esn", "yes"), ("esn", True), ("seq", -1), ("seq", 5), ("tfc_padding", 100),
    ("ttl", 0), ("ttl", 32), ("df", "set"), ("dscp", 99), ("dscp", 10), ("colour", "blue"),
]


def _mutate(rng: random.Random, out: Any, inb: Any) -> tuple[Any, Any]:
    for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
        side = rng.choice(["out", "in"])
        bundle = out if side == "out" else inb
        r = rng.random()
        if r < 0.08 and isinstance(bundle, (dict, list)):  # bundle shapes
            bundle = rng.choice([[], [bundle] * 3 if isinstance(bundle, dict) else bundle * 2,
                                 list(reversed(bundle)) if isinstance(bundle, list)
                                 else [bundle, bundle], "esp", 7, None,
                                 [bundle] if isinstance(bundle, dict) else bundle[0]])
        else:
            items = bundle if isinstance(bundle, list) else [bundle]
            if r >= 0.08 and items and all(isinstance(i, dict) for i in items):
                target = rng.choice(items)
                if r < 0.16 and target:
                    del target[rng.choice(sorted(target))]
                else:
                    key, value = rng.choice(_BAD)
                    target[key] = copy.deepcopy(value)
        if side == "out":
            out = bundle
        else:
            inb = bundle
    return out, inb


def _outcome(engine: api.Engine, out: Any, inb: Any) -> Any:
    try:
        info = engine.create_context(outbound=copy.deepcopy(out), inbound=copy.deepcopy(inb))
    except api.WfpError as exc:
        return (type(exc), exc.status, exc.field, exc.message, str(exc),
                [c.id for c in engine.contexts()], engine.statistics())
    except Exception as exc:  # noqa: BLE001 -- an escaping non-API error is an outcome too
        return (type(exc), str(exc))
    return info, engine.contexts(), engine.statistics()


def _run(monkeypatch: pytest.MonkeyPatch, out: Any, inb: Any, old: bool) -> Any:
    with monkeypatch.context() as m:
        if old:
            m.setattr(api_engine._Operations, "_add", _old_add)
            m.setattr(SaConfig, "completed", _old_completed)
        with api.Engine(clock=lambda: 1000.0) as engine:
            return _outcome(engine, out, inb)


def test_create_context_outcomes_match_the_replaced_code(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(0x12A91)
    kinds: dict[str, int] = {}
    for case in range(400):
        out, inb = _mutate(rng, *_base(rng))
        new = _run(monkeypatch, out, inb, old=False)
        ref = _run(monkeypatch, out, inb, old=True)
        assert new == ref, f"case {case}: {out!r} / {inb!r}"
        kind = "ok" if isinstance(new[0], api.ContextInfo) else new[0].__name__
        kinds[kind] = kinds.get(kind, 0) + 1
    # the generator reaches both successes and several kinds of refusal
    assert kinds.get("ok", 0) >= 40 and len(kinds) >= 4, kinds


def test_completed_is_a_full_validation_for_what_it_changes() -> None:
    """``completed`` gives what ``dataclasses.replace`` gives for the direction and the
    encapsulation, and still refuses what the format refuses for them."""
    from ipsecsa.config import parse_sa
    from ipsecsa.config.model import UdpEncapsulation
    from ipsecsa.errors import ConfigError

    esp = parse_sa({"spi": 0x1234, "protocol": "esp", "src": A, "dst": B,
                    "encryption": {"algorithm": "aes-cbc", "key": "11" * 16}})
    udp = UdpEncapsulation(sport=4500, dport=4500)
    for direction, encap in (("inbound", None), ("outbound", udp)):
        got = esp.completed(direction=direction, encapsulation=encap)
        want = dataclasses.replace(esp, direction=direction,
                                   **({"encapsulation": encap} if encap else {}))
        assert got == want and got.warnings == want.warnings and got.warnings
    with pytest.raises(ConfigError) as err:
        esp.completed(direction="sideways")
    assert err.value.field == "direction"
    ah = parse_sa({"spi": 0x1235, "protocol": "ah", "src": A, "dst": B,
                   "integrity": {"algorithm": "hmac-sha256-128", "key": "22" * 32}})
    with pytest.raises(ConfigError) as err:
        ah.completed(direction="outbound", encapsulation=udp)
    assert err.value.field == "encapsulation"


@pytest.mark.parametrize("mode, ah, validations", [
    ("transport", False, 2), ("tunnel", False, 2), ("transport", True, 4),
    ("tunnel", True, 6),  # the AH of a tunnel ESP+AH bundle changes mode: validated again
])
def test_each_description_is_validated_once(monkeypatch: pytest.MonkeyPatch, mode: str,
                                            ah: bool, validations: int) -> None:
    from ipsecsa.config import model

    calls = []
    real = model._validate

    def counting(cfg: SaConfig) -> list[str]:
        calls.append(cfg.spi)
        return real(cfg)

    def bundle(spi: int, src: str, dst: str) -> Any:
        esp = {"spi": spi, "protocol": "esp", "mode": mode, "src": src, "dst": dst,
               "encryption": {"algorithm": "aes-gcm-16", "key": "33" * 20}}
        ah_sa = {"spi": spi, "protocol": "ah", "mode": mode, "src": src, "dst": dst,
                 "integrity": {"algorithm": "hmac-sha256-128", "key": "44" * 32}}
        return [esp, ah_sa] if ah else esp

    monkeypatch.setattr(model, "_validate", counting)
    with api.Engine() as engine:
        info = engine.create_context(outbound=bundle(0x1000, A, B), inbound=bundle(0x2000, B, A))
        assert info.state == "established"
    assert len(calls) == validations, [hex(c) for c in calls]

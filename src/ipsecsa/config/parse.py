"""sa-format JSON objects to :class:`SaConfig` and back (``docs/sa-format.md``).

This module checks the *shape*: known keys at every level, JSON types, hex keys, algorithm names
and aliases. The meaning (ranges, protocol/algorithm rules, lifetimes) is checked by
:class:`SaConfig` itself when it is constructed, so both paths share one set of rules.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable
from typing import Any

from ipsecsa.config.model import (
    REPLAY_WINDOW_DEFAULT,
    TTL_DEFAULT,
    Lifetime,
    SaConfig,
    SecretKey,
    UdpEncapsulation,
)
from ipsecsa.crypto.algorithms import Resolved, check_key, lookup_encryption, lookup_integrity
from ipsecsa.errors import ConfigError
from ipsecsa.selectors import Selector

_SA_KEYS = frozenset({
    "spi", "protocol", "mode", "direction", "src", "dst", "encryption", "integrity", "esn",
    "replay_window", "encapsulation", "selectors", "lifetime", "seq", "tfc_padding",
    # ipsecsa extensions (docs/sa-format.md)
    "df", "ttl", "dscp",
})
_ALG_KEYS = frozenset({"algorithm", "key"})
_ENCAP_KEYS = frozenset({"type", "sport", "dport"})
_LIFETIME_KEYS = frozenset({"soft", "hard"})
_LIMIT_KEYS = frozenset({"bytes", "packets", "seconds"})

# Separators people paste keys with: "aa:bb:cc" (Wireshark), "aabb ccdd", "0xaabbcc" (ip xfrm).
_KEY_SEPARATORS = re.compile(r"[:\s]+")
_HEX_GROUP = re.compile(r"(?:[0-9a-fA-F]{2})*")
_HEX_DIGITS = re.compile(r"[0-9a-fA-F]*")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _object(value: object, name: str, allowed: frozenset[str]) -> dict[str, Any]:
    """Check ``value`` is a JSON object with only ``allowed`` keys; errors name the key."""
    if not isinstance(value, dict):
        raise ConfigError(name, "must be an object")
    for key in value:
        if key not in allowed:
            path = f"{name}.{key}" if name else str(key)
            raise ConfigError(path, "unknown key")
    return value


def _string(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(name, "must be a string")
    return value


def parse_spi(value: object) -> int:
    """An SPI as an int or a ``"0x..."`` string; the range is checked by :class:`SaConfig`."""
    if _is_int(value):
        assert isinstance(value, int)
        return value
    if isinstance(value, str) and value[:2].lower() == "0x":
        try:
            return int(value, 0)
        except ValueError:
            pass
    raise ConfigError("spi", 'must be an integer or a "0x..." hex string')


def parse_hex_key(value: object, name: str) -> SecretKey:
    """Hex key text: optional ``0x``, optional ``:`` or whitespace between byte groups.

    Messages name ``name`` and say what is wrong, never what the text was.
    """
    if not isinstance(value, str):
        raise ConfigError(name, "must be a hex string")
    text = value.strip()
    if text[:2].lower() == "0x":
        text = text[2:]
    groups = [g for g in _KEY_SEPARATORS.split(text) if g]
    for group in groups:
        if not _HEX_DIGITS.fullmatch(group):
            raise ConfigError(name, "contains a character that is not a hex digit")
        if not _HEX_GROUP.fullmatch(group):
            raise ConfigError(name, "has an odd number of hex digits (each byte takes two)")
    return SecretKey(bytes.fromhex("".join(groups)))


#: Address text -> one shared (immutable) address object: the SAs of a gateway mostly share
#: its own address and a few peers', and each IPv4Address is 80 bytes kept per SA (memory per
#: installed SA, issue 16), and ipaddress's parser is slow on the control path (every SA a
#: control plane installs names them again). Bounded; a miss only costs the parse.
_address = functools.lru_cache(maxsize=1024)(ipaddress.ip_address)


def _parse_address(value: object, name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if not isinstance(value, str):
        raise ConfigError(name, "must be an IP address string")
    try:
        return _address(value.strip())
    except ValueError:
        raise ConfigError(name, f"{value!r} is not an IPv4 or IPv6 address") from None


def _parse_algorithm(value: object, base: str, resolve: Callable[[str | int], Resolved]
                     ) -> tuple[Any, SecretKey | None]:
    """``{"algorithm": name, "key": hex}``, or a bare name (no key, e.g. ``"null"``)."""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        name, key_text = value, None
    else:
        obj = _object(value, base, _ALG_KEYS)
        if "algorithm" not in obj:
            raise ConfigError(f"{base}.algorithm", "required")
        name, key_text = obj["algorithm"], obj.get("key")
    if isinstance(name, bool) or not isinstance(name, (str, int)):
        raise ConfigError(f"{base}.algorithm", "must be a name or an IANA transform number")
    try:
        alg, key_size = resolve(name)
    except ConfigError as exc:
        if exc.field == f"{base}.algorithm":
            raise
        raise type(exc)(f"{base}.algorithm", exc.reason) from None
    key = None if key_text is None else parse_hex_key(key_text, f"{base}.key")
    if key_size is not None:
        # The alias fixed the AES size ("aes256", AUTH_AES_128_GMAC): a key of another size is
        # almost certainly pasted from elsewhere, so say so rather than silently use it.
        check_key(alg, b"" if key is None else key.bytes, f"{base}.key", key_size=key_size)
    return alg, key


def _parse_lifetime(value: object, name: str) -> Lifetime:
    obj = _object(value, name, _LIMIT_KEYS)
    try:
        return Lifetime(bytes=obj.get("bytes"), packets=obj.get("packets"),
                        seconds=obj.get("seconds"))
    except ConfigError as exc:
        raise exc.at(name) from None


def _parse_encapsulation(value: object) -> UdpEncapsulation:
    obj = _object(value, "encapsulation", _ENCAP_KEYS)
    if obj.get("type", "udp") != "udp":
        raise ConfigError("encapsulation.type", 'must be "udp" (RFC 3948)')
    for port in ("sport", "dport"):
        if port not in obj:
            raise ConfigError(f"encapsulation.{port}", "required")
    try:
        return UdpEncapsulation(sport=obj["sport"], dport=obj["dport"])
    except ConfigError as exc:
        raise exc.at("encapsulation") from None


def _parse_selectors(value: object) -> tuple[Selector, ...]:
    if not isinstance(value, list):
        raise ConfigError("selectors", "must be a list of selector objects")
    out = []
    for i, item in enumerate(value):
        try:
            out.append(Selector.from_dict(item))
        except ConfigError as exc:
            raise exc.at(f"selectors[{i}]") from None
    return tuple(out)


def parse_sa(obj: Any) -> SaConfig:
    """Validate one sa-format object and return its :class:`SaConfig`.

    Raises :class:`~ipsecsa.errors.ConfigError` (or a subclass) naming the dotted key path.
    Warnings (encryption-only ESP, legacy algorithms) are on ``cfg.warnings`` and logged on
    ``ipsecsa.config``.
    """
    obj = _object(obj, "", _SA_KEYS)
    for required in ("spi", "protocol", "src", "dst"):
        if required not in obj:
            raise ConfigError(required, "required")
    kwargs: dict[str, Any] = {
        "spi": parse_spi(obj["spi"]),
        "protocol": _string(obj["protocol"], "protocol"),
        "src": _parse_address(obj["src"], "src"),
        "dst": _parse_address(obj["dst"], "dst"),
    }
    if "mode" in obj:
        kwargs["mode"] = _string(obj["mode"], "mode")
    if obj.get("direction") is not None:
        kwargs["direction"] = _string(obj["direction"], "direction")
    if obj.get("encryption") is not None:
        kwargs["encryption"], kwargs["encryption_key"] = _parse_algorithm(
            obj["encryption"], "encryption", lookup_encryption)
    if obj.get("integrity") is not None:
        kwargs["integrity"], kwargs["integrity_key"] = _parse_algorithm(
            obj["integrity"], "integrity", lookup_integrity)
    if obj.get("encapsulation") is not None:
        kwargs["encapsulation"] = _parse_encapsulation(obj["encapsulation"])
    if "selectors" in obj:
        kwargs["selectors"] = _parse_selectors(obj["selectors"])
    if "lifetime" in obj:
        lifetime = _object(obj["lifetime"], "lifetime", _LIFETIME_KEYS)
        for name in ("soft", "hard"):
            if lifetime.get(name) is not None:
                kwargs[name] = _parse_lifetime(lifetime[name], f"lifetime.{name}")
    # Scalars whose types and ranges SaConfig checks itself (bool is refused where ints belong).
    for name in ("esn", "replay_window", "seq", "tfc_padding", "df", "ttl", "dscp"):
        if name in obj:
            kwargs[name] = obj[name]
    cfg = SaConfig(**kwargs)
    cfg.log_warnings()
    return cfg


def _format_lifetime(lifetime: Lifetime) -> dict[str, Any]:
    return {k: v for k in ("bytes", "packets", "seconds")
            if (v := getattr(lifetime, k)) is not None}


def format_sa(cfg: SaConfig) -> dict[str, Any]:
    """The sa-format object for ``cfg``: canonical algorithm names, keys as lowercase hex.

    Defaults of optional keys are left out, so a description that uses no ipsecsa extension
    comes back in the shared format only.
    """
    out: dict[str, Any] = {
        "spi": cfg.spi,
        "protocol": cfg.protocol,
        "mode": cfg.mode,
    }
    if cfg.direction is not None:
        out["direction"] = cfg.direction
    out["src"] = str(cfg.src)
    out["dst"] = str(cfg.dst)
    for alg, key, name in ((cfg.encryption, cfg.encryption_key, "encryption"),
                           (cfg.integrity, cfg.integrity_key, "integrity")):
        if alg is not None:
            entry: dict[str, Any] = {"algorithm": alg.name}
            if key is not None and len(key):
                entry["key"] = key.hex()
            out[name] = entry
    out["esn"] = cfg.esn
    if cfg.replay_window != REPLAY_WINDOW_DEFAULT:
        out["replay_window"] = cfg.replay_window
    if cfg.encapsulation is not None:
        out["encapsulation"] = {"type": "udp", "sport": cfg.encapsulation.sport,
                                "dport": cfg.encapsulation.dport}
    if cfg.selectors:
        out["selectors"] = [s.to_dict() for s in cfg.selectors]
    lifetime = {name: _format_lifetime(getattr(cfg, name)) for name in ("soft", "hard")
                if not getattr(cfg, name).unlimited}
    if lifetime:
        out["lifetime"] = lifetime
    out["seq"] = cfg.seq
    if cfg.tfc_padding:
        out["tfc_padding"] = cfg.tfc_padding
    if cfg.df != "copy":
        out["df"] = cfg.df
    if cfg.ttl != TTL_DEFAULT:
        out["ttl"] = cfg.ttl
    if cfg.dscp != "copy":
        out["dscp"] = cfg.dscp
    return out


__all__ = ["format_sa", "parse_hex_key", "parse_sa", "parse_spi"]

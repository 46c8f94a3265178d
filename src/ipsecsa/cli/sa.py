"""``ipsecsa sa``: SA files and, later, the service's SAs (this group grows with the service).

``sa check`` validates an SA file and says what it describes, never its keys: algorithms with key
lengths, modes, addresses, encapsulation, selectors, lifetimes, and the warnings the format
defines (legacy algorithms, encryption-only ESP).
"""

from __future__ import annotations

from typing import Any

import click

from ipsecsa.cli.output import console, json_option, load_sas, print_json, sa_file_option, table
from ipsecsa.config.model import Lifetime, SaConfig


@click.group(help="Work with SA descriptions (SA files; the service's SAs later).")
def sa() -> None:
    pass


def _lifetime(life: Lifetime) -> dict[str, Any] | None:
    if life.unlimited:
        return None
    return {k: v for k, v in (("bytes", life.bytes), ("packets", life.packets),
                              ("seconds", life.seconds)) if v is not None}


def describe_sa(index: int, cfg: SaConfig) -> dict[str, Any]:
    """What an SA describes, as a JSON-able dict without any key material."""
    enc = cfg.encryption
    integ = cfg.integrity
    return {
        "sa": index,
        "spi": f"0x{cfg.spi:08x}",
        "protocol": cfg.protocol,
        "mode": cfg.mode,
        "direction": cfg.direction,
        "src": str(cfg.src),
        "dst": str(cfg.dst),
        "encryption": None if enc is None else {
            "algorithm": enc.name,
            "key_bits": 8 * (len(cfg.encryption_key or b"") - enc.salt_len) if enc.key_sizes != (0,)
            else 0,
            "salt_bytes": enc.salt_len, "legacy": enc.legacy},
        "integrity": None if integ is None else {
            "algorithm": integ.name, "key_bits": 8 * (len(cfg.integrity_key or b"")
                                                      - integ.salt_len),
            "icv_bytes": integ.icv_len, "legacy": integ.legacy},
        "esn": cfg.esn,
        "replay_window": cfg.replay_window,
        "encapsulation": None if cfg.encapsulation is None else {
            "type": "udp", "sport": cfg.encapsulation.sport, "dport": cfg.encapsulation.dport},
        "selectors": [s.to_dict() for s in cfg.selectors] if cfg.selectors else [],
        "lifetime": {"soft": _lifetime(cfg.soft), "hard": _lifetime(cfg.hard)},
        "seq": cfg.seq,
        "warnings": list(cfg.warnings),
    }


def _algs(d: dict[str, Any]) -> str:
    parts = []
    if d["encryption"] is not None:
        e = d["encryption"]
        parts.append(f"{e['algorithm']}" + (f" ({e['key_bits']}-bit)" if e["key_bits"] else ""))
    if d["integrity"] is not None:
        i = d["integrity"]
        parts.append(f"{i['algorithm']} ({i['key_bits']}-bit key)")
    return " + ".join(parts)


@sa.command(help="Validate an SA file and print what it describes (never the keys), with "
                 "warnings for legacy and encryption-only algorithms.")
@sa_file_option()
@json_option
def check(sa_file: str, as_json: bool) -> None:
    configs = load_sas(sa_file, quiet=True)
    described = [describe_sa(i, c) for i, c in enumerate(configs)]
    if as_json:
        print_json({"file": sa_file, "valid": True, "sas": described,
                    "warnings": [f"sas[{d['sa']}]: {w}" for d in described
                                 for w in d["warnings"]]})
        return
    out = console()
    out.print(f"{sa_file}: valid, {len(configs)} SA{'s' if len(configs) != 1 else ''}")
    rows = []
    for d in described:
        extra = []
        if d["esn"]:
            extra.append("esn")
        if d["encapsulation"]:
            extra.append(f"udp {d['encapsulation']['sport']}->{d['encapsulation']['dport']}")
        if d["selectors"]:
            extra.append(f"{len(d['selectors'])} selector(s)")
        rows.append((d["sa"], d["spi"], d["protocol"], d["mode"], d["direction"] or "either",
                     f"{d['src']} -> {d['dst']}", _algs(d), " ".join(extra) or "-"))
    out.print(table(None, ("#", "SPI", "proto", "mode", "direction", "endpoints", "algorithms",
                           "options"), rows))
    for d in described:
        for w in d["warnings"]:
            out.print(f"warning: sas[{d['sa']}] (spi {d['spi']}): {w}")


__all__ = ["check", "describe_sa", "sa"]

"""``ipsecsa sa``: SA files and, later, the service's SAs (this group grows with the service).

``sa check`` validates an SA file and says what it describes, never its keys: algorithms with key
lengths, modes, addresses, encapsulation, selectors, lifetimes, and the warnings the format
defines (legacy algorithms, encryption-only ESP).
"""

from __future__ import annotations

from typing import Any

import click

from ipsecsa.cli.connect import client, connection_options
from ipsecsa.cli.errors import CliError
from ipsecsa.cli.output import console, json_option, load_sas, print_json, sa_file_option, table
from ipsecsa.config.model import Lifetime, SaConfig


@click.group(help="SA files (check) and the service's SA contexts (list, show, create, delete, "
                  "expire).")
@connection_options
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


# ---------------------------------------------------------------- against the service
def _hex(spi: int | None) -> str:
    return "-" if spi is None else f"0x{spi:08x}"


def _drops(info: Any) -> int:
    return sum(sa.dropped for sa in (*info.inbound, *info.outbound))


@sa.command("list", help="The service's SA contexts: id, state, SPIs, counters.")
@json_option
@connection_options
def list_contexts(as_json: bool) -> None:
    with client() as service:
        infos = service.contexts()
    if as_json:
        print_json([i.to_dict() for i in infos])
        return
    rows = [(i.id, i.state, i.mode, f"{i.local} -> {i.remote}", _hex(i.inbound_spi),
             _hex(i.outbound_spi), i.packets_in, i.packets_out, _drops(i)) for i in infos]
    console().print(table(f"{len(infos)} SA context{'s' if len(infos) != 1 else ''}",
                          ("id", "state", "mode", "local -> remote", "in SPI", "out SPI",
                           "pkts in", "pkts out", "drops"), rows))


@sa.command(help="One SA context of the service, with each SA's algorithms and counters.")
@click.argument("context_id", type=int)
@json_option
@connection_options
def show(context_id: int, as_json: bool) -> None:
    with client() as service:
        info = service.context(context_id)
    if as_json:
        print_json(info.to_dict())
        return
    out = console()
    out.print(f"context {info.id}: {info.state}, {info.mode}, {info.local} -> {info.remote}"
              + (f", {info.seconds_left:.0f} s left" if info.seconds_left is not None else ""))
    rows = []
    for direction, sas in (("inbound", info.inbound), ("outbound", info.outbound)):
        for s in sas:
            algs = " + ".join(a for a in (s.encryption, s.integrity) if a) or "-"
            drops = ", ".join(f"{k}={v}" for k, v in sorted(s.drops.items())) or "-"
            rows.append((direction, _hex(s.spi), s.protocol, algs, s.seq, s.packets, s.bytes,
                         drops))
    out.print(table(None, ("direction", "SPI", "proto", "algorithms", "seq", "packets", "bytes",
                           "drops"), rows))


def _sides(path: str) -> tuple[Any, Any]:
    """(outbound, inbound) bundles of an SA file: by each SA's ``direction``; a file without
    directions holds exactly two SAs, the outbound one first."""
    from ipsecsa.config.files import read_sa_descriptions

    load_sas(path, quiet=True)  # the file's own errors, as 'sa check' reports them
    sas = read_sa_descriptions(path)
    directions = [d.get("direction") for d in sas]
    if all(d is None for d in directions):
        if len(sas) != 2:
            raise CliError(f"{path}: without 'direction' the file must hold exactly two SAs "
                           "(this host's outbound SA, then its inbound SA)")
        return sas[0], sas[1]
    if any(d is None for d in directions):
        missing = directions.index(None)
        raise CliError(f"{path}: sas[{missing}].direction: required when other SAs have one")
    out = [d for d in sas if d["direction"] == "outbound"]
    inb = [d for d in sas if d["direction"] == "inbound"]
    if not out or not inb:
        raise CliError(f"{path}: an SA context needs an outbound and an inbound SA")
    return (out[0] if len(out) == 1 else out), (inb[0] if len(inb) == 1 else inb)


def _spis(bundle: Any) -> set[int]:
    from ipsecsa.config import parse_sa

    return {parse_sa(d).spi for d in (bundle if isinstance(bundle, list) else [bundle])}


@sa.command(help="Create an SA context in the service from an SA file holding this host's "
                 "outbound and inbound SA; prints the new context's id.")
@sa_file_option()
@json_option
@connection_options
def create(sa_file: str, as_json: bool) -> None:
    from ipsecsa import api

    outbound, inbound = _sides(sa_file)
    with client() as service:
        try:
            info = service.create_context(outbound=outbound, inbound=inbound)
        except api.AlreadyExists as exc:
            raise CliError(f"{sa_file}: {_collision(service, outbound, inbound) or exc}") \
                from None
        except api.WfpError as exc:
            where = f"{exc.field}: " if exc.field else ""
            raise CliError(f"{sa_file}: {where}{exc.message} ({exc.status_name})") from None
    if as_json:
        print_json(info.to_dict())
    else:
        click.echo(info.id)


def _collision(service: Any, outbound: Any, inbound: Any) -> str | None:
    """Which live context already uses the file's inbound SPI (the engine said
    FWP_E_ALREADY_EXISTS): a message naming it."""
    mine = _spis(inbound)
    try:
        live = service.contexts()
    except Exception:  # noqa: BLE001 - no right to list: the engine's own message stands
        return None
    for info in live:
        if info.inbound_spi in mine:
            return (f"inbound SPI {_hex(info.inbound_spi)} is in use by live SA context "
                    f"{info.id} ({info.state}); delete it first or use other SPIs")
    return None


@sa.command(help="Delete an SA context of the service (both directions at once).")
@click.argument("context_id", type=int)
@connection_options
def delete(context_id: int) -> None:
    with client() as service:
        service.delete(context_id)
    click.echo(f"deleted {context_id}", err=True)


@sa.command(help="Expire an SA context: stop sending now; inbound lingers 60 s for packets "
                 "in flight.")
@click.argument("context_id", type=int)
@connection_options
def expire(context_id: int) -> None:
    with client() as service:
        service.expire(context_id)
    click.echo(f"expired {context_id}", err=True)


__all__ = ["check", "create", "delete", "describe_sa", "expire", "list_contexts", "sa", "show"]

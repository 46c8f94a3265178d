"""``ipsecsa serve``, ``ipsecsa events``, ``ipsecsa stats``, ``ipsecsa token ...``.

``serve`` runs the service in the foreground (structured log lines on stderr); the others talk
to it (see :mod:`ipsecsa.cli.connect` for where they find it).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from ipsecsa.cli.connect import client, connection_options
from ipsecsa.cli.output import console, json_option, print_json, table
from ipsecsa.gateway.command import (
    families_differ,
    gateway_options,
    ip_address_value,
    tun_name_value,
)


def _tun_name(ctx: Any, param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else tun_name_value(ctx, param, value)


@click.command(help="Run the ipsecsa service: the SA database behind an authenticated HTTP API "
                    "on a Unix socket (and TCP with --http). Stops cleanly on SIGTERM/SIGINT.")
@click.option("--db", "database", metavar="PATH", default=None,
              help="The SQLite database (default: ~/.local/share/ipsecsa/ipsecsa.db).")
@click.option("--socket", "socket_path", metavar="PATH", default=None,
              help="The Unix socket to listen on (default: beside the default database).")
@click.option("--http", metavar="HOST:PORT", default=None,
              help="Also listen on TCP (for example 127.0.0.1:8080).")
@click.option("--token-file", metavar="PATH", default=None,
              help="Where the first start writes the administrator token, 0600 "
                   "(default: admin.token beside the database).")
@click.option("--tun", metavar="NAME", default=None, callback=_tun_name,
              help="Also carry the contexts' traffic: create the TUN device NAME and run a "
                   "gateway on it over the engine (docs/gateway.md). Needs --local.")
@click.option("--local", metavar="IP", default=None, callback=ip_address_value,
              help="With --tun: the local address the gateway's ESP-in-UDP socket binds.")
@gateway_options("With --tun: ")
def serve(database: str | None, socket_path: str | None, http: str | None,
          token_file: str | None, tun: str | None, local: Any, port: int, peer: Any,
          transport: str, keepalive: float, mtu: int | None, no_offload: bool,
          threads: int) -> None:
    from ipsecsa.service import logs
    from ipsecsa.service.server import serve as run

    if (problem := families_differ(local, peer)) is not None:
        raise click.UsageError(problem)
    logs.setup()
    sys.exit(run(database, socket_path, http, token_file, tun=tun, local=local, port=port,
                 gateway={"peer": peer, "transport": transport, "keepalive": keepalive,
                          "mtu": mtu, "offload": not no_offload, "threads": threads}))



@click.command(help="Print SA-context events as they happen (added, deleted); Ctrl-C stops.")
@click.option("--timeout", type=float, default=None, metavar="SECONDS",
              help="Stop when no event came for this long.")
@json_option
@connection_options
def events(timeout: float | None, as_json: bool) -> None:
    import json

    with client() as service:
        for event in service.events(timeout=timeout):
            if as_json:
                click.echo(json.dumps(event.to_dict()))
            else:
                click.echo(f"{event.kind:8} context {event.context_id}")
            sys.stdout.flush()


@click.command(help="The engine's statistics (IPsecGetStatistics1).")
@json_option
@connection_options
def stats(as_json: bool) -> None:
    with client() as service:
        numbers = service.statistics()
    if as_json:
        print_json(numbers)
        return
    console().print(table("statistics", ("counter", "value"),
                          [(k, _flat(v)) for k, v in numbers.items()]))


def _flat(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


@click.group(help="Tokens of the service: who may do what (FWPM_ACTRL_* rights).")
@connection_options
def token() -> None:
    pass


@token.command("create", help="Make a token for PRINCIPAL; prints the token alone (shown once).")
@click.option("--principal", required=True, help="The name the engine sees (user or DOMAIN\\user).")
@click.option("--rights", required=True, help="Comma-separated FWPM_ACTRL_* names, with or "
              "without the prefix, any case (read,enum), or 'all'.")
@json_option
@connection_options
def token_create(principal: str, rights: str, as_json: bool) -> None:
    with client() as service:
        made = service.create_token(principal, rights)
    if as_json:
        print_json(made)
    else:
        click.echo(made["token"])


@token.command("list", help="The tokens (ids, principals, rights; never the tokens).")
@json_option
@connection_options
def token_list(as_json: bool) -> None:
    with client() as service:
        records = service.tokens()
    if as_json:
        print_json(records)
        return
    console().print(table("tokens", ("id", "principal", "rights"),
                          [(r["id"], r["principal"], ",".join(r["rights"])) for r in records]))


@token.command("revoke", help="Revoke the token with this id (see 'token list').")
@click.argument("token_id")
@connection_options
def token_revoke(token_id: str) -> None:
    with client() as service:
        service.revoke_token(token_id)
    click.echo(f"revoked {token_id}", err=True)

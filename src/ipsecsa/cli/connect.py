"""Where the CLI finds the service: ``--socket``, ``--url``, ``--token-file``, anywhere.

The options exist on the root command, on the ``sa``/``token`` groups and on every command that
talks to the service, so they work before or after the subcommand
(``ipsecsa --socket S sa list`` = ``ipsecsa sa list --socket S``); the one nearest the end of
the line wins. ``IPSECSA_URL`` and ``IPSECSA_TOKEN`` (the token itself) in the environment do
the same; the defaults are the default socket and the administrator token beside the default
database. The token is never an option: command lines are visible to every user (``ps``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

_KEY = "ipsecsa.connection"


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value is None or ctx.resilient_parsing:
        return
    given = ctx.find_root().meta.setdefault(_KEY, {})
    given[param.name] = value
    if param.name in ("socket", "url"):  # the later of the two wins
        given.pop("url" if param.name == "socket" else "socket", None)


def connection_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add --socket, --url and --token-file (not passed to the function: see :func:`client`)."""
    for option in reversed((
        click.option("--socket", "socket", metavar="PATH", default=None, expose_value=False,
                     callback=_remember, help="The service's Unix socket (default: "
                     "~/.local/share/ipsecsa/ipsecsa.sock)."),
        click.option("--url", "url", metavar="URL", default=None, expose_value=False,
                     callback=_remember, help="The service over TCP, http://HOST:PORT "
                     "(or IPSECSA_URL)."),
        click.option("--token-file", "token_file", metavar="FILE", default=None,
                     expose_value=False, callback=_remember,
                     help="A file holding the token (or IPSECSA_TOKEN: the token itself; "
                     "default: the admin token beside the default database)."),
    )):
        command = option(command)
    return command


def client() -> Any:
    """A :class:`ipsecsa.client.Client` for the options given anywhere on the command line."""
    from ipsecsa.client import Client

    ctx = click.get_current_context()
    given = ctx.find_root().meta.get(_KEY, {})
    return Client(url=given.get("url"), socket=given.get("socket"),
                  token_file=given.get("token_file"))

"""The root of the ``ipsecsa`` command: lazy subcommands, ``--version``, ``--debug``, error lines.

Every user mistake ends as one line on stderr, ``ipsecsa: error: <what>``, naming the file and the
field, and exit status 1 (2 for command-line usage errors, as click reports them); ``--debug``
(or ``IPSECSA_DEBUG=1``) shows the traceback instead. Keys never reach these lines: the library's
errors name fields, never values.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from typing import Any

import click

from ipsecsa.cli.connect import connection_options
from ipsecsa.cli.errors import CliError, describe

#: Subcommands of ``ipsecsa``: name -> "module:attribute" of a click command or group. Adding a
#: command is one line here; the module is imported only when the command is used.
COMMANDS: dict[str, str] = {
    "pcap": "ipsecsa.cli.pcap:pcap",
    "import": "ipsecsa.cli.keys:import_group",
    "export": "ipsecsa.cli.keys:export_group",
    "sa": "ipsecsa.cli.sa:sa",
    "demo": "ipsecsa.cli.demo:demo",
    "gateway": "ipsecsa.gateway.command:gateway_command",
    "serve": "ipsecsa.cli.service:serve",
    "events": "ipsecsa.cli.service:events",
    "stats": "ipsecsa.cli.service:stats",
    "token": "ipsecsa.cli.service:token",
}

#: Exit status for a user mistake or a failed operation (click uses 2 for usage errors).
EXIT_FAILURE = 1

_HELP = """ipsecsa: a userspace IPsec SA engine and the tools around it.

Decrypt, encrypt and diagnose IPsec captures, move keys between ip xfrm, strongSwan, tcpdump
and Wireshark, and check SA files. Every command has --help; commands that print results take
--json.
"""


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use (see :data:`COMMANDS`)."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self._lazy.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module_name, attr = target.split(":")
        command = getattr(importlib.import_module(module_name), attr)
        if not isinstance(command, click.Command):  # pragma: no cover - a registration mistake
            raise TypeError(f"{target} is not a click command")
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("ipsecsa: interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:  # noqa: BLE001 - the one place every error becomes a line
            if _debug(ctx):
                traceback.print_exc()
                ctx.exit(EXIT_FAILURE)
            message = describe(exc)
            if message is None:
                # Not a user mistake we know how to phrase: a bug. Say so, in one line too.
                message = (f"internal error: {type(exc).__name__}: {exc} "
                           "(run with --debug for the traceback)")
            click.echo(f"ipsecsa: error: {message}", err=True)
            ctx.exit(exc.exit_code if isinstance(exc, CliError) else EXIT_FAILURE)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"ipsecsa: {record.levelname.lower()}: {record.getMessage()}"


def _setup_logging(debug: bool) -> None:
    """Library warnings (legacy algorithms, skipped frames) as ``ipsecsa: warning:`` lines."""
    logger = logging.getLogger("ipsecsa")
    if any(isinstance(h.formatter, _Formatter) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)
    logger.propagate = False


def _debug(ctx: click.Context) -> bool:
    root = ctx.find_root()
    return bool(root.params.get("debug")) or os.environ.get("IPSECSA_DEBUG", "") not in ("", "0")


def _version_lines() -> list[str]:
    import ipsecsa

    lines = [f"ipsecsa {ipsecsa.__version__} (Python {sys.version.split()[0]})"]
    try:
        details = dict(ipsecsa.info())
    except Exception as exc:  # noqa: BLE001 - --version must always print
        details = {"info": f"unavailable ({type(exc).__name__})"}
    lines.append("  " + _fast_path_line(details))
    details.pop("version", None)  # already on the first line
    lines += [f"  {k}: {v}" for k, v in details.items()]
    from ipsecsa.io.wireshark import installed_wireshark_version

    tshark = installed_wireshark_version()
    lines.append("  tshark: " + (".".join(map(str, tshark)) if tshark else
                                  "not found (the Wireshark interop is unavailable)"))
    try:
        import rich

        rich_version = getattr(rich, "__version__", None)
        if rich_version is None:
            from importlib.metadata import version

            rich_version = version("rich")
        lines.append(f"  rich: {rich_version}")
    except ImportError:  # pragma: no cover - rich is a dependency
        lines.append("  rich: not installed (plain tables, no progress bars)")
    lines.append(f"  click: {importlib.import_module('click').__version__}"
                 if hasattr(importlib.import_module("click"), "__version__")
                 else "  click: present")
    return lines


def _fast_path_line(details: dict[str, object]) -> str:
    """Whether the native ESP fast path is on (and on which libcrypto), or why it is off, from
    :func:`ipsecsa.info`; its keys are taken off ``details``."""
    native = details.pop("native", None)
    why = details.pop("why_off", None)
    openssl = details.pop("openssl", None)
    if native is True:
        return "native ESP fast path: on" + (f" ({openssl})" if openssl else "")
    if native is False:
        return f"native ESP fast path: off ({why or 'reason unknown'}); pure-Python data path"
    return "native ESP fast path: unknown (ipsecsa.info() did not say)"


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo("\n".join(_version_lines()))
    ctx.exit(0)


@click.group(cls=LazyGroup, lazy=COMMANDS, help=_HELP,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version,
              help="Show the version and which optional parts are present, then exit.")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@connection_options
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    _setup_logging(debug)


__all__ = ["COMMANDS", "LazyGroup", "main"]

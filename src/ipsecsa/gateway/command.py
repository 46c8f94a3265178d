"""``ipsecsa gateway``: run a gateway in the foreground (the contract of issue 17).

    ipsecsa gateway --tun NAME --sa-file F --local IP [--port 4500] [--peer IP]
                    [--transport udp|raw] [--keepalive S] [--mtu N] [--stats-json FILE]
                    [--no-offload] [--threads 1|2|3] [-v]

Order of work, so that failures leave nothing behind: arguments, then the SA file (an unusable
one is one line and exit 3 before any device exists), then the TUN (within a second of the start),
then the socket. SIGTERM / SIGINT stop it (exit 0, the TUN removed with its descriptor), SIGUSR1
prints the counters, SIGHUP re-reads the SA file (a rekey: see :mod:`ipsecsa.gateway.safile`).

Exit status: 0 stopped by a signal; 2 wrong arguments; 3 unusable SA file; 4 the TUN or the
socket could not be set up (no permission, name taken, address not local).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from ipsecsa.errors import ConfigError
from ipsecsa.gateway.core import KEEPALIVE_INTERVAL, NATT_PORT, TRANSPORTS
from ipsecsa.gateway.loop import Gateway
from ipsecsa.gateway.safile import InstalledSas, load_for_gateway
from ipsecsa.gateway.stats import format_stats
from ipsecsa.gateway.tun import check_name
from ipsecsa.sad.database import SaDatabase
from ipsecsa.securefile import write_secret_file

log = logging.getLogger("ipsecsa.gateway")

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_SA_FILE = 3
EXIT_SYSTEM = 4

PROG = "ipsecsa gateway"
F = TypeVar("F", bound=Callable[..., Any])


class _Failure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def ip_address_value(_ctx: Any, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise click.BadParameter(f"not an IP address: {value!r}", param=param) from None


def tun_name_value(_ctx: Any, param: click.Parameter, value: str) -> str:
    try:
        check_name(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None
    return value


def gateway_options(prefix: str) -> Callable[[F], F]:
    """The options that tune a gateway (port, peer, transport, keepalive, MTU, offload,
    threads), declared once for ``ipsecsa gateway`` and ``ipsecsa serve --tun`` (whose help
    says ``prefix``, e.g. "With --tun: "): the two commands run the same Gateway and must not
    drift apart. The command receives ``port``, ``peer``, ``transport``, ``keepalive``,
    ``mtu``, ``no_offload`` and ``threads``."""
    def say(text: str) -> str:
        if prefix and text[1:2].islower():  # "Send ..." -> "With --tun: send ..."; "UDP" stays
            text = text[0].lower() + text[1:]
        return prefix + text

    options = [
        click.option("--port", default=NATT_PORT, show_default=True,
                     type=click.IntRange(1, 65535),
                     help=say("UDP port for ESP in UDP (RFC 3948).")),
        click.option("--peer", callback=ip_address_value, metavar="IP",
                     help=say("Send to this address instead of each outbound SA's dst.")),
        click.option("--transport", type=click.Choice(TRANSPORTS), default="udp",
                     show_default=True,
                     help=say("ESP in UDP, or raw ESP (IP protocol 50; needs CAP_NET_RAW).")),
        click.option("--keepalive", default=KEEPALIVE_INTERVAL, show_default=True,
                     type=click.FloatRange(min=0), metavar="SECONDS",
                     help=say("NAT-T keepalive after this much idle time (0: never).")),
        click.option("--mtu", type=click.IntRange(68, 65535), default=None,
                     help=say("TUN MTU (default: the path MTU less the SAs' ESP overhead).")),
        click.option("--no-offload", "no_offload", is_flag=True,
                     help=say("One datagram per send (no UDP GSO/GRO): what tcpdump on this "
                              "host then shows is what goes on the wire.")),
        click.option("--threads", type=click.IntRange(1, 3), default=3, show_default=True,
                     help=say("3: send, receive and write the TUN in three threads; 2: the "
                              "TUN written by the receiving thread; 1: one thread for "
                              "everything.")),
    ]

    def apply(fn: F) -> F:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


def families_differ(local: Any, peer: Any) -> str | None:
    """The usage error when ``--peer`` and ``--local`` are of different IP families."""
    if peer is not None and local is not None and peer.version != local.version:
        return f"--peer {peer} and --local {local} are of different families"
    return None


class _OneLineUsage(click.Command):
    """Usage errors as the one line the contract promises (``ipsecsa gateway: error: ...``,
    status 2), whether the command runs alone or under the ``ipsecsa`` group (whose click
    default would print usage, hint and error on three lines)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            click.echo(f"{PROG}: error: {exc.format_message()}", err=True)
            ctx.exit(EXIT_USAGE)


@click.command("gateway", cls=_OneLineUsage,
               context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--tun", "tun", required=True, callback=tun_name_value, metavar="NAME",
              help="TUN device to create (addresses and routes are the administrator's).")
@click.option("--sa-file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              metavar="F", help="SA file ({\"sas\": [...]}): this host's outbound and inbound SAs.")
@click.option("--local", required=True, callback=ip_address_value, metavar="IP",
              help="Local address to bind (the inbound SAs' dst).")
@gateway_options("")
@click.option("--stats-json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE", help="Write the counters here on SIGUSR1 and at exit.")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def gateway_command(tun: str, sa_file: Path, local: Any, port: int, peer: Any, transport: str,
                    keepalive: float, mtu: int | None, stats_json: Path | None,
                    no_offload: bool, threads: int, verbose: int) -> None:
    """Run an IPsec gateway on a TUN device in the foreground."""
    code = run_gateway(tun=tun, sa_file=sa_file, local=local, port=port, peer=peer,
                       transport=transport, keepalive=keepalive, mtu=mtu, stats_json=stats_json,
                       offload=not no_offload, threads=threads, verbose=verbose)
    sys.exit(code)


def _setup_logging(verbose: int) -> None:
    """Log lines on stderr: through the ``ipsecsa`` command's handler when it set one up (its
    ``--debug`` wins), or ``ipsecsa gateway: <message>`` when run alone."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logger = logging.getLogger("ipsecsa")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)


def _write_stats(path: Path, stats: dict) -> None:
    # No keys in statistics, but the file names SAs and peers: owner-only, written atomically.
    write_secret_file(path, (json.dumps(stats, indent=2) + "\n").encode())


def run_gateway(*, tun: str, sa_file: Path, local: Any, port: int = NATT_PORT, peer: Any = None,
                transport: str = "udp", keepalive: float = KEEPALIVE_INTERVAL,
                mtu: int | None = None, stats_json: Path | None = None, offload: bool = True,
                threads: int = 3, verbose: int = 0) -> int:
    """The gateway command's work, as an exit status (see the module docstring)."""
    _setup_logging(verbose)
    if (problem := families_differ(local, peer)) is not None:
        click.echo(f"{PROG}: error: {problem}", err=True)
        return EXIT_USAGE
    try:
        configs = load_for_gateway(sa_file, local=local, port=port, transport=transport)
    except ConfigError as exc:
        click.echo(f"{PROG}: error: SA file: {exc}", err=True)
        return EXIT_SA_FILE
    except OSError as exc:
        click.echo(f"{PROG}: error: SA file {sa_file}: {exc.strerror}", err=True)
        return EXIT_SA_FILE
    sad = SaDatabase()
    gw: Gateway | None = None
    installed = InstalledSas(sad, on_retire=lambda sa: gw.core.retire(sa) if gw else None)
    try:
        installed.sync(configs)
    except ConfigError as exc:
        click.echo(f"{PROG}: error: SA file: {exc}", err=True)
        return EXIT_SA_FILE
    gw = Gateway(sad, tun=tun, local=local, port=port, peer=peer, transport=transport,
                 keepalive=keepalive, mtu=mtu, offload=offload, threads=threads)
    try:
        gw.open()
    except OSError as exc:
        click.echo(f"{PROG}: error: {exc.strerror or exc}", err=True)
        gw.close()
        return EXIT_SYSTEM

    def report() -> None:
        stats = gw.stats()
        sys.stderr.write(format_stats(stats))
        sys.stderr.flush()
        if stats_json is not None:
            try:
                _write_stats(stats_json, stats)
            except OSError as exc:
                log.error("cannot write %s: %s", stats_json, exc.strerror)

    def reload() -> None:
        try:
            new = load_for_gateway(sa_file, local=local, port=port, transport=transport)
            added, kept, removed = installed.sync(new)
        except (ConfigError, OSError) as exc:
            log.error("SA file not reloaded, the SAs in use stay: %s", exc)
            return
        log.warning("SA file reloaded: %d added, %d kept, %d removed", added, kept, removed)

    signal.signal(signal.SIGTERM, lambda *_: gw.stop())
    signal.signal(signal.SIGINT, lambda *_: gw.stop())
    signal.signal(signal.SIGUSR1, lambda *_: gw.call_soon(report))
    signal.signal(signal.SIGHUP, lambda *_: gw.call_soon(reload))
    try:
        gw.run()
    finally:
        gw.close()
        report()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default: the process's); returns the exit status. A usage
    error is one line (``ipsecsa gateway: error: ...``) and status 2."""
    try:
        status = gateway_command.main(args=list(argv) if argv is not None else sys.argv[1:],
                                      prog_name=PROG, standalone_mode=False)
    except click.UsageError as exc:
        click.echo(f"{PROG}: error: {exc.format_message()}", err=True)
        return EXIT_USAGE
    except click.Abort:
        return EXIT_USAGE
    except SystemExit as exc:
        return int(exc.code or 0)
    # click returns the status of an Exit (--help: 0, a usage error: 2) instead of raising it
    return status if isinstance(status, int) else EXIT_OK


__all__ = ["EXIT_OK", "EXIT_SA_FILE", "EXIT_SYSTEM", "EXIT_USAGE", "gateway_command", "main",
           "run_gateway"]

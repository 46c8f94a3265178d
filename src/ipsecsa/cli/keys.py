"""``ipsecsa import`` / ``ipsecsa export``: move keys between ipsecsa and other tools.

Imports read another tool's text (``ip xfrm state``, strongSwan's listing and save-keys table,
tcpdump's ``-E`` secrets, Wireshark's ``esp_sa`` table) and write an SA file; exports write those
texts from an SA file. Everything written holds keys: to a file it is created 0600 and replaced
atomically, and on a terminal a note on stderr says so.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from ipsecsa.cli.errors import CliError
from ipsecsa.cli.output import check_input, json_option, load_sas, print_json, sa_file_option
from ipsecsa.config.model import SaConfig
from ipsecsa.errors import ConfigError
from ipsecsa.io.keytext import Imported, KeyTextError, build_configs


# ============================================================================ shared
def _read_text(source: str, *, allow_stdin: bool = True) -> str:
    if source == "-" and allow_stdin:
        return sys.stdin.read()
    check_input(source, "text file")
    try:
        with open(source, encoding="utf-8-sig") as f:
            return f.read()
    except UnicodeDecodeError as exc:
        raise CliError(f"{source}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise CliError(f"{source}: {exc.strerror or exc}") from None


def _configs(source: str, parse: Callable[[], tuple[list[Imported], list[str]]]
             ) -> tuple[list[SaConfig], list[str]]:
    try:
        imported, notes = parse()
        configs = build_configs(imported)
    except KeyTextError as exc:
        raise CliError(f"{source}: line {exc.line}: {exc.reason}") from None
    notes += [n for item in imported for n in item.notes]
    return configs, notes


def _write_secret(path: str, text: str) -> None:
    from ipsecsa.securefile import write_secret_file

    try:
        write_secret_file(path, text.encode("utf-8"))
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror or exc}") from None


def _emit_sas(configs: list[SaConfig], notes: list[str], output: str | None,
              as_json: bool) -> None:
    for note in notes:
        click.echo(f"ipsecsa: note: {note}", err=True)
    if output is None:
        # The SA file itself is the result (JSON either way).
        click.echo(json.dumps({"sas": [c.to_dict() for c in configs]}, indent=2))
        return
    from ipsecsa.config.files import dump_sa_file

    try:
        dump_sa_file(output, configs)
    except ConfigError as exc:
        raise CliError(f"{output}: {exc.reason}") from None
    except OSError as exc:
        raise CliError(f"{output}: {exc.strerror or exc}") from None
    if as_json:
        print_json({"output": output, "sas": len(configs), "notes": notes})
    else:
        click.echo(f"wrote {len(configs)} SA{'s' if len(configs) != 1 else ''} to {output} "
                   "(mode 0600)")


_OUTPUT = click.option("--output", "-o", metavar="FILE",
                       help="Write to FILE (created 0600) instead of standard output.")
_MODE = click.option("--mode", type=click.Choice(["tunnel", "transport"]), default="tunnel",
                     show_default=True,
                     help="Mode of the SAs when the source does not say.")


def _parse_ports(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    sport, _, dport = value.partition(":")
    try:
        ports = (int(sport), int(dport or sport))
    except ValueError:
        raise CliError(f"--udp-encap: {value!r} is not PORT or SPORT:DPORT") from None
    if not all(1 <= p <= 65535 for p in ports):
        raise CliError(f"--udp-encap: ports must be 1-65535, got {value!r}")
    return ports


_UDP = click.option("--udp-encap", metavar="PORT[:PORT]",
                    help="The SAs are UDP-encapsulated (RFC 3948) on these ports "
                         "(e.g. 4500), when the source does not say.")


# ============================================================================ import
@click.group("import", help="Turn another tool's keys into an SA file.")
def import_group() -> None:
    pass


@import_group.command("xfrm", help="From 'ip xfrm state' / 'ip -s xfrm state' output (keys "
                                   "shown) or 'ip xfrm state add' commands. FILE or - for "
                                   "standard input.")
@click.argument("source", metavar="FILE|-")
@_OUTPUT
@json_option
def import_xfrm(source: str, output: str | None, as_json: bool) -> None:
    from ipsecsa.io.xfrm import parse_xfrm

    text = _read_text(source)
    configs, notes = _configs(source, lambda: parse_xfrm(text))
    _emit_sas(configs, notes, output, as_json)


@import_group.command("swanctl", help="From strongSwan: the save-keys plugin's esp_sa table, "
                                      "optionally with a 'swanctl --list-sas' listing (which "
                                      "adds mode, UDP ports, ESN, traffic selectors and "
                                      "direction; it holds no keys itself).")
@click.argument("sources", metavar="FILE...", nargs=-1, required=True)
@_MODE
@_UDP
@_OUTPUT
@json_option
def import_swanctl(sources: tuple[str, ...], mode: str, udp_encap: str | None,
                   output: str | None, as_json: bool) -> None:
    from ipsecsa.io.swanctl import parse_swanctl

    texts = [_read_text(s) for s in sources]
    ports = _parse_ports(udp_encap)
    configs, notes = _configs(" + ".join(sources),
                              lambda: parse_swanctl(texts, mode=mode, encapsulation=ports))
    _emit_sas(configs, notes, output, as_json)


@import_group.command("tcpdump", help="From tcpdump ESP secrets: a secrets file ('-E file "
                                      "NAME') or an '-E' value ('spi@dst algo:secret,...').")
@click.argument("source", metavar="FILE|SPEC")
@click.option("--src", metavar="ADDR", help="Source address of the SAs (tcpdump records only "
                                           "the destination).")
@_MODE
@click.option("--integrity", metavar="ALG:HEXKEY",
              help="Integrity algorithm and key for '-hmac96' secrets (tcpdump has none).")
@_OUTPUT
@json_option
def import_tcpdump(source: str, src: str | None, mode: str, integrity: str | None,
                   output: str | None, as_json: bool) -> None:
    import os

    from ipsecsa.io.tcpdump import parse_tcpdump

    text = _read_text(source) if os.path.exists(source) or source == "-" else source
    integ = None
    if integrity is not None:
        alg, sep, key = integrity.partition(":")
        if not sep:
            raise CliError("--integrity: expected ALG:HEXKEY")
        integ = (alg, key)
    name = source if os.path.exists(source) else "secret"
    configs, notes = _configs(name, lambda: (parse_tcpdump(text, src=src, mode=mode,
                                                           integrity=integ), []))
    _emit_sas(configs, notes, output, as_json)


@import_group.command("wireshark", help="From a Wireshark esp_sa table (ours, Wireshark's, or "
                                        "strongSwan save-keys output).")
@click.argument("source", metavar="FILE|-")
@_MODE
@_UDP
@_OUTPUT
@json_option
def import_wireshark(source: str, mode: str, udp_encap: str | None, output: str | None,
                     as_json: bool) -> None:
    from ipsecsa.io.wireshark import parse_esp_sa

    text = _read_text(source)
    ports = _parse_ports(udp_encap)
    configs, notes = _configs(source, lambda: (parse_esp_sa(text, mode=mode,
                                                            encapsulation=ports), []))
    _emit_sas(configs, notes, output, as_json)


# ============================================================================ export
@click.group("export", help="Write an SA file's keys in another tool's format.")
def export_group() -> None:
    pass


def _emit_lines(fmt: str, lines: list[str], header: str, output: str | None,
                as_json: bool) -> None:
    text = header + "".join(line + "\n" for line in lines)
    if output is not None:
        _write_secret(output, text)
        if as_json:
            print_json({"format": fmt, "output": output, "entries": len(lines)})
        else:
            click.echo(f"wrote {len(lines)} {fmt} entr{'y' if len(lines) == 1 else 'ies'} to "
                       f"{output} (mode 0600)")
        return
    if as_json:
        print_json({"format": fmt, "lines": lines})
    else:
        click.echo(text, nl=False)
    if sys.stdout.isatty():
        click.echo("ipsecsa: note: the output holds keys", err=True)


def _export(sa_file: str, make: Callable[[list[SaConfig]], list[str]]) -> list[str]:
    configs = load_sas(sa_file)
    try:
        return make(configs)
    except ConfigError as exc:
        raise CliError(f"{sa_file}: {exc.field}: {exc.reason}") from None


@export_group.command("wireshark", help="Wireshark's ESP SA table (the esp_sa file of a "
                                        "profile directory): tshark/Wireshark then decrypt "
                                        "and verify the traffic.")
@sa_file_option()
@_OUTPUT
@click.option("--skip-unsupported", is_flag=True,
              help="Leave out SAs Wireshark cannot decrypt instead of failing.")
@click.option("--wireshark-version", metavar="X.Y", default=None,
              help="Target Wireshark version (default: the installed tshark's, else 4.0).")
@json_option
def export_wireshark(sa_file: str, output: str | None, skip_unsupported: bool,
                     wireshark_version: str | None, as_json: bool) -> None:
    from ipsecsa.io import wireshark as ws

    version: tuple[int, ...]
    if wireshark_version is not None:
        try:
            version = tuple(int(p) for p in wireshark_version.split("."))
        except ValueError:
            raise CliError(f"--wireshark-version: {wireshark_version!r} is not X.Y") from None
    else:
        version = ws.installed_wireshark_version() or ws.DEFAULT_WIRESHARK_VERSION
    lines = _export(sa_file, lambda cs: ws.esp_sa_lines(cs, skip_unsupported=skip_unsupported,
                                                        wireshark_version=version))
    header = ("# Wireshark ESP SA table (esp_sa UAT), written by ipsecsa.\n"
              "# It contains keys: keep it private (mode 0600) and delete it when done.\n")
    _emit_lines("esp_sa", lines, header, output, as_json)


@export_group.command("xfrm", help="'ip xfrm state add' commands that install the SAs in a "
                                   "Linux kernel.")
@sa_file_option()
@_OUTPUT
@click.option("--no-dir", is_flag=True,
              help="Leave out 'dir in|out' (needed before iproute2/Linux 6.10).")
@json_option
def export_xfrm(sa_file: str, output: str | None, no_dir: bool, as_json: bool) -> None:
    from ipsecsa.io.xfrm import xfrm_commands

    lines = _export(sa_file, lambda cs: xfrm_commands(cs, with_direction=not no_dir))
    _emit_lines("xfrm", lines, "# ip xfrm state commands written by ipsecsa (they hold keys)\n",
                output, as_json)


@export_group.command("tcpdump", help="tcpdump's ESP secrets file (use with "
                                      "'tcpdump -E file NAME').")
@sa_file_option()
@_OUTPUT
@json_option
def export_tcpdump(sa_file: str, output: str | None, as_json: bool) -> None:
    from ipsecsa.io.tcpdump import tcpdump_secrets

    lines = _export(sa_file, tcpdump_secrets)
    _emit_lines("tcpdump", lines, "# tcpdump ESP secrets written by ipsecsa (they hold keys)\n",
                output, as_json)


__all__: list[Any] = ["export_group", "import_group"]

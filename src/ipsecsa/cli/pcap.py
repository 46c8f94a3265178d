"""``ipsecsa pcap``: decrypt, encrypt and diagnose captures offline (no service needed)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from ipsecsa.cli.errors import CliError
from ipsecsa.cli.output import (
    check_input,
    console,
    json_option,
    load_sas,
    print_json,
    progress_bar,
    sa_file_option,
    table,
)


@click.group(help="Decrypt, encrypt and diagnose IPsec captures (pcap or pcapng).")
def pcap() -> None:
    pass


def _check_output(src: str, dst: str) -> None:
    if os.path.abspath(src) == os.path.abspath(dst):
        raise CliError(f"{dst}: the output must not be the input file")
    parent = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(parent):
        raise CliError(f"{dst}: directory {parent} does not exist")
    if os.path.isdir(dst):
        raise CliError(f"{dst}: is a directory")


@contextmanager
def _capture_errors(capture: str) -> Iterator[None]:
    """A capture that is not one (or is corrupt) is named in the error line."""
    from ipsecsa.io.pcap import PcapError

    try:
        yield
    except PcapError as exc:
        raise CliError(f"{capture}: not a usable capture: {exc}") from None


def _print_summary(summary: dict[str, Any]) -> None:
    out = console()
    verb = "unprotected" if summary["operation"] == "unprotect" else "protected"
    out.print(f"{summary['input']} -> {summary['output']} ({summary['format']}): "
              f"{summary['frames']} frames, {summary['transformed']} {verb}, "
              f"{summary['passed_through']} passed through, {summary['written']} written")
    rows = []
    for s in summary["sas"]:
        drops = ", ".join(f"{k} {v}" for k, v in s["drops"].items()) or "-"
        rows.append((s["sa"], s["spi"], s["protocol"], s["mode"], s["direction"] or "either",
                     f"{s['src']} -> {s['dst']}", s["packets"], drops))
    out.print(table("Per SA", ("#", "SPI", "proto", "mode", "direction", "endpoints",
                               "packets", "drops"), rows))
    if summary["drops"]:
        out.print(table("Drops by reason", ("reason", "packets"),
                        sorted(summary["drops"].items())))
    if summary.get("unknown_spis"):
        out.print(table("IPsec packets for SPIs not in the SA file (passed through)",
                        ("proto", "SPI", "dst", "packets"),
                        [(u["protocol"], u["spi"], u["dst"], u["packets"])
                         for u in summary["unknown_spis"]]))
    if summary.get("not_ip"):
        out.print("Frames without an IP packet (passed through): "
                  + ", ".join(f"{k} {v}" for k, v in sorted(summary["not_ip"].items())))
    if summary.get("fragments_refused"):
        out.print("Fragments of datagrams dropped by reassembly (written unchanged): "
                  + ", ".join(f"{k} {v}" for k, v in summary["fragments_refused"].items()))
    if summary.get("fragments_incomplete"):
        out.print(f"Fragments of datagrams that never completed (passed through): "
                  f"{summary['fragments_incomplete']}")


_ONLY_MATCHED = click.option(
    "--only-matched", is_flag=True,
    help="Write only the packets the SAs transformed (drop everything else).")


@pcap.command(help="Remove IPsec protection: decrypt and verify ESP/AH packets of a capture. "
                   "Packets are matched to SAs by SPI and destination, whatever the SA's "
                   "direction, so one host's SA file decrypts both directions. Output keeps the "
                   "input's format, link types and timestamps and is created mode 0600.")
@sa_file_option()
@click.argument("capture", metavar="IN")
@click.argument("output", metavar="OUT")
@_ONLY_MATCHED
@click.option("--verify-checksums", is_flag=True,
              help="Drop packets whose outer IPv4 header or UDP checksum is wrong (by default "
                   "they are accepted, as Wireshark does: sending-host captures carry checksums "
                   "left for the NIC).")
@click.option("--anti-replay", is_flag=True,
              help="Apply each SA's anti-replay window (off by default, so a packet captured "
                   "twice decrypts twice).")
@json_option
def unprotect(sa_file: str, capture: str, output: str, only_matched: bool,
              verify_checksums: bool, anti_replay: bool, as_json: bool) -> None:
    from ipsecsa.tools.pcapops import unprotect_capture

    configs = load_sas(sa_file)
    check_input(capture)
    _check_output(capture, output)
    with _capture_errors(capture), \
            progress_bar(capture, "unprotect", enabled=not as_json) as progress:
        summary = unprotect_capture(capture, output, configs, only_matched=only_matched,
                                    verify_checksums=verify_checksums, anti_replay=anti_replay,
                                    progress=progress).as_dict()
    if as_json:
        print_json(summary)
    else:
        _print_summary(summary)


@pcap.command(help="Apply IPsec protection to the packets of a capture that an SA covers (the "
                   "first SA in file order whose addresses/selectors match). Output keeps the "
                   "input's format, link types and timestamps.")
@sa_file_option()
@click.argument("capture", metavar="IN")
@click.argument("output", metavar="OUT")
@_ONLY_MATCHED
@json_option
def protect(sa_file: str, capture: str, output: str, only_matched: bool, as_json: bool) -> None:
    from ipsecsa.tools.pcapops import protect_capture

    configs = load_sas(sa_file)
    check_input(capture)
    _check_output(capture, output)
    with _capture_errors(capture), \
            progress_bar(capture, "protect", enabled=not as_json) as progress:
        summary = protect_capture(capture, output, configs, only_matched=only_matched,
                                  progress=progress).as_dict()
    if as_json:
        print_json(summary)
    else:
        _print_summary(summary)




_HINT_TEXT = {
    "icv-length": "another ICV length explains it (GCM/CCM 8/12/16 bytes; HMAC-SHA-256 "
                  "truncated to 96 instead of 128 bits, the old Linux default)",
    "esn": "extended sequence numbers are the other way (on vs off) at the sender",
    "direction": "the keys belong to another SA of the file: directions swapped",
    "salt": "the salt is another SA's, or key and salt are in the other order",
    "algorithm": "another algorithm with the same keying-material length",
}
#: Failures listed in the text output (all of them are in --json).
TEXT_FAILURES = 40


def _print_inspect(doc: dict[str, Any]) -> None:
    out = console()
    out.print(f"{doc['input']} ({doc['format']}): {doc['frames']} frames, "
              f"{doc['ipsec_packets']} IPsec packets, {len(doc['spis'])} SPIs, "
              f"{len(doc['failures'])} failures"
              + ("" if doc["sa_file"] else " (no SA file: nothing decrypted)"))
    rows = []
    for s in doc["spis"]:
        seq = (f"{s['first_seq']}-{s['last_seq']}" if s["first_seq"] is not None else "-")
        rate = f"{s['packets_per_s']:.1f}/s" if s["packets_per_s"] else "-"
        endpoints = f"{s['src']} -> {s['dst']}" + (f" udp {s['udp'][0]}->{s['udp'][1]}"
                                                   if s["udp"] else "")
        sa = f"sas[{s['sa']}] {s['direction'] or 'either'}" if s["sa"] is not None else "-"
        null = s["null_encryption"]
        note = (f"NULL enc, ICV {null['icv_bytes']}B, inner "
                + ",".join(f"{k} {v}" for k, v in null["inner"].items())) if null else ""
        rows.append((s["protocol"], s["spi"], endpoints, sa, s["packets"], seq, s["missing"],
                     s["duplicates"], s["reordered"], rate,
                     f"{s['unprotected']}/{s['failed']}" if doc["sa_file"] else "-", note))
    out.print(table("Per SPI", ("proto", "SPI", "endpoints", "SA", "packets", "seq", "missing",
                                "dups", "reordered", "rate", "ok/failed", "notes"), rows))
    failures = doc["failures"]
    if failures:
        shown = failures[:TEXT_FAILURES]
        out.print(table(f"Failures ({len(failures)}" + (f", first {len(shown)} shown"
                                                        if len(shown) < len(failures) else "")
                        + "; --json lists all)",
                        ("frame", "SPI", "reason", "hint"),
                        [(f["frame"], f["spi"], f["reason"], f["hint"] or "-") for f in shown]))
        out.print(table("Failures by reason", ("reason", "packets"),
                        sorted(doc["reasons"].items())))
    for s in doc["spis"]:
        for hint, info in s["hints"].items():
            out.print(f"hint for {s['spi']} ({info['count']} packets): {_HINT_TEXT[hint]}: "
                      f"the packets verify {info['detail']}")
    if doc.get("fragments_refused"):
        out.print("Fragments of datagrams dropped by reassembly: "
                  + ", ".join(f"{k} {v}" for k, v in doc["fragments_refused"].items()))
    for sa, n in doc["diagnosis_skipped"].items():
        out.print(f"{sa}: {n} later failures not diagnosed (no variation explained the "
                  f"previous ones)")


@pcap.command(help="Analyse the IPsec traffic of a capture: per SPI the direction, endpoints, "
                   "sequence numbers (gaps, duplicates, reordering) and rate; with an SA file, "
                   "every packet that does not unprotect, why, and which usual mistake explains "
                   "it (hint: icv-length, esn, direction, salt, algorithm, or none). Without an "
                   "SA file, NULL-encrypted ESP is still recognised.")
@sa_file_option(required=False)
@click.argument("capture", metavar="IN")
@click.option("--verify-checksums", is_flag=True,
              help="Count packets with a wrong outer IPv4 header or UDP checksum as failures.")
@json_option
def inspect(sa_file: str | None, capture: str, verify_checksums: bool, as_json: bool) -> None:
    from ipsecsa.tools.inspect import inspect_capture

    configs = load_sas(sa_file) if sa_file is not None else None
    check_input(capture)
    with _capture_errors(capture), \
            progress_bar(capture, "inspect", enabled=not as_json) as progress:
        doc = inspect_capture(capture, configs, verify_checksums=verify_checksums,
                              progress=progress).as_dict()
    if as_json:
        print_json(doc)
    else:
        _print_inspect(doc)


__all__ = ["pcap"]

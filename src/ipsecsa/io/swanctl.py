"""strongSwan's view of its CHILD_SAs: ``swanctl --list-sas`` listings and save-keys tables.

``swanctl --list-sas`` (strongSwan ``src/swanctl/commands/list_sas.c``) prints, per IKE_SA, its
hosts and ports and, per CHILD_SA, the mode (``-in-UDP`` when UDP-encapsulated), the protocol and
algorithms (``ESP:AES_GCM_16-128/ESN``), the inbound and outbound SPIs (8 hex digits), and the
local and remote traffic selectors. It prints **no keys**; those come from the save-keys plugin
(``charon.plugins.save-keys``, ``save_keys_listener.c``), which appends two lines per CHILD_SA to a
Wireshark ``esp_sa`` table: initiator to responder and back, each with its SPI, algorithm and keys.

:func:`parse_swanctl` takes either or both: the save-keys table alone gives addresses, SPIs,
algorithms and keys (the mode and encapsulation then come from the caller); with the listing as
well, each SA also gets its mode, UDP ports, ESN, traffic selectors and direction (the listing is
one host's view: ``in`` SAs are inbound, ``out`` SAs outbound), and the listing's algorithm
wins where the table is vague (save-keys writes one "AES-GCM" entry for every ICV length).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from typing import Any

from ipsecsa.config.parse import parse_spi
from ipsecsa.crypto.algorithms import lookup_encryption, lookup_integrity
from ipsecsa.errors import ConfigError
from ipsecsa.io.keytext import Imported, KeyTextError
from ipsecsa.io.wireshark import parse_esp_sa

_IKE = re.compile(r"^(?P<name>[^\s:]+): #(?P<id>\d+), (?P<state>\S+), IKEv(?P<version>\d)")
_HOST = re.compile(r"^  (?P<side>local|remote)\s+'.*' @ (?P<host>[^\s\[]+)\[(?P<port>\d+)\]")
_CHILD = re.compile(r"^  (?P<name>[^\s:]+): #(?P<id>\d+), reqid (?P<reqid>\d+), "
                    r"(?P<state>\S+), (?P<mode>[A-Z_]+)(?P<udp>-in-UDP)?, "
                    r"(?P<proto>ESP|AH):(?P<algs>\S+)")
_SPI = re.compile(r"^    (?P<dir>in|out)\s+(?P<spi>[0-9a-fA-F]{8})")
_TS = re.compile(r"^    (?P<side>local|remote)\s+(?P<ts>.+)$")
_TS_ONE = re.compile(r"^(?P<net>[^\[\s]+)(?:\[(?P<proto>[^/\]]+)(?:/(?P<port>[^\]]+))?\])?$")


@dataclass
class _Child:
    line: int
    mode: str
    udp: bool
    proto: str
    algs: str
    local_host: str
    remote_host: str
    local_port: int
    remote_port: int
    spis: dict[str, int] = field(default_factory=dict)
    ts: dict[str, list[str]] = field(default_factory=dict)


def _algorithms(text: str, line: int) -> tuple[str | None, str | None, bool]:
    """(encryption, integrity, esn) from ``AES_CBC-128/HMAC_SHA2_256_128/.../ESN``."""
    enc = integ = None
    esn = False
    for i, part in enumerate(text.split("/")):
        if part == "ESN":
            esn = True
            continue
        name, _, _size = part.partition("-")
        if i == 0 and not name.startswith(("HMAC_", "AES_XCBC", "AES_CMAC")):
            try:
                enc = lookup_encryption(f"ENCR_{name}").algorithm.name
            except ConfigError:
                raise KeyTextError(line, f"encryption {name} has no ipsecsa equivalent") from None
        elif name.startswith(("HMAC_", "AES_XCBC", "AES_CMAC", "AES_128_GMAC", "AES_192_GMAC",
                              "AES_256_GMAC")):
            try:
                integ = lookup_integrity(f"AUTH_{name}").algorithm.name
            except ConfigError:
                raise KeyTextError(line, f"integrity {name} has no ipsecsa equivalent") from None
        # PRF_*, key exchange groups: not part of the SA.
    return enc, integ, esn


def _parse_listing(text: str) -> list[_Child]:
    children: list[_Child] = []
    hosts: dict[str, tuple[str, int]] = {}
    child: _Child | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if _IKE.match(line):
            hosts = {}
            child = None
            continue
        m = _HOST.match(line)
        if m:
            hosts[m["side"]] = (m["host"], int(m["port"]))
            continue
        m = _CHILD.match(line)
        if m:
            if "local" not in hosts or "remote" not in hosts:
                raise KeyTextError(lineno, "CHILD_SA before its IKE_SA's local/remote hosts")
            child = _Child(lineno, m["mode"].lower(), bool(m["udp"]), m["proto"].lower(),
                           m["algs"], hosts["local"][0], hosts["remote"][0], hosts["local"][1],
                           hosts["remote"][1])
            children.append(child)
            continue
        if child is None:
            continue
        m = _SPI.match(line)
        if m:
            child.spis[m["dir"]] = int(m["spi"], 16)
            continue
        m = _TS.match(line)
        if m:
            child.ts[m["side"]] = m["ts"].split()
    return children


def _selector_parts(ts: str, line: int) -> dict[str, Any]:
    m = _TS_ONE.match(ts)
    if m is None:
        raise KeyTextError(line, f"traffic selector {ts!r} not understood")
    out: dict[str, Any] = {"net": str(ipaddress.ip_network(m["net"], strict=False))}
    if m["proto"]:
        proto = m["proto"]
        out["protocol"] = int(proto) if proto.isdigit() else socket.getprotobyname(proto)
        if m["port"] and m["port"] not in ("0", "%any"):
            port = m["port"]
            if not port.isdigit():
                try:
                    port = str(socket.getservbyname(port))
                except OSError:
                    raise KeyTextError(line, f"port {port!r} (a range or an unknown service) "
                                             "cannot be expressed in an SA description") from None
            out["port"] = int(port)
    return out


def _selectors(src_ts: list[str], dst_ts: list[str], line: int) -> list[dict[str, Any]]:
    out = []
    for s in src_ts:
        for d in dst_ts:
            sp, dp = _selector_parts(s, line), _selector_parts(d, line)
            sel: dict[str, Any] = {}
            if ipaddress.ip_network(sp["net"]).prefixlen:
                sel["src"] = sp["net"]
            if ipaddress.ip_network(dp["net"]).prefixlen:
                sel["dst"] = dp["net"]
            proto = sp.get("protocol") or dp.get("protocol")
            if proto:
                sel["protocol"] = proto
            if sp.get("port"):
                sel["sport"] = sp["port"]
            if dp.get("port"):
                sel["dport"] = dp["port"]
            if ipaddress.ip_network(sp["net"]).version != ipaddress.ip_network(dp["net"]).version:
                continue
            out.append(sel)
    if out and all(not s for s in out):
        return []
    return out


def _is_listing(text: str) -> bool:
    return any(_IKE.match(line) for line in text.splitlines())


def parse_swanctl(texts: list[str], *, mode: str = "tunnel",
                  encapsulation: tuple[int, int] | None = None) -> tuple[list[Imported],
                                                                          list[str]]:
    """SA objects from save-keys tables and/or ``swanctl --list-sas`` listings (docstring)."""
    tables = [t for t in texts if not _is_listing(t)]
    listings = [t for t in texts if _is_listing(t)]
    keyed: list[Imported] = []
    for text in tables:
        keyed += parse_esp_sa(text, mode=mode, encapsulation=encapsulation)
    notes: list[str] = []
    if not listings:
        if not keyed:
            raise KeyTextError(1, "no SA found: expected a save-keys esp_sa table or a "
                                  "swanctl --list-sas listing")
        return keyed, notes
    by_spi: dict[tuple[int, str], Imported] = {}
    for item in keyed:
        spi = parse_spi(item.sa["spi"])
        by_spi[(spi, str(ipaddress.ip_address(item.sa["dst"])))] = item
    out: list[Imported] = []
    for text in listings:
        for child in _parse_listing(text):
            if child.mode not in ("tunnel", "transport"):
                raise KeyTextError(child.line, f"mode {child.mode.upper()} is not supported")
            enc, integ, esn = _algorithms(child.algs, child.line)
            for direction in ("in", "out"):
                if direction not in child.spis:
                    raise KeyTextError(child.line, f"CHILD_SA without an '{direction}' SPI line")
                spi = child.spis[direction]
                if direction == "in":
                    src, dst = child.remote_host, child.local_host
                    sport, dport = child.remote_port, child.local_port
                    src_ts, dst_ts = child.ts.get("remote", []), child.ts.get("local", [])
                else:
                    src, dst = child.local_host, child.remote_host
                    sport, dport = child.local_port, child.remote_port
                    src_ts, dst_ts = child.ts.get("local", []), child.ts.get("remote", [])
                key = (spi, str(ipaddress.ip_address(dst)))
                keys = by_spi.pop(key, None)
                if keys is None:
                    raise KeyTextError(child.line, f"no keys for SPI 0x{spi:08x} to {dst}: "
                                                   "swanctl --list-sas prints no keys; give the "
                                                   "save-keys plugin's esp_sa table as well")
                sa = dict(keys.sa)
                sa.update({"protocol": child.proto, "mode": child.mode, "src": src, "dst": dst,
                           "direction": "inbound" if direction == "in" else "outbound",
                           "esn": esn})
                if enc is not None and "encryption" in sa:
                    sa["encryption"] = {**sa["encryption"], "algorithm": enc}
                if integ is not None and "integrity" in sa:
                    sa["integrity"] = {**sa["integrity"], "algorithm": integ}
                if child.udp:
                    sa["encapsulation"] = {"type": "udp", "sport": sport, "dport": dport}
                else:
                    sa.pop("encapsulation", None)
                selectors = _selectors(src_ts, dst_ts, child.line)
                if selectors:
                    sa["selectors"] = selectors
                out.append(Imported(child.line, sa))
    for (spi, dst), item in by_spi.items():
        notes.append(f"save-keys entry for SPI 0x{spi:08x} to {dst} has no CHILD_SA in the "
                     "listing (an older rekeyed SA?); imported with the default mode")
        out.append(item)
    return out, notes


__all__ = ["parse_swanctl"]

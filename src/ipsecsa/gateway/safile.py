"""The SAs of the gateway's SA file, installed into an SA database and kept in step with the file.

A gateway carries tunnel-mode ESP between its local address and peers of the same family, over
UDP (RFC 3948) or as raw ESP; :func:`check_for_gateway` refuses anything else up front with a
line naming the SA, instead of the gateway dropping its packets later.

Re-reading the file (SIGHUP) is how a rekey reaches a running gateway: SAs that stay (same
direction, SPI and destination, same description apart from ``seq``) keep their live state —
sequence numbers, replay window, counters —, new ones are installed, vanished ones removed, in the
make-before-break order: new inbound SAs first, then the outbound switch, then old inbound SAs
removed last, so that no packet in flight meets a missing SA.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
from collections.abc import Callable

from ipsecsa.config import SaConfig, load_sa_file
from ipsecsa.datapath.sa import SecurityAssociation
from ipsecsa.errors import ConfigError
from ipsecsa.sad.database import SaDatabase

log = logging.getLogger("ipsecsa.gateway")

_Key = tuple[str, int, str]  # (direction, SPI, destination)


def _key(cfg: SaConfig) -> _Key:
    return (cfg.direction or "", cfg.spi, str(cfg.dst))


def check_for_gateway(configs: list[SaConfig], *, local: ipaddress.IPv4Address |
                      ipaddress.IPv6Address, port: int, transport: str) -> None:
    """Refuse SAs the gateway cannot carry; raises ConfigError naming ``sas[i]`` and the field."""
    for i, c in enumerate(configs):
        where = f"sas[{i}] (SPI 0x{c.spi:08x})"
        if c.direction is None:
            raise ConfigError(f"sas[{i}].direction", f"{where}: a gateway needs 'outbound' or "
                                                     "'inbound'")
        if c.protocol != "esp":
            raise ConfigError(f"sas[{i}].protocol", f"{where}: the gateway carries ESP only")
        if c.mode != "tunnel":
            raise ConfigError(f"sas[{i}].mode", f"{where}: the gateway carries tunnel-mode SAs "
                                                "(its traffic comes from a TUN, not this host)")
        if c.src.version != local.version:
            raise ConfigError(f"sas[{i}].src", f"{where}: outer addresses are IPv{c.src.version}"
                                               f", the local address {local} is not")
        if c.direction == "inbound" and c.dst != local:
            raise ConfigError(f"sas[{i}].dst", f"{where}: an inbound SA's dst must be the local "
                                               f"address {local} (it is {c.dst})")
        enc = c.encapsulation
        if transport == "udp":
            if enc is None:
                raise ConfigError(f"sas[{i}].encapsulation",
                                  f"{where}: transport udp needs UDP-encapsulated SAs "
                                  "(or use --transport raw)")
            mine = enc.sport if c.direction == "outbound" else enc.dport
            if mine != port:
                side = "sport" if c.direction == "outbound" else "dport"
                raise ConfigError(f"sas[{i}].encapsulation.{side}",
                                  f"{where}: is {mine}, but the gateway's port is {port}")
        elif enc is not None:
            raise ConfigError(f"sas[{i}].encapsulation", f"{where}: transport raw carries "
                                                         "ESP without UDP encapsulation")
    if not any(c.direction == "outbound" for c in configs):
        raise ConfigError("sas", "no outbound SA: nothing would be sent to the peer")


class InstalledSas:
    """The SAs of one SA file as installed in ``sad``; :meth:`sync` applies a new version of the
    file. ``on_retire(sa)`` is told of every SA taken out (to keep its final counters)."""

    def __init__(self, sad: SaDatabase, *,
                 on_retire: Callable[[SecurityAssociation], None] | None = None) -> None:
        self.sad = sad
        self._on_retire = on_retire
        self._installed: dict[_Key, tuple[int, SecurityAssociation, SaConfig]] = {}

    def outbound(self) -> list[SecurityAssociation]:
        return [sa for k, (_h, sa, _c) in self._installed.items() if k[0] == "outbound"]

    def sync(self, configs: list[SaConfig]) -> tuple[int, int, int]:
        """Make the database hold exactly ``configs``; returns (added, kept, removed)."""
        wanted: dict[_Key, SaConfig] = {}
        for i, c in enumerate(configs):
            if _key(c) in wanted:
                raise ConfigError(f"sas[{i}].spi", "the same direction, SPI and dst twice")
            wanted[_key(c)] = c
        same = {k for k, c in wanted.items() if k in self._installed
                and _same(self._installed[k][2], c)}
        new = [k for k in wanted if k not in same]
        gone = [k for k in self._installed if k not in same]
        # Build every new SA before touching the database: a bad one changes nothing.
        built = {k: SecurityAssociation.from_config(wanted[k]) for k in new}
        order = sorted(new, key=lambda k: k[0] != "inbound")  # inbound first
        added: list[_Key] = []
        try:
            for k in order:
                sa = built[k]
                if k in self._installed:  # same key, new description: swap it in place
                    handle, old, _c = self._installed[k]
                    self.sad.replace(handle, sa)
                    self._installed[k] = (handle, sa, wanted[k])
                    self._retire(old)
                    continue
                add = self.sad.add_inbound if k[0] == "inbound" else self.sad.add_outbound
                self._installed[k] = (add(sa), sa, wanted[k])
                added.append(k)
        except ConfigError:
            for k in added:  # undo: the database is as it was
                handle, _sa, _c = self._installed.pop(k)
                self.sad.delete(handle)
            raise
        removed = 0
        for k in sorted((k for k in gone if k not in wanted), key=lambda k: k[0] == "inbound"):
            handle, sa, _c = self._installed.pop(k)  # outbound first, inbound last
            self.sad.delete(handle)
            self._retire(sa)
            removed += 1
        return len(new), len(same), removed

    def _retire(self, sa: SecurityAssociation) -> None:
        sa.delete()
        if self._on_retire is not None:
            self._on_retire(sa)


def _same(a: SaConfig, b: SaConfig) -> bool:
    """The same SA: equal descriptions apart from ``seq`` (which the live SA has moved on)."""
    return dataclasses.replace(a, seq=0) == dataclasses.replace(b, seq=0)


def load_for_gateway(path: str | os.PathLike[str], *, local: ipaddress.IPv4Address |
                     ipaddress.IPv6Address, port: int, transport: str) -> list[SaConfig]:
    """Read and check an SA file for the gateway (ConfigError / OSError on failure)."""
    configs = load_sa_file(path)
    try:
        check_for_gateway(configs, local=local, port=port, transport=transport)
    except ConfigError as exc:
        raise ConfigError(exc.field, f"{os.fspath(path)}: {exc.reason}") from None
    return configs


__all__ = ["InstalledSas", "check_for_gateway", "load_for_gateway"]

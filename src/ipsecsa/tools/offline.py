"""SAs as the offline capture tools use them: matched by SPI and destination, either direction.

A capture taken on one host holds both directions of its tunnels, and that host's SA file holds
its outbound and its inbound SAs. The offline tools therefore ignore an SA's ``direction`` when
they match packets (RFC 4301 §4.1: an SA is identified by SPI, destination and protocol):

* to **unprotect**, a packet goes to the SA whose (protocol, SPI, destination) it carries, and
  that SA is run as an *inbound* copy of its description, whatever the file says;
* to **protect**, a packet goes to the first SA in file order that covers it (the order of an
  SA file is its policy order, like RFC 4301's ordered SPD), run as an *outbound* copy.

The copies differ from the file in what a capture cannot honour: lifetimes are dropped (the
traffic in a capture already happened; an SA that expired halfway through would only hide the
rest), and an inbound copy starts its anti-replay window at the beginning of the epoch the file's
``seq`` is in (a saved SA's window top lies after the traffic the capture recorded; with ESN its
high 32 bits are kept, since they are needed to infer the high bits of arriving packets).
Everything else (algorithms, keys, ESN, encapsulation, selectors, mode) is the file's.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from ipsecsa.config.model import Lifetime, SaConfig
from ipsecsa.datapath.sa import SecurityAssociation
from ipsecsa.errors import MalformedPacket
from ipsecsa.packet.flow import flow_of
from ipsecsa.packet.ipv4 import AH as PROTO_AH
from ipsecsa.packet.ipv4 import ESP as PROTO_ESP
from ipsecsa.packet.ipv4 import UDP as PROTO_UDP
from ipsecsa.packet.ipv6 import parse_ipv6_chain
from ipsecsa.selectors import selectors_match

_SEQ_HIGH = ~0xFFFFFFFF
#: RFC 3948 §2: IKE and UDP-encapsulated ESP share port 4500.
NATT_PORT = 4500
_U16 = struct.Struct("!H")


def offline_config(cfg: SaConfig, direction: Literal["inbound", "outbound"], *,
                   anti_replay: bool = True) -> SaConfig:
    """The copy of ``cfg`` an offline tool runs (module docstring).

    ``anti_replay=False`` turns the inbound window off (``replay_window`` 0), so that a capture
    holding the same packet twice (two interfaces, a span port) decrypts both copies, as
    Wireshark does; high ESN bits are still inferred.
    """
    seq = cfg.seq
    window = cfg.replay_window
    if direction == "inbound":
        seq = cfg.seq & _SEQ_HIGH if cfg.esn else 0
        if not anti_replay:
            window = 0
    return dataclasses.replace(cfg, direction=direction, soft=Lifetime(), hard=Lifetime(),
                               seq=seq, replay_window=window)


@dataclass(slots=True)
class SaStats:
    """What one SA of the file did during a run."""

    index: int
    config: SaConfig
    packets: int = 0
    bytes: int = 0
    drops: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def as_dict(self) -> dict[str, object]:
        c = self.config
        return {
            "sa": self.index, "spi": f"0x{c.spi:08x}", "protocol": c.protocol, "mode": c.mode,
            "direction": c.direction, "src": str(c.src), "dst": str(c.dst),
            "packets": self.packets, "bytes": self.bytes, "drops": dict(sorted(self.drops.items())),
        }


@dataclass(slots=True)
class IpsecId:
    """Where an IPsec packet says it belongs: protocol (50 ESP, 51 AH; ESP in UDP is 50 with
    ``udp`` set), SPI, outer addresses, the offset of the ESP/AH header and the UDP ports."""

    protocol: int
    spi: int
    src: bytes
    dst: bytes
    offset: int
    udp: tuple[int, int] | None = None


def ipsec_id(ip: bytes) -> IpsecId | None:
    """Identify an ESP, AH or UDP-encapsulated ESP packet (whole, not a fragment); else None.

    UDP carries ESP when its payload starts with a non-zero SPI (RFC 3948 §2.2: a zero is the
    non-ESP marker of IKE, a single 0xFF byte a keepalive); ports are not checked here.
    """
    if len(ip) < 20:
        return None
    version = ip[0] >> 4
    if version == 4:
        off = (ip[0] & 15) << 2
        proto = ip[9]
        if ip[6] & 0x3F or ip[7]:  # MF set or a fragment offset: not a whole datagram
            return None
        src, dst = ip[12:16], ip[16:20]
    elif version == 6:
        if len(ip) < 40:
            return None
        proto = ip[6]
        off = 40
        if proto not in (PROTO_ESP, PROTO_AH, PROTO_UDP):
            try:
                chain = parse_ipv6_chain(ip, stop_at_ipsec=True)
            except MalformedPacket:
                return None
            if chain.fragment is not None:
                return None
            proto, off = chain.upper_protocol, chain.upper_offset
        src, dst = ip[8:24], ip[24:40]
    else:
        return None
    if proto == PROTO_ESP:
        if len(ip) < off + 8:
            return None
        return IpsecId(PROTO_ESP, int.from_bytes(ip[off:off + 4], "big"), src, dst, off)
    if proto == PROTO_AH:
        if len(ip) < off + 12:
            return None
        return IpsecId(PROTO_AH, int.from_bytes(ip[off + 4:off + 8], "big"), src, dst, off)
    if proto == PROTO_UDP and len(ip) >= off + 16:
        spi = int.from_bytes(ip[off + 8:off + 12], "big")
        if spi == 0:
            return None
        return IpsecId(PROTO_ESP, spi, src, dst, off + 8,
                       (_U16.unpack_from(ip, off)[0], _U16.unpack_from(ip, off + 2)[0]))
    return None


class OfflineSas:
    """The SAs of one SA file, ready for a capture tool (module docstring)."""

    def __init__(self, configs: Sequence[SaConfig], *, anti_replay: bool = True) -> None:
        self.configs = list(configs)
        self.stats = [SaStats(i, c) for i, c in enumerate(self.configs)]
        self._anti_replay = anti_replay
        self._inbound: dict[tuple[int, int, bytes], int] = {}
        #: SPI (4 bytes) ‖ dst -> index, for ESP SAs without UDP encapsulation: the lookup of
        #: the common case straight from packet bytes (:meth:`match_esp_bytes`).
        self.esp_keys: dict[bytes, int] = {}
        for i, c in enumerate(self.configs):
            proto = PROTO_ESP if c.protocol == "esp" else PROTO_AH
            self._inbound.setdefault((proto, c.spi, c.dst.packed), i)
            if proto == PROTO_ESP and c.encapsulation is None:
                self.esp_keys.setdefault(c.spi.to_bytes(4, "big") + c.dst.packed, i)
        self._in_sas: dict[int, SecurityAssociation] = {}
        self._out_sas: dict[int, SecurityAssociation] = {}

    # ------------------------------------------------------------------ unprotect side
    def match_inbound(self, ident: IpsecId) -> int | None:
        """Index of the SA for an identified packet, or None. ESP in UDP matches only an SA with
        UDP encapsulation whose ports are the packet's (either way round); bare ESP only one
        without."""
        i = self._inbound.get((ident.protocol, ident.spi, ident.dst))
        if i is None:
            return None
        encap = self.configs[i].encapsulation
        if ident.udp is None:
            return i if encap is None else None
        if encap is None:
            return None
        ports = {encap.sport, encap.dport}
        return i if ident.udp[0] in ports or ident.udp[1] in ports else None

    def inbound_sa(self, index: int) -> SecurityAssociation:
        sa = self._in_sas.get(index)
        if sa is None:
            cfg = offline_config(self.configs[index], "inbound", anti_replay=self._anti_replay)
            sa = self._in_sas[index] = SecurityAssociation.from_config(cfg, now=0.0)
        return sa

    # ------------------------------------------------------------------ protect side
    def match_outbound(self, ip: bytes) -> int | None:
        """Index of the first SA (file order) that covers a plain packet, or None.

        Transport mode: the packet's addresses are the SA's ``src``/``dst`` and its selectors
        (if any) cover it. Tunnel mode: its selectors cover it; a tunnel SA without selectors
        covers every packet of either family. Packets that are already IPsec (ESP, AH, or ESP in
        UDP on port 4500) are never covered.
        """
        ident = ipsec_id(ip)
        if ident is not None and (ident.udp is None or NATT_PORT in ident.udp):
            return None
        try:
            flow = flow_of(ip)
        except MalformedPacket:
            return None
        for i, c in enumerate(self.configs):
            if c.mode == "transport" and (flow.src != c.src.packed
                                          or flow.dst != c.dst.packed):
                continue
            if not c.selectors or selectors_match(c.selectors, flow):
                return i
        return None

    def outbound_sa(self, index: int) -> SecurityAssociation:
        sa = self._out_sas.get(index)
        if sa is None:
            cfg = offline_config(self.configs[index], "outbound")
            sa = self._out_sas[index] = SecurityAssociation.from_config(cfg, now=0.0)
        return sa


__all__ = ["IpsecId", "OfflineSas", "SaStats", "ipsec_id", "offline_config"]

"""``pcap unprotect`` and ``pcap protect``: apply an SA file to every packet of a capture.

The input is read frame by frame and the output written as it goes (memory stays flat whatever
the file size); the output mirrors the input's format, link types and timestamps
(:mod:`ipsecsa.io.pcapout`). For every frame:

* not IP (ARP, an unsupported link type, a frame cut by the snap length), or IP but not for
  any SA of the file: written unchanged (left out with ``only_matched``);
* for an SA (:mod:`ipsecsa.tools.offline` says which): replaced by what the SA makes of it;
  a packet the SA refuses (bad ICV, replay, ...) is written unchanged and counted under its
  drop reason, so nothing silently disappears from the capture.

Unprotect specifics:

* **Checksum offload.** A capture taken on the sending host holds outer headers whose checksums
  the NIC had still to fill in (partial or zero UDP checksums, common for ESP-in-UDP over IPv6;
  on Windows also zero IPv4 header checksums). Like Wireshark, the tool does not reject a packet
  for them by default: when the data path refuses one for its outer IPv4 header or UDP checksum,
  the checksums are recomputed and the packet offered again (the ICV still protects it; nothing
  is assumed about the inner packet). ``verify_checksums`` keeps the data path's verdict and also
  checks a non-zero IPv4 UDP checksum, which the data path itself ignores (RFC 3948 §2.1).
* **Fragments.** Fragmented ESP/AH/UDP datagrams are reassembled (RFC 4303 §3.4.1) with the
  packet layer's bounded :class:`~ipsecsa.packet.fragment.Reassembler`, on the capture's clock.
  A reassembled datagram that belongs to an SA is written once, decrypted, in place of its last
  fragment; fragments of datagrams that are not for the SAs (or never complete) are written
  unchanged.
* **Anti-replay** is off unless asked for (``anti_replay``): a capture holding the same packet
  twice (two interfaces, a mirror port) decrypts both copies.
"""

from __future__ import annotations

import os
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ipsecsa.config.model import SaConfig
from ipsecsa.errors import DropReason
from ipsecsa.io.pcap import Frame, PcapReader
from ipsecsa.io.pcapout import MirrorWriter, replace_ip
from ipsecsa.packet.checksum import internet_checksum
from ipsecsa.packet.fragment import Reassembler, is_fragment
from ipsecsa.packet.ipv4 import AH as PROTO_AH
from ipsecsa.packet.ipv4 import ESP as PROTO_ESP
from ipsecsa.packet.ipv4 import UDP as PROTO_UDP
from ipsecsa.packet.udp import udp_checksum
from ipsecsa.tools.offline import OfflineSas, ipsec_id

#: Protocols whose fragments are reassembled before SA matching (ESP, AH, ESP in UDP).
_REASSEMBLED = frozenset({PROTO_ESP, PROTO_AH, PROTO_UDP})
CHECKSUM_DROPS = frozenset({DropReason.BAD_CHECKSUM, DropReason.BAD_UDP})
#: IPv6 fragment header type.
_V6_FRAGMENT = 44
#: Call the progress callback every this many frames (not per frame: it may redraw a screen).
PROGRESS_EVERY = 4096

Progress = Callable[[int], None]


@dataclass
class RunSummary:
    """Counts of one run, for the closing table and ``--json``."""

    operation: str
    input: str
    output: str
    format: str = ""
    frames: int = 0
    written: int = 0
    transformed: int = 0
    passed_through: int = 0
    not_ip: dict[str, int] = field(default_factory=dict)
    sas: list[dict[str, Any]] = field(default_factory=list)
    drops: dict[str, int] = field(default_factory=dict)
    unknown_spis: list[dict[str, Any]] = field(default_factory=list)
    fragments_incomplete: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def normalise_checksums(ip: bytes) -> bytes:
    """``ip`` with its outer IPv4 header checksum and its UDP checksum recomputed (IPv6 UDP;
    IPv4 UDP is set to zero, which RFC 768 and RFC 3948 §2.1 allow) — what the NIC would have
    written had the capture been taken after it."""
    pkt = bytearray(ip)
    version = pkt[0] >> 4
    if version == 4:
        ihl = (pkt[0] & 15) << 2
        pkt[10:12] = b"\0\0"
        pkt[10:12] = internet_checksum(pkt[:ihl]).to_bytes(2, "big")
        if pkt[9] == PROTO_UDP and len(pkt) >= ihl + 8:
            pkt[ihl + 6:ihl + 8] = b"\0\0"
    elif version == 6 and len(pkt) >= 48 and pkt[6] == PROTO_UDP:
        end = 40 + int.from_bytes(pkt[4:6], "big")
        pkt[46:48] = b"\0\0"
        pkt[46:48] = udp_checksum(bytes(pkt[8:24]), bytes(pkt[24:40]),
                                  bytes(pkt[40:end])).to_bytes(2, "big")
    return bytes(pkt)


def udp4_checksum_bad(ip: bytes) -> bool:
    """An IPv4 UDP datagram whose non-zero checksum does not verify."""
    if ip[0] >> 4 != 4 or ip[9] != PROTO_UDP:
        return False
    ihl = (ip[0] & 15) << 2
    end = int.from_bytes(ip[2:4], "big")
    if len(ip) < ihl + 8 or end > len(ip):
        return False
    stored = int.from_bytes(ip[ihl + 6:ihl + 8], "big")
    if stored == 0:
        return False
    return udp_checksum(ip[12:16], ip[16:20], ip[ihl:end]) != stored


def _maybe_fragment(ip: bytes) -> bool:
    """A cheap test that rules out most whole datagrams: IPv4 with MF and offset zero, IPv6
    whose first next header is ESP, AH, UDP or TCP, are not fragments."""
    if ip[0] >> 4 == 4:
        return bool(ip[6] & 0x3F or ip[7]) if len(ip) >= 8 else False
    return len(ip) < 7 or ip[6] not in (PROTO_ESP, PROTO_AH, PROTO_UDP, 6)


def fragment_key(ip: bytes) -> tuple[Any, ...] | None:
    """(family, src, dst, protocol, id) of a fragment of a protocol we reassemble, else None."""
    version = ip[0] >> 4
    if version == 4 and len(ip) >= 20 and ip[9] in _REASSEMBLED:
        return (4, ip[12:16], ip[16:20], ip[9], ip[4:6])
    # IPv6: the fragment header usually follows the fixed header directly; its next-header
    # field names the fragmented protocol in every fragment.
    if version == 6 and len(ip) >= 48 and ip[6] == _V6_FRAGMENT and ip[40] in _REASSEMBLED:
        return (6, ip[8:24], ip[24:40], ip[40], ip[44:48])
    return None


class FragmentHolder:
    """Fragments held for reassembly, with the frames that carried them (to pass them through
    unchanged if the datagram is not for an SA or never completes)."""

    def __init__(self) -> None:
        self.reasm = Reassembler()
        self.frames: OrderedDict[tuple[Any, ...], list[Frame]] = OrderedDict()

    def feed(self, key: tuple[Any, ...], frame: Frame,
             now: float) -> tuple[bytes | None, list[Frame]]:
        """(whole datagram or None, frames to emit unchanged now)."""
        held = self.frames.setdefault(key, [])
        held.append(frame)
        assert frame.ip is not None
        whole, reason = self.reasm.feed(frame.ip, now)
        if whole is not None:
            return whole, self.frames.pop(key)
        if reason is not None:
            return None, self.frames.pop(key)
        return None, self.expired(now)

    def expired(self, now: float) -> list[Frame]:
        out: list[Frame] = []
        limit = now - self.reasm.timeout
        while self.frames:
            key, frames = next(iter(self.frames.items()))
            if (frames[0].ts or 0.0) > limit:
                break
            del self.frames[key]
            out.extend(frames)
        return out

    def rest(self) -> list[Frame]:
        out = [f for frames in self.frames.values() for f in frames]
        self.frames.clear()
        return sorted(out, key=lambda f: f.number)


def _open(path: str | os.PathLike[str]) -> PcapReader:
    return PcapReader(path)


def unprotect_capture(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                      configs: Sequence[SaConfig], *, only_matched: bool = False,
                      verify_checksums: bool = False, anti_replay: bool = False,
                      progress: Progress | None = None) -> RunSummary:
    """Decrypt/verify every packet of capture ``src`` that belongs to an SA; write ``dst``."""
    sas = OfflineSas(configs, anti_replay=anti_replay)
    summary = RunSummary("unprotect", str(src), str(dst))
    unknown: Counter[tuple[int, int, bytes]] = Counter()
    drops: Counter[str] = Counter()
    frags = FragmentHolder()
    with _open(src) as reader, MirrorWriter(dst, reader) as writer:
        n = 0

        def passthrough(frame: Frame) -> None:
            summary.passed_through += 1
            if not only_matched:
                writer.write(frame)

        esp_keys = sas.esp_keys
        for frame in reader.frames():
            n += 1
            if progress is not None and n % PROGRESS_EVERY == 0:
                progress(reader.position)
            ip = frame.ip
            if ip is None:
                passthrough(frame)
                continue
            # The common case first, from the packet's bytes: a whole IPv4 datagram without
            # options carrying bare ESP for an SA of the file.
            if (ip[0] == 0x45 and ip[9] == PROTO_ESP and not (ip[6] & 0x3F or ip[7])
                    and (index := esp_keys.get(ip[20:24] + ip[16:20])) is not None):
                original = [frame]
            elif _maybe_fragment(ip) and is_fragment(ip):
                key = fragment_key(ip)
                if key is None:
                    passthrough(frame)
                    continue
                whole, release = frags.feed(key, frame, frame.ts or 0.0)
                if whole is None:
                    for f in release:
                        passthrough(f)
                    continue
                ident = ipsec_id(whole)
                index = None if ident is None else sas.match_inbound(ident)
                if index is None:
                    for f in release:
                        passthrough(f)
                    continue
                ip = whole
                frame = release[-1]._replace(ip=ip)
                original = release
            else:
                if frags.frames:
                    for f in frags.expired(frame.ts or 0.0):
                        passthrough(f)
                ident = ipsec_id(ip)
                index = None if ident is None else sas.match_inbound(ident)
                if index is None:
                    if ident is not None:
                        unknown[(ident.protocol, ident.spi, ident.dst)] += 1
                    passthrough(frame)
                    continue
                original = [frame]
            stats = sas.stats[index]
            if verify_checksums and udp4_checksum_bad(ip):
                drop: DropReason | None = DropReason.BAD_UDP
                out = None
            else:
                sa = sas.inbound_sa(index)
                out, drop = sa.unprotect(ip)
                if drop in CHECKSUM_DROPS and not verify_checksums:
                    out, drop = sa.unprotect(normalise_checksums(ip))
            if out is not None:
                stats.packets += 1
                stats.bytes += len(out)
                summary.transformed += 1
                writer.write(frame, replace_ip(frame, out))
                continue
            reason = drop.name if drop is not None else "HELD"
            stats.drop(reason)
            drops[reason] += 1
            if not only_matched:
                for f in original:
                    writer.write(f)
        for f in frags.rest():
            summary.fragments_incomplete += 1
            passthrough(f)
        if progress is not None:
            progress(reader.position)
        summary.frames = n
        summary.written = writer.count
        summary.format = reader.format
        summary.not_ip = dict(reader.skipped)
    summary.sas = [s.as_dict() for s in sas.stats]
    summary.drops = dict(sorted(drops.items()))
    summary.unknown_spis = [
        {"protocol": "esp" if p == PROTO_ESP else "ah", "spi": f"0x{spi:08x}",
         "dst": _addr(dst_b), "packets": count}
        for (p, spi, dst_b), count in sorted(unknown.items())]
    return summary


def protect_capture(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                    configs: Sequence[SaConfig], *, only_matched: bool = False,
                    progress: Progress | None = None) -> RunSummary:
    """Protect every packet of capture ``src`` that an SA covers; write ``dst``."""
    sas = OfflineSas(configs)
    summary = RunSummary("protect", str(src), str(dst))
    drops: Counter[str] = Counter()
    with _open(src) as reader, MirrorWriter(dst, reader) as writer:
        n = 0
        for frame in reader.frames():
            n += 1
            if progress is not None and n % PROGRESS_EVERY == 0:
                progress(reader.position)
            ip = frame.ip
            index = None if ip is None else sas.match_outbound(ip)
            if index is None or ip is None:
                summary.passed_through += 1
                if not only_matched:
                    writer.write(frame)
                continue
            stats = sas.stats[index]
            out, drop = sas.outbound_sa(index).protect(ip)
            if out is not None:
                stats.packets += 1
                stats.bytes += len(ip)
                summary.transformed += 1
                writer.write(frame, replace_ip(frame, out))
                continue
            reason = drop.name if drop is not None else "HELD"
            stats.drop(reason)
            drops[reason] += 1
            if not only_matched:
                writer.write(frame)
        if progress is not None:
            progress(reader.position)
        summary.frames = n
        summary.written = writer.count
        summary.format = reader.format
        summary.not_ip = dict(reader.skipped)
    summary.sas = [s.as_dict() for s in sas.stats]
    summary.drops = dict(sorted(drops.items()))
    return summary


def _addr(raw: bytes) -> str:
    import ipaddress

    return str(ipaddress.ip_address(raw))


__all__ = ["CHECKSUM_DROPS", "FragmentHolder", "RunSummary", "fragment_key", "normalise_checksums",
           "protect_capture", "udp4_checksum_bad", "unprotect_capture"]

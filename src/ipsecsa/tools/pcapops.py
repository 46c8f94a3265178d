"""``pcap unprotect`` and ``pcap protect``: apply an SA file to every packet of a capture.

The input is read as it goes and the output written as it goes (memory stays flat whatever the
file size); the output mirrors the input's format, link types and timestamps
(:mod:`ipsecsa.io.pcapout`). ``unprotect`` reads classic pcap a chunk at a time
(:mod:`ipsecsa.io.pcapbatch`): runs of whole ESP records of one SA go to the SA's
``unprotect_batch`` in one call and are written back in one piece; every other record (and every
record of a pcapng file, and of ``protect``) goes frame by frame through the same rules, with the
same result byte for byte. For every frame:

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
from ipsecsa.datapath.result import Result
from ipsecsa.datapath.sa import SecurityAssociation
from ipsecsa.errors import DropReason, MalformedPacket
from ipsecsa.io.pcap import Frame, PcapReader
from ipsecsa.io.pcapbatch import RecordBatch
from ipsecsa.io.pcapout import MirrorWriter, replace_ip
from ipsecsa.packet.checksum import internet_checksum
from ipsecsa.packet.fragment import Reassembler
from ipsecsa.packet.ipv4 import AH as PROTO_AH
from ipsecsa.packet.ipv4 import ESP as PROTO_ESP
from ipsecsa.packet.ipv4 import UDP as PROTO_UDP
from ipsecsa.packet.ipv6 import parse_ipv6_chain
from ipsecsa.packet.udp import udp_checksum
from ipsecsa.tools.offline import OfflineSas, ipsec_id

#: Protocols whose fragments are reassembled before SA matching (ESP, AH, ESP in UDP).
_REASSEMBLED = frozenset({PROTO_ESP, PROTO_AH, PROTO_UDP})
CHECKSUM_DROPS = frozenset({DropReason.BAD_CHECKSUM, DropReason.BAD_UDP})
#: IPv6 fragment header type.
_V6_FRAGMENT = 44
#: Fragments one datagram may have before the tool drops it (``too-many-fragments``): a
#: 64 KiB datagram cut for a 576-byte IPv4 path needs about 120, so 128 refuses no real traffic
#: while bounding what a flood of 8-byte fragments costs (a bisect and insert per fragment).
MAX_FRAGMENTS = 128
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
    #: Fragments of datagrams the reassembler dropped, by rule (overlap, bad-offset,
    #: too-many-fragments, ...); also counted in ``drops`` under FRAGMENT (or MALFORMED).
    fragments_refused: dict[str, int] = field(default_factory=dict)

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
    """The reassembly key of a fragment of a protocol we reassemble, else None (a whole
    datagram, a fragment of another protocol, or a packet whose headers do not parse: those
    are passed through). Never raises.

    IPv4: (4, src, dst, protocol, identification) (RFC 791). IPv6: (6, src, dst,
    identification) (RFC 8200 §4.5), for a Fragment header wherever it is in the chain: after
    the fixed header, or after Hop-by-Hop, Routing or Destination Options headers (the
    unfragmentable part, which the reassembler keeps from the first fragment). The fragmented
    protocol is the Fragment header's next header."""
    version = ip[0] >> 4
    if version == 4:
        if len(ip) >= 20 and ip[9] in _REASSEMBLED and (ip[6] & 0x3F or ip[7]):
            return (4, ip[12:16], ip[16:20], ip[9], ip[4:6])
        return None
    if version != 6 or len(ip) < 48:
        return None
    if ip[6] == _V6_FRAGMENT:  # the common case: no other extension header
        frag = 40
    elif ip[6] in (PROTO_ESP, PROTO_AH, PROTO_UDP, 6):
        return None  # an upper layer right after the fixed header: not a fragment
    else:
        try:
            chain = parse_ipv6_chain(ip)
        except MalformedPacket:
            return None
        if chain.fragment is None:
            return None
        frag = next(off for kind, off, _len in chain.headers if kind == _V6_FRAGMENT)
    if ip[frag] not in _REASSEMBLED:
        return None
    return (6, ip[8:24], ip[24:40], ip[frag + 4:frag + 8])


class FragmentHolder:
    """Fragments held for reassembly, with the frames that carried them (to pass them through
    unchanged if the datagram is not for an SA or never completes)."""

    def __init__(self) -> None:
        self.reasm = Reassembler(max_fragments=MAX_FRAGMENTS)
        self.frames: OrderedDict[tuple[Any, ...], list[Frame]] = OrderedDict()
        #: Fragments the reassembler refused, by rule (``Reassembler.refusal``).
        self.refused: Counter[str] = Counter()

    def feed(self, key: tuple[Any, ...], frame: Frame,
             now: float) -> tuple[bytes | None, list[Frame], DropReason | None]:
        """(whole datagram or None, frames to emit unchanged now, why they were refused)."""
        held = self.frames.setdefault(key, [])
        held.append(frame)
        assert frame.ip is not None
        whole, reason = self.reasm.feed(frame.ip, now)
        if whole is not None:
            return whole, self.frames.pop(key), None
        if reason is not None:
            # The datagram is dropped (overlap, bad offset, too many fragments, ...): its
            # fragments so far go out unchanged, counted under the reason.
            refused = self.frames.pop(key)
            self.refused[self.reasm.refusal or reason.name.lower()] += len(refused)
            return None, refused, reason
        return None, self.expired(now), None

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


class _Unprotector:
    """One ``unprotect`` run: the frame-by-frame path for every record, and the batch path for
    runs of fast records of a classic pcap file (:mod:`ipsecsa.io.pcapbatch`), which gives the
    same output and counts without a Python object per packet."""

    def __init__(self, sas: OfflineSas, summary: RunSummary, writer: MirrorWriter, *,
                 only_matched: bool, verify_checksums: bool) -> None:
        self.sas = sas
        self.summary = summary
        self.writer = writer
        self.only_matched = only_matched
        self.verify_checksums = verify_checksums
        self.unknown: Counter[tuple[int, int, bytes]] = Counter()
        self.drops: Counter[str] = Counter()
        self.frags = FragmentHolder()

    def passthrough(self, frame: Frame) -> None:
        self.summary.passed_through += 1
        if not self.only_matched:
            self.writer.write(frame)

    def frame(self, frame: Frame) -> None:
        """Handle one record (module docstring)."""
        sas = self.sas
        ip = frame.ip
        if ip is None:
            self.passthrough(frame)
            return
        # The common case first, from the packet's bytes: a whole IPv4 datagram without
        # options carrying bare ESP for an SA of the file.
        if (ip[0] == 0x45 and ip[9] == PROTO_ESP and not (ip[6] & 0x3F or ip[7])
                and (index := sas.esp_keys.get(ip[20:24] + ip[16:20])) is not None):
            original = [frame]
        elif _maybe_fragment(ip) and (key := fragment_key(ip)) is not None:
            whole, release, refused = self.frags.feed(key, frame, frame.ts or 0.0)
            if refused is not None:
                # A datagram the reassembler dropped: its fragments are written unchanged (as
                # every refused packet is) and counted under the reason.
                self.drops[refused.name] += len(release)
                if not self.only_matched:
                    for f in release:
                        self.writer.write(f)
                return
            if whole is None:
                for f in release:
                    self.passthrough(f)
                return
            ident = ipsec_id(whole)
            index = None if ident is None else sas.match_inbound(ident)
            if index is None:
                for f in release:
                    self.passthrough(f)
                return
            ip = whole
            frame = release[-1]._replace(ip=ip)
            original = release
        else:
            if self.frags.frames:
                for f in self.frags.expired(frame.ts or 0.0):
                    self.passthrough(f)
            ident = ipsec_id(ip)
            index = None if ident is None else sas.match_inbound(ident)
            if index is None:
                if ident is not None:
                    self.unknown[(ident.protocol, ident.spi, ident.dst)] += 1
                self.passthrough(frame)
                return
            original = [frame]
        stats = sas.stats[index]
        if self.verify_checksums and udp4_checksum_bad(ip):
            drop: DropReason | None = DropReason.BAD_UDP
            out = None
        else:
            sa = sas.inbound_sa(index)
            out, drop = sa.unprotect(ip)
            if drop in CHECKSUM_DROPS and not self.verify_checksums:
                out, drop = sa.unprotect(normalise_checksums(ip))
        if out is not None:
            stats.packets += 1
            stats.bytes += len(out)
            self.summary.transformed += 1
            self.writer.write(frame, replace_ip(frame, out))
            return
        reason = drop.name if drop is not None else "HELD"
        stats.drop(reason)
        self.drops[reason] += 1
        if not self.only_matched:
            for f in original:
                self.writer.write(f)

    def batch(self, batch: RecordBatch) -> None:
        """Handle the records of one chunk: runs of fast records go to their SA's
        ``unprotect_batch`` and are written by one ``assemble``; the rest frame by frame."""
        sas = self.sas
        esp_keys = sas.esp_keys
        summary = self.summary
        ips = batch.ips
        for first, count, key, ip_first in batch.runs:
            # Held fragments expire on the clock of the records that follow them: while any
            # are held, go frame by frame so they are released at the same place.
            if key is None or self.frags.frames:
                for r in range(first, first + count):
                    self.frame(batch.frame(r))
                continue
            index = esp_keys.get(key)
            if index is None:
                # Bare ESP for an SPI the file does not have (module docstring: passed through).
                self.unknown[(PROTO_ESP, int.from_bytes(key[:4], "big"), key[4:])] += count
                summary.passed_through += count
                data, written, _ok, _b = batch.assemble(first, count, None, self.only_matched)
                self.writer.write_records(data, written)
                continue
            sa = sas.inbound_sa(index)
            results = sa.unprotect_batch(ips[ip_first:ip_first + count])
            data, written, ok, nbytes = batch.assemble(first, count, results, self.only_matched)
            if ok != count:
                results = self._dropped(index, sa, ips[ip_first:ip_first + count], results)
                data, written, ok, nbytes = batch.assemble(first, count, results,
                                                           self.only_matched)
            stats = sas.stats[index]
            stats.packets += ok
            stats.bytes += nbytes
            summary.transformed += ok
            self.writer.write_records(data, written)

    def _dropped(self, index: int, sa: SecurityAssociation, ips: list[bytes],
                 results: list[Result]) -> list[Result]:
        """Results of a batch with the checksum retry applied to its drops (as :meth:`frame`
        does), and the remaining drops counted."""
        stats = self.sas.stats[index]
        results = list(results)
        for i, (out, drop) in enumerate(results):
            if out is not None:
                continue
            if drop in CHECKSUM_DROPS and not self.verify_checksums:
                results[i] = sa.unprotect(normalise_checksums(ips[i]))
                out, drop = results[i]
                if out is not None:
                    continue
            reason = drop.name if drop is not None else "HELD"
            stats.drop(reason)
            self.drops[reason] += 1
        return results


def unprotect_capture(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                      configs: Sequence[SaConfig], *, only_matched: bool = False,
                      verify_checksums: bool = False, anti_replay: bool = False,
                      progress: Progress | None = None) -> RunSummary:
    """Decrypt/verify every packet of capture ``src`` that belongs to an SA; write ``dst``."""
    sas = OfflineSas(configs, anti_replay=anti_replay)
    summary = RunSummary("unprotect", str(src), str(dst))
    with _open(src) as reader, MirrorWriter(dst, reader) as writer:
        run = _Unprotector(sas, summary, writer, only_matched=only_matched,
                           verify_checksums=verify_checksums)
        on_frame, on_batch = run.frame, run.batch
        n = 0
        for item in reader.batches():
            if type(item) is Frame:
                on_frame(item)
                n += 1
                if progress is not None and n % PROGRESS_EVERY == 0:
                    progress(reader.position)
            else:
                assert isinstance(item, RecordBatch)
                on_batch(item)
                if progress is not None:
                    progress(reader.position)
        for f in run.frags.rest():
            summary.fragments_incomplete += 1
            run.passthrough(f)
        if progress is not None:
            progress(reader.position)
        summary.fragments_refused = dict(sorted(run.frags.refused.items()))
        summary.frames = reader.frames_read
        summary.written = writer.count
        summary.format = reader.format
        summary.not_ip = dict(reader.skipped)
    summary.sas = [s.as_dict() for s in sas.stats]
    summary.drops = dict(sorted(run.drops.items()))
    summary.unknown_spis = [
        {"protocol": "esp" if p == PROTO_ESP else "ah", "spi": f"0x{spi:08x}",
         "dst": _addr(dst_b), "packets": count}
        for (p, spi, dst_b), count in sorted(run.unknown.items())]
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

"""``pcap inspect``: what the IPsec traffic in a capture looks like, and why packets fail.

Per SPI (an ESP or AH SA seen on the wire, identified by protocol, SPI and destination): its
direction (from the SA file, when it has the SA), endpoints and UDP ports, sequence-number range,
gaps (numbers never seen), duplicates (numbers seen twice: replays or a capture taken on two
interfaces), reordering (numbers arriving below the highest seen), packet and byte rates.

With an SA file, every IPsec packet is unprotected by an inbound copy of its SA (anti-replay on,
lifetimes off; :mod:`ipsecsa.tools.offline`), and every packet that does not come out is a
*failure*: the frame (0-based index among all records of the capture), the SPI, the reason (the
:class:`~ipsecsa.errors.DropReason` name: ``BAD_SPI`` for an SPI the file does not have, ``REPLAY``,
``ICV_FAILURE``, ``BAD_PADDING``, ``SELECTOR_MISMATCH``, ...) and a *hint*: the first of the usual
configuration mistakes that, applied to the SA, makes the packet unprotect:

``icv-length``  another ICV length: 8/12/16 bytes for AES-GCM and AES-CCM; HMAC-SHA-256 truncated
                to 96 bits (the old Linux default) instead of 128, or the reverse;
``esn``         extended sequence numbers the other way (on vs off);
``direction``   the keys (and algorithms) of another SA of the file: the directions are swapped;
``salt``        the salt of another SA, or keying material written salt-first instead of key ‖ salt;
``algorithm``   another algorithm taking keying material of the same length (AES-256-GCM and
                ChaCha20-Poly1305 both take 36 bytes; AES-CTR and AES-GCM; HMAC-MD5 and
                AES-XCBC), keeping the packet verifiable;
``null``        no variation explains it (a wrong key, corruption, or a mistake not in the list).

Variations are only accepted when they make a packet *verify* (an ICV, or for encryption-only
SAs the padding and inner-packet checks), so a hint is evidence, not a guess. Variant SAs are
built once per SA; an SA whose last :data:`GIVE_UP_AFTER` failures had no explanation is not
searched further (its remaining failures get hint null at once, and the count is reported).

Without an SA file (and for SPIs the file lacks), ESP with NULL encryption (RFC 2410) is still
recognised: for each ICV length an integrity algorithm can have, the RFC 4303 padding (1, 2, 3,
...), the pad length and a next header whose inner packet's own length field matches must all
agree; the ICV length most packets agree on is reported with the inner protocols.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ipsecsa.config.model import SaConfig, SecretKey
from ipsecsa.crypto.algorithms import ENCRYPTION, INTEGRITY
from ipsecsa.datapath.sa import SecurityAssociation
from ipsecsa.errors import ConfigError, DropReason
from ipsecsa.io.pcap import PcapReader
from ipsecsa.tools.offline import NATT_PORT, IpsecId, OfflineSas, ipsec_id, offline_config
from ipsecsa.tools.pcapops import (
    CHECKSUM_DROPS,
    FragmentHolder,
    fragment_key,
    normalise_checksums,
    udp4_checksum_bad,
)

#: The hints of the ``--json`` contract, in the order they are tried.
HINTS = ("icv-length", "esn", "direction", "salt", "algorithm")
#: Stop searching for an SA's explanation after this many unexplained failures in a row.
GIVE_UP_AFTER = 64
#: Gap ranges listed per SPI (the count is always complete).
MAX_GAP_RANGES = 20
#: ICV lengths an integrity algorithm can give NULL-encrypted ESP (RFC 2404/4868/3566/4494).
NULL_ESP_ICV_LENGTHS = (12, 16, 24, 32)
#: Packets per SPI examined by the NULL-encryption recogniser.
NULL_ESP_SAMPLE = 256
#: Share of examined packets that must agree before an SPI is called NULL-encrypted.
NULL_ESP_AGREEMENT = 0.9
_PROTOCOL_NAMES = {4: "ipv4", 41: "ipv6", 6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6",
                   59: "none", 47: "gre", 132: "sctp"}
_REASONS_WITH_HINTS = frozenset({DropReason.ICV_FAILURE, DropReason.BAD_PADDING,
                                 DropReason.BAD_INNER, DropReason.BAD_LENGTH,
                                 DropReason.SELECTOR_MISMATCH, DropReason.TRUNCATED})


# ============================================================================ hints
@dataclass
class _Variant:
    hint: str
    detail: str
    sa: SecurityAssociation


def _with(cfg: SaConfig, **changes: Any) -> SaConfig | None:
    try:
        return dataclasses.replace(cfg, **changes)
    except ConfigError:
        return None


def _variants(cfgs: Sequence[SaConfig], index: int) -> list[tuple[str, str, SaConfig]]:
    """(hint, detail, config) for every usual mistake on SA ``index``, in hint order."""
    cfg = cfgs[index]
    out: list[tuple[str, str, SaConfig | None]] = []
    enc, integ = cfg.encryption, cfg.integrity
    ekey = cfg.encryption_key.bytes if cfg.encryption_key is not None else b""
    # icv-length
    if enc is not None and enc.kind in ("gcm", "ccm"):
        for n in (8, 12, 16):
            name = f"aes-{enc.kind}-{n}"
            if name != enc.name:
                out.append(("icv-length", f"as {name}", _with(cfg, encryption=ENCRYPTION[name])))
    if integ is not None:
        for a, b in (("hmac-sha256-128", "hmac-sha256-96"), ("hmac-sha256-96", "hmac-sha256-128")):
            if integ.name == a and b in INTEGRITY:
                out.append(("icv-length", f"as {b}", _with(cfg, integrity=INTEGRITY[b])))
    # esn
    out.append(("esn", f"with esn {'off' if cfg.esn else 'on'}",
                _with(cfg, esn=not cfg.esn, seq=0)))
    # direction: another SA's keys
    for j, other in enumerate(cfgs):
        if j == index or other.protocol != cfg.protocol:
            continue
        out.append(("direction", f"with the keys of sas[{j}] (spi 0x{other.spi:08x})",
                    _with(cfg, encryption=other.encryption, encryption_key=other.encryption_key,
                          integrity=other.integrity, integrity_key=other.integrity_key)))
    # salt
    if enc is not None and enc.salt_len and len(ekey) > enc.salt_len:
        s = enc.salt_len
        for j, other in enumerate(cfgs):
            okey = other.encryption_key.bytes if other.encryption_key is not None else b""
            if j == index or other.encryption is None or other.encryption.salt_len != s \
                    or len(okey) <= s or okey[-s:] == ekey[-s:]:
                continue
            out.append(("salt", f"with the salt of sas[{j}]",
                        _with(cfg, encryption_key=SecretKey(ekey[:-s] + okey[-s:]))))
        out.append(("salt", "with key and salt the other way round (salt first)",
                    _with(cfg, encryption_key=SecretKey(ekey[s:] + ekey[:s]))))
    # algorithm: same keying-material length, still verifiable
    if enc is not None:
        combined_now = bool(enc.aead) or enc.kind == "gmac"
        for name, alg in ENCRYPTION.items():
            if name == enc.name or (enc.kind in ("gcm", "ccm") and alg.kind == enc.kind):
                continue  # same algorithm family: that is the icv-length hint
            if len(ekey) not in {k + alg.salt_len for k in alg.key_sizes}:
                continue
            combined = bool(alg.aead) or alg.kind == "gmac"
            if combined:
                out.append(("algorithm", f"as {name}",
                            _with(cfg, encryption=alg, integrity=None, integrity_key=None)))
            elif not combined_now and integ is not None:
                out.append(("algorithm", f"as {name}", _with(cfg, encryption=alg)))
    if integ is not None and cfg.integrity_key is not None:
        ikey_len = len(cfg.integrity_key)
        for name, ialg in INTEGRITY.items():
            if name in (integ.name, "none") or ialg.salt_len or ikey_len not in ialg.key_sizes:
                continue
            if {integ.name, name} == {"hmac-sha256-128", "hmac-sha256-96"}:
                continue  # that is the icv-length hint
            out.append(("algorithm", f"with integrity {name}", _with(cfg, integrity=ialg)))
    return [(h, d, c) for h, d, c in out if c is not None]


class Diagnoser:
    """Finds which usual mistake explains a failure (module docstring)."""

    def __init__(self, configs: Sequence[SaConfig]) -> None:
        self.configs = list(configs)
        self._variants: dict[int, list[_Variant]] = {}
        self._unexplained_run: Counter[int] = Counter()
        self.skipped: Counter[int] = Counter()

    def _build(self, index: int) -> list[_Variant]:
        built = []
        for hint, detail, cfg in _variants(self.configs, index):
            try:
                sa = SecurityAssociation.from_config(
                    offline_config(cfg, "inbound", anti_replay=False), now=0.0)
            except ConfigError:
                continue
            built.append(_Variant(hint, detail, sa))
        return built

    def explain(self, index: int, packet: bytes) -> _Variant | None:
        if self._unexplained_run[index] >= GIVE_UP_AFTER:
            self.skipped[index] += 1
            return None
        variants = self._variants.get(index)
        if variants is None:
            variants = self._variants[index] = self._build(index)
        for variant in variants:
            if variant.sa.unprotect(packet).packet is not None:
                self._unexplained_run[index] = 0
                return variant
        self._unexplained_run[index] += 1
        return None


# ============================================================================ NULL ESP
def _inner_ok(nh: int, inner: bytes) -> bool:
    """Does the inner packet's own length agree with what the padding left?"""
    n = len(inner)
    if nh == 4:
        return n >= 20 and inner[0] >> 4 == 4 and int.from_bytes(inner[2:4], "big") == n
    if nh == 41:
        return n >= 40 and inner[0] >> 4 == 6 and 40 + int.from_bytes(inner[4:6], "big") == n
    if nh == 17:
        return n >= 8 and int.from_bytes(inner[4:6], "big") == n
    if nh == 6:
        return n >= 20 and 20 <= (inner[12] >> 4) * 4 <= n
    if nh in (1, 58):
        return n >= 8
    return False


def null_esp_guess(esp: bytes) -> list[tuple[int, int]]:
    """(ICV length, next header) for every reading of ``esp`` (ESP header onwards) as NULL
    encryption that is self-consistent (padding, pad length, inner length)."""
    out = []
    body_all = esp[8:]
    for icv in NULL_ESP_ICV_LENGTHS:
        body = body_all[:-icv]
        if len(body) < 2:
            continue
        padlen, nh = body[-2], body[-1]
        if padlen > len(body) - 2 or body[-2 - padlen:-2] != bytes(range(1, padlen + 1)):
            continue
        if _inner_ok(nh, body[:-2 - padlen]):
            out.append((icv, nh))
    return out


# ============================================================================ per SPI
@dataclass
class SpiStats:
    protocol: str
    spi: int
    src: str
    dst: str
    udp: tuple[int, int] | None
    sa: int | None
    direction: str | None
    packets: int = 0
    bytes: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    seen: set[int] = field(default_factory=set)
    top: int = -1
    duplicates: int = 0
    reordered: int = 0
    max_reorder: int = 0
    unprotected: int = 0
    failed: int = 0
    hints: dict[str, dict[str, Any]] = field(default_factory=dict)
    null_votes: Counter[int] = field(default_factory=Counter)
    null_examined: int = 0
    null_inner: dict[int, Counter[int]] = field(default_factory=dict)

    def add(self, seq: int, ts: float | None, size: int) -> None:
        self.packets += 1
        self.bytes += size
        if ts is not None:
            self.first_ts = ts if self.first_ts is None else min(self.first_ts, ts)
            self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)
        if seq in self.seen:
            self.duplicates += 1
            return
        self.seen.add(seq)
        if seq < self.top:
            self.reordered += 1
            self.max_reorder = max(self.max_reorder, self.top - seq)
        else:
            self.top = seq

    def as_dict(self) -> dict[str, Any]:
        seqs = sorted(self.seen)
        gaps: list[list[int]] = []
        missing = 0
        for a, b in itertools.pairwise(seqs):
            if b > a + 1:
                missing += b - a - 1
                if len(gaps) < MAX_GAP_RANGES:
                    gaps.append([a + 1, b - 1])
        duration = (self.last_ts - self.first_ts) if (self.first_ts is not None
                                                      and self.last_ts is not None) else 0.0
        out: dict[str, Any] = {
            "protocol": self.protocol, "spi": f"0x{self.spi:08x}", "src": self.src,
            "dst": self.dst, "udp": list(self.udp) if self.udp else None, "sa": self.sa,
            "direction": self.direction, "packets": self.packets, "bytes": self.bytes,
            "first_seq": seqs[0] if seqs else None, "last_seq": seqs[-1] if seqs else None,
            "unique": len(seqs), "missing": missing, "gaps": gaps,
            "duplicates": self.duplicates, "reordered": self.reordered,
            "max_reorder_distance": self.max_reorder,
            "duration_s": round(duration, 6),
            "packets_per_s": round(self.packets / duration, 3) if duration > 0 else None,
            "bits_per_s": round(8 * self.bytes / duration, 1) if duration > 0 else None,
            "unprotected": self.unprotected, "failed": self.failed, "hints": self.hints,
            "null_encryption": None,
        }
        if self.null_examined and self.null_votes:
            icv, votes = self.null_votes.most_common(1)[0]
            if votes >= NULL_ESP_AGREEMENT * self.null_examined:
                inner = self.null_inner.get(icv, Counter())
                out["null_encryption"] = {
                    "icv_bytes": icv, "examined": self.null_examined, "agreeing": votes,
                    "inner": {_PROTOCOL_NAMES.get(k, str(k)): v for k, v in inner.items()}}
        return out


@dataclass
class InspectReport:
    input: str
    sa_file: bool
    format: str = ""
    frames: int = 0
    ip_packets: int = 0
    ipsec_packets: int = 0
    spis: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    hints: dict[str, int] = field(default_factory=dict)
    not_ip: dict[str, int] = field(default_factory=dict)
    diagnosis_skipped: dict[str, int] = field(default_factory=dict)
    #: Fragments of datagrams the reassembler dropped, by rule (overlap, bad-offset, ...):
    #: they never became packets, so they are not in ``failures``.
    fragments_refused: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _addr(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def _seq_of(ip: bytes, ident: IpsecId) -> int:
    off = ident.offset + (4 if ident.protocol == 50 else 8)
    return int.from_bytes(ip[off:off + 4], "big")


def inspect_capture(src: str | os.PathLike[str], configs: Sequence[SaConfig] | None, *,
                    verify_checksums: bool = False,
                    progress: Callable[[int], None] | None = None) -> InspectReport:
    """Analyse capture ``src`` (module docstring); ``configs`` None means no SA file."""
    sas = OfflineSas(configs or [], anti_replay=True)
    diag = Diagnoser(configs or [])
    report = InspectReport(str(src), configs is not None)
    spis: dict[tuple[int, int, bytes], SpiStats] = {}
    reasons: Counter[str] = Counter()
    hints: Counter[str] = Counter()
    frags = FragmentHolder()
    with PcapReader(src) as reader:
        for frame in reader.frames():
            report.frames += 1
            if progress is not None and report.frames % 4096 == 0:
                progress(reader.position)
            ip = frame.ip
            if ip is None:
                continue
            report.ip_packets += 1
            key = fragment_key(ip)
            if key is not None:
                whole, _release, _refused = frags.feed(key, frame, frame.ts or 0.0)
                if whole is None:
                    continue
                ip = whole
            ident = ipsec_id(ip)
            if ident is None:
                continue
            index = sas.match_inbound(ident) if configs else None
            if ident.udp is not None and index is None and NATT_PORT not in ident.udp:
                continue  # some other UDP traffic, not ESP in UDP
            report.ipsec_packets += 1
            key_ = (ident.protocol, ident.spi, ident.dst)
            stats = spis.get(key_)
            if stats is None:
                cfg = sas.configs[index] if index is not None else None
                stats = spis[key_] = SpiStats(
                    "esp" if ident.protocol == 50 else "ah", ident.spi, _addr(ident.src),
                    _addr(ident.dst), ident.udp, index, cfg.direction if cfg else None)
            stats.add(_seq_of(ip, ident), frame.ts, len(ip))
            if index is None:
                if ident.protocol == 50 and stats.null_examined < NULL_ESP_SAMPLE:
                    stats.null_examined += 1
                    for icv, nh in null_esp_guess(ip[ident.offset:]):
                        stats.null_votes[icv] += 1
                        stats.null_inner.setdefault(icv, Counter())[nh] += 1
                if configs:
                    _fail(report, stats, reasons, hints, frame.number, ident.spi,
                          DropReason.BAD_SPI.name, None)
                continue
            if verify_checksums and udp4_checksum_bad(ip):
                drop: DropReason | None = DropReason.BAD_UDP
            else:
                sa = sas.inbound_sa(index)
                out, drop = sa.unprotect(ip)
                if drop in CHECKSUM_DROPS and not verify_checksums:
                    ip = normalise_checksums(ip)
                    out, drop = sa.unprotect(ip)
                if out is not None:
                    stats.unprotected += 1
                    continue
            reason = drop.name if drop is not None else "HELD"
            variant = diag.explain(index, ip) if drop in _REASONS_WITH_HINTS else None
            hint = variant.hint if variant is not None else None
            if variant is not None:
                entry = stats.hints.setdefault(variant.hint, {"count": 0, "detail": variant.detail})
                entry["count"] += 1
            _fail(report, stats, reasons, hints, frame.number, ident.spi, reason, hint)
        if progress is not None:
            progress(reader.position)
        report.format = reader.format
        report.not_ip = dict(reader.skipped)
    report.spis = [s.as_dict() for s in spis.values()]
    report.reasons = dict(sorted(reasons.items()))
    report.fragments_refused = dict(sorted(frags.refused.items()))
    report.hints = dict(sorted(hints.items()))
    report.diagnosis_skipped = {f"sas[{i}]": n for i, n in sorted(diag.skipped.items())}
    return report


def _fail(report: InspectReport, stats: SpiStats, reasons: Counter[str], hints: Counter[str],
          frame: int, spi: int, reason: str, hint: str | None) -> None:
    stats.failed += 1
    reasons[reason] += 1
    hints[hint or "null"] += 1
    report.failures.append({"frame": frame, "spi": f"0x{spi:08x}", "reason": reason,
                            "hint": hint})


__all__ = ["GIVE_UP_AFTER", "HINTS", "Diagnoser", "InspectReport", "inspect_capture",
           "null_esp_guess"]

"""The SA database (SAD): where both front doors (NDIS OIDs, the SA-context API) install SAs and
where the data path finds them.

* **Inbound** lookup is one dict probe on ``(SPI, IPsec protocol, destination address)`` — the
  triple RFC 4301 §4.1 identifies an SA by, and the NDIS rule that SPIs are unique per
  (destination, protocol) (reference A.1).
* **Outbound** classification matches a packet's (src, dst, protocol, sport, dport) against
  NDIS-style filters (a zero field is a wildcard) with the tuple-space classifier of
  :mod:`ipsecsa.sad.classifier`: most specific filter wins, ties to the oldest.
* **Bundles** of one or two SAs: outbound order is the order the NDIS ``SecAssoc`` array gives —
  ESP (ENCRYPT) first, then AH (AUTHENTICATE) — so the wire packet is ``[IP][AH][ESP]...``;
  inbound processing peels them in the reverse order.
* **Atomic updates**: writers are serialised by a lock; every change a lookup can observe is one
  reference store (a dict item, a classifier bucket), and multi-key changes are ordered so that
  a concurrent lookup sees the old state or the new one, never a half-built entry: inner keys are
  published before the outermost one on add and withdrawn after it on delete.
* **Deferred inbound bundles** (:meth:`SaDatabase.add_inbound_deferred`): a front end that holds
  many stored SAs (a reopened durable engine) installs an inbound bundle as a promise to build it:
  its (SPI, destination) is reserved at once, and the first lookup that misses the index on it
  (a packet, or :meth:`SaDatabase.materialize`) builds the bundle and installs it as
  :meth:`add_inbound` would. Lookups of built SAs never look at deferred entries: they are
  consulted only on a miss.

The per-packet entry points :meth:`SaDatabase.outbound` and :meth:`SaDatabase.inbound` never raise
for packet contents; what no SA is known for is counted in the database's own drop counters.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass
from typing import Any

from ipsecsa.datapath.esp import HELD
from ipsecsa.datapath.result import DROPPED, Result
from ipsecsa.datapath.sa import SecurityAssociation
from ipsecsa.errors import ConfigError, DropReason, MalformedPacket, as_packet
from ipsecsa.packet.flow import PORTED_PROTOCOLS, flow_of
from ipsecsa.packet.fragment import Reassembler
from ipsecsa.packet.ipv6 import parse_ipv6_chain
from ipsecsa.packet.natt import NATT_PORT, NON_ESP_MARKER
from ipsecsa.sad.classifier import Classifier, Filter

PROTO_ESP = 50
PROTO_AH = 51
PROTO_UDP = 17
_PROTO_NUMBER = {"esp": PROTO_ESP, "ah": PROTO_AH}
_U32 = struct.Struct("!I")
# IPv4 fixed header with both addresses as integers: ver/ihl, total length, flags/fragment
# offset, protocol, source, destination.
_V4 = struct.Struct("!BxHxxHxBxxII")
_PORTS = struct.Struct("!HH")
_V6_FLAG = 1 << 40
#: An inbound index key without its protocol: what a deferred bundle reserves (its SAs'
#: protocols are known only once it is built).
_NO_PROTOCOL = ~(0xFF << 32)

log = logging.getLogger("ipsecsa.sad")


class SadError(ConfigError):
    """An SA database operation was refused (duplicate SPI, unknown handle, bad bundle)."""


@dataclass(frozen=True, slots=True)
class Bundle:
    """One or two SAs applied together, in outbound order: ESP first, then AH (reference A.3).

    In a two-SA bundle AH protects the packet ESP produced, so it is a transport-mode SA between
    the same two addresses as the ESP SA (the hosts, or the tunnel endpoints when the ESP SA is
    in tunnel mode): the wire packet is ``[IP][AH][ESP]...`` (reference A.1). UDP encapsulation
    is refused in a two-SA bundle: AH covers the addresses a NAT rewrites, and NDIS defines no
    UDP-ESP subtype with AH (reference A.7)."""

    sas: tuple[SecurityAssociation, ...]

    def __post_init__(self) -> None:
        problem = bundle_problem([sa.config for sa in self.sas])
        if problem is not None:
            raise SadError("bundle", problem)

    @classmethod
    def of(cls, sas: SecurityAssociation | Bundle | Iterable[SecurityAssociation]) -> Bundle:
        if isinstance(sas, Bundle):
            return sas
        if isinstance(sas, SecurityAssociation):
            return cls((sas,))
        return cls(tuple(sas))

    @property
    def outermost(self) -> SecurityAssociation:
        """The SA whose header is outermost on the wire (the last one applied outbound)."""
        return self.sas[-1]

    def __repr__(self) -> str:
        return "Bundle(" + " + ".join(f"{sa.PROTOCOL}:0x{sa.spi:08x}" for sa in self.sas) + ")"


def bundle_problem(configs: Sequence[Any]) -> str | None:
    """What makes SAs of these configurations (``SaConfig``, ESP first, or anything with its
    ``protocol``/``direction``/``mode``/``src``/``dst``/``encapsulation``) no :class:`Bundle`,
    or None: the rules of :class:`Bundle` on configurations, so that a front end that builds
    its SAs later (the SA-context engine) refuses at once exactly what the build would."""
    if len(configs) not in (1, 2):
        return f"a bundle holds 1 or 2 SAs, not {len(configs)}"
    if len(configs) == 2:
        esp, ah = configs
        if (esp.protocol, ah.protocol) != ("esp", "ah"):
            return "a two-SA bundle is ESP then AH (the only combination NDIS IPsec offload " \
                   "defines)"
        if esp.direction != ah.direction:
            return "the SAs of a bundle go the same direction"
        if ah.mode != "transport":
            return "the AH SA of a bundle is in transport mode: it authenticates the packet " \
                   "ESP built ([IP][AH][ESP])"
        if (esp.src, esp.dst) != (ah.src, ah.dst):
            return "the AH SA of a bundle runs between the same addresses as the ESP SA (its " \
                   "tunnel endpoints in tunnel mode)"
        if esp.encapsulation is not None:
            return "UDP encapsulation cannot be bundled with AH"
    return None


@dataclass(slots=True)
class _Installed:
    """What one handle installed. An inbound entry's index keys are not kept: they are a
    function of its SAs (:func:`_keys_of`), and one tuple fewer is 48 bytes per installed SA."""

    direction: str
    bundle: Bundle
    filter_handles: tuple[int, ...] = ()
    encap_ports: tuple[int, ...] = ()


@dataclass(slots=True)
class _Deferred:
    """An inbound bundle installed before it is built (:meth:`SaDatabase.add_inbound_deferred`)."""

    handle: int
    key: int  # its (SPI, destination) index key, protocol 0
    encap_ports: tuple[int, ...]
    build: Callable[[], Bundle]


def _inbound_key(spi: int, protocol: int, dst: bytes) -> int:
    """The inbound index key of (SPI, protocol, destination address bytes): one int,
    ``dst ‖ v6 flag ‖ protocol (8) ‖ SPI (32)`` (one object to hash and compare per lookup)."""
    key = int.from_bytes(dst, "big") << 41 | protocol << 32 | spi
    return key | _V6_FLAG if len(dst) == 16 else key


def _key(sa: SecurityAssociation) -> int:
    return _inbound_key(sa.spi, _PROTO_NUMBER[sa.PROTOCOL], sa.config.dst.packed)


def _keys_of(inst: _Installed) -> tuple[int, ...]:
    """The inbound index keys of an installed entry, its SAs' order (none for outbound)."""
    return tuple(_key(sa) for sa in inst.bundle.sas) if inst.direction == "inbound" else ()


def _describe_key(key: int) -> str:
    spi, proto = key & 0xFFFFFFFF, key >> 32 & 0xFF
    dst = key >> 41
    addr = ipaddress.IPv6Address(dst) if key & _V6_FLAG else ipaddress.IPv4Address(dst)
    return f"SPI 0x{spi:08x}, protocol {proto} and destination {addr}"


def _all_ones(version: int) -> int:
    return (1 << (32 if version == 4 else 128)) - 1


def filters_for(bundle: Bundle) -> list[Filter]:
    """The outbound filters a bundle covers, from its first SA's selectors (the traffic before
    any IPsec header is added).

    * **Transport mode**: the packets are the hosts' own, so every filter is between the SA's
      two addresses; a selector adds its protocol and ports. A selector whose prefix leaves out
      one of the hosts can match no packet of this SA and is skipped (all skipped: SadError).
    * **Tunnel mode**: a selector's prefixes select inner addresses; a selector without prefixes
      matches both families (one filter each). No selectors: everything (one filter per family).
    """
    sa = bundle.sas[0]
    src, dst = sa.config.src, sa.config.dst
    sels = sa.config.selectors
    out: list[Filter] = []
    if sa.mode == "transport":
        version, ones = src.version, _all_ones(src.version)
        if not sels:
            return [Filter(version, int(src), ones, int(dst), ones, 0, 0, 0)]
        for sel in sels:
            if (sel.src is not None and src not in sel.src) or \
                    (sel.dst is not None and dst not in sel.dst):
                continue
            out.append(Filter(version, int(src), ones, int(dst), ones, sel.protocol, sel.sport,
                              sel.dport))
        if not out:
            raise SadError("selectors", f"no selector of transport SA 0x{sa.spi:08x} covers its "
                                        f"own addresses {src} -> {dst}")
        return out
    if not sels:
        return [Filter(4, 0, 0, 0, 0), Filter(6, 0, 0, 0, 0)]
    for sel in sels:
        versions = (sel.version,) if sel.version else (4, 6)
        out.extend(Filter.from_selector(sel, v) for v in versions)
    return out


def _check_direction(bundle: Bundle, direction: str) -> None:
    for sa in bundle.sas:
        if sa.direction != direction:
            raise SadError("direction", f"SA 0x{sa.spi:08x} is "
                                        f"{sa.direction or 'not directed'}, not {direction}")


class SaDatabase:
    """The SA database. Thread-safe: lookups and the per-packet entry points may run in any
    number of threads alongside writers (which are serialised)."""

    def __init__(self, *, reassembly: Reassembler | None = None) -> None:
        self._lock = threading.Lock()
        # Inbound: key (see _inbound_key) -> the SA of a one-SA bundle, or (SA, bundle, index)
        # for an SA of a two-SA bundle.
        self._inbound: dict[int, Any] = {}
        self._outbound: Classifier[Bundle] = Classifier()
        self._installed: dict[int, _Installed] = {}
        self._handles = itertools.count(1)
        self._encap_ports: dict[int, int] = {}  # port -> number of inbound SAs using it
        self._reasm = reassembly or Reassembler()
        self._reasm_lock = threading.Lock()
        self._drops: dict[DropReason, int] = {}
        self._drops_lock = threading.Lock()
        # Deferred inbound bundles: by (SPI, destination) key (protocol 0) and by handle; built
        # one at a time under _build_lock (taken before _lock, never while holding it).
        self._pending: dict[int, _Deferred] = {}
        self._deferred: dict[int, _Deferred] = {}
        self._build_lock = threading.RLock()
        #: Handles of deferred bundles whose last build failed (logged once, see _resolve).
        self._failing: set[int] = set()

    # ----------------------------------------------------------------- installing
    def add_outbound(self, sas: SecurityAssociation | Bundle | Iterable[SecurityAssociation],
                     filters: Iterable[Filter] | None = None) -> int:
        """Install an outbound bundle for ``filters`` (default: :func:`filters_for` it).
        Returns a handle for :meth:`delete` / :meth:`replace`."""
        bundle = Bundle.of(sas)
        _check_direction(bundle, "outbound")
        flts = list(filters) if filters is not None else filters_for(bundle)
        if not flts:
            raise SadError("filters", "an outbound bundle needs at least one filter")
        for f in flts:
            if not isinstance(f, Filter):
                raise SadError("filters", f"not a Filter: {f!r}")
        with self._lock:
            # Each filter is its own classifier entry; a lookup sees each one fully installed.
            fh = tuple(self._outbound.add(f, bundle) for f in flts)
            handle = next(self._handles)
            self._installed[handle] = _Installed("outbound", bundle, filter_handles=fh)
        return handle

    def add_inbound(self, sas: SecurityAssociation | Bundle | Iterable[SecurityAssociation]
                    ) -> int:
        """Install an inbound bundle, found by (SPI, protocol, destination) of each of its SAs.
        A key already installed is refused (SPIs are unique per destination and protocol) and
        nothing changes."""
        bundle = Bundle.of(sas)
        _check_direction(bundle, "inbound")
        keys = tuple(_key(sa) for sa in bundle.sas)
        if len(set(keys)) != len(keys):
            raise SadError("spi", "the SAs of one bundle need distinct (SPI, protocol, destination) keys")
        ports = _encap_ports(bundle)
        with self._lock:
            for k in keys:
                if k in self._inbound or (self._pending and k & _NO_PROTOCOL in self._pending):
                    raise SadError("spi", f"an inbound SA with {_describe_key(k)} is already "
                                          "installed")
            # The encapsulation port first: once a key is visible, its packets must be
            # recognised as ESP-in-UDP.
            self._count_ports(ports, 1)
            self._publish_inbound(bundle, keys)
            handle = next(self._handles)
            self._installed[handle] = _Installed("inbound", bundle, encap_ports=ports)
        return handle

    def add_inbound_deferred(self, spi: int, dst: bytes, build: Callable[[], Bundle],
                             encap_ports: tuple[int, ...] = ()) -> int:
        """Install an inbound bundle that ``build()`` makes when it is first needed: the first
        packet whose (SPI, destination) it holds, or :meth:`materialize`. Until then its
        (SPI, destination) is reserved for every protocol (:meth:`add_inbound` of the same
        SPI and destination is refused) and ``encap_ports`` (the UDP destination ports of its
        ESP-in-UDP SAs) are recognised, so its first packet is found as it will be once built.
        The built bundle must be inbound and hold exactly that SPI, destination and ports
        (else :class:`SadError`, and the entry stays deferred). Returns a handle, as
        :meth:`add_inbound` does; :meth:`delete` and :meth:`replace` build the bundle first."""
        key = _inbound_key(spi, 0, dst)
        with self._lock:
            for proto in _PROTO_NUMBER.values():
                if key | proto << 32 in self._inbound:
                    raise SadError("spi", f"an inbound SA with "
                                          f"{_describe_key(key | proto << 32)} is already "
                                          "installed")
            if key in self._pending:
                raise SadError("spi", f"an inbound bundle with SPI 0x{spi:08x} and this "
                                      "destination is already installed (not built yet)")
            self._count_ports(encap_ports, 1)
            handle = next(self._handles)
            entry = _Deferred(handle, key, tuple(encap_ports), build)
            self._pending[key] = entry
            self._deferred[handle] = entry
        return handle

    def materialize(self, handle: int) -> Bundle:
        """The bundle behind ``handle``, built and installed now if it was deferred."""
        with self._build_lock:
            entry = self._deferred.get(handle)
            if entry is None:
                inst = self._installed.get(handle)
                if inst is None:
                    raise SadError("handle", f"no SA database entry with handle {handle}")
                return inst.bundle
            bundle = Bundle.of(entry.build())
            _check_direction(bundle, "inbound")
            keys = tuple(_key(sa) for sa in bundle.sas)
            ports = _encap_ports(bundle)
            if len(set(keys)) != len(keys) or any(k & _NO_PROTOCOL != entry.key for k in keys) \
                    or sorted(ports) != sorted(entry.encap_ports):
                raise SadError("spi", f"the bundle built for handle {handle} is not the one "
                                      "deferred (SPI, destination or UDP ports differ)")
            with self._lock:
                # Published before the deferred entry goes: a lookup missing the index meanwhile
                # waits for _build_lock and then finds the keys.
                self._publish_inbound(bundle, keys)
                del self._pending[entry.key]
                del self._deferred[handle]
                self._installed[handle] = _Installed("inbound", bundle, encap_ports=ports)
            self._failing.discard(handle)
            return bundle

    def _resolve(self, key: int) -> Any:
        """A lookup missed the index on ``key``: build the deferred bundle holding its (SPI,
        destination), if any, and look again. Never raises (the data path calls it): a bundle
        that cannot be built is logged and the packet finds no SA."""
        entry = self._pending.get(key & _NO_PROTOCOL)
        if entry is not None:
            try:
                self.materialize(entry.handle)
            except SadError as exc:
                if exc.field != "handle":  # deleted meanwhile: simply no SA
                    self._build_failed(entry.handle, exc)
            except Exception as exc:  # noqa: BLE001 - logged there: packets never raise
                self._build_failed(entry.handle, exc)
        return self._inbound.get(key)

    def _build_failed(self, handle: int, exc: BaseException) -> None:
        """Log a deferred bundle that cannot be built or installed: with the error the first
        time, quietly (debug) the next ones -- each packet to it tries again, and a flood of
        them must not flood the log -- until a build of it succeeds."""
        if handle in self._failing:
            log.debug("deferred inbound bundle %d still cannot be built: %s", handle, exc)
            return
        self._failing.add(handle)
        log.error("deferred inbound bundle %d cannot be built: %s", handle, exc, exc_info=exc)

    def _publish_inbound(self, bundle: Bundle, keys: tuple[int, ...]) -> None:
        """Publish a bundle's keys, inner SAs first (index 0 = ESP), the outermost last: a
        concurrent lookup finds the bundle only once every part of it is in place (lock held)."""
        if len(keys) == 1:
            self._inbound[keys[0]] = bundle.sas[0]
        else:
            for i, k in enumerate(keys):
                self._inbound[k] = (bundle.sas[i], bundle, i)

    def _count_ports(self, ports: tuple[int, ...], step: int) -> None:
        # Ports are added before the keys that need them go live and removed after (lock held).
        for p in ports:
            left = self._encap_ports.get(p, 0) + step
            if left:
                self._encap_ports[p] = left
            else:
                del self._encap_ports[p]

    def delete(self, handle: int) -> Bundle:
        """Remove what ``handle`` installed; returns its bundle (built first if deferred)."""
        if handle in self._deferred:
            self.materialize(handle)
        with self._lock:
            inst = self._installed.pop(handle, None)
            if inst is None:
                raise SadError("handle", f"no SA database entry with handle {handle}")
            for fh in inst.filter_handles:
                self._outbound.remove(fh)
            for k in reversed(_keys_of(inst)):  # outermost first: no lookup lands on a half bundle
                del self._inbound[k]
            self._count_ports(inst.encap_ports, -1)
        return inst.bundle

    def withdraw(self, handle: int) -> Bundle | None:
        """:meth:`delete` without building: a deferred bundle is dropped as it is (its SPI,
        destination and ports freed) and None returned; an installed one is deleted and
        returned. For a front end that knows what an unbuilt bundle has done (nothing, or
        what its store says) and would build it only to throw it away."""
        with self._build_lock:  # no build of it starts or finishes meanwhile
            entry = self._deferred.get(handle)
            if entry is None:
                return self.delete(handle)
            with self._lock:
                del self._pending[entry.key]
                del self._deferred[handle]
                self._count_ports(entry.encap_ports, -1)
            self._failing.discard(handle)
            return None

    def replace(self, handle: int,
                sas: SecurityAssociation | Bundle | Iterable[SecurityAssociation]) -> Bundle:
        """Swap the bundle behind ``handle`` atomically (a rekey): lookups see the old bundle or
        the new one. Outbound, the entry keeps its filters. Inbound, the new SAs' keys are
        published (inner first) before the old ones are withdrawn (outermost first), so packets
        on either SPI are found throughout and no lookup finds half a bundle. Returns the old
        bundle; on error nothing changes."""
        new = Bundle.of(sas)
        if handle in self._deferred:
            self.materialize(handle)
        with self._lock:
            inst = self._installed.get(handle)
            if inst is None:
                raise SadError("handle", f"no SA database entry with handle {handle}")
            _check_direction(new, inst.direction)
            if inst.direction == "outbound":
                for fh in inst.filter_handles:
                    self._outbound.replace(fh, new)
            else:
                keys = tuple(_key(sa) for sa in new.sas)
                if len(set(keys)) != len(keys):
                    raise SadError("spi", "the SAs of one bundle need distinct (SPI, protocol, destination) keys")
                old_keys = _keys_of(inst)
                for k in keys:
                    if k in self._inbound and k not in old_keys:
                        raise SadError("spi", f"an inbound SA with {_describe_key(k)} is "
                                              "already installed")
                ports = _encap_ports(new)
                self._count_ports(ports, 1)
                self._publish_inbound(new, keys)
                for k in reversed(old_keys):
                    if k not in keys:
                        del self._inbound[k]
                self._count_ports(inst.encap_ports, -1)
                inst.encap_ports = ports
            old = inst.bundle
            inst.bundle = new
        return old

    # ----------------------------------------------------------------- lookups
    def lookup_inbound(self, spi: int, protocol: int,
                       dst: bytes | ipaddress.IPv4Address | ipaddress.IPv6Address
                       ) -> SecurityAssociation | None:
        """The inbound SA for (SPI, IP protocol number, destination address), O(1). The
        destination is its 4 or 16 network-order bytes (or an ipaddress object)."""
        if type(dst) is not bytes:
            dst = dst.packed  # type: ignore[union-attr]
        key = int.from_bytes(dst, "big") << 41 | protocol << 32 | spi
        if len(dst) == 16:
            key |= _V6_FLAG
        hit = self._inbound.get(key)
        if hit is None and self._pending:
            hit = self._resolve(key)
        if type(hit) is tuple:
            return hit[0]
        return hit

    def lookup_bundle(self, spi: int, protocol: int, dst: bytes) -> tuple[Bundle, int] | None:
        """The installed inbound bundle an SA key belongs to and the SA's index in it."""
        key = _inbound_key(spi, protocol, dst)
        hit = self._inbound.get(key)
        if hit is None and self._pending:
            hit = self._resolve(key)
        if hit is None:
            return None
        if type(hit) is tuple:
            return hit[1], hit[2]
        return Bundle((hit,)), 0

    def classify(self, packet: bytes) -> Bundle | None:
        """The outbound bundle whose filter covers ``packet`` (None: no policy).
        Raises MalformedPacket for packets that do not parse."""
        if packet.__class__ is not bytes:
            packet = as_packet(packet)
        if len(packet) >= 24 and packet[0] == 0x45:
            # IPv4 without options (the common case), parsed here; everything else by flow_of.
            _, tlen, frag, proto, src, dst = _V4.unpack_from(packet)
            if 24 <= tlen <= len(packet):
                if proto in PORTED_PROTOCOLS and not frag & 0x1FFF:
                    sport, dport = _PORTS.unpack_from(packet, 20)
                else:
                    sport = dport = 0
                return self._outbound.lookup(4, src, dst, proto, sport, dport)
        f = flow_of(packet)
        return self._outbound.lookup(f.version, int.from_bytes(f.src, "big"),
                                     int.from_bytes(f.dst, "big"), f.protocol, f.sport, f.dport)

    def __len__(self) -> int:
        return len(self._installed) + len(self._deferred)

    def __iter__(self) -> Iterator[tuple[int, str, Bundle]]:
        for handle in list(self._deferred):  # what is iterated is seen: built
            with suppress(SadError):  # deleted meanwhile
                self.materialize(handle)
        for handle, inst in list(self._installed.items()):
            yield handle, inst.direction, inst.bundle

    @property
    def drops(self) -> dict[DropReason, int]:
        """Packets dropped before any SA was known, by reason."""
        with self._drops_lock:
            return dict(self._drops)

    def _drop(self, reason: DropReason) -> Result:
        with self._drops_lock:  # a read-modify-write: two threads must not lose a count
            self._drops[reason] = self._drops.get(reason, 0) + 1
        return DROPPED[reason]

    # ----------------------------------------------------------------- the data path
    def outbound(self, packet: bytes, now: float | None = None) -> Result:
        """Classify ``packet`` and apply its bundle (ESP, then AH). Unmatched → NO_POLICY."""
        if packet.__class__ is not bytes:
            packet = as_packet(packet)
        try:
            bundle = self.classify(packet)
        except MalformedPacket as exc:
            return self._drop(exc.reason)
        if bundle is None:
            return self._drop(DropReason.NO_POLICY)
        sas = bundle.sas
        result = sas[0].protect(packet, now)
        if len(sas) == 2 and result[0] is not None:
            result = sas[1].protect(result[0], now)
        return result

    def outbound_batch(self, packets: Iterable[bytes], now: float | None = None
                       ) -> list[Result]:
        """:meth:`outbound` over a batch: one ``Result`` per packet, in input order.

        Packets are classified one by one and grouped per SA, and each SA's group goes through
        its ``protect_batch`` in arrival order (one native call per SA and batch, the GIL
        released around its crypto when large). Packets of two-SA bundles, and anything this
        database drops itself, are handled one by one after the groups gathered so far have
        been flushed, so every SA sees its packets in the order :meth:`outbound` would."""
        pending: dict[int, tuple[SecurityAssociation, list[int], list[bytes]]] = {}
        results, packets = self._batch_start(packets)
        for i, packet in enumerate(packets):
            if packet.__class__ is not bytes:
                packet = as_packet(packet)
            try:
                bundle = self.classify(packet)
            except MalformedPacket as exc:
                results[i] = self._drop(exc.reason)
                continue
            if bundle is None:
                results[i] = self._drop(DropReason.NO_POLICY)
                continue
            if len(bundle.sas) == 1:
                sa = bundle.sas[0]
                group = pending.get(id(sa))
                if group is None:
                    pending[id(sa)] = group = (sa, [], [])
                group[1].append(i)
                group[2].append(packet)
                continue
            self._flush(pending, results, now, outbound=True)
            results[i] = self.outbound(packet, now)
        self._flush(pending, results, now, outbound=True)
        return results  # type: ignore[return-value]

    def inbound_batch(self, packets: Iterable[bytes], now: float | None = None
                      ) -> list[Result]:
        """:meth:`inbound` over a batch: one ``Result`` per packet, in input order.

        Packets found under a one-SA bundle are grouped per SA and go through its
        ``unprotect_batch`` in arrival order; fragments and two-SA bundles are handled one by
        one after the groups gathered so far have been flushed (a reassembled datagram takes
        its place in its SA's order). The verdicts are those of :meth:`inbound` per packet."""
        pending: dict[int, tuple[SecurityAssociation, list[int], list[bytes]]] = {}
        results, packets = self._batch_start(packets)
        for i, packet in enumerate(packets):
            if packet.__class__ is not bytes:
                packet = as_packet(packet)
            try:
                hit = self._locate(packet)
            except MalformedPacket as exc:
                results[i] = self._drop(exc.reason)
                continue
            if type(hit) is DropReason:
                results[i] = self._drop(hit)
                continue
            if hit is not None and type(hit) is not tuple:
                group = pending.get(id(hit))
                if group is None:
                    pending[id(hit)] = group = (hit, [], [])
                group[1].append(i)
                group[2].append(packet)
                continue
            self._flush(pending, results, now, outbound=False)
            results[i] = self.inbound(packet, now)
        self._flush(pending, results, now, outbound=False)
        return results  # type: ignore[return-value]

    @staticmethod
    def _batch_start(packets: Iterable[bytes]) -> tuple[list[Result | None], list[bytes]]:
        if isinstance(packets, (bytes, bytearray, memoryview)):
            raise TypeError("a batch is an iterable of packets, not one packet")
        packets = list(packets)
        return [None] * len(packets), packets

    @staticmethod
    def _flush(pending: dict[int, tuple[SecurityAssociation, list[int], list[bytes]]],
               results: list[Result | None], now: float | None, *, outbound: bool) -> None:
        for sa, where, group in pending.values():
            done = sa.protect_batch(group, now) if outbound else sa.unprotect_batch(group, now)
            for i, res in zip(where, done, strict=True):
                results[i] = res
        pending.clear()

    def inbound(self, packet: bytes, now: float | None = None) -> Result:
        """Find the SA of an arriving IPsec packet by its outermost SPI and remove the bundle's
        protection (AH, then ESP). Fragments are reassembled first (RFC 4303 §3.4.1)."""
        return self.inbound_via(packet, now)[0]

    def inbound_via(self, packet: bytes, now: float | None = None,
                    guard: Callable[[SecurityAssociation], AbstractContextManager[Any]] | None
                    = None) -> tuple[Result, SecurityAssociation | None]:
        """:meth:`inbound`, and the outermost SA the packet was found under (None when no SA
        was found), for front ends that check the decapsulated packet against the policy of the
        SA it arrived through (the WFP engine's inbound callout, reference F.20). ``guard(sa)``,
        if given, is entered around the unprotect steps (a front end's per-SA lock)."""
        if packet.__class__ is not bytes:
            packet = as_packet(packet)
        try:
            hit = self._locate(packet)
        except MalformedPacket as exc:
            return self._drop(exc.reason), None
        if type(hit) is DropReason:
            return self._drop(hit), None
        if hit is None:  # a fragment
            with self._reasm_lock:
                whole, reason = self._reasm.feed(packet,
                                                 time.monotonic() if now is None else now)
            if reason is not None:
                return self._drop(reason), None
            if whole is None:
                return HELD, None
            return self.inbound_via(whole, now, guard)
        if type(hit) is not tuple:  # the SA of a one-SA bundle
            if guard is None:
                return hit.unprotect(packet, now), hit
            with guard(hit):
                return hit.unprotect(packet, now), hit
        sa, bundle, index = hit
        # Peel from the outermost SA inwards; a lone inner SA of a bundle (index 0 of 2) means
        # the outer protection is missing: refuse, the policy requires both (counted by the
        # database: the SA never saw the packet).
        if index != 1:
            return self._drop(DropReason.SELECTOR_MISMATCH), None
        with guard(sa) if guard is not None else nullcontext():
            result = sa.unprotect(packet, now)
            if result[0] is not None:
                # The inner SA checks the SPI of what AH covered (BAD_SPI if it is not its own).
                result = bundle.sas[0].unprotect(result[0], now)
        return result, sa

    def _locate(self, packet: bytes) -> Any:
        """The index entry of the packet's outermost IPsec header; None for a fragment that
        must be reassembled first; a DropReason when no SA applies."""
        n = len(packet)
        if n < 20:
            return DropReason.TRUNCATED
        version = packet[0] >> 4
        if version == 4:
            vihl, tlen, ff, proto, _src, dst = _V4.unpack_from(packet)
            ihl = (vihl & 15) << 2
            if ihl < 20 or tlen < ihl:
                return DropReason.MALFORMED
            if tlen > n:
                return DropReason.TRUNCATED
            if ff & 0x3FFF:
                return None
            off, end, v6 = ihl, tlen, 0
        elif version == 6:
            ch = parse_ipv6_chain(packet, stop_at_ipsec=True)
            if ch.fragment is not None:
                return None
            proto, off, end = ch.upper_protocol, ch.upper_offset, 40 + ch.payload_length
            dst, v6 = int.from_bytes(ch.dst, "big"), _V6_FLAG
        else:
            return DropReason.MALFORMED
        if proto == PROTO_ESP:
            if end - off < 8:
                return DropReason.TRUNCATED
        elif proto == PROTO_AH:
            if end - off < 12:
                return DropReason.TRUNCATED
            off += 4
        elif proto == PROTO_UDP:
            if end - off < 8:
                return DropReason.TRUNCATED
            dport = packet[off + 2] << 8 | packet[off + 3]
            if dport != NATT_PORT and dport not in self._encap_ports:
                return DropReason.WRONG_PROTOCOL
            # RFC 3948 §2 on the payload (read in place: no copy of it).
            off += 8
            size = end - off
            if size == 1:
                return DropReason.NATT_KEEPALIVE if packet[off] == 0xFF else DropReason.TRUNCATED
            if size >= 4 and packet[off:off + 4] == NON_ESP_MARKER:
                return DropReason.NON_ESP_MARKER
            if size < 8:
                return DropReason.TRUNCATED
            proto = PROTO_ESP
        else:
            return DropReason.WRONG_PROTOCOL
        spi = _U32.unpack_from(packet, off)[0]
        key = dst << 41 | v6 | proto << 32 | spi
        hit = self._inbound.get(key)
        if hit is None:
            if self._pending:  # a deferred bundle holding this SPI is built now
                hit = self._resolve(key)
                if hit is not None:
                    return hit
            return DropReason.BAD_SPI
        return hit


def _encap_ports(bundle: Bundle) -> tuple[int, ...]:
    return tuple(sa.config.encapsulation.dport for sa in bundle.sas
                 if sa.config.encapsulation is not None)


__all__ = ["Bundle", "SaDatabase", "SadError", "bundle_problem", "filters_for"]

"""Outbound classifier of the SA database: which installed filter covers a packet.

Filters
-------
A :class:`Filter` is the traffic filter of an NDIS ``OFFLOAD_IPSEC_ADD_SA`` request (reference
§A.3): ``SrcAddr/SrcMask, DestAddr/DestMask, Protocol, SrcPort, DestPort``. A zero *field* is a
wildcard for that field only: ``src == 0`` is any source whatever the mask, protocol 0 any
protocol, port 0 any port. A non-zero address matches a packet when
``(pkt & mask) == (addr & mask)``. Masks are raw integers and may be non-contiguous.

Addresses are integers holding the address's numeric value (``int(IPv4Address("10.0.0.1"))``,
i.e. the network-order bytes read big-endian); converting from the NDIS structure is the codec's
job (reference §F.12).

**Our choice, not Windows'**: the reference leaves a non-zero address with a zero mask open. We
treat it as a *host* match (all-ones mask), because "any" is already expressed by address 0.

Most specific filter wins
-------------------------
Specificity is the tuple, compared lexicographically (bigger is more specific)::

    (popcount(effective src mask) + popcount(effective dst mask),
     1 if any port is specified else 0,
     1 if the protocol is specified else 0,
     1 if the destination port is specified else 0,
     1 if the source port is specified else 0)

The first three components are the XFRM policy priority strongSwan computes for its policies
(``kernel_netlink_ipsec.c: get_priority``: fewer prefix bits = lower priority, then "has a port
selector", then "has a protocol"); the last two refine it into an order on filters, preferring a
destination port (the service an outbound packet is for) over a source port. The effective mask
of a wildcard address is 0 and of a non-zero address with mask 0 is all-ones (see above), so a
wildcard contributes no bits. IPv4 and IPv6 filters are never compared: a packet only meets
filters of its own version.

**Ties** (equal specificity, which includes exact duplicates) go to the filter added first, i.e.
the lowest handle. Handles are allocated from a counter starting at 1 and never reused, so the
resulting order (specificity descending, then handle ascending) is total and deterministic.

Lookup: tuple-space search
--------------------------
Filters are grouped by *shape* (Srinivasan, Suri, Varghese, "Packet classification using tuple
space search", SIGCOMM 1999): version, effective src and dst masks, and which of protocol, sport
and dport are specified. All filters of a shape share one specificity, and within a shape a packet
has exactly one candidate key. A lookup packs the packet once into one integer, the *word* ``src ‖
dst ‖ protocol (8 bits) ‖ sport (16) ‖ dport (16)``, and a shape's key is ``word & shape mask``:
one AND per shape, and the key is a single int (one object to compare on a hit).

Each shape keeps two dicts on that key. ``values`` maps it straight to the value of the oldest
filter with the key; it is the only table a lookup reads, so a hit costs one probe and no further
object (cache misses, not bytecodes, are what a lookup in a million filters pays for). ``handles``
maps the key to that filter's handle, or, for exact duplicates, to the bucket ``(handle1, value1,
handle2, ...)``, handles ascending; writers use it, and lookups only for a tie-break (below).

Shapes of one version are ordered most specific first; shapes of equal specificity form a *tier*.
A lookup probes shape after shape and stops at the first hit. A shape alone in its tier answers
directly; if its tier has other shapes, the whole tier is probed through ``handles`` and the
lowest handle wins. The cost is at most one dict probe per distinct shape, independent of the
number of filters. Adding or removing a shape rebuilds the (short) probe tuple, so a workload
with very many distinct non-contiguous masks is slow to update and to look up in; prefix masks in
practice give a few dozen shapes at most.

**Pruning** (the "pruned tuple space" idea of the same paper): a shape that specifies the
protocol or ports also counts its keys per protocol/ports part (``ports``), and while it has at
most :data:`PRUNE_MAX` distinct parts a lookup checks the packet's part there first, in a small
dict that stays in cache, and skips the shape's big table when no filter has it. A host-to-host
"TCP port 443" shape is then not probed for a UDP packet to port 53.

Concurrency
-----------
Writers (:meth:`Classifier.add`, :meth:`~Classifier.remove`, :meth:`~Classifier.replace`) are
serialised by a :class:`threading.Lock`. Every change a reader can observe is a single reference
store: one dict item, or one assignment of a new probe tuple (rebuilt, never mutated, and a new
shape's tables are filled before its probe is published). A reader never sees a torn bucket or a
half-built shape list.

A lookup probes several tables, though, and could straddle two writes (probe a specific shape
before an add, a general one after a remove, and report "no filter" although one matched at every
instant). To make every lookup linearizable, writers count the writes they begin (``_begun``,
bumped before the change) and end (``_ended``, after it). A lookup reads ``_ended`` first,
probes, then compares ``_begun`` with it: equal means no write was in progress when it started
and none began since, so it saw one state; otherwise it looks again under the writers' lock. That
is one compare on the hot path; readers take no lock in the common case, and writers never copy a
table (copy-on-write of a shape's table would make each add O(filters in the shape), quadratic
when installing a million SAs).

This relies on CPython executing each dict store/probe and attribute store/load atomically and in
program order, which holds under the GIL; the free-threaded build keeps dict operations atomic.
"""

from __future__ import annotations

import functools
import ipaddress
import threading
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ipsecsa.errors import ConfigError
from ipsecsa.selectors import MAX_PORT, MAX_PROTOCOL, Selector

T = TypeVar("T")

# Specification constants: address widths of IPv4 and IPv6.
_WIDTH = {4: 32, 6: 128}
_ALL_ONES = {4: (1 << 32) - 1, 6: (1 << 128) - 1}

#: ``(address bits, any port, protocol, dport, sport)``: see the module docstring.
Specificity = tuple[int, int, int, int, int]

# A shape: (version, effective src mask, effective dst mask, protocol specified, sport specified,
# dport specified).
_Shape = tuple[int, int, int, bool, bool, bool]

# Layout of the packed word: ... src | dst | protocol (8) | sport (16) | dport (16).
_DST_SHIFT = 40
_SRC_SHIFT = {4: 40 + 32, 6: 40 + 128}


def _pack(version: int, src: int, dst: int, protocol: int, sport: int, dport: int) -> int:
    return ((src << _SRC_SHIFT[version]) | (dst << _DST_SHIFT) | (protocol << 32) | (sport << 16)
            | dport)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _effective_mask(addr: int, mask: int, version: int) -> int:
    if addr == 0:
        return 0  # address 0: any address, whatever the mask
    if mask == 0:
        return _ALL_ONES[version]  # our CHOICE: non-zero address with mask 0 is a host
    return mask


def _parse_prefix(text: str | None, version: int, field: str) -> tuple[int, int]:
    """A prefix string (or a bare address, a host) as the NDIS (address, mask) pair."""
    if text is None:
        return 0, 0
    if not isinstance(text, str):
        raise ConfigError(field, 'must be a prefix string such as "10.0.0.0/8", or None')
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ConfigError(field, f"not a valid address prefix ({exc})") from None
    if net.version != version:
        raise ConfigError(field, f"is an IPv{net.version} prefix in an IPv{version} filter")
    if net.prefixlen == 0:
        return 0, 0
    addr, mask = int(net.network_address), int(net.netmask)
    if addr == 0:
        # Address 0 is the wildcard, so a prefix of the all-zero network ("0.0.0.0/8") is written
        # with a host bit set outside the mask; only ``addr & mask`` takes part in matching.
        if net.prefixlen == _WIDTH[version]:
            raise ConfigError(field, "the unspecified address cannot be selected: "
                                     "address 0 means any address")
        addr = 1
    return addr, mask


def _format_addr(version: int, addr: int, mask: int) -> str:
    if addr == 0:
        return "*"
    emask = _effective_mask(addr, mask, version)
    width = _WIDTH[version]
    plen = emask.bit_count()
    ip = ipaddress.ip_address(addr) if version == 4 else ipaddress.IPv6Address(addr)
    if emask == ((1 << plen) - 1) << (width - plen):
        return f"{ip}/{plen}"
    netmask = ipaddress.ip_address(emask) if version == 4 else ipaddress.IPv6Address(emask)
    return f"{ip}&{netmask}"


@dataclass(frozen=True, slots=True)
class Filter:
    """One NDIS IPsec filter (reference §A.3): the traffic an outbound SA covers.

    The raw form mirrors the NDIS fields: ``Filter(4, src, src_mask, dst, dst_mask, protocol,
    sport, dport)`` with integer addresses and masks (32-bit for IPv4, 128-bit for IPv6). Zero
    fields are wildcards; a non-zero address with mask 0 is a host match (our choice, see the
    module docstring); masks may be non-contiguous. :meth:`v4` and :meth:`v6` build one from
    prefix strings.
    """

    version: int
    src: int
    src_mask: int
    dst: int
    dst_mask: int
    protocol: int = 0
    sport: int = 0
    dport: int = 0

    def __post_init__(self) -> None:
        # The common case in one expression (plain ints in range): a durable engine reopening
        # 100,000 filters builds 100,000 of these. Anything else takes the checks below, which
        # name the field at fault.
        top = _ALL_ONES.get(self.version) if type(self.version) is int else None
        src, sm, dst, dm = self.src, self.src_mask, self.dst, self.dst_mask
        p, sp, dp = self.protocol, self.sport, self.dport
        if top is not None and type(src) is int and type(sm) is int and type(dst) is int \
                and type(dm) is int and type(p) is int and type(sp) is int \
                and type(dp) is int and 0 <= src <= top and 0 <= sm <= top \
                and 0 <= dst <= top and 0 <= dm <= top and 0 <= p <= MAX_PROTOCOL \
                and 0 <= sp <= MAX_PORT and 0 <= dp <= MAX_PORT:
            return
        if self.version not in _ALL_ONES:
            raise ConfigError("version", "must be 4 or 6")
        top = _ALL_ONES[self.version]
        for name in ("src", "src_mask", "dst", "dst_mask"):
            value = getattr(self, name)
            if not _is_int(value) or not 0 <= value <= top:
                raise ConfigError(name, f"must be an integer between 0 and {top:#x}")
        for name, maximum in (("protocol", MAX_PROTOCOL), ("sport", MAX_PORT),
                              ("dport", MAX_PORT)):
            value = getattr(self, name)
            if not _is_int(value) or not 0 <= value <= maximum:
                raise ConfigError(name, f"must be an integer between 0 (any) and {maximum}")

    @classmethod
    def v4(cls, src: str | None = None, dst: str | None = None, protocol: int = 0,
           sport: int = 0, dport: int = 0) -> Filter:
        """An IPv4 filter from prefixes (``"10.0.0.0/8"``, a bare address for a host, ``None``
        or a ``/0`` prefix for any). Prefixes are strict: host bits set are an error."""
        s, sm = _parse_prefix(src, 4, "src")
        d, dm = _parse_prefix(dst, 4, "dst")
        return cls(4, s, sm, d, dm, protocol, sport, dport)

    @classmethod
    def v6(cls, src: str | None = None, dst: str | None = None, protocol: int = 0,
           sport: int = 0, dport: int = 0) -> Filter:
        """An IPv6 filter from prefixes; as :meth:`v4`."""
        s, sm = _parse_prefix(src, 6, "src")
        d, dm = _parse_prefix(dst, 6, "dst")
        return cls(6, s, sm, d, dm, protocol, sport, dport)

    @classmethod
    def from_selector(cls, selector: Selector, version: int | None = None) -> Filter:
        """The filter of a :class:`~ipsecsa.selectors.Selector`. A selector without prefixes
        matches both families; ``version`` then says which one this filter is for."""
        sel_version = selector.version
        if version is None:
            if not sel_version:
                raise ConfigError("version", "the selector names no prefix: give the version")
            version = sel_version
        elif sel_version and version != sel_version:
            raise ConfigError("version", f"the selector is IPv{sel_version}")
        if version not in _WIDTH:
            raise ConfigError("version", "must be 4 or 6")
        src = _parse_prefix(None if selector.src is None else str(selector.src), version, "src")
        dst = _parse_prefix(None if selector.dst is None else str(selector.dst), version, "dst")
        return cls(version, *src, *dst, selector.protocol, selector.sport, selector.dport)

    @property
    def effective_src_mask(self) -> int:
        """The mask matching uses: 0 for a wildcard source, all-ones for mask 0 (our choice)."""
        return _effective_mask(self.src, self.src_mask, self.version)

    @property
    def effective_dst_mask(self) -> int:
        """As :attr:`effective_src_mask`, for the destination."""
        return _effective_mask(self.dst, self.dst_mask, self.version)

    @property
    def specificity(self) -> Specificity:
        """``(address bits, any port, protocol, dport, sport)``; bigger is more specific."""
        bits = self.effective_src_mask.bit_count() + self.effective_dst_mask.bit_count()
        return (bits, int(bool(self.sport or self.dport)), int(bool(self.protocol)),
                int(bool(self.dport)), int(bool(self.sport)))

    def matches(self, version: int, src: int, dst: int, protocol: int, sport: int,
                dport: int) -> bool:
        """Whether a packet (integer addresses) falls within this filter."""
        if version != self.version:
            return False
        if self.protocol and protocol != self.protocol:
            return False
        if self.sport and sport != self.sport:
            return False
        if self.dport and dport != self.dport:
            return False
        smask = self.effective_src_mask
        if src & smask != self.src & smask:
            return False
        dmask = self.effective_dst_mask
        return dst & dmask == self.dst & dmask

    def _shape_and_key(self) -> tuple[_Shape, int]:
        """The filter's shape and its key there: ``_pack(fields) & _shape_mask(shape)``,
        written out (the protocol and ports are within their masks once validated)."""
        version, src, dst = self.version, self.src, self.dst
        top = _ALL_ONES[version]
        sm = 0 if src == 0 else self.src_mask or top  # _effective_mask, inline
        dm = 0 if dst == 0 else self.dst_mask or top
        p, sp, dp = self.protocol, self.sport, self.dport
        shape = (version, sm, dm, bool(p), bool(sp), bool(dp))
        key = ((src & sm) << _SRC_SHIFT[version]) | ((dst & dm) << _DST_SHIFT) | (p << 32) \
            | (sp << 16) | dp
        return shape, key

    def __str__(self) -> str:
        src = _format_addr(self.version, self.src, self.src_mask)
        dst = _format_addr(self.version, self.dst, self.dst_mask)
        return (f"IPv{self.version} {src} -> {dst} proto {self.protocol or '*'} "
                f"sport {self.sport or '*'} dport {self.dport or '*'}")


def _shape_mask(shape: _Shape) -> int:
    version, sm, dm, proto, sport, dport = shape
    return _pack(version, sm, dm, 0xFF if proto else 0, 0xFFFF if sport else 0,
                 0xFFFF if dport else 0)


def _specificity_of_shape(shape: _Shape) -> Specificity:
    _, sm, dm, proto, sport, dport = shape
    return (sm.bit_count() + dm.bit_count(), int(sport or dport), int(proto), int(dport),
            int(sport))


@functools.lru_cache(maxsize=1024)
def _shape_constants(shape: _Shape) -> tuple[int, int, Specificity]:
    """(mask, protocol/ports part of the mask, specificity) of a shape: a group is made each
    time a shape gets its first filter (again after its last one went), and the few shapes a
    table has are met again and again."""
    mask = _shape_mask(shape)
    return mask, mask & _PORTS_PART, _specificity_of_shape(shape)


def _position(bucket: tuple[Any, ...], handle: int) -> int:
    """Index of ``handle`` in a bucket (handles sit at even positions; values are never compared,
    so a value whose ``==`` is odd cannot confuse it)."""
    for i in range(0, len(bucket), 2):
        if bucket[i] == handle:
            return i
    raise AssertionError(f"handle {handle} missing from its bucket")


class _Group:
    """The filters of one shape, under keys ``packed word & shape mask``.

    ``values`` maps a key to the value of the oldest filter with that key: the only table a lookup
    reads (one probe, and the value comes straight out of it). ``handles`` maps the key to that
    filter's handle, or, when exact duplicates share the key, to the bucket ``(handle1, value1,
    handle2, value2, ...)``, handles ascending; writers and the tie-break between shapes of equal
    specificity read it."""

    __slots__ = ("handles", "mask", "pmask", "ports", "specificity", "values")

    def __init__(self, shape: _Shape) -> None:
        self.values: dict[int, Any] = {}
        self.handles: dict[int, int | tuple[Any, ...]] = {}
        #: The shape's mask; its protocol/ports part, and the number of keys per such part
        #: (pruning); its specificity.
        self.mask, self.pmask, self.specificity = _shape_constants(shape)
        self.ports: dict[int, int] = {}

    def prunes(self) -> bool:
        """Whether lookups check the protocol/ports part before probing this shape's table."""
        return bool(self.pmask) and len(self.ports) <= PRUNE_MAX

    def add_key(self, key: int, handle: int, value: Any) -> bool:
        """Insert a new key; True if pruning just stopped paying (republish)."""
        part = key & self.pmask
        n = self.ports.get(part, 0) + 1
        self.ports[part] = n  # before the key goes live: a reader never prunes a live key
        self.handles[key] = handle
        self.values[key] = value
        return n == 1 and len(self.ports) == PRUNE_MAX + 1

    def remove_key(self, key: int) -> tuple[Any, bool]:
        """Delete a key; its value, and True if pruning just started paying (republish)."""
        value = self.values.pop(key)
        del self.handles[key]
        part = key & self.pmask
        n = self.ports[part] - 1
        if n:
            self.ports[part] = n
            return value, False
        del self.ports[part]
        return value, bool(self.pmask) and len(self.ports) == PRUNE_MAX


# A probe as a lookup unpacks it: (ports.get or None, ports mask, values.get, shape mask, tier).
# The first is None when the shape is not pruned. ``tier`` is None when the shape is alone in its
# tier (a hit is the answer); otherwise it lists the tier's shapes as (values.get, handles.get,
# mask), for the tie-break.
_Probe = tuple[Any, int, Any, int, "tuple[tuple[Any, Any, int], ...] | None"]

#: The protocol/ports bits of a packed word.
_PORTS_PART = (1 << 40) - 1
#: Shapes with protocol or ports are pruned while they have at most this many distinct
#: protocol/ports combinations (their count table then stays small enough to stay in cache).
PRUNE_MAX = 4096


def _resolve(tier: tuple[tuple[Any, Any, int], ...], word: int) -> Any:
    """The value of the lowest-handle filter matching ``word`` among shapes of one tier (called
    only once one of them hit). May return None if a writer runs alongside: the caller's sequence
    check catches that."""
    best_handle: int | None = None
    best = None
    for vget, hget, mask in tier:
        key = word & mask
        handle = hget(key)
        if handle is None:
            continue
        if type(handle) is tuple:
            value = handle[1]
            handle = handle[0]
        else:
            value = vget(key)
        if best_handle is None or handle < best_handle:
            best_handle, best = handle, value
    return best


class Classifier(Generic[T]):
    """Outbound SA classifier: filters → values, most specific filter wins.

    ``add`` returns a handle (a positive int, never reused); ``lookup`` returns the value of the
    best matching filter or ``None`` (so values may not be ``None``). See the module docstring for
    the specificity order, the tie-break (lowest handle) and the thread-safety model (lock-free
    linearizable lookups, serialised writers).
    """

    __slots__ = ("_begun", "_ended", "_filters", "_groups", "_lock", "_next_handle", "_probes4",
                 "_probes6")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Writes begun and writes ended (see "Concurrency" in the module docstring).
        self._begun = 0
        self._ended = 0
        # Published probes per version, most specific shape first.
        self._probes4: tuple[_Probe, ...] = ()
        self._probes6: tuple[_Probe, ...] = ()
        self._groups: dict[_Shape, _Group] = {}
        #: Per handle: the filter, its shape and its key (computed once, at add).
        self._filters: dict[int, tuple[Filter, _Shape, int]] = {}
        self._next_handle = 1

    def __len__(self) -> int:
        return len(self._filters)

    def __contains__(self, handle: object) -> bool:
        return handle in self._filters

    @property
    def shape_count(self) -> int:
        """Number of distinct shapes, i.e. the most dict probes a lookup can make."""
        return len(self._groups)

    def filter_of(self, handle: int) -> Filter:
        """The filter installed under ``handle`` (KeyError if none)."""
        return self._filters[handle][0]

    # -- lookup ---------------------------------------------------------------------------------

    def lookup(self, version: int, src: int, dst: int, protocol: int, sport: int,
               dport: int) -> T | None:
        """The value of the most specific filter matching the packet, or ``None``.

        Addresses are integers of the packet's version; a packet without ports (not TCP, UDP,
        SCTP...) passes 0, which only port wildcards match. Arguments are not validated, this is
        the per-packet path: fields out of range (an address wider than the version, a protocol
        above 255, a port above 65535) give an unspecified answer.
        """
        ended = self._ended
        if version == 4:
            probes = self._probes4
            word = (src << 72) | (dst << 40) | (protocol << 32) | (sport << 16) | dport
        elif version == 6:
            probes = self._probes6
            word = (src << 168) | (dst << 40) | (protocol << 32) | (sport << 16) | dport
        else:
            raise ConfigError("version", "must be 4 or 6")
        value = None
        for pget, pmask, get, mask, tier in probes:
            if pget is not None and pget(word & pmask) is None:
                continue  # no filter of this shape has the packet's protocol and ports
            value = get(word & mask)
            if value is not None:
                if tier is not None:
                    value = _resolve(tier, word)
                break
        if self._begun == ended:  # no write began since the last one before we started ended
            return value
        # A writer ran alongside: look again with writers held off. While we hold the lock no
        # write is in progress, so the nested lookup cannot come back here.
        with self._lock:
            return self.lookup(version, src, dst, protocol, sport, dport)

    def lookup_all(self, version: int, src: int, dst: int, protocol: int, sport: int,
                   dport: int) -> list[T]:
        """The values of *every* filter matching the packet, in no particular order.

        For front ends that order matches themselves (the WFP engine arbitrates by filter weight,
        reference C.7.3): the same tuple-space probes as :meth:`lookup`, but no shape stops the
        search and duplicate buckets yield all their values. Same linearizability rule.
        """
        ended = self._ended
        if version == 4:
            word = (src << 72) | (dst << 40) | (protocol << 32) | (sport << 16) | dport
        elif version == 6:
            word = (src << 168) | (dst << 40) | (protocol << 32) | (sport << 16) | dport
        else:
            raise ConfigError("version", "must be 4 or 6")
        found: list[T] = []
        for shape, group in list(self._groups.items()):  # one C-level copy: atomic under the GIL
            if shape[0] != version:
                continue
            key = word & group.mask
            entry = group.handles.get(key)
            if entry is None:
                continue
            if type(entry) is tuple:
                found.extend(entry[1::2])
            else:
                value = group.values.get(key)
                if value is not None:
                    found.append(value)
        if self._begun == ended:
            return found
        with self._lock:
            return self.lookup_all(version, src, dst, protocol, sport, dport)

    # -- writers --------------------------------------------------------------------------------

    def add(self, filter: Filter, value: T) -> int:
        """Install ``filter`` with ``value`` (not None); return its handle."""
        if not isinstance(filter, Filter):
            raise ConfigError("filter", "must be a Filter")
        if value is None:
            raise ConfigError("value", "must not be None (a lookup's None means no filter)")
        shape, key = filter._shape_and_key()
        with self._lock:
            handle = self._next_handle
            self._next_handle = handle + 1
            self._begun += 1
            try:
                group = self._groups.get(shape)
                if group is None:
                    group = _Group(shape)
                    group.add_key(key, handle, value)
                    self._groups[shape] = group
                    self._publish(shape[0])
                else:
                    old = group.handles.get(key)
                    if old is None:
                        if group.add_key(key, handle, value):
                            self._publish(shape[0])
                    else:
                        # An exact duplicate: the older filter keeps the key's value; handles
                        # only grow, so appending keeps the bucket sorted.
                        if isinstance(old, int):  # a lone handle (always a plain int) becomes a bucket
                            old = (old, group.values[key])
                        group.handles[key] = old + (handle, value)
                self._filters[handle] = (filter, shape, key)
            finally:
                self._ended += 1
        return handle

    def remove(self, handle: int) -> T:
        """Uninstall the filter ``handle``; return its value. KeyError for an unknown handle."""
        with self._lock:
            _, shape, key = self._filters[handle]
            group = self._groups[shape]
            entry = group.handles[key]
            value: T
            self._begun += 1
            try:
                del self._filters[handle]
                if type(entry) is int:
                    value, republish = group.remove_key(key)
                    if not group.values:
                        del self._groups[shape]
                        republish = True
                    if republish:
                        self._publish(shape[0])
                else:
                    assert isinstance(entry, tuple)
                    i = _position(entry, handle)
                    value = entry[i + 1]
                    rest = entry[:i] + entry[i + 2:]
                    group.handles[key] = rest[0] if len(rest) == 2 else rest
                    if i == 0:
                        group.values[key] = rest[1]
            finally:
                self._ended += 1
        return value

    def replace(self, handle: int, value: T) -> T:
        """Give the filter ``handle`` a new value (not None) in one step; return the old value.

        A lookup sees either the old value or the new one, never anything in between (swap an
        SA pair by passing the pair as one value). KeyError for an unknown handle.
        """
        if value is None:
            raise ConfigError("value", "must not be None (a lookup's None means no filter)")
        with self._lock:
            _, shape, key = self._filters[handle]
            group = self._groups[shape]
            entry = group.handles[key]
            old: T
            self._begun += 1
            try:
                if type(entry) is int:
                    old = group.values[key]
                    group.values[key] = value
                else:
                    assert isinstance(entry, tuple)
                    i = _position(entry, handle)
                    old = entry[i + 1]
                    group.handles[key] = entry[:i + 1] + (value,) + entry[i + 2:]
                    if i == 0:
                        group.values[key] = value
            finally:
                self._ended += 1
        return old

    def _publish(self, version: int) -> None:
        """Rebuild the probe tuple of ``version`` from the groups and publish it (lock held)."""
        groups = [g for s, g in self._groups.items() if s[0] == version]
        probes: list[_Probe] = []
        if len(groups) <= 1:  # none, or one shape (alone in its tier): what the loop gives
            probes = [(g.ports.get if g.prunes() else None, g.pmask, g.values.get, g.mask, None)
                      for g in groups]
            groups = []
        else:
            groups.sort(key=lambda g: g.specificity, reverse=True)
        i = 0
        while i < len(groups):
            j = i + 1
            while j < len(groups) and groups[j].specificity == groups[i].specificity:
                j += 1
            tier = None if j == i + 1 else tuple((g.values.get, g.handles.get, g.mask)
                                                 for g in groups[i:j])
            probes.extend((g.ports.get if g.prunes() else None, g.pmask, g.values.get, g.mask,
                           tier) for g in groups[i:j])
            i = j
        if version == 4:
            self._probes4 = tuple(probes)
        else:
            self._probes6 = tuple(probes)


__all__ = ["Classifier", "Filter", "Specificity"]

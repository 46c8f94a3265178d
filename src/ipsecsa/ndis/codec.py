"""A small declarative codec for Windows x64 (LLP64) structures, little-endian.

A structure is a frozen dataclass plus a *field table* compiled once into one ``struct.Struct``::

    OFFLOAD_ALGO_INFO = StructLayout("OFFLOAD_ALGO_INFO", AlgoInfo, [
        ("algoIdentifier", ULONG),
        ("algoKeylen", ULONG),
        ("algoRounds", ULONG),
    ])

Table entries, in declaration order:

* ``(name, scalar)`` - a C scalar (:data:`ULONG`, :data:`HANDLE`, :data:`IPADDR`, ...);
* ``(name, layout)`` - a nested structure, decoded as its dataclass;
* ``(name, layout_or_scalar, count)`` - a fixed array, decoded as a tuple;
* ``(name, scalar, FLEXIBLE)`` - a trailing ``T name[1]`` flexible array member (KeyMat): it counts
  for ``sizeof`` and ``offsetof`` but is not read or written here (its length lives elsewhere);
* :func:`bitfields` ``(unit, A=2, B=2, ...)`` - consecutive bitfields sharing one storage unit,
  allocated from the least significant bit, as MSVC does;
* ``(None, union_layout)`` - an anonymous union: its members become attributes of the structure.

Compilation applies the Microsoft x64 rules: every member at a multiple of its alignment (explicit
``x`` pad bytes in the format), the structure's alignment is its largest member's, and ``sizeof``
is rounded up to it. ``fields`` then lists every member with its offset and size (bitfields with
``bit_offset``/``bit_size``) in the shape of ``windows-layouts-x64.json``, so tests compare the
compiled tables with that file instead of restating numbers.

Pad bytes, and bits of a storage unit no bitfield names, are skipped on decode and written as zero
on encode (Windows callers zero-initialise these structures). Enum-typed members decode as plain
``int`` - a decoder reports what the buffer holds; judging values is the caller's job.

Errors are :class:`CodecError`; ``ipsecsa.ndis.structs`` turns them into ``StructError`` with an
NDIS_STATUS.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from ipsecsa.errors import IpsecsaError

__all__ = [
    "BOOLEAN",
    "FLEXIBLE",
    "HANDLE",
    "IPADDR",
    "IPMASK",
    "NDIS_HANDLE",
    "SHORT",
    "SPI_TYPE",
    "UCHAR",
    "ULONG",
    "USHORT",
    "CodecError",
    "FieldInfo",
    "Scalar",
    "StructLayout",
    "UnionLayout",
    "bitfields",
    "enum_type",
]

Buffer = bytes | bytearray | memoryview


class CodecError(IpsecsaError, ValueError):
    """A buffer is too short for a layout, or a value does not fit its field.

    ``field`` is the dotted path of the offending member (``"SecAssoc[1].SPI"``; ``""`` for the
    whole structure). ``needed`` is set for short buffers: the buffer length that would suffice.
    """

    def __init__(self, field: str, message: str, *, needed: int | None = None) -> None:
        self.field = field
        self.reason = message
        self.needed = needed
        super().__init__(f"{field}: {message}" if field else message)


# --- scalar types --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scalar:
    """A C scalar: one ``struct`` format item, its x64 size/alignment and its Python form."""

    c_type: str
    fmt: str
    size: int
    align: int
    lo: int = 0
    hi: int = 0
    #: raw unpacked item -> Python value (None: the item itself)
    to_py: Callable[[Any], Any] | None = None
    #: Python value -> raw item; raises ValueError/TypeError when the value does not fit
    from_py: Callable[[Any], Any] | None = None

    def pack_value(self, value: Any, path: str) -> Any:
        if self.from_py is not None:
            try:
                return self.from_py(value)
            except (TypeError, ValueError) as exc:
                raise CodecError(path, f"not a valid {self.c_type}: {exc}") from None
        if not isinstance(value, int):
            raise CodecError(path, f"{self.c_type} needs an int, got {type(value).__name__}")
        if not self.lo <= value <= self.hi:
            raise CodecError(path, f"{value} out of range for {self.c_type}")
        return value


def _integer(c_type: str, fmt: str) -> Scalar:
    size = struct.calcsize("<" + fmt)
    bits = 8 * size
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if fmt.islower() else (0, (1 << bits) - 1)
    return Scalar(c_type, fmt, size, size, lo, hi)


def _ipv4_packed(value: Any) -> bytes:
    if isinstance(value, IPv4Address):
        return value.packed
    if isinstance(value, (bytes, bytearray, memoryview)) and len(value) == 4:
        return bytes(value)
    raise TypeError("expected an IPv4Address or 4 bytes in network order")


def enum_type(c_type: str) -> Scalar:
    """A C ``enum`` member: a signed 32-bit ``int`` on MSVC x64."""
    return dataclasses.replace(_integer("int", "i"), c_type=c_type)


UCHAR = _integer("UCHAR", "B")
BOOLEAN = _integer("BOOLEAN", "B")  # an int 0..255, not a bool: round trips keep the raw byte
USHORT = _integer("USHORT", "H")
SHORT = _integer("SHORT", "h")
ULONG = _integer("ULONG", "I")
SPI_TYPE = dataclasses.replace(ULONG, c_type="SPI_TYPE")
#: HANDLE / PVOID: an 8-byte opaque unsigned number on x64.
HANDLE = _integer("HANDLE", "Q")
NDIS_HANDLE = dataclasses.replace(HANDLE, c_type="NDIS_HANDLE")
#: IPAddr is a ULONG holding the address in network byte order as stored in memory (reference
#: F.12, like ``in_addr``); it is exposed as an :class:`ipaddress.IPv4Address`.
IPADDR = Scalar("IPAddr", "4s", 4, 4, to_py=IPv4Address, from_py=_ipv4_packed)
IPMASK = dataclasses.replace(IPADDR, c_type="IPMask")


class _Flexible:
    def __repr__(self) -> str:
        return "FLEXIBLE"


#: Marks ``(name, scalar, FLEXIBLE)``: a trailing ``name[1]`` array of caller-defined length.
FLEXIBLE = _Flexible()


@dataclass(frozen=True, slots=True)
class Bits:
    """Consecutive bitfields in one storage unit; build with :func:`bitfields`."""

    unit: Scalar
    members: tuple[tuple[str, int, int], ...]  # (name, bit_offset, bit_size)


def bitfields(unit: Scalar, **widths: int) -> Bits:
    """``bitfields(ULONG, Md5=2, Sha_1=2)``: members allocated upwards from bit 0."""
    members, bit = [], 0
    for name, width in widths.items():
        members.append((name, bit, width))
        bit += width
    if bit > 8 * unit.size:
        raise TypeError(f"bitfields need {bit} bits, {unit.c_type} has {8 * unit.size}")
    return Bits(unit, tuple(members))


# --- layouts -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldInfo:
    """One member as the layouts JSON describes it (offsets relative to the enclosing layout)."""

    name: str
    offset: int
    size: int
    c_type: str
    #: "scalar" | "struct" | "array" | "bits" | "union" | "flexible"
    kind: str
    #: nested layout (struct/union) or array element layout; None for scalars
    layout: StructLayout | UnionLayout | None = None
    count: int = 1
    element_size: int = 0
    bit_offset: int | None = None
    bit_size: int | None = None


def _align_up(n: int, align: int) -> int:
    return -(-n // align) * align


class StructLayout:
    """A compiled structure: ``decode``/``encode``/``encode_into`` between bytes and ``cls``.

    ``size`` is C's ``sizeof``; ``fixed_size`` is what the codec reads and writes: ``size``, or
    ``offsetof`` the flexible array member when there is one (``flexible``).
    """

    def __init__(self, name: str, cls: type, table: Sequence[Any]) -> None:
        self.name = name
        self.cls = cls
        self.fields: list[FieldInfo] = []
        self.flexible: FieldInfo | None = None
        self._steps: list[tuple[Any, ...]] = []
        fmt: list[str] = []
        offset, align = 0, 1
        for entry in table:
            if self.flexible is not None:
                raise TypeError(f"{name}: the flexible array member must come last")
            typ = entry.unit if isinstance(entry, Bits) else entry[1]
            pad = _align_up(offset, typ.align) - offset
            if pad:
                fmt.append(f"{pad}x")
                offset += pad
            align = max(align, typ.align)
            offset += self._compile(entry, offset, fmt)
        self.align = align
        if self.flexible is None:
            self.size = self.fixed_size = _align_up(offset, align)
            if self.size > offset:
                fmt.append(f"{self.size - offset}x")  # tail padding
        else:
            self.fixed_size = offset
            self.size = _align_up(offset + self.flexible.size, align)
        # What a containing structure embeds (a flexible structure cannot be embedded).
        self._body = "".join(fmt)
        self._struct = struct.Struct("<" + self._body)
        assert self._struct.size == self.fixed_size, (name, self._struct.size, self.fixed_size)
        names = {s[1] for s in self._steps if s[0] not in ("bits", "union")}
        names |= {m[0] for s in self._steps if s[0] == "bits" for m in s[2].members}
        names |= {m for s in self._steps if s[0] == "union" for m, _ in s[2].members}
        if self.flexible is not None:
            names.add(self.flexible.name)
        declared = {f.name for f in dataclasses.fields(cls)}
        if names != declared:
            raise TypeError(f"{name}: table {sorted(names)} != {cls.__name__} {sorted(declared)}")

    def _compile(self, entry: Any, offset: int, fmt: list[str]) -> int:
        """Add one table entry at ``offset``; return its size."""
        if isinstance(entry, Bits):
            u = entry.unit
            for member, bit, width in entry.members:
                self.fields.append(FieldInfo(member, offset, u.size, u.c_type, "bits",
                                             bit_offset=bit, bit_size=width))
            fmt.append(u.fmt)
            self._steps.append(("bits", None, entry))
            return u.size
        name, typ, *rest = entry
        if isinstance(typ, UnionLayout):
            if name is not None:
                raise TypeError(f"{self.name}: only anonymous unions are supported")
            self.fields.append(FieldInfo("(anonymous union)", offset, typ.size, typ.name, "union",
                                         layout=typ))
            fmt.append(f"{typ.size}s")
            self._steps.append(("union", None, typ))
            return typ.size
        if rest and rest[0] is FLEXIBLE:
            self.flexible = FieldInfo(name, offset, typ.size, f"{typ.c_type}[1]", "flexible",
                                      count=1, element_size=typ.size)
            self.fields.append(self.flexible)
            return 0
        if rest:
            (count,) = rest
            c_type = f"{typ.c_type if isinstance(typ, Scalar) else typ.name}[{count}]"
            self.fields.append(FieldInfo(name, offset, count * typ.size, c_type, "array",
                                         layout=None if isinstance(typ, Scalar) else typ,
                                         count=count, element_size=typ.size))
            fmt.append((typ.fmt if isinstance(typ, Scalar) else typ._body) * count)
            self._steps.append(("array", name, typ, count))
            total: int = count * typ.size
            return total
        if isinstance(typ, Scalar):
            self.fields.append(FieldInfo(name, offset, typ.size, typ.c_type, "scalar"))
            fmt.append(typ.fmt)
            self._steps.append(("scalar", name, typ))
        else:
            self.fields.append(FieldInfo(name, offset, typ.size, typ.name, "struct", layout=typ))
            fmt.append(typ._body)
            self._steps.append(("struct", name, typ))
        size: int = typ.size
        return size

    def __repr__(self) -> str:
        return f"<StructLayout {self.name} size={self.size} align={self.align}>"

    # --- decode ----------------------------------------------------------------------------------

    def decode(self, buf: Buffer, offset: int = 0) -> Any:
        """Decode the structure at ``offset``; :class:`CodecError` if the buffer is short."""
        view = _byte_view(buf)
        if offset < 0 or len(view) - offset < self.fixed_size:
            raise CodecError("", f"{self.name} needs {self.fixed_size} bytes at offset {offset}, "
                             f"buffer has {len(view)}", needed=max(offset, 0) + self.fixed_size)
        return self._take(iter(self._struct.unpack_from(view, offset)))

    def _take(self, items: Iterator[Any]) -> Any:
        values: dict[str, Any] = {}
        for step in self._steps:
            kind, name, typ = step[0], step[1], step[2]
            if kind == "scalar":
                values[name] = _from_raw(typ, next(items))
            elif kind == "struct":
                values[name] = typ._take(items)
            elif kind == "array":
                if isinstance(typ, Scalar):
                    values[name] = tuple(_from_raw(typ, next(items)) for _ in range(step[3]))
                else:
                    values[name] = tuple(typ._take(items) for _ in range(step[3]))
            elif kind == "bits":
                raw = next(items)
                for member, bit, width in typ.members:
                    values[member] = (raw >> bit) & ((1 << width) - 1)
            else:  # union
                values.update(typ._decode_members(next(items)))
        return self.cls(**values)

    # --- encode ----------------------------------------------------------------------------------

    def encode(self, value: Any) -> bytes:
        """The ``fixed_size`` bytes of ``value``."""
        out = bytearray(self.fixed_size)
        self.encode_into(out, 0, value)
        return bytes(out)

    def encode_into(self, buf: bytearray | memoryview, offset: int, value: Any) -> None:
        """Write ``value`` at ``offset`` of a preallocated buffer (``fixed_size`` bytes)."""
        if offset < 0 or len(buf) - offset < self.fixed_size:
            raise CodecError("", f"{self.name} needs {self.fixed_size} bytes at offset {offset}, "
                             f"buffer has {len(buf)}", needed=max(offset, 0) + self.fixed_size)
        items: list[Any] = []
        self._put(value, items, "")
        self._struct.pack_into(buf, offset, *items)

    def _put(self, value: Any, items: list[Any], path: str) -> None:
        if not isinstance(value, self.cls):
            raise CodecError(path, f"expected {self.cls.__name__}, got {type(value).__name__}")
        dot = f"{path}." if path else ""
        for step in self._steps:
            kind, name, typ = step[0], step[1], step[2]
            if kind == "scalar":
                items.append(typ.pack_value(getattr(value, name), dot + name))
            elif kind == "struct":
                typ._put(getattr(value, name), items, dot + name)
            elif kind == "array":
                elements = getattr(value, name)
                if not isinstance(elements, (tuple, list)) or len(elements) != step[3]:
                    raise CodecError(dot + name, f"needs a sequence of exactly {step[3]} entries")
                for i, element in enumerate(elements):
                    where = f"{dot}{name}[{i}]"
                    if isinstance(typ, Scalar):
                        items.append(typ.pack_value(element, where))
                    else:
                        typ._put(element, items, where)
            elif kind == "bits":
                raw = 0
                for member, bit, width in typ.members:
                    v = getattr(value, member)
                    if not isinstance(v, int) or not 0 <= v < (1 << width):
                        raise CodecError(dot + member, f"{v!r} does not fit {width} bit(s)")
                    raw |= v << bit
                items.append(raw)
            else:  # union
                items.append(typ._encode_members(value, path))


class UnionLayout:
    """A union of structure views over the same bytes (size = largest member, rounded up).

    Decoding yields every view. Encoding writes the largest view that is not ``None`` into zeroed
    bytes and requires every other non-``None`` view to read back equal - so a decoded value
    re-encodes exactly, and contradicting views are refused rather than silently dropped.
    """

    def __init__(self, name: str, members: Sequence[tuple[str, StructLayout]]) -> None:
        self.name = name
        self.members = list(members)
        self.align = max(layout.align for _, layout in self.members)
        self.size = _align_up(max(layout.size for _, layout in self.members), self.align)
        self.fields = [FieldInfo(n, 0, layout.size, layout.name, "struct", layout=layout)
                       for n, layout in self.members]

    def __repr__(self) -> str:
        return f"<UnionLayout {self.name} size={self.size} align={self.align}>"

    def _decode_members(self, raw: bytes) -> dict[str, Any]:
        return {name: layout.decode(raw) for name, layout in self.members}

    def _encode_members(self, owner: Any, path: str) -> bytes:
        dot = f"{path}." if path else ""
        given = [(n, lay, getattr(owner, n)) for n, lay in self.members if getattr(owner, n) is not None]
        out = bytearray(self.size)
        if not given:
            return bytes(out)
        widest = max(given, key=lambda g: g[1].size)  # max() keeps the first of equal sizes
        items: list[Any] = []
        widest[1]._put(widest[2], items, dot + widest[0])
        widest[1]._struct.pack_into(out, 0, *items)
        for name, layout, view in given:
            if name != widest[0] and layout.decode(out) != view:
                raise CodecError(dot + name, f"union view disagrees with {widest[0]}; "
                                 f"set the views you do not mean to write to None")
        return bytes(out)


def _from_raw(typ: Scalar, raw: Any) -> Any:
    return raw if typ.to_py is None else typ.to_py(raw)


def _byte_view(buf: Buffer) -> memoryview:
    view = memoryview(buf)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view

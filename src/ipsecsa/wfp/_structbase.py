"""What every WFP/IPsec structure dataclass shares: a key-safe repr, counts and cloning.

The structure classes themselves are generated into :mod:`ipsecsa.wfp.types` from the layouts
JSON; this module holds the hand-written behaviour they inherit, so the generator only has to
emit field lists.

Why a custom repr. ``FWP_BYTE_BLOB`` carries SA keys (``authKey``, ``cipherKey``) and
``SEC_WINNT_AUTH_IDENTITY_W`` carries a password. A struct lists its secret fields in
``_secret_fields_``; :meth:`WfpStruct.__repr__` shows only the size of those. Every struct uses
the same repr and formats nested structs with *their* repr, so an ``IPSEC_SA_CONTEXT1`` printed in
a log line or an exception message shows ``authKey=FWP_BYTE_BLOB(size=20, data=<20 bytes>)`` and
never the key itself.

Why count helpers. In C a pointer-to-array travels with a count (``numFilterConditions`` and
``filterCondition``, ``numSAs`` and ``saList``, ``size`` and ``data``). Here the array is a Python
list (or ``bytes``/``str``) that knows its own length, so the contract is: a count left at 0 is
taken from the list, any other count must agree with it. :func:`effective_count` applies that rule
for one pair, :func:`check_counts` for every pair of a structure and everything nested in it; both
name the structure and field in :class:`CountMismatchError` so the engine can map it to a status.
"""

from __future__ import annotations

import copy
import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any, ClassVar, TypeVar

__all__ = [
    "GUID_NULL",
    "SID_AND_ATTRIBUTES",
    "CountMismatchError",
    "WfpStruct",
    "check_counts",
    "clone",
    "count_pairs",
    "effective_count",
]

#: The all-zero GUID (``GUID_NULL``/``IID_NULL`` in guiddef.h): the default of every GUID member
#: that is embedded in a structure (not a ``GUID *``). WFP reads it as "none / let BFE choose".
GUID_NULL = uuid.UUID(int=0)

_T = TypeVar("_T")


class CountMismatchError(ValueError):
    """A non-zero count field disagrees with the length of the list it counts.

    Carries the structure name, both field names and both numbers, so the caller can build a
    precise status (the engine returns a DWORD; it never lets this escape).
    """

    def __init__(self, struct: str, count_field: str, list_field: str, count: int,
                 actual: int) -> None:
        self.struct = struct
        self.count_field = count_field
        self.list_field = list_field
        self.count = count
        self.actual = actual
        super().__init__(
            f"{struct}.{count_field} = {count} but {struct}.{list_field} holds {actual}"
        )


class WfpStruct:
    """Base of every generated structure dataclass (not itself a dataclass).

    Subclasses are ``@dataclass(repr=False)``: mutable, compared field by field, deep-copyable.
    """

    #: (count field, list field) pairs, in declaration order of the list field.
    _count_pairs_: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: Fields whose value must never be shown (keys, passwords).
    _secret_fields_: ClassVar[frozenset[str]] = frozenset()

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name in self._secret_fields_:
                parts.append(f"{f.name}={_redacted(value)}")
            else:
                parts.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    __str__ = __repr__

    def __deepcopy__(self, memo: dict[int, object] | None) -> WfpStruct:
        """Field-by-field deep copy, several times faster than the generic ``copy.deepcopy``.

        The engine copies every structure it is handed and every one it hands back, so this is
        on the control path of each call. Immutable values (ints, IntEnums, str, bytes, UUIDs,
        None, frozen structures) are shared; lists and mutable structures are copied. Unlike
        ``copy.deepcopy``, one sub-structure referenced from two places becomes two copies
        (structures here are trees, as C's are when passed to BFE).
        """
        cls = type(self)
        if cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            return self
        return _copied(self)


_IMMUTABLE = (int, float, str, bytes, uuid.UUID, type(None))
#: The common field value types, tested by exact type first because that is the cheapest test.
_EXACT_IMMUTABLE = frozenset({int, float, str, bytes, uuid.UUID, type(None), bool})


def _clone_value(value: object) -> object:
    if isinstance(value, WfpStruct):
        return value.__deepcopy__(None)
    if isinstance(value, list):
        return [_clone_value(item) for item in value]
    if isinstance(value, _IMMUTABLE):  # includes IntEnum members and bool
        return value
    return copy.deepcopy(value)


def _redacted(value: object) -> str:
    if value is None:
        return "None"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, str):
        return "<redacted>"
    return f"<redacted {type(value).__name__}>"


def _length(value: object) -> int:
    """Length of a counted value as C counts it: list items, bytes, UTF-16 code units."""
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.encode("utf-16-le")) // 2
    if isinstance(value, (list, tuple, bytes, bytearray, memoryview)):
        return len(value)
    raise TypeError(f"not a counted value: {type(value).__name__}")


def count_pairs(obj: WfpStruct | type[WfpStruct]) -> tuple[tuple[str, str], ...]:
    """The (count field, list field) pairs of a structure (class or instance)."""
    return obj._count_pairs_


def effective_count(obj: WfpStruct, list_field: str) -> int:
    """The number of elements the structure really carries in ``list_field``.

    A count field of 0 means "take the length of the list" (so callers may leave it unset); any
    other value must equal the length, else :class:`CountMismatchError`. A NULL list (None) with
    a non-zero count is a mismatch too: the engine reports that as FWP_E_NULL_POINTER itself when
    it wants to, by checking ``getattr(obj, list_field) is None`` first.
    """
    for count_field, lf in obj._count_pairs_:
        if lf == list_field:
            count = getattr(obj, count_field)
            actual = _length(getattr(obj, list_field))
            if count not in (0, actual):
                raise CountMismatchError(type(obj).__name__, count_field, list_field, count,
                                         actual)
            return actual
    raise KeyError(f"{type(obj).__name__}.{list_field} is not a counted field")


def _children(value: object) -> Iterator[WfpStruct]:
    if isinstance(value, WfpStruct):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, WfpStruct):
                yield item


def check_counts(obj: WfpStruct) -> None:
    """Apply :func:`effective_count` to every counted pair in ``obj`` and all nested structs.

    Raises :class:`CountMismatchError` for the first disagreement found (depth first, fields in
    declaration order). Does not modify anything.
    """
    seen: set[int] = set()
    stack: list[WfpStruct] = [obj]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for _, list_field in current._count_pairs_:
            effective_count(current, list_field)
        nested: list[WfpStruct] = []
        for f in dataclasses.fields(current):  # type: ignore[arg-type]
            nested.extend(_children(getattr(current, f.name)))
        stack.extend(reversed(nested))


def _copied(obj: Any, field: str | None = None, value: object = None) -> Any:
    """The deep copy of a (mutable) structure; with ``field``, that field set to ``value``
    instead of a copy of it."""
    new = object.__new__(type(obj))
    state = obj.__dict__.copy()
    for k, v in state.items():
        if k == field:
            state[k] = value
        elif type(v) not in _EXACT_IMMUTABLE:
            state[k] = _clone_value(v)
    new.__dict__ = state
    return new


def clone_but(obj: _T, field: str, value: object) -> _T:
    """A deep copy of the structure ``obj`` with ``field`` set to ``value`` (not copied), for
    a copy whose one field is replaced anyway: copying it first would be wasted."""
    return _copied(obj, field, value)  # type: ignore[no-any-return]


def clone(obj: _T) -> _T:
    """A deep, independent copy of any structure (or list of structures).

    The engine stores what callers hand it and returns copies of what it holds, so neither side
    can change the other's data afterwards, as with the separate address spaces of RPC to BFE.
    Structures use the fast :meth:`WfpStruct.__deepcopy__`; anything else ``copy.deepcopy``.
    """
    return _clone_value(obj)  # type: ignore[return-value]


@dataclasses.dataclass(repr=False)
class SID_AND_ATTRIBUTES(WfpStruct):
    """winnt.h SID_AND_ATTRIBUTES, the element of FWP_TOKEN_INFORMATION.sids.

    Not in the layouts JSON (the JSON stops at the ``PSID_AND_ATTRIBUTES`` pointer). ``Sid`` is
    the binary SID (``bytes``) or None; ``Attributes`` the SE_GROUP_* bits.
    """

    Sid: bytes | None = None
    Attributes: int = 0


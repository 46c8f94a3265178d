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
import os
import types
import uuid
from collections.abc import Callable, Iterator
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
        fn = _STRUCT_COPIERS.get(cls)
        if fn is None:
            fn = _struct_copier(cls)
        return fn(self)  # type: ignore[no-any-return]


# ---------------------------------------------------------------- copies
#
# How a value is copied depends only on its type, so the decision is made once per type and
# kept: ``_SHARED`` holds the types whose values are shared (immutable), ``_COPIERS`` the copy
# function of every other type met so far. A mutable structure class gets a generated copier
# (:func:`_struct_copier`) with one unrolled test per field, as ``dataclasses`` generates
# ``__init__``: a loop over the fields that asked each value "are you a structure, a list,
# immutable?" was about a sixth of an SA context's whole life cycle (benchmarks/control.py).

#: Immutable types met so far: their values are shared. Starts with the common field types;
#: IntEnum classes, str/bytes/int subclasses and frozen structures join on first sight.
_SHARED: set[type] = {int, float, str, bytes, uuid.UUID, type(None), bool}
#: Per type, the function that copies a value of it (for every type not in ``_SHARED``).
_COPIERS: dict[type, Callable[[Any], Any]] = {}
#: Per structure class, its field-by-field copier (what ``WfpStruct.__deepcopy__`` runs, also
#: for a class that overrides ``__deepcopy__`` and calls ``super()``).
_STRUCT_COPIERS: dict[type, Callable[[Any], Any]] = {}
#: Per (structure class, field[, second field]), the copier that sets those fields instead of
#: copying them.
_BUT_COPIERS: dict[tuple[type, str, str | None], Callable[..., Any]] = {}
_IMMUTABLE = (int, float, str, bytes, uuid.UUID, type(None))


def _clone_value(value: object) -> object:
    """The copy of any value, by the rules of :meth:`WfpStruct.__deepcopy__`."""
    t = type(value)
    if t in _SHARED:
        return value
    fn = _COPIERS.get(t)
    if fn is None:
        fn = _copier_for(t)
        if fn is None:
            return value
    return fn(value)


def _copy_list(value: list[Any]) -> list[Any]:
    """A list (or list subclass) as a plain list of copies of its items."""
    out = []
    for item in value:
        t = type(item)
        if t in _SHARED:
            out.append(item)
        else:
            c = _COPIERS.get(t)
            out.append(_clone_value(item) if c is None else c(item))
    return out


def _call_deepcopy(value: Any) -> Any:
    return value.__deepcopy__(None)


def _copier_for(t: type) -> Callable[[Any], Any] | None:
    """Decide once how values of type ``t`` are copied: None (shared: ``t`` joins ``_SHARED``)
    or the copy function (kept in ``_COPIERS``). The order of the tests is the order of the
    rules: a structure first, then a list, then the immutable types, else ``copy.deepcopy``
    (a bytearray, a tuple, a dict a caller put in a field)."""
    fn: Callable[[Any], Any]
    if issubclass(t, WfpStruct):
        if t.__deepcopy__ is not WfpStruct.__deepcopy__:  # type: ignore[comparison-overlap]
            fn = _call_deepcopy  # the class's own rule
        else:
            fn = _STRUCT_COPIERS.get(t) or _struct_copier(t)
            if fn is _shared_struct:
                _SHARED.add(t)
                return None
    elif issubclass(t, list):
        fn = _copy_list
    elif issubclass(t, _IMMUTABLE):  # IntEnum members, bool, str/bytes/int subclasses
        _SHARED.add(t)
        return None
    else:
        fn = copy.deepcopy
    _COPIERS[t] = fn
    return fn


def _shared_struct(obj: Any) -> Any:
    """The "copy" of a frozen structure: the structure itself (a value, like an int)."""
    return obj


def _struct_copier(cls: type) -> Callable[[Any], Any]:
    """The field-by-field copier of structure class ``cls`` (made once, then looked up)."""
    params = cls.__dataclass_params__  # type: ignore[attr-defined]  # AttributeError as before
    if params.frozen:
        fn: Callable[[Any], Any] = _shared_struct
    else:
        fn = _generate(cls, None)
    _STRUCT_COPIERS[cls] = fn
    return fn


def _generate(cls: type, but: str | None, but2: str | None = None) -> Callable[..., Any]:
    """Source of a copier of ``cls``: a copy of the instance dict (order and all), then each
    field whose value is not of a shared type replaced by its copy, one unrolled test per field
    (with ``but``: that field set to the ``value`` argument instead; with ``but2`` as well, that
    one set to ``value2``). An instance whose dict is not exactly its fields (a field deleted, an
    attribute that is no field set) goes the general way (:func:`_copied`, :func:`_copied2`);
    when that shows only as a missing field, the copies made until then are dropped and made
    again."""
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    env: dict[str, Any] = {"_SHARED": _SHARED, "_COPIERS": _COPIERS, "_cv": _clone_value,
                           "_copied": _copied, "_copied2": _copied2,
                           "_new": object.__new__, "_cls": cls}
    if but is None:
        args, fallback = "obj", "_copied(obj)"
    elif but2 is None:
        args, fallback = "obj, value", f"_copied(obj, {but!r}, value)"
    else:
        args = "obj, value, value2"
        fallback = f"_copied2(obj, {but!r}, value, {but2!r}, value2)"
    lines = [f"def copy_struct({args}):",
             "    state = obj.__dict__.copy()",
             f"    if len(state) != {len(names)}:",
             f"        return {fallback}",
             "    try:"]
    for i, f in enumerate(fields):
        name = f.name
        if name == but or name == but2:
            arg = "value" if name == but else "value2"
            lines += [f"        state[{name!r}]", f"        state[{name!r}] = {arg}"]
            continue
        lines.append(f"        v = state[{name!r}]")
        # A member still holding its declared default (None, 0, zero bytes) is the commonest
        # case: one identity test skips the type test.
        if f.default is None:
            skip = "v is not None and "
        elif type(f.default) in _SHARED:
            env[f"_D{i}"] = f.default
            skip = f"v is not _D{i} and "
        else:
            skip = ""
        lines += [f"        if {skip}type(v) not in _SHARED:",
                  "            c = _COPIERS.get(type(v))",
                  f"            state[{name!r}] = _cv(v) if c is None else c(v)"]
    lines += ["    except KeyError:",
              f"        return {fallback}",
              "    new = _new(_cls)",
              "    new.__dict__ = state",
              "    return new"]
    exec("\n".join(lines), env)  # noqa: S102 - source built above from dataclass field names
    return env["copy_struct"]  # type: ignore[no-any-return]


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
    """The deep copy of a (mutable) structure, attribute by attribute whatever their names;
    with ``field``, that attribute set to ``value`` instead of a copy of it (when the structure
    has it). The general way, for an instance the generated copiers do not fit."""
    new = object.__new__(type(obj))
    state = obj.__dict__.copy()
    for k, v in state.items():
        if k == field:
            state[k] = value
        elif type(v) not in _SHARED:
            state[k] = _clone_value(v)
    new.__dict__ = state
    return new


def _copied2(obj: Any, field: str, value: object, field2: str, value2: object) -> Any:
    """:func:`_copied` with ``field`` set, and ``field2`` too if the structure has it."""
    new = _copied(obj, field, value)
    if field2 in new.__dict__:
        new.__dict__[field2] = value2
    return new


def clone_but(obj: _T, field: str, value: object, field2: str | None = None,
              value2: object = None) -> _T:
    """A deep copy of the structure ``obj`` with ``field`` set to ``value`` (not copied), for
    a copy whose one field is replaced anyway: copying it first would be wasted. With
    ``field2``, that field is set to ``value2`` too: the same as ``clone_but(obj, field,
    value)`` with that field then replaced in place (if the structure has it), without copying
    its old value."""
    cls = type(obj)
    fn = _BUT_COPIERS.get((cls, field, field2))
    if fn is None:
        fields = getattr(cls, "__dataclass_fields__", ())
        if field not in fields or (field2 is not None and (field2 not in fields
                                                           or field2 == field)):
            if field2 is None:
                return _copied(obj, field, value)  # type: ignore[no-any-return]
            return _copied2(obj, field, value, field2, value2)  # type: ignore[no-any-return]
        fn = _BUT_COPIERS[(cls, field, field2)] = _generate(cls, field, field2)
    if field2 is None:
        return fn(obj, value)  # type: ignore[no-any-return]
    return fn(obj, value, value2)  # type: ignore[no-any-return]


def clone(obj: _T) -> _T:
    """A deep, independent copy of any structure (or list of structures).

    The engine stores what callers hand it and returns copies of what it holds, so neither side
    can change the other's data afterwards, as with the separate address spaces of RPC to BFE.
    Structures use the fast :meth:`WfpStruct.__deepcopy__`; anything else ``copy.deepcopy``.
    (Where ``ipsecsa._structcopy`` is built, the name is bound to its C copier, which makes the
    same copies; this function stays the reference and the fallback.)
    """
    return _clone_value(obj)  # type: ignore[return-value]


# ---------------------------------------------------------------- the C copier
#
# ``ipsecsa._structcopy`` walks the same trees by the same rules (those of :func:`_copied`,
# which the generated copiers agree with) without a Python frame per structure, list and
# field: about a tenth of a durable SA-context life cycle was spent in the copiers above.

_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a class statement


def _native_kind(t: type) -> Any:
    """How ``ipsecsa._structcopy`` copies values of type ``t`` (asked once per type; the
    decision is also recorded in ``_SHARED``/``_COPIERS`` as :func:`_clone_value` would):
    0 shared; 1 a mutable structure the C copier copies itself; 2 an exact ``list``; else the
    Python copy function to call (a class's own ``__deepcopy__``, ``copy.deepcopy``, a list
    subclass's :func:`_copy_list`, a structure whose instances the C copier cannot treat as
    ``object.__new__`` plus a plain instance dict)."""
    if t in _SHARED:
        return 0
    fn = _COPIERS.get(t)
    if fn is None:
        fn = _copier_for(t)
        if fn is None:
            return 0
    if fn is _copy_list:
        return 2 if t is list else fn
    if fn is _STRUCT_COPIERS.get(t) and _plain_instances(t):
        return 1
    return fn


def _plain_instances(t: type) -> bool:
    """Whether ``object.__new__(t)`` then ``new.__dict__ = state`` (what the Python copiers do)
    is exactly what the C copier does: every class but ``object`` made by a class statement (no
    built-in base with its own ``__new__``), the standard ``__dict__`` descriptor, and neither
    ``__setattr__`` nor ``__getattribute__`` of the class's own."""
    descriptor = next((vars(c)["__dict__"] for c in t.__mro__ if "__dict__" in vars(c)), None)
    return (t.__mro__[-1] is object
            and all(c.__flags__ & _HEAPTYPE for c in t.__mro__[:-1])
            and isinstance(descriptor, types.GetSetDescriptorType)
            and t.__setattr__ is object.__setattr__  # type: ignore[comparison-overlap]
            and t.__getattribute__ is object.__getattribute__)  # type: ignore[comparison-overlap]


def _load_native() -> _structcopy.Copier | None:
    """The C copier, when it is built and the pure Python path was not asked for
    (``IPSECSA_PURE_PYTHON=1``, as for the other extensions)."""
    if os.environ.get("IPSECSA_PURE_PYTHON") == "1":
        return None
    if _structcopy is None:
        return None
    return _structcopy.Copier(_native_kind, _clone_value, clone_but)


try:
    from ipsecsa import _structcopy
except ImportError:  # the extension is optional (no compiler): the Python copiers copy
    _structcopy = None  # type: ignore[assignment]

#: The Python copiers (the reference), whatever ``clone``/``clone_but`` are bound to.
clone_py = clone
clone_but_py = clone_but
#: The C copier in use, or None.
_native = _load_native()
if _native is not None:
    clone = _native.clone  # type: ignore[assignment]  # the same copies, made in C
    clone_but = _native.clone_but  # type: ignore[assignment]


def native() -> bool:
    """Whether ``clone``/``clone_but`` are the C copier."""
    return _native is not None


@dataclasses.dataclass(repr=False)
class SID_AND_ATTRIBUTES(WfpStruct):
    """winnt.h SID_AND_ATTRIBUTES, the element of FWP_TOKEN_INFORMATION.sids.

    Not in the layouts JSON (the JSON stops at the ``PSID_AND_ATTRIBUTES`` pointer). ``Sid`` is
    the binary SID (``bytes``) or None; ``Attributes`` the SE_GROUP_* bits.
    """

    Sid: bytes | None = None
    Attributes: int = 0


"""WFP structures ↔ JSON, for the durable store.

A structure is written as ``{"$": "FWPM_FILTER0", field: value, ...}``; a GUID as
``{"$g": "..."}``, bytes as ``{"$b": "hex"}``; enums as their integer values. Decoding rebuilds
the same dataclasses (``decode(encode(x)) == x``). Only names that :mod:`ipsecsa.wfp.types`
defines are ever instantiated, so a tampered store cannot make the loader build anything else.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import json
import os
import types
import uuid
from collections.abc import Callable
from typing import Any

try:  # optional speed-up, a runtime dependency in pyproject (see compact())
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised by the fallback test
    _orjson = None  # type: ignore[assignment]

@functools.cache
def _classes() -> dict[str, type]:
    """The structures a stored row may name, by name: every WFP structure class. Looked up
    at the first decode, not at import: ``ipsecsa.wfp`` imports this module (through the
    engine), so importing ``ipsecsa.wfp`` from here at import time would make importing this
    module first a circular import."""
    from ipsecsa.wfp import types as T
    from ipsecsa.wfp._structbase import WfpStruct

    found: dict[str, type] = {
        name: obj for name, obj in vars(T).items()
        if isinstance(obj, type) and dataclasses.is_dataclass(obj) and issubclass(obj, WfpStruct)}
    # Frozen transform-id types are dataclasses too, maybe not WfpStruct subclasses.
    found.update({name: obj for name, obj in vars(T).items()
                  if isinstance(obj, type) and dataclasses.is_dataclass(obj)
                  and name.startswith("IPSEC_") and name.endswith("_ID0")})
    return found


class CodecError(ValueError):
    """A stored value that does not decode to a known structure."""


def to_jsonable(value: Any) -> Any:
    cls = type(value)
    if cls is int or cls is str or cls is bool or cls is float or value is None:
        return value
    enc = _ENCODERS.get(cls)
    if enc is None:
        enc = _ENCODERS[cls] = _encoder_for(value)
    return enc(value)


def _encoder_for(value: Any) -> Callable[[Any], Any]:
    """How to write values of ``type(value)`` (found once per type, then looked up)."""
    cls = type(value)
    if hasattr(cls, "__dataclass_fields__"):
        return _struct_encoder(cls)
    if isinstance(value, uuid.UUID):
        return lambda v: {"$g": _guid_text(v)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return lambda v: {"$b": bytes(v).hex()}
    if isinstance(value, enum.Enum):
        return lambda v: v.value
    if isinstance(value, (list, tuple)):
        return lambda v: [to_jsonable(x) for x in v]
    if isinstance(value, (bool, int, float, str)):  # subclasses of the plain types
        return lambda v: v
    raise CodecError(f"cannot store a {cls.__name__}")


#: The text of a GUID: the same few layer, callout and condition GUIDs are in every filter,
#: and UUID.__str__ formats in Python each time.
_guid_text = functools.lru_cache(maxsize=1024)(str)

#: Per structure class, the function that writes one (built on first use).
_ENCODERS: dict[type, Callable[[Any], dict[str, Any]]] = {}
_NO_DEFAULT = object()


def _struct_encoder(cls: type) -> Callable[[Any], dict[str, Any]]:
    """The writer of one structure class: fields still at their declared default are left out
    (a generated structure is mostly unused union members and zero counts; decoding fills the
    defaults back in, so ``decode(encode(x)) == x`` holds), the rest as they are.

    The writer is generated source with one test per field, unrolled (as ``dataclasses``
    makes ``__init__``): a durable engine encodes every structure it is handed, and a loop
    over the fields with a lookup of each default costed twice as much."""
    fields = dataclasses.fields(cls)
    env: dict[str, Any] = {"to_jsonable": to_jsonable}
    lines = ["def encode_struct(value):", f"    out = {{'$': {cls.__name__!r}}}"]
    get = "getattr(value, {0!r}, _D{1})" if "__slots__" in vars(cls) else "d.get({0!r}, _D{1})"
    if "__slots__" not in vars(cls):
        lines.append("    d = value.__dict__")
    for i, f in enumerate(fields):
        default = f.default if f.default is not dataclasses.MISSING else _NO_DEFAULT
        env[f"_D{i}"] = default
        env[f"_T{i}"] = type(default)
        lines += [f"    v = {get.format(f.name, i)}",
                  f"    if v is not _D{i}:",
                  "        t = type(v)",
                  "        if t is int or t is str or t is bool or t is float:",
                  f"            if t is not _T{i} or v != _D{i}:",
                  f"                out[{f.name!r}] = v",
                  "        else:",
                  f"            out[{f.name!r}] = to_jsonable(v)"]
    lines.append("    return out")
    exec("\n".join(lines), env)  # noqa: S102 - source built above from dataclass field names
    return env["encode_struct"]  # type: ignore[no-any-return]


def from_jsonable(value: Any) -> Any:
    """The value :func:`to_jsonable` made (from already-parsed JSON)."""
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    if isinstance(value, dict):
        return _object({k: from_jsonable(v) for k, v in value.items()})
    return value


def _object(d: dict[str, Any]) -> Any:
    """One JSON object, its members already decoded: a structure, a GUID, bytes, or a plain
    dict. Used as ``json.loads``'s object hook, so the C parser drives the walk."""
    name = d.get("$")
    if name is None:
        if "$g" in d:
            return uuid.UUID(d["$g"])
        if "$b" in d:
            return bytes.fromhex(d["$b"])
        return d
    made = _DECODERS.get(name) if isinstance(name, str) else None
    if made is None:
        if not isinstance(name, str) or name not in _classes():
            raise CodecError(f"unknown structure {name!r} in the store")
        made = _DECODERS[name] = _struct_decoder(_classes()[name])
    return made(d)


#: Per structure name, the function that rebuilds one (built on first use).
_DECODERS: dict[str, Callable[[dict[str, Any]], Any]] = {}


def _struct_decoder(cls: type) -> Callable[[dict[str, Any]], Any]:
    """Rebuild a ``cls`` from its members without calling its ``__init__`` (the generated
    structures do nothing there but assign): the declared defaults, then what was stored.
    Unknown members are refused, so a damaged row never makes a structure with extra state."""
    fixed: dict[str, Any] = {}
    factories: list[tuple[str, Callable[[], Any]]] = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            fixed[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            factories.append((f.name, f.default_factory))
        else:
            factories.append((f.name, _missing(cls.__name__, f.name)))
    names = frozenset(fixed) | {n for n, _ in factories}
    plain = "__slots__" not in vars(cls) and not hasattr(cls, "__post_init__")
    name = cls.__name__

    def decode_struct(d: dict[str, Any]) -> Any:
        del d["$"]
        if not d.keys() <= names:
            raise CodecError(f"{name}: unknown fields {sorted(set(d) - names)}")
        if not plain:
            return cls(**d)
        obj: Any = object.__new__(cls)
        state = obj.__dict__
        state.update(fixed)
        for field, factory in factories:
            if field not in d:
                state[field] = factory()
        state.update(d)
        return obj

    return decode_struct


def _missing(struct: str, field: str) -> Callable[[], Any]:
    def fail() -> Any:
        raise CodecError(f"{struct}: no value for {field}")
    return fail


def loads(text: str | bytes) -> Any:
    """Parse stored JSON, rebuilding structures, GUIDs and bytes wherever they occur."""
    return json.loads(text, object_hook=_object)


def encode(value: Any) -> str:
    """Canonical JSON (members sorted): equal structures give equal text, as keys need."""
    return json.dumps(to_jsonable(value), separators=(",", ":"), sort_keys=True)


#: One compact encoder for stored text, made once (``json.dumps`` with arguments builds a new
#: encoder per call, and sorting members costs as much again; a stored row needs neither).
_json_compact = json.JSONEncoder(separators=(",", ":")).encode


def compact(value: Any) -> str:
    """Compact JSON of plain values (dicts, lists, str, numbers, None): orjson's C writer
    where it is installed (what it writes is the same JSON; an integer beyond 64 bits, which
    it refuses, goes to the standard library), else the standard library's."""
    if _orjson is not None:
        try:
            return _orjson.dumps(value).decode()
        except TypeError:  # orjson.JSONEncodeError: e.g. an int wider than 64 bits
            pass
    return _json_compact(value)


def dumps(value: Any) -> str:
    """Compact JSON of ``value`` for storage (member order as the structure has it): written by
    ``ipsecsa._storejson`` where it is built (a durable engine writes every structure it is
    handed; the C writer is 5-7 times faster), else, or for what that hands back, by
    :func:`dumps_py`. The text is the same byte for byte (tests/store/test_codec_native.py)."""
    if _native is not None:
        text = _native.dumps(value)
        if text is not None:
            return text
    return dumps_py(value)


def dumps_py(value: Any) -> str:
    """The Python reference of :func:`dumps` (``to_jsonable``, then :func:`compact`)."""
    return compact(to_jsonable(value))


# ------------------------------------------------------------------ the C writer
def _native_kind(cls: type) -> tuple[Any, ...]:
    """How ``ipsecsa._storejson`` writes values of type ``cls`` (asked once per type): the
    decisions of :func:`_encoder_for`, in its order, for the types whose output the C writer
    reproduces exactly; ``(PYTHON,)`` hands any value holding another type to the Python path.
    A structure's head and member keys are written here, by orjson, so their escaping is its."""
    assert _storejson is not None and _orjson is not None
    k = _storejson
    if hasattr(cls, "__dataclass_fields__"):
        fields = tuple(
            (f.name, b"," + _orjson.dumps(f.name) + b":",
             f.default if f.default is not dataclasses.MISSING else _NO_DEFAULT)
            for f in dataclasses.fields(cls))
        head = b'{"$":' + _orjson.dumps(cls.__name__)
        return (k.STRUCT, head, _field_access(cls), fields)
    if cls is uuid.UUID:
        return (k.UUID,)
    if cls is bytes or cls is bytearray:
        return (k.BYTES,)
    if issubclass(cls, (uuid.UUID, bytes, bytearray, memoryview)):
        return (k.PYTHON,)
    if issubclass(cls, enum.Enum):
        # The C writer reads ``_value_``, which is what Enum.value returns, unless overridden.
        getattribute = cls.__getattribute__
        plain = (inspect.getattr_static(cls, "value", None) is enum.Enum.__dict__["value"]
                 and isinstance(getattribute, types.WrapperDescriptorType)
                 and getattribute.__objclass__ in (object, int, str))
        return (k.ENUM,) if plain else (k.PYTHON,)
    if cls is list or cls is tuple:
        return (k.LIST,)
    if issubclass(cls, (int, str)):
        return (k.PLAIN,)  # its value, as orjson writes a subclass of int or str
    return (k.PYTHON,)  # a float subclass, a list subclass, what cannot be stored: Python's


def _field_access(cls: type) -> int:
    """How the C writer reads a structure's fields as :func:`_struct_encoder` does: per field
    with getattr (``__slots__``), else from ``value.__dict__``, taken straight from the instance
    when neither ``__dict__`` nor ``__getattribute__`` is the class's own."""
    assert _storejson is not None
    if "__slots__" in vars(cls):
        return _storejson.BY_ATTR
    descriptor = next((vars(c)["__dict__"] for c in cls.__mro__ if "__dict__" in vars(c)), None)
    if (isinstance(descriptor, types.GetSetDescriptorType)
            and cls.__getattribute__ is object.__getattribute__):  # type: ignore[comparison-overlap]
        return _storejson.BY_DICT
    return _storejson.BY_DICT_ATTR


def _load_native() -> Any:
    """The C writer, when it is built, orjson is there (its text is orjson's) and the pure
    Python path was not asked for (``IPSECSA_PURE_PYTHON=1``, as for the other extensions)."""
    if _storejson is None or _orjson is None or os.environ.get("IPSECSA_PURE_PYTHON") == "1":
        return None
    return _storejson.Encoder(_native_kind, CodecError, _orjson.dumps)


try:
    from ipsecsa import _storejson
except ImportError:  # the extension is optional (no compiler): the Python path writes
    _storejson = None  # type: ignore[assignment]

#: The C writer in use, or None (everything through :func:`dumps_py`).
_native = _load_native()


def native() -> bool:
    """Whether stored structures are written by the C writer."""
    return _native is not None


def loads_u64(text: str | bytes) -> Any:
    """Plain JSON (no structures) whose integers all fit 64 bits, parsed by orjson where it is
    installed (4 times the standard library's speed: a reopen parses a row per context and per
    filter). orjson reads an integer wider than 64 bits as a float, silently: callers pass only
    texts that cannot hold one."""
    if _orjson is not None:
        return _orjson.loads(text)
    return json.loads(text)


def decode(text: str | bytes) -> Any:
    return loads(text)

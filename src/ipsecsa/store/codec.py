"""WFP structures ↔ JSON, for the durable store.

A structure is written as ``{"$": "FWPM_FILTER0", field: value, ...}``; a GUID as
``{"$g": "..."}``, bytes as ``{"$b": "hex"}``; enums as their integer values. Decoding rebuilds
the same dataclasses (``decode(encode(x)) == x``). Only names that :mod:`ipsecsa.wfp.types`
defines are ever instantiated, so a tampered store cannot make the loader build anything else.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import uuid
from typing import Any

from ipsecsa.wfp import types as T
from ipsecsa.wfp._structbase import WfpStruct

_CLASSES: dict[str, type] = {
    name: obj for name, obj in vars(T).items()
    if isinstance(obj, type) and dataclasses.is_dataclass(obj) and issubclass(obj, WfpStruct)
}
# Frozen transform-id types are dataclasses too, maybe not WfpStruct subclasses.
_CLASSES.update({name: obj for name, obj in vars(T).items()
                 if isinstance(obj, type) and dataclasses.is_dataclass(obj)
                 and name.startswith("IPSEC_") and name.endswith("_ID0")})


#: Field names per class, in declaration order (dataclasses.fields is slow to call per value).
_NAMES: dict[type, tuple[str, ...]] = {}


def _names(cls: type) -> tuple[str, ...]:
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


class CodecError(ValueError):
    """A stored value that does not decode to a known structure."""


def to_jsonable(value: Any) -> Any:
    cls = type(value)
    if cls in _NAMES or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
        out: dict[str, Any] = {"$": cls.__name__}
        for name in _names(cls):
            out[name] = to_jsonable(getattr(value, name))
        return out
    if isinstance(value, uuid.UUID):
        return {"$g": str(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$b": bytes(value).hex()}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CodecError(f"cannot store a {type(value).__name__}")


def from_jsonable(value: Any) -> Any:
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    if isinstance(value, dict):
        if "$g" in value:
            return uuid.UUID(value["$g"])
        if "$b" in value:
            return bytes.fromhex(value["$b"])
        name = value.get("$")
        cls = _CLASSES.get(name) if isinstance(name, str) else None
        if cls is None:
            raise CodecError(f"unknown structure {name!r} in the store")
        names = _names(cls)
        kwargs = {k: from_jsonable(v) for k, v in value.items() if k != "$"}
        if not kwargs.keys() <= set(names):
            raise CodecError(f"{name}: unknown fields {sorted(set(kwargs) - set(names))}")
        return cls(**kwargs)
    return value


def encode(value: Any) -> str:
    return json.dumps(to_jsonable(value), separators=(",", ":"), sort_keys=True)


def decode(text: str | bytes) -> Any:
    return from_jsonable(json.loads(text))

"""``clone`` / ``WfpStruct.__deepcopy__`` / ``clone_but``: the private copies the RPC boundary
implies (every structure a caller hands in or gets back is the receiver's own).

Three oracles nobody tuned for speed:

* the standard library's ``copy.deepcopy`` with the structures' ``__deepcopy__`` switched off
  (its generic reduce/reconstruct path), on random trees of every structure class in
  :mod:`ipsecsa.wfp.types`: the copy must be equal to it and share exactly the immutable parts;
* the previous copy algorithm, kept here verbatim as :func:`_reference_clone` (a loop over the
  instance dict asking each value what it is), on the odd inputs a caller can make: unknown
  and deleted attributes, bytearrays, tuples, dicts, list and structure subclasses, a class
  with its own ``__deepcopy__``, one sub-structure referenced twice. The generated copiers
  must give the same result there, down to which objects are shared and the attribute order;
* mutation: changing anything mutable in a copy never changes the original, nor the reverse.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import random
import types
import typing
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from ipsecsa.wfp import _structbase as SB
from ipsecsa.wfp import constants as C
from ipsecsa.wfp import types as T
from ipsecsa.wfp._structbase import WfpStruct, clone, clone_but

CLASSES: list[type[WfpStruct]] = sorted(
    (o for o in vars(T).values()
     if isinstance(o, type) and issubclass(o, WfpStruct) and o is not WfpStruct),
    key=lambda c: c.__name__)
HINTS = {cls: typing.get_type_hints(cls) for cls in CLASSES}


# ------------------------------------------------------------------ the previous algorithm
_IMMUTABLE = (int, float, str, bytes, uuid.UUID, type(None))
_EXACT_IMMUTABLE = frozenset({int, float, str, bytes, uuid.UUID, type(None), bool})


def _reference_clone(value: object) -> object:
    """The copy rules as the code before the generated copiers applied them."""
    if isinstance(value, WfpStruct):
        if type(value).__deepcopy__ is not WfpStruct.__deepcopy__:  # type: ignore[comparison-overlap]
            return value.__deepcopy__(None)
        if type(value).__dataclass_params__.frozen:  # type: ignore[attr-defined]
            return value
        return _reference_copied(value)
    if isinstance(value, list):
        return [_reference_clone(item) for item in value]
    if isinstance(value, _IMMUTABLE):
        return value
    return copy.deepcopy(value)


def _reference_copied(obj: Any, field: str | None = None, value: object = None) -> Any:
    new = object.__new__(type(obj))
    state = obj.__dict__.copy()
    for k, v in state.items():
        if k == field:
            state[k] = value
        elif type(v) not in _EXACT_IMMUTABLE:
            state[k] = _reference_clone(v)
    new.__dict__ = state
    return new


def _stdlib_deepcopy(value: object) -> object:
    """``copy.deepcopy`` by its generic path: the structures' own ``__deepcopy__`` hidden."""
    saved = WfpStruct.__deepcopy__
    try:
        WfpStruct.__deepcopy__ = None  # type: ignore[assignment,method-assign]
        return copy.deepcopy(value)
    finally:
        WfpStruct.__deepcopy__ = saved  # type: ignore[method-assign]


# ------------------------------------------------------------------ random structures
def _random_int(rng: random.Random) -> int:
    return rng.choice([0, 1, rng.getrandbits(8), rng.getrandbits(32), rng.getrandbits(64),
                       C.FWP_UINT32, C.FWP_MATCH_EQUAL, C.IPSEC_TRANSFORM_ESP_AUTH])


def _random_value(tp: Any, rng: random.Random, depth: int) -> Any:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = typing.get_args(tp)
        if type(None) in args and rng.random() < 0.3:
            return None
        tp = next(a for a in args if a is not type(None))
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        return [_random_value(item, rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if tp is int:
        return _random_int(rng)
    if tp is float:
        return rng.random()
    if tp is bytes:
        return rng.randbytes(rng.choice([0, 6, 16, 20]))
    if tp is str:
        return "".join(rng.choice("abcé\U0001F600") for _ in range(rng.randint(0, 5)))
    if tp is uuid.UUID:
        return uuid.UUID(int=rng.getrandbits(128))
    if isinstance(tp, type) and issubclass(tp, WfpStruct):
        return _random_struct(tp, rng, depth + 1)
    raise AssertionError(f"no generator for {tp!r}")


def _random_struct(cls: type[WfpStruct], rng: random.Random, depth: int = 0) -> Any:
    if depth > 4:
        return cls()
    hints = HINTS.get(cls) or typing.get_type_hints(cls)
    return cls(**{f.name: _random_value(hints[f.name], rng, depth)
                  for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                  if rng.random() < 0.7})


def _nodes(a: object, b: object, path: str = "") -> Iterator[tuple[str, object, object]]:
    """Walk two parallel trees (an original and its copy), yielding (path, a, b) per node."""
    yield path, a, b
    if isinstance(a, WfpStruct):
        assert type(b) is type(a), path
        assert list(vars(a)) == list(vars(b)), path  # same attributes, same order
        for name in vars(a):
            yield from _nodes(vars(a)[name], vars(b)[name], f"{path}.{name}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from _nodes(x, y, f"{path}[{i}]")


def _is_frozen(value: object) -> bool:
    return isinstance(value, WfpStruct) and value.__dataclass_params__.frozen  # type: ignore[attr-defined]


def _assert_copy_of(original: object, copied: object) -> None:
    """Equal, and sharing exactly the immutable values (frozen structures are values)."""
    assert copied == original
    for path, a, b in _nodes(original, copied):
        if isinstance(a, (int, float, str, bytes, uuid.UUID, type(None))) or _is_frozen(a):
            assert a is b, f"{path}: an immutable value must be shared"
        else:
            assert a is not b, f"{path}: a mutable value must be copied"


SEEDS = range(12)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_clone_agrees_with_the_standard_librarys_deepcopy(cls: type[WfpStruct]) -> None:
    for seed in SEEDS:
        rng = random.Random(f"{cls.__name__}/{seed}")
        obj = _random_struct(cls, rng)
        reference = _stdlib_deepcopy(obj)
        copied = clone(obj)
        assert copied == reference == obj
        assert repr(copied) == repr(obj)
        _assert_copy_of(obj, copied)
        assert copy.deepcopy(obj) == obj  # the stdlib entry point reaches the same copier
        _assert_copy_of(obj, copy.deepcopy(obj))
        # The previous algorithm: the same result, the same sharing.
        _assert_same_copy(obj, copied, _reference_clone(obj))


def _mutate_everything(root: object) -> int:
    """Change every mutable node of ``root`` in place; the number of changes."""
    changes = 0
    for _, node, _ in list(_nodes(root, root)):
        if isinstance(node, WfpStruct) and not _is_frozen(node):
            node.__dict__["_touched"] = True
            changes += 1
            for name, value in list(vars(node).items()):
                if type(value) is int:
                    setattr(node, name, value ^ 1)
                    changes += 1
                    break
        elif isinstance(node, list):
            node.append(None)
            changes += 1
    return changes


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_a_copy_and_its_original_never_change_each_other(cls: type[WfpStruct]) -> None:
    for seed in range(4):
        obj = _random_struct(cls, random.Random(f"mutate/{cls.__name__}/{seed}"))
        if _is_frozen(obj):
            continue
        snapshot = _stdlib_deepcopy(obj)
        copied = clone(obj)
        assert _mutate_everything(copied) > 0
        assert obj == snapshot and "_touched" not in vars(obj)
        again = clone(obj)
        _mutate_everything(obj)
        assert again == snapshot


# ------------------------------------------------------------------ odd inputs
def _assert_same_copy(original: object, got: object, want: object) -> None:
    """``got`` and ``want`` (two copies of ``original``) alike: equal, same types and attribute
    order at every node, and each node shared with the original in one exactly when in the
    other."""
    assert type(got) is type(want)
    assert got == want
    mine = list(_nodes(original, got))
    theirs = list(_nodes(original, want))
    assert [(p, type(b), b is a) for p, a, b in mine] == [
        (p, type(b), b is a) for p, a, b in theirs]


class _Colour(enum.IntEnum):
    RED = 1


class _Tagged(list):  # type: ignore[type-arg]
    """A list subclass a caller might use: copied as a plain list (as before)."""


class _Name(str):
    """A str subclass: immutable, so shared."""


@dataclasses.dataclass(repr=False)
class _Extended(T.FWP_BYTE_BLOB):
    """A structure subclass with a field of its own."""

    note: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(repr=False)
class _OwnCopy(T.FWP_V4_ADDR_AND_MASK):
    """A structure with its own ``__deepcopy__`` (counts its copies, then the usual rule)."""

    copies: typing.ClassVar[int] = 0

    def __deepcopy__(self, memo: dict[int, object] | None) -> WfpStruct:
        type(self).copies += 1
        return super().__deepcopy__(memo)


def _odd_inputs() -> list[tuple[str, Any]]:
    shared = T.FWP_BYTE_BLOB(data=b"\x01\x02")
    deleted = T.FWP_VALUE0(type=C.FWP_UINT8, uint8=4)
    del deleted.uint16
    extra = T.FWPM_DISPLAY_DATA0(name="x")
    extra.__dict__["scratch"] = [T.FWP_BYTE_BLOB(data=b"s")]
    swapped = T.FWP_V4_ADDR_AND_MASK(addr=1, mask=2)  # same count, another attribute
    del swapped.mask
    swapped.__dict__["other"] = bytearray(b"zz")
    return [
        ("bytearray key", T.FWP_BYTE_BLOB(data=bytearray(b"key"))),  # type: ignore[arg-type]
        ("tuple of structures", T.FWPM_FILTER0(
            filterCondition=(T.FWPM_FILTER_CONDITION0(),)),  # type: ignore[arg-type]
         ),
        ("dict value", T.FWPM_DISPLAY_DATA0(name={"a": [1]})),  # type: ignore[arg-type]
        ("list subclass", T.FWPM_FILTER0(filterCondition=_Tagged([T.FWPM_FILTER_CONDITION0()]))),
        ("IntEnum and str subclass", T.FWPM_DISPLAY_DATA0(name=_Name("n"),
                                                          description=_Colour.RED)),  # type: ignore[arg-type]
        ("bool and big int", T.FWP_VALUE0(type=True, uint64=1 << 70)),  # type: ignore[arg-type]
        ("structure subclass", T.FWP_VALUE0(byteBlob=_Extended(data=b"q", note=[1, 2]))),
        ("own __deepcopy__", T.FWP_CONDITION_VALUE0(v4AddrMask=_OwnCopy(addr=5))),
        ("shared sub-structure", T.FWP_VALUE0(byteBlob=shared, sd=shared)),
        ("deleted attribute", deleted),
        ("unknown attribute", extra),
        ("an attribute swapped for another", swapped),
        ("frozen inside a list", [C.IPSEC_AUTH_TRANSFORM_ID_HMAC_SHA_1_96, [T.FWP_BYTE_BLOB()]]),
        ("plain values", [None, 7, "s", b"b", uuid.UUID(int=5), 1.5]),
    ]


@pytest.mark.parametrize("name,value", _odd_inputs(), ids=[n for n, _ in _odd_inputs()])
def test_odd_inputs_copy_exactly_as_before(name: str, value: Any) -> None:
    got = clone(value)
    want = _reference_clone(value)
    _assert_same_copy(value, got, want)
    if isinstance(value, WfpStruct):
        assert copy.deepcopy(value) == want


def test_the_odd_cases_rules() -> None:
    blob = T.FWP_BYTE_BLOB(data=bytearray(b"key"))  # type: ignore[arg-type]
    copied = clone(blob)
    blob.data[0] = 0  # type: ignore[index]
    assert copied.data == bytearray(b"key")
    shared = T.FWP_BYTE_BLOB(data=b"\x01")
    value = clone(T.FWP_VALUE0(byteBlob=shared, sd=shared))
    assert value.byteBlob == value.sd and value.byteBlob is not value.sd  # a tree, as in C
    assert type(clone(_Tagged([1]))) is list
    ext = clone(_Extended(data=b"q", note=[1]))
    assert type(ext) is _Extended and ext.note == [1]
    before = _OwnCopy.copies
    clone(T.FWP_CONDITION_VALUE0(v4AddrMask=_OwnCopy()))
    assert _OwnCopy.copies == before + 1  # its own rule was asked
    tid = C.IPSEC_CIPHER_TRANSFORM_ID_GCM_AES_128
    assert clone(tid) is tid and copy.deepcopy(tid) is tid
    extra = T.FWPM_DISPLAY_DATA0(name="x")
    extra.__dict__["scratch"] = [1]
    copied_extra = clone(extra)
    assert copied_extra.__dict__["scratch"] == [1]
    assert copied_extra.__dict__["scratch"] is not extra.__dict__["scratch"]


def test_a_struct_that_is_no_dataclass_fails_as_before() -> None:
    class Bare(WfpStruct):
        pass

    with pytest.raises(AttributeError):
        clone(Bare())
    with pytest.raises(AttributeError):
        _reference_clone(Bare())


# ------------------------------------------------------------------ clone_but
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_clone_but_is_a_copy_with_one_field_replaced(cls: type[WfpStruct]) -> None:
    rng = random.Random(f"but/{cls.__name__}")
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        obj = _random_struct(cls, rng)
        marker = [object()]
        if _is_frozen(obj):  # no copy with a field changed, then as before
            with pytest.raises(dataclasses.FrozenInstanceError):
                _reference_copied(obj, f.name, marker)
            with pytest.raises(dataclasses.FrozenInstanceError):
                clone_but(obj, f.name, marker)
            continue
        got = clone_but(obj, f.name, marker)
        want = _reference_copied(obj, f.name, marker)
        assert getattr(got, f.name) is marker  # set, not copied
        assert list(vars(got)) == list(vars(want)) == list(vars(obj))
        for name, value in vars(obj).items():
            if name != f.name:
                _assert_same_copy(value, vars(got)[name], vars(want)[name])


def test_clone_but_of_an_absent_or_unknown_field_matches_before() -> None:
    value = T.FWP_VALUE0(type=C.FWP_UINT8, uint8=4)
    del value.uint8
    for field in ("uint8", "notAField"):
        got = clone_but(value, field, 9)
        want = _reference_copied(value, field, 9)
        assert got.__dict__ == want.__dict__
        assert list(got.__dict__) == list(want.__dict__)


def _reference_copied2(obj: Any, field: str, value: object, field2: str, value2: object) -> Any:
    """clone_but with a second field: the one-field copy, then that field replaced in place."""
    new = _reference_copied(obj, field, value)
    if field2 in new.__dict__:
        new.__dict__[field2] = value2
    return new


@pytest.mark.parametrize("cls", [c for c in CLASSES if len(dataclasses.fields(c)) >= 2
                                 and not c.__dataclass_params__.frozen],  # type: ignore[attr-defined]
                         ids=lambda c: c.__name__)
def test_clone_but_two_fields_is_the_one_field_copy_with_the_second_replaced(
        cls: type[WfpStruct]) -> None:
    rng = random.Random(f"but2/{cls.__name__}")
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for _ in range(8):
        first, second = rng.sample(names, 2)
        obj = _random_struct(cls, rng)
        if rng.random() < 0.25:  # the general way: a field deleted or an extra attribute
            victim = rng.choice([first, second, rng.choice(names)])
            if victim in vars(obj):
                delattr(obj, victim)
        if rng.random() < 0.15:
            obj.__dict__["extra"] = [1, 2]
        m1, m2 = [object()], [object()]
        got = clone_but(obj, first, m1, second, m2)
        want = _reference_copied2(obj, first, m1, second, m2)
        assert list(vars(got)) == list(vars(want))
        for name, value in vars(obj).items():
            if name in (first, second):
                assert vars(got)[name] is vars(want)[name]
            else:
                _assert_same_copy(value, vars(got)[name], vars(want)[name])


def test_stored_copy_is_the_copy_it_was() -> None:
    """filters.stored_copy against its previous formula (a one-field clone_but, then each
    output field assigned), on random filters, odd ones included (an output field deleted, so
    that it is set last)."""
    from ipsecsa.wfp.filters import SUBLAYER_UNIVERSAL, stored_copy

    rng = random.Random("stored_copy")
    for i in range(300):
        flt = _random_struct(T.FWPM_FILTER0, rng)
        for name in ("effectiveWeight", "filterId", "subLayerKey"):
            if rng.random() < 0.1 and name in vars(flt):
                delattr(flt, name)
        if rng.random() < 0.3:
            flt.subLayerKey = T.GUID_NULL
        conds = list(getattr(flt, "filterCondition", None) or [])
        key = uuid.UUID(int=rng.getrandbits(128))
        want = _reference_copied(flt, "filterCondition", _reference_clone(conds))
        want.filterId = i
        want.filterKey = key
        want.numFilterConditions = len(conds)
        if getattr(want, "subLayerKey", None) is None or want.subLayerKey == T.GUID_NULL:
            want.subLayerKey = SUBLAYER_UNIVERSAL
        want.effectiveWeight = T.FWP_VALUE0(type=C.FWP_UINT64, uint64=i * 7)
        got = stored_copy(flt, i, key, i * 7, conds)
        assert list(vars(got)) == list(vars(want))
        assert got == want
        mutable_in_flt = {id(a) for _, a, _ in _nodes(flt, flt)
                          if isinstance(a, (list, WfpStruct)) and not _is_frozen(a)}
        assert not any(id(b) in mutable_in_flt for _, b, _ in _nodes(got, got)
                       if isinstance(b, (list, WfpStruct)) and not _is_frozen(b))


def test_copy_decisions_are_cached_per_type() -> None:
    clone(T.FWPM_FILTER0(weight=T.FWP_VALUE0(type=C.FWP_UINT8, uint8=1)))
    assert C.FWP_DATA_TYPE in SB._SHARED  # an IntEnum: shared from then on
    assert T.FWP_VALUE0 in SB._COPIERS and T.FWP_VALUE0 not in SB._SHARED
    clone(T.IPSEC_AUTH_TRANSFORM0())
    assert T.IPSEC_AUTH_TRANSFORM_ID0 in SB._SHARED  # frozen: a value, shared

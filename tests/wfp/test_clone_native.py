"""The C copier (``ipsecsa._structcopy``) against its Python reference (``_structbase``'s
``clone_py``/``clone_but_py``, the generated per-class copiers) and, where they agree, the
standard library's ``copy.deepcopy`` by its generic path. No outside vectors: the rules are
ipsecsa's own, so the oracles are the reference copiers and the previous algorithm kept in
tests/wfp/test_clone.py (``_reference_clone``), on random trees of every structure class of
:mod:`ipsecsa.wfp.types` (that file's generator) made hostile node by node (bytearrays, tuples,
dicts, list/str/int subclasses, IntEnums, wide ints, structure subclasses, a class's own
``__deepcopy__``, a ``__setattr__`` of its own, one sub-structure in two places, deleted and
unknown attributes, a non-str attribute key, an instance dict that is a dict subclass). The
copies must be alike down to which objects are shared with the original and the attribute
order. Then what the C code must survive: cycles, deep nesting, exceptions and mutation from
Python code it calls, a malformed description; and that it holds no reference it did not take.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import os
import random
import subprocess
import sys
import typing
from typing import Any

import pytest

from ipsecsa.wfp import _structbase as SB
from ipsecsa.wfp import constants as C
from ipsecsa.wfp import types as T
from ipsecsa.wfp._structbase import WfpStruct
from wfp.helpers import assert_memory_flat, run_without_pure_python_flag
from wfp.test_clone import (
    CLASSES,
    _assert_copy_of,
    _assert_same_copy,
    _Colour,
    _Extended,
    _mutate_everything,
    _Name,
    _nodes,
    _odd_inputs,
    _OwnCopy,
    _random_struct,
    _reference_clone,
    _stdlib_deepcopy,
    _Tagged,
)

_structcopy: Any
try:
    from ipsecsa import _structcopy
except ImportError:  # pragma: no cover - the extension is optional
    _structcopy = None

needs_c = pytest.mark.skipif(_structcopy is None,
                             reason="ipsecsa._structcopy was not built (no compiler)")
SEEDS = range(int(os.environ.get("IPSECSA_CLONE_SEEDS", "8")))


def test_c_copier_is_built_where_required() -> None:
    """scripts/test.sh sets IPSECSA_REQUIRE_NATIVE=1 where it can build extensions: there a
    build that silently failed must not leave only the Python copiers tested."""
    if os.environ.get("IPSECSA_REQUIRE_NATIVE") != "1":
        pytest.skip("IPSECSA_REQUIRE_NATIVE is not 1 (set by scripts/test.sh when it can build)")
    assert _structcopy is not None, "ipsecsa._structcopy failed to build or import"
    if os.environ.get("IPSECSA_PURE_PYTHON") != "1":
        assert SB.native() and T.clone is SB.clone and SB.clone is not SB.clone_py


def _copier() -> Any:
    """A C copier of its own (whatever IPSECSA_PURE_PYTHON says for the package's)."""
    assert _structcopy is not None
    return _structcopy.Copier(SB._native_kind, SB._clone_value, SB.clone_but_py)


# ------------------------------------------------------------------ odd values
class _Guarded(T.FWP_BYTE_BLOB):
    """A structure with a ``__setattr__`` of its own: ``new.__dict__ = state`` runs it."""

    sets: typing.ClassVar[int] = 0

    def __setattr__(self, name: str, value: object) -> None:
        type(self).sets += 1
        object.__setattr__(self, name, value)


class _OddDict(dict):  # type: ignore[type-arg]
    """An instance dict that is a dict subclass (its ``copy`` is dict's: a plain dict)."""


def _odd_value(rng: random.Random, shared: Any) -> Any:
    return rng.choice([
        lambda: bytearray(b"key"),
        lambda: (1, [2], T.FWP_BYTE_BLOB(data=b"t")),
        lambda: {"a": [T.FWP_BYTE_BLOB(data=b"d")]},
        lambda: _Tagged([T.FWPM_FILTER_CONDITION0(), 3]),
        lambda: _Colour.RED,
        lambda: _Name("n"),
        lambda: 1 << 70,
        lambda: True,
        lambda: 2.5,
        lambda: _Extended(data=b"q", note=[1, 2]),
        lambda: _OwnCopy(addr=5),
        lambda: shared,
        lambda: C.IPSEC_AUTH_TRANSFORM_ID_HMAC_SHA_1_96,
        lambda: [[T.FWP_V4_ADDR_AND_MASK(addr=1)], [], None],
        lambda: _Guarded(data=b"g"),
        lambda: [shared, shared],
    ])()


def _spoil(root: Any, rng: random.Random, rate: float) -> Any:
    """Make ``root`` hostile in place, node by node, at about ``rate``."""
    shared = T.FWP_BYTE_BLOB(data=b"shared")
    for _, node, _ in list(_nodes(root, root)):
        if not isinstance(node, WfpStruct) or node.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            continue
        names = list(vars(node))
        for name in names:
            if rng.random() < rate:
                node.__dict__[name] = _odd_value(rng, shared)
        deletable = [n for n in names if hasattr(type(node), n)]  # == still reads a default
        if deletable and rng.random() < rate / 2:
            del node.__dict__[rng.choice(deletable)]
        if rng.random() < rate / 2:
            node.__dict__["extra"] = [T.FWP_BYTE_BLOB(data=b"x")]
        if rng.random() < rate / 4:
            node.__dict__[7] = [1]  # a key that is no str
        if rng.random() < rate / 4:
            node.__dict__ = _OddDict(node.__dict__)
    return root


def _outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except Exception as exc:  # noqa: BLE001 - the type is what is compared
        return "error", type(exc)


# ------------------------------------------------------------------ differential
@needs_c
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_c_and_python_make_the_same_copies(cls: type[WfpStruct]) -> None:
    native = _copier()
    for seed in SEEDS:
        rng = random.Random(f"native/{cls.__name__}/{seed}")
        obj = _random_struct(cls, rng)
        got = native.clone(obj)
        _assert_same_copy(obj, got, SB.clone_py(obj))
        _assert_same_copy(obj, got, _reference_clone(obj))
        assert got == _stdlib_deepcopy(obj)
        _assert_copy_of(obj, got)  # equal, sharing exactly the immutable values
        wrapped = [obj, [obj]]
        _assert_same_copy(wrapped, native.clone(wrapped), SB.clone_py(wrapped))
        for rate in (0.15, 0.4):
            odd = _spoil(_random_struct(cls, rng), rng, rate)
            want = _outcome(SB.clone_py, odd)
            got_odd = _outcome(native.clone, odd)
            assert got_odd[0] == want[0] == "ok"
            _assert_same_copy(odd, got_odd[1], want[1])
            _assert_same_copy(odd, got_odd[1], _reference_clone(odd))


@needs_c
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_c_and_python_clone_but_alike(cls: type[WfpStruct]) -> None:
    native = _copier()
    rng = random.Random(f"native-but/{cls.__name__}")
    names = [f.name for f in dataclasses.fields(cls)] + ["notAField", "extra"]  # type: ignore[arg-type]
    for i in range(12):
        obj = _random_struct(cls, rng)
        if i % 3 == 2:
            _spoil(obj, rng, 0.3)
        m1, m2 = [object()], [object()]
        first = rng.choice(names)
        calls: list[tuple[Any, ...]] = [(obj, first, m1)]
        calls.append((obj, first, m1, rng.choice(names), m2))
        calls.append((obj, first, m1, first, m2))  # the same field twice: value2 wins
        calls.append((obj, first, m1, None, m2))
        for args in calls:
            want = _outcome(SB.clone_but_py, *args)
            got = _outcome(native.clone_but, *args)
            assert got[0] == want[0], args[1:]
            if want[0] == "error":
                assert got[1] is want[1]
                continue
            assert list(vars(got[1])) == list(vars(want[1]))
            for name, value in vars(obj).items():
                if value is m1 or value is m2 or vars(want[1])[name] in (m1, m2):
                    assert vars(got[1])[name] is vars(want[1])[name]
                else:
                    _assert_same_copy(value, vars(got[1])[name], vars(want[1])[name])


@needs_c
def test_odd_inputs_and_arguments_as_python() -> None:
    native = _copier()
    for _, value in _odd_inputs():
        _assert_same_copy(value, native.clone(value), SB.clone_py(value))
    blob = T.FWP_BYTE_BLOB(data=b"k")
    frozen = C.IPSEC_CIPHER_TRANSFORM_ID_GCM_AES_128
    for args, kwargs in [((blob, "data", b"v"), {}), ((blob, "data", b"v"), {"field2": "size"}),
                         ((blob, b"data", 1), {}), ((blob, "data", 1, 5, 2), {}),
                         ((blob,), {}), ((frozen, "cipherType", 1), {}),
                         (([1], "x", 1), {}), ((_OwnCopy(addr=1), "addr", 9), {})]:
        want = _outcome(lambda a=args, k=kwargs: SB.clone_but_py(*a, **k))
        got = _outcome(lambda a=args, k=kwargs: native.clone_but(*a, **k))
        assert got[0] == want[0], (args, kwargs)
        if got[0] == "ok":
            assert vars(got[1]) == vars(want[1]) and type(got[1]) is type(want[1])
        else:
            assert got[1] is want[1]


@needs_c
def test_identity_and_independence() -> None:
    native = _copier()
    for cls in CLASSES:
        for seed in range(3):
            obj = _random_struct(cls, random.Random(f"indep/{cls.__name__}/{seed}"))
            if obj.__dataclass_params__.frozen:  # type: ignore[attr-defined]
                assert native.clone(obj) is obj  # a value, shared
                continue
            snapshot = _stdlib_deepcopy(obj)
            copied = native.clone(obj)
            assert copied is not obj and type(copied) is type(obj)
            assert _mutate_everything(copied) > 0
            assert obj == snapshot and "_touched" not in vars(obj)
            again = native.clone(obj)
            _mutate_everything(obj)
            assert again == snapshot


@needs_c
def test_no_init_and_no_setattr_runs_as_in_python() -> None:
    """A copy is ``object.__new__`` plus the instance dict, as the Python copier makes it; a
    class with a ``__setattr__`` of its own is left to the Python copier, which runs it."""
    native = _copier()

    @dataclasses.dataclass(repr=False)
    class Counted(T.FWP_BYTE_BLOB):
        inits: typing.ClassVar[int] = 0

        def __post_init__(self) -> None:
            type(self).inits += 1

    c = Counted(data=b"x")
    assert Counted.inits == 1
    assert native.clone(c) == c and Counted.inits == 1
    before = _Guarded.sets
    assert native.clone(_Guarded(data=b"g")) == SB.clone_py(_Guarded(data=b"g"))
    per_copy = (_Guarded.sets - before) // 2
    assert per_copy >= 1  # "new.__dict__ = state" ran its __setattr__, in both


@needs_c
def test_an_abstract_class_is_refused_as_object_new_refuses_it() -> None:
    """The copy is made without object.__new__'s checks only where they cannot fail: an
    instance of a class that became abstract afterwards is refused as in Python."""
    native = _copier()

    @dataclasses.dataclass(repr=False)
    class Later(T.FWP_BYTE_BLOB):
        pass

    obj = Later(data=b"a")
    Later.__abstractmethods__ = frozenset({"missing"})  # type: ignore[attr-defined]
    try:
        with pytest.raises(TypeError) as want:
            SB.clone_py(obj)
        with pytest.raises(TypeError) as got:
            native.clone(obj)
        assert str(got.value) == str(want.value)
        with pytest.raises(TypeError):
            native.clone_but(obj, "data", b"b")
    finally:
        Later.__abstractmethods__ = frozenset()  # type: ignore[attr-defined]
    assert native.clone(obj) == obj


# ------------------------------------------------------------------ hostile input
@needs_c
def test_reference_cycles_end_in_recursion_error_as_in_python() -> None:
    native = _copier()
    flt = T.FWPM_FILTER0()
    flt.displayData = flt  # type: ignore[assignment]
    loop: list[Any] = [T.FWP_BYTE_BLOB()]
    loop.append(loop)
    via = T.FWP_VALUE0(byteBlob=[loop])  # type: ignore[arg-type]
    for value in (flt, loop, via):
        with pytest.raises(RecursionError):
            SB.clone_py(value)
        with pytest.raises(RecursionError):
            native.clone(value)
    with pytest.raises(RecursionError):
        native.clone_but(flt, "weight", None)


@needs_c
def test_deep_nesting_is_copied_or_refused_as_in_python() -> None:
    native = _copier()
    nested: Any = T.FWP_BYTE_BLOB(data=b"leaf")
    for i in range(150):
        nested = [nested] if i % 2 else T.FWPM_DISPLAY_DATA0(name="n", description=nested)
    _assert_same_copy(nested, native.clone(nested), SB.clone_py(nested))
    deep: Any = []
    for _ in range(sys.getrecursionlimit() * 2):
        deep = [deep]
    with pytest.raises(RecursionError):
        SB.clone_py(deep)
    with pytest.raises(RecursionError):
        native.clone(deep)


class _Boom(Exception):
    pass


class _Raises:
    def __deepcopy__(self, memo: Any) -> Any:
        raise _Boom("from __deepcopy__")


@dataclasses.dataclass(repr=False)
class _RaisingCopy(T.FWP_BYTE_BLOB):
    def __deepcopy__(self, memo: dict[int, object] | None) -> WfpStruct:
        raise _Boom("own __deepcopy__")


class _NotADataclass(WfpStruct):
    pass


@needs_c
def test_exceptions_from_python_code_propagate() -> None:
    native = _copier()
    values = [
        T.FWP_VALUE0(byteBlob=[T.FWP_BYTE_BLOB(), _Raises()]),  # type: ignore[arg-type]
        T.FWPM_FILTER0(filterCondition=[T.FWPM_FILTER_CONDITION0(), _RaisingCopy()]),  # type: ignore[list-item]
        [1, _NotADataclass()],
    ]
    for value in values:
        want = _outcome(SB.clone_py, value)
        assert want[0] == "error"
        for _ in range(2):  # the second time, the decision is not half-cached
            assert _outcome(native.clone, value) == want
    assert _outcome(native.clone_but, values[0], "type", 1) == _outcome(
        SB.clone_but_py, values[0], "type", 1)


class _Shrinks:
    """While copied, empties the list it is in (the copy loop must read the list afresh)."""

    def __init__(self, host: list[Any], grow: bool) -> None:
        self.host = host
        self.grow = grow
        self.done = False

    def __deepcopy__(self, memo: Any) -> Any:
        if not self.done:
            self.done = True
            if self.grow:
                self.host.append(T.FWP_BYTE_BLOB(data=b"late"))
            else:
                del self.host[1:]
        return "copied"


@needs_c
def test_mutation_from_python_code_during_the_walk_is_survived() -> None:
    native = _copier()
    for grow in (False, True):
        results = []
        for fn in (SB.clone_py, native.clone):
            host: list[Any] = [None]
            host[0] = _Shrinks(host, grow)
            host += [T.FWP_BYTE_BLOB(data=bytes([i])) for i in range(5)]
            results.append((fn(host), host))
        (want, want_host), (got, got_host) = results
        assert got == want and len(got_host) == len(want_host)
        _assert_same_copy(got_host, got[:len(got_host)] if not grow else got,
                          want[:len(want_host)] if not grow else want)


@needs_c
def test_malformed_descriptions_are_errors() -> None:
    assert _structcopy is not None
    for answer, error in (("x", TypeError), (7, ValueError), (-1, ValueError),
                          (1 << 80, OverflowError)):
        bad = _structcopy.Copier(lambda t, a=answer: a, SB._clone_value, SB.clone_but_py)
        with pytest.raises(error):
            bad.clone(T.FWP_BYTE_BLOB())
    with pytest.raises(TypeError):
        _structcopy.Copier(1, 2, 3)
    with pytest.raises(RuntimeError):
        _structcopy.Copier.__new__(_structcopy.Copier).clone(T.FWP_BYTE_BLOB())


# ------------------------------------------------------------------ references and memory
def _ref_nodes(value: Any) -> list[Any]:
    out = [value]
    if isinstance(value, WfpStruct):
        for v in vars(value).values():
            out += _ref_nodes(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            out += _ref_nodes(v)
    return out


@needs_c
def test_no_reference_is_kept_or_lost() -> None:
    """Every object of the tree has the same reference count after many copies (copies,
    hand-backs and errors alike): nothing leaked, nothing released that was not taken."""
    native = _copier()
    rng = random.Random("refs")
    trees: list[Any] = []
    for cls in CLASSES:
        for rate in (0.0, 0.3):
            trees.append(_spoil(_random_struct(cls, rng), rng, rate))
    trees.append(T.FWP_VALUE0(byteBlob=[T.FWP_BYTE_BLOB(), _Raises()]))  # type: ignore[arg-type]
    loop: list[Any] = [T.FWP_BYTE_BLOB()]
    loop.append(loop)
    marker = [object()]

    def run() -> None:
        for tree in trees:
            _outcome(native.clone, tree)
            if isinstance(tree, WfpStruct):
                _outcome(native.clone_but, tree, "data", marker, "type", marker)
        _outcome(native.clone, loop)

    run()  # descriptions made once, before counting
    gc.collect()  # earlier tests' cyclic garbage, which holds shared values such as GUID_NULL
    # The tree's own objects (singletons and interned values are counted from everywhere).
    own = [n for t in trees for n in _ref_nodes(t) if sys.getrefcount(n) < 1000]
    assert len(own) > 1000
    counts = [sys.getrefcount(n) for n in own]
    loop_count, marker_count = sys.getrefcount(loop), sys.getrefcount(marker)
    for _ in range(30):
        run()
    gc.collect()
    assert [sys.getrefcount(n) for n in own] == counts
    assert sys.getrefcount(loop) == loop_count
    assert sys.getrefcount(marker) == marker_count


@needs_c
def test_memory_does_not_grow_over_repeated_runs() -> None:
    native = _copier()
    rng = random.Random("memory")
    trees = [_spoil(_random_struct(cls, rng), rng, 0.2) for cls in CLASSES]
    trees += [_random_struct(cls, rng) for cls in CLASSES]

    def run() -> None:
        for tree in trees:
            native.clone(tree)
            _outcome(native.clone_but, tree, "notAField", 1)  # frozen ones refuse, as in Python

    assert_memory_flat(run)


# ------------------------------------------------------------------ without the extension
_WITHOUT = """
import sys
sys.modules["ipsecsa._structcopy"] = None
from ipsecsa import wfp
from ipsecsa.wfp import _structbase as SB, types as T
assert not SB.native() and T.clone is SB.clone_py and SB.clone_but is SB.clone_but_py
flt = wfp.FWPM_FILTER0(filterCondition=[wfp.FWPM_FILTER_CONDITION0()])
c = T.clone(flt)
assert c == flt and c.filterCondition is not flt.filterCondition
bfe = wfp.Engine()
_, h = bfe.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, None, None)
st, fid = bfe.FwpmFilterAdd0(h, wfp.FWPM_FILTER0(
    layerKey=wfp.FWPM_LAYER_INBOUND_IPPACKET_V4, action=wfp.FWPM_ACTION0(type=wfp.FWP_ACTION_BLOCK),
    displayData=wfp.FWPM_DISPLAY_DATA0(name="kept")), None)
assert st == 0, st
st, f = bfe.FwpmFilterGetById0(h, fid)
assert st == 0 and f.displayData.name == "kept", (st, f)
bfe.close()
print("ok", SB.native())
"""


def test_the_package_works_without_the_extension() -> None:
    assert run_without_pure_python_flag(_WITHOUT) == "ok False"


def test_pure_python_env_turns_the_c_copier_off() -> None:
    """With IPSECSA_PURE_PYTHON=1 the package copies in Python. (tests/wfp/test_clone.py tests
    whichever copier the package uses; the differential tests above hold the C copier equal to
    the Python one, so both meet test_clone.py's oracles.)"""
    env = {**os.environ, "IPSECSA_PURE_PYTHON": "1"}
    code = ("from ipsecsa.wfp import _structbase as SB, types as T\n"
            "print(SB.native(), T.clone is SB.clone_py, T.clone([1]) == [1])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False True True"


def test_copy_deepcopy_still_reaches_the_python_copier() -> None:
    """``copy.deepcopy`` of a structure runs ``WfpStruct.__deepcopy__`` (the generated copier),
    whichever ``clone`` is bound: the same copy as ``clone``."""
    obj = _random_struct(T.IPSEC_SA_BUNDLE1, random.Random("deepcopy"))
    _assert_same_copy(obj, copy.deepcopy(obj), SB.clone(obj))

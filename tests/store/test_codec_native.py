"""The store's C JSON writer (``ipsecsa._storejson``) against its Python reference
(``codec.dumps_py``: ``to_jsonable`` then orjson). No outside vectors: the format is ipsecsa's
own, so the oracle is the reference path, on random trees of every structure class of
:mod:`ipsecsa.wfp.types` (the generator of tests/wfp/test_clone.py) made hostile leaf by leaf
(wide integers, enums and int/str subclasses, control characters and lone surrogates, bytes-like
objects, floats, tuples, foreign types). The two must give the same text byte for byte, or the
C writer hands the value back (None) and the reference writes it; both must refuse alike.
Then what the C code must survive: cycles, deep nesting, exceptions and mutation from attribute
reads, a malformed description; and that it holds no reference it did not take.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import random
import subprocess
import sys
import uuid
from typing import Any

import pytest
from wfp.helpers import assert_memory_flat, run_without_pure_python_flag
from wfp.test_clone import CLASSES, _random_struct

from ipsecsa.store import codec
from ipsecsa.store.codec import CodecError, decode
from ipsecsa.wfp import constants as C
from ipsecsa.wfp._structbase import WfpStruct

_storejson: Any
try:
    from ipsecsa import _storejson
except ImportError:  # pragma: no cover - the extension is optional
    _storejson = None

needs_c = pytest.mark.skipif(_storejson is None or codec._orjson is None,
                             reason="ipsecsa._storejson was not built (no compiler) or no orjson")


def test_c_writer_is_built_where_required() -> None:
    """scripts/test.sh sets IPSECSA_REQUIRE_NATIVE=1 where it can build extensions: there a
    build that silently failed must not leave only the Python writer tested."""
    if os.environ.get("IPSECSA_REQUIRE_NATIVE") != "1":
        pytest.skip("IPSECSA_REQUIRE_NATIVE is not 1 (set by scripts/test.sh when it can build)")
    assert _storejson is not None, "ipsecsa._storejson failed to build or import"
    if os.environ.get("IPSECSA_PURE_PYTHON") != "1":
        assert codec.native()


def _encoder() -> Any:
    """A C writer of its own (whatever IPSECSA_PURE_PYTHON says for the package's)."""
    assert _storejson is not None
    return _storejson.Encoder(codec._native_kind, CodecError, codec._orjson.dumps)


# ------------------------------------------------------------------ odd values
class Small(enum.IntEnum):
    A = 1
    HUGE = 2**70


class Named(enum.Enum):
    X = "x\n\"y\""
    F = 1.5


class Flagged(enum.IntFlag):
    R = 1
    W = 2


class MyInt(int):
    def __eq__(self, other: object) -> bool:  # never asked: only exact types are compared
        raise AssertionError("__eq__ called")

    __hash__ = int.__hash__


class MyStr(str):
    pass


class MyFloat(float):
    pass


class MyList(list):  # type: ignore[type-arg]
    pass


class MyUUID(uuid.UUID):
    pass


@dataclasses.dataclass
class Foreign:
    """A dataclass that is not a WFP structure: written by the same rules (as the reference)."""
    a: int = 1000
    b: str = "default text"
    c: Any = None
    d: list[Any] = dataclasses.field(default_factory=list)
    e: float = 2.5
    f: bool = False


@dataclasses.dataclass
class Slotted:
    __slots__ = ("p", "q")
    p: Any
    q: Any


_STRINGS = ["", "plain", "quote\" back\\ slash /", "".join(map(chr, range(0x20))) + "\x7f",
            "é ü 日本 \U0001F600 \u2028\u2029", "\ud800 lone", "\udfff", "\x00"]
_INTS = [0, -1, 2**63 - 1, -2**63, 2**63, 2**64 - 1, 2**64, -2**63 - 1, 2**200, -(2**100)]


def _odd(rng: random.Random) -> Any:
    """One hostile leaf."""
    pick = rng.randrange(22)
    if pick == 0:
        return rng.choice(_INTS)
    if pick == 1:
        return rng.choice(_STRINGS)
    if pick == 2:
        return rng.choice([Small.A, Small.HUGE, Named.X, Named.F, Flagged.R | Flagged.W,
                           C.FWP_UINT32, C.FWP_MATCH_EQUAL])
    if pick == 3:
        return MyInt(rng.choice(_INTS))
    if pick == 4:
        return MyStr(rng.choice(_STRINGS))
    if pick == 5:
        return MyFloat(1.5)
    if pick == 6:
        return rng.choice([0.0, -0.0, 1.5, 1e16, 1e-7, float("nan"), float("inf")])
    if pick == 7:
        return bytearray(rng.randbytes(rng.randrange(5)))
    if pick == 8:
        return memoryview(rng.randbytes(4))
    if pick == 9:
        return (rng.getrandbits(8), "t")
    if pick == 10:
        return []
    if pick == 11:
        return MyList([1, 2])
    if pick == 12:
        return MyUUID(int=rng.getrandbits(128))
    if pick == 13:
        return Foreign(a=rng.choice(_INTS), b=rng.choice(_STRINGS), c=[None, True, False],
                       d=[uuid.UUID(int=rng.getrandbits(128))])
    if pick == 14:
        return Slotted(p=rng.choice(_INTS), q=b"\x00\xff")
    if pick == 15:
        return {"a dict": 1}  # not storable: both refuse
    if pick == 16:
        return None
    if pick == 17:
        return rng.choice([True, False])
    if pick == 18:
        return uuid.UUID(int=0)  # equal to GUID_NULL but not it: written, as the reference does
    if pick == 19:
        return rng.randbytes(rng.choice([0, 16]))  # maybe equal to a bytes default, not it
    if pick == 20:
        return [rng.choice(_INTS), rng.choice(_STRINGS), None]
    return rng.getrandbits(rng.choice([1, 8, 32, 64]))


def _spoil(value: Any, rng: random.Random, rate: float) -> Any:
    """``value`` with some leaves (and some structures' fields) replaced by odd values."""
    if isinstance(value, WfpStruct) and not value.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        for f in dataclasses.fields(value):  # type: ignore[arg-type]
            v = getattr(value, f.name)
            if rng.random() < rate:
                setattr(value, f.name, _odd(rng))
            else:
                setattr(value, f.name, _spoil(v, rng, rate))
        if rng.random() < rate / 4 and dataclasses.fields(value):  # type: ignore[arg-type]
            del value.__dict__[rng.choice(dataclasses.fields(value)).name]  # type: ignore[arg-type]
        if rng.random() < rate / 4:
            value.__dict__["not_a_field"] = 1  # extra state is not written (neither path)
        return value
    if isinstance(value, list):
        return [_spoil(v, rng, rate) for v in value]
    return value


def _outcome(fn: Any, value: Any) -> tuple[str, Any]:
    try:
        return "text", fn(value)
    except (CodecError, RecursionError, TypeError, ValueError) as exc:
        return "error", type(exc)


@needs_c
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_c_and_python_write_the_same_text(cls: type[WfpStruct]) -> None:
    enc = _encoder()
    seeds = int(os.environ.get("IPSECSA_CODEC_SEEDS", "12"))
    written = 0
    for seed in range(seeds):
        rng = random.Random(f"storejson/{cls.__name__}/{seed}")
        clean = _random_struct(cls, rng)
        # Well-typed trees: written by C, equal to the reference, and decoded back equal.
        text = enc.dumps(clean)
        reference = codec.dumps_py(clean)
        if text is not None:
            assert text == reference
            written += 1
        assert decode(reference) == clean
        # Hostile trees: the same text, or handed back (then the reference writes), or both
        # refuse.
        for rate in (0.05, 0.3):
            spoilt = _spoil(_random_struct(cls, rng), rng, rate)
            c = _outcome(enc.dumps, spoilt)
            py = _outcome(codec.dumps_py, spoilt)
            if c == ("text", None):
                continue
            assert c == py, (c, py)
    # Well-typed trees are handed back only for a wide integer (the generator's are <= 64 bits).
    assert written == seeds, f"{cls.__name__}: only {written} of {seeds} trees written by C"


@needs_c
def test_every_odd_value_alone_and_in_a_structure() -> None:
    enc = _encoder()
    rng = random.Random("odd")
    from ipsecsa import wfp
    for _ in range(3000):
        odd = _odd(rng)
        for value in (odd, [odd, odd], wfp.FWP_VALUE0(type=wfp.FWP_UINT8, uint8=odd),
                      wfp.FWPM_FILTER0(displayData=wfp.FWPM_DISPLAY_DATA0(name=odd))):
            c, py = _outcome(enc.dumps, value), _outcome(codec.dumps_py, value)
            assert c == ("text", None) or c == py, (value, c, py)


@needs_c
def test_handed_back_values_are_written_by_the_reference() -> None:
    """``codec.dumps`` is the C text where C writes, the reference's everywhere else."""
    from ipsecsa import wfp
    enc = _encoder()
    value: Any
    for value in (2**64, "\ud800", MyFloat(2.0), MyList([1]), memoryview(b"1"), MyUUID(int=1),
                  wfp.FWP_VALUE0(type=wfp.FWP_UINT64, uint64=2**64)):
        assert enc.dumps(value) is None
    for value in (0, -2**63, 2**64 - 1, "é\x01", None, True, [], b"\x00", bytearray(b"\x01"),
                  uuid.UUID(int=5), Small.A, Named.X, Named.F, MyInt(7), MyStr("s"), 1.5,
                  [1e16, 1e-7, float("nan"), float("-inf"), -0.0, 5e-324, 1.7976931348623157e308],
                  wfp.FWP_VALUE0(type=wfp.FWP_DOUBLE, double64=0.1)):
        assert enc.dumps(value) == codec.dumps_py(value)


@needs_c
def test_the_benchmark_structures_are_written_by_c() -> None:
    """What a durable life cycle writes (benchmarks/control.py): all of it in C."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[2] / "benchmarks"))
    import control as cb  # type: ignore[import-not-found]
    enc = _encoder()
    for value in (cb.ipsec_filter(True, cb.conditions(cb.A, cb.B)),
                  cb.gcm_bundle(0x1234, os.urandom(20)), cb.traffic(cb.A, cb.B, 5)):
        text = enc.dumps(value)
        assert text is not None and text == codec.dumps_py(value)
        assert decode(text) == value


@needs_c
def test_a_value_equal_to_its_default_is_left_out_though_not_the_same_object() -> None:
    """The reference leaves out a plain value of its default's type that equals it (not only the
    default object itself); a value of another type (True for 1, 1 for 1.0) is written."""
    from ipsecsa import wfp
    enc = _encoder()
    same = [Foreign(a=int("1000"), b="".join(chr(c) for c in b"default text"), e=float("2.5")),
            wfp.FWP_VALUE0(float32=float("0")), wfp.FWP_VALUE0(float32=-0.0)]
    for value in same:
        assert enc.dumps(value) == codec.dumps_py(value)
        assert enc.dumps(value) == enc.dumps(type(value)())  # as if never set
    other = [Foreign(a=1000.0, b=MyStr("default text"), e=2, f=0), Foreign(f=True),  # type: ignore[arg-type]
             wfp.FWP_VALUE0(float32=float("nan")), wfp.FWP_VALUE0(uint8=MyInt(0))]
    for value in other:
        assert enc.dumps(value) == codec.dumps_py(value)
        assert enc.dumps(value) != enc.dumps(type(value)())


# ------------------------------------------------------------------ hostile input
@needs_c
def test_reference_cycles_are_a_clear_error() -> None:
    from ipsecsa import wfp
    enc = _encoder()
    loop: list[Any] = [1]
    loop.append(loop)
    f = wfp.FWPM_FILTER0()
    f.filterCondition = [wfp.FWPM_FILTER_CONDITION0()]
    f.filterCondition[0].conditionValue = f  # type: ignore[assignment]
    foreign = Foreign()
    foreign.c = [foreign]
    for value in (loop, f, foreign, [[loop]]):
        with pytest.raises(CodecError, match="reference cycle"):
            enc.dumps(value)
        with pytest.raises(RecursionError):  # the reference has no better answer
            codec.dumps_py(value)
    # The same object twice, not inside itself, is no cycle.
    shared = wfp.FWP_VALUE0(type=wfp.FWP_UINT8, uint8=1)
    assert enc.dumps([shared, [shared]]) == codec.dumps_py([shared, [shared]])


@needs_c
def test_deep_nesting_is_handed_back_never_a_c_stack_overflow() -> None:
    enc = _encoder()
    depth = _storejson.MAX_DEPTH
    ok: list[Any] = [1]
    for _ in range(depth - 1):
        ok = [ok]
    assert enc.dumps(ok) == codec.dumps_py(ok)
    deeper: list[Any] = [ok]
    assert enc.dumps(deeper) is None  # the reference writes it (orjson still can)
    assert codec.dumps(deeper) == codec.dumps_py(deeper)
    very: list[Any] = []
    for _ in range(100_000):
        very = [very]
    assert enc.dumps(very) is None
    with pytest.raises(RecursionError):
        codec.dumps(very)


class Boom(Exception):
    pass


@dataclasses.dataclass
class RaisesOnDict:
    x: int = 0

    def _raise(self) -> Any:
        raise Boom("__dict__")

    __dict__ = property(_raise)  # type: ignore[assignment]  # the point: a __dict__ that raises


@dataclasses.dataclass
class RaisesOnSlot:
    __slots__ = ("_x",)
    _x: int

    @property
    def x(self) -> int:
        raise Boom("slot")


@dataclasses.dataclass
class SlotMissing:
    __slots__ = ("a", "b")
    a: int
    b: int


class WeirdEnum(enum.Enum):
    A = 1

    def __getattribute__(self, name: str) -> Any:
        if name == "value":  # what the reference reads; the C writer would read _value_
            raise Boom("enum")
        return super().__getattribute__(name)


@needs_c
def test_exceptions_from_attribute_reads_propagate() -> None:
    enc = _encoder()
    with pytest.raises(Boom):
        enc.dumps([RaisesOnDict()])
    with pytest.raises(Boom):
        codec.dumps_py([RaisesOnDict()])
    # A slotted dataclass is read per field: an AttributeError is a missing (left out) field,
    # anything else propagates.
    s = object.__new__(SlotMissing)
    s.a = 5
    assert enc.dumps(s) == codec.dumps_py(s) == '{"$":"SlotMissing","a":5}'
    r = object.__new__(RaisesOnSlot)
    enc2 = _storejson.Encoder(
        lambda cls: (_storejson.STRUCT, b'{"$":"R"', _storejson.BY_ATTR,
                     (("x", b',"x":', 0),)) if cls is RaisesOnSlot else codec._native_kind(cls),
        CodecError, codec._orjson.dumps)
    with pytest.raises(Boom):
        enc2.dumps(r)
    # An enum with its own __getattribute__ is described PYTHON: handed back, and the
    # reference's own read raises.
    assert enc.dumps(WeirdEnum.A) is None
    with pytest.raises(Boom):
        codec.dumps(WeirdEnum.A)


class Mutator:
    """An object whose attribute read empties a list and a dict the writer is walking."""

    def __init__(self, victims: list[Any], d: dict[str, Any]) -> None:
        self.victims, self.d = victims, d


@dataclasses.dataclass
class Evil:
    __slots__ = ("target",)
    target: Any

    def __getattribute__(self, name: str) -> Any:
        target = object.__getattribute__(self, "target")
        if name == "target" and isinstance(target, Mutator):
            target.victims.clear()
            target.d.clear()
            for i in range(50):
                target.victims.append(Foreign(a=i))
            return None
        return object.__getattribute__(self, name)


@needs_c
def test_mutation_from_python_code_during_the_walk_is_survived() -> None:
    """Python code the writer runs (a slot's read) empties the list and the structure dict
    being written: held references keep every object alive; the text is what the reference,
    seeing the same mutations, writes."""
    for make in range(2):
        outs = []
        for fn in (_encoder().dumps, codec.dumps_py):
            holder = Foreign(a=1, b="y")
            victims: list[Any] = []
            evil = Evil(target=Mutator(victims, holder.__dict__))
            victims += [Foreign(a=7), evil, Foreign(a=8), uuid.uuid4()]
            holder.c = victims
            holder.d = [evil] if make else []
            outs.append(_outcome(fn, holder if make else victims))
        assert outs[0] == outs[1] or outs[0] == ("text", None), outs


@needs_c
def test_malformed_descriptions_are_type_errors() -> None:
    for bad in ((), (99,), ("x",), (1, "not bytes", 0, ()), (1, b"{", 7, ()),
                (1, b"{", 0, (("a", b",", 0, 9),)), (1, b"{", 0, ((1, b",", 0),)), [0]):
        enc = _storejson.Encoder(lambda cls, bad=bad: bad, CodecError,
                                 codec._orjson.dumps)
        with pytest.raises(TypeError, match="describe"):
            enc.dumps(Foreign())
    enc = _storejson.Encoder(lambda cls: 1 / 0, CodecError, codec._orjson.dumps)
    with pytest.raises(ZeroDivisionError):
        enc.dumps(Foreign())
    assert enc.dumps(5) == "5"  # plain values need no description
    with pytest.raises(TypeError):
        _storejson.Encoder(5, CodecError, codec._orjson.dumps)
    with pytest.raises(TypeError):
        _storejson.Encoder(codec._native_kind, 5, codec._orjson.dumps)
    with pytest.raises(TypeError):
        _storejson.Encoder(codec._native_kind, CodecError, 5)
    enc = _storejson.Encoder(codec._native_kind, CodecError, str)
    with pytest.raises(TypeError, match="float_text"):
        enc.dumps([1.5])
    with pytest.raises(RuntimeError, match="not initialised"):
        _storejson.Encoder.__new__(_storejson.Encoder).dumps(1)


@needs_c
def test_many_distinct_guids_and_a_long_text() -> None:
    """The GUID text cache is emptied when full; a text far beyond the stack buffer."""
    from ipsecsa import wfp
    enc = _encoder()
    guids = [uuid.UUID(int=random.Random(i).getrandbits(128)) for i in range(10_000)]
    value = [wfp.FWPM_FILTER0(filterKey=g, displayData=wfp.FWPM_DISPLAY_DATA0(name="é" * 50))
             for g in guids]
    text = enc.dumps(value)
    assert text == codec.dumps_py(value) and len(text) > 1_000_000
    assert decode(text) == value


# ------------------------------------------------------------------ references and memory
def _nodes(value: Any) -> list[Any]:
    """The objects of a tree whose reference count only the writer could change (not the
    small ints, bools and None every piece of code shares)."""
    out = [] if isinstance(value, (int, type(None))) else [value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            out += _nodes(getattr(value, f.name, None))
    elif isinstance(value, (list, tuple)):
        for v in value:
            out += _nodes(v)
    return out


@needs_c
def test_no_reference_is_kept_or_lost() -> None:
    """Every object of the tree has the same reference count after many writes (texts,
    hand-backs and errors alike): nothing leaked, nothing released that was not taken."""
    enc = _encoder()
    rng = random.Random("refs")
    trees = []
    for cls in CLASSES:
        for rate in (0.0, 0.2):
            trees.append(_spoil(_random_struct(cls, rng), rng, rate))
    loop: list[Any] = [Foreign()]
    loop.append(loop)
    trees.append(loop)
    for tree in trees:
        _outcome(enc.dumps, tree)  # descriptions and GUID texts made once, before counting
    counts = [[sys.getrefcount(n) for n in _nodes(t)] if t is not loop else None for t in trees]
    loop_count = sys.getrefcount(loop)
    for _ in range(50):
        for tree in trees:
            _outcome(enc.dumps, tree)
    after = [[sys.getrefcount(n) for n in _nodes(t)] if t is not loop else None for t in trees]
    assert after == counts
    assert sys.getrefcount(loop) == loop_count  # the cycle's error path too


@needs_c
def test_memory_does_not_grow_over_repeated_runs() -> None:
    """The differential run in a loop: traced memory after the warm-up stays flat."""
    enc = _encoder()
    rng = random.Random("memory")
    trees = [_spoil(_random_struct(cls, rng), rng, 0.2) for cls in CLASSES]
    trees += [_random_struct(cls, rng) for cls in CLASSES]

    def run() -> None:
        for tree in trees:
            _outcome(enc.dumps, tree)

    assert_memory_flat(run)


# ------------------------------------------------------------------ without the extension
_WITHOUT = """
import sys, os, tempfile, json
sys.modules["ipsecsa._storejson"] = None
from ipsecsa import wfp
from ipsecsa.store import codec
assert not codec.native()
from ipsecsa.store import journal
assert journal._journal_body is None  # records written by journal.encode_py
value = wfp.FWP_VALUE0(type=wfp.FWP_UINT8, uint8=7)
assert codec.dumps(value) == codec.dumps_py(value) == '{"$":"FWP_VALUE0","type":1,"uint8":7}'
db = os.path.join(tempfile.mkdtemp(), "s.db")
bfe = wfp.Engine(database=db)
_, h = bfe.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, None, None)
st, fid = bfe.FwpmFilterAdd0(h, wfp.FWPM_FILTER0(
    layerKey=wfp.FWPM_LAYER_INBOUND_IPPACKET_V4, action=wfp.FWPM_ACTION0(type=wfp.FWP_ACTION_BLOCK),
    displayData=wfp.FWPM_DISPLAY_DATA0(name="kept")), None)
assert st == 0, st
bfe.close()
bfe = wfp.Engine(database=db)
_, h = bfe.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, None, None)
st, f = bfe.FwpmFilterGetById0(h, fid)
assert st == 0 and f.displayData.name == "kept", (st, f)
bfe.close()
print("ok", codec.native())
"""


def test_the_package_works_without_the_extension() -> None:
    assert run_without_pure_python_flag(_WITHOUT) == "ok False"


def test_pure_python_env_turns_the_c_writer_off() -> None:
    code = "from ipsecsa import wfp\nfrom ipsecsa.store import codec\nprint(codec.native())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "IPSECSA_PURE_PYTHON": "1"}, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


@needs_c
def test_stored_text_reads_back_as_json() -> None:
    from ipsecsa import wfp
    enc = _encoder()
    value = wfp.FWPM_FILTER0(displayData=wfp.FWPM_DISPLAY_DATA0(name="a\x00\"\\é"))
    text = enc.dumps(value)
    assert json.loads(text)["displayData"]["name"] == "a\x00\"\\é"
    assert decode(text) == value

"""The store's JSON form of WFP structures (ipsecsa's own format, no outside vectors): fields at
their default are left out and come back on decoding; rows written before that (every field
present) still decode; damage is refused, never turned into a structure."""

from __future__ import annotations

import json
import uuid

import pytest
from wfp.helpers import A4, B4, addr_conditions, gcm_sa, ipsec_filter

from ipsecsa import wfp
from ipsecsa.store import codec
from ipsecsa.store.codec import CodecError, decode, encode, from_jsonable, to_jsonable


def _full(value: object) -> object:
    """The older form: every field written, defaults included."""
    import dataclasses
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {"$": type(value).__name__}
        out.update({f.name: _full(getattr(value, f.name)) for f in dataclasses.fields(value)})
        return out
    if isinstance(value, list):
        return [_full(v) for v in value]
    return to_jsonable(value)


@pytest.mark.parametrize("make", [
    lambda: ipsec_filter("inbound", addr_conditions(A4, B4)),
    lambda: gcm_sa(0x1234, bytes(range(20))),
    lambda: wfp.IPSEC_TRAFFIC1(ipVersion=wfp.FWP_IP_VERSION_V4, localV4Address=1,
                               remoteV4Address=2, ipsecFilterId=7),
])
def test_round_trip_and_older_rows(make) -> None:  # type: ignore[no-untyped-def]
    value = make()
    text = encode(value)
    assert decode(text) == value
    assert decode(json.dumps(_full(value))) == value
    assert from_jsonable(json.loads(text)) == value
    assert len(text) < len(json.dumps(_full(value)))  # the unused union members are left out


def test_defaults_left_out_but_set_values_kept() -> None:
    v = wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_UINT32, uint32=0)
    assert json.loads(encode(v)) == {"$": "FWP_CONDITION_VALUE0", "type": wfp.FWP_UINT32}
    v = wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_UINT8, uint8=5)
    assert decode(encode(v)).uint8 == 5
    g = uuid.uuid4()
    assert decode(encode(wfp.FWPM_FILTER0(filterKey=g))).filterKey == g


@pytest.mark.parametrize("text, message", [
    ('{"$": "NOT_A_STRUCT"}', "unknown structure"),
    ('{"$": "FWP_VALUE0", "type": 1, "bogus": 2}', "unknown fields"),
    ('{"$": 5}', "unknown structure"),
])
def test_damaged_rows_are_refused(text: str, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode(text)


def test_values_it_cannot_store_are_refused() -> None:
    with pytest.raises(CodecError, match="cannot store a set"):
        encode({1, 2})


@pytest.mark.parametrize("make", [
    lambda: ipsec_filter("inbound", addr_conditions(A4, B4)),
    lambda: gcm_sa(0x1234, bytes(range(20))),
])
def test_stored_text_is_the_same_json_with_or_without_orjson(make, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``dumps`` writes through orjson when it is installed and through the standard library
    otherwise: the same JSON either way (not necessarily the same bytes), read back alike."""
    value = make()
    fast = codec.dumps(value)
    monkeypatch.setattr(codec, "_orjson", None)
    monkeypatch.setattr(codec, "_native", None)  # the C writer writes orjson's text
    slow = codec.dumps(value)
    assert json.loads(fast) == json.loads(slow)
    assert decode(fast) == decode(slow) == value


def test_integers_orjson_refuses_fall_back_to_the_standard_library() -> None:
    """orjson writes integers of up to 64 bits; a wider one (no WFP field holds one, but a
    plain value might) must still be written, by the standard library."""
    value = {"wide": 2**70, "negative": -(2**64), "list": [2**65, 1]}
    assert json.loads(codec.compact(value)) == value


@pytest.mark.parametrize("module", ["ipsecsa.store.codec", "ipsecsa.store.sqlite",
                                    "ipsecsa.store.journal", "ipsecsa.wfp.persist",
                                    "ipsecsa.wfp.filterrows", "ipsecsa.wfp.stored"])
def test_each_store_module_imports_first(module: str) -> None:
    """A program may import the store's modules before ``ipsecsa.wfp`` (the codec once
    looked the WFP structures up at import, which made ``from ipsecsa.store import codec``
    first a circular import)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr

"""ipsecsa.wfp.constants against the Windows data it is generated from.

Sources: src/ipsecsa/data/windows-layouts-x64.json and windows-wfp-filters.json (compiled from
the Windows SDK headers, see their ``about``), and the values shared/spec/windows-ipsec-reference.md
gives that the JSON lacks (sections C.6, D.1, E.1/E.2), copied into this file as literals. The
checks read the JSON directly, not through the generator, so a generator bug cannot hide itself.
"""

from __future__ import annotations

import enum
import importlib.util
import json
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest

from ipsecsa import wfp
from ipsecsa.wfp import constants as C

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "src" / "ipsecsa" / "data"
NDIS_HEADERS = {"ndis.h", "ntddndis.h"}


@pytest.fixture(scope="module")
def layouts() -> dict[str, Any]:
    return json.loads((DATA / "windows-layouts-x64.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def filters() -> dict[str, Any]:
    return json.loads((DATA / "windows-wfp-filters.json").read_text(encoding="utf-8"))


def _generator() -> Any:
    path = ROOT / "scripts" / "gen_wfp_constants.py"
    spec = importlib.util.spec_from_file_location("gen_wfp_constants", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_files_are_what_the_generator_writes() -> None:
    gen = _generator()
    for path, text in gen.render_all().items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.name} is stale: run python scripts/gen_wfp_constants.py"
        )


# That the package copies are the spec files they were taken from is pinned without reaching
# outside the repository: src/ipsecsa/data/README.md records their SHA-256 and
# tests/project/test_package_data.py checks it (a fresh clone must not skip it).


def test_samples() -> None:
    assert wfp.FWP_E_TIMEOUT == 0x80320012
    assert wfp.FWP_E_NOT_FOUND == 0x80320008
    assert wfp.FWP_E_INCOMPATIBLE_SA_STATE == 0x8032001B
    assert wfp.FWP_E_IKEEXT_NOT_RUNNING == 0x80320044
    assert wfp.FWP_E_DROP_NOICMP == 0x80320104
    assert wfp.ERROR_SUCCESS == 0
    assert wfp.ERROR_ACCESS_DENIED == 5
    assert wfp.EPT_S_NOT_REGISTERED == 0x6D9
    assert wfp.FWPM_LAYER_OUTBOUND_TRANSPORT_V4 == uuid.UUID(
        "09e61aea-d214-46e2-9b21-b26b0b2f28c8")
    assert isinstance(wfp.FWPM_CALLOUT_IPSEC_OUTBOUND_TRANSPORT_V4, uuid.UUID)
    assert wfp.RPC_C_AUTHN_WINNT == 10
    assert wfp.RPC_C_AUTHN_DEFAULT == 0xFFFFFFFF
    assert wfp.FWPM_SESSION_FLAG_DYNAMIC == 0x1
    assert wfp.FWPM_TXN_READ_ONLY == 0x1
    assert wfp.FWP_IP_VERSION_V4 == 0 and wfp.FWP_IP_VERSION_V6 == 1
    assert wfp.FWP_ACTION_CALLOUT_TERMINATING == 0x5003
    assert wfp.FWPM_FILTER_FLAG_PERSISTENT == 0x1
    assert wfp.FWP_FILTER_ENUM_OVERLAPPING == 1
    assert wfp.FWPM_CHANGE_DELETE == 2
    assert wfp.FWPM_SUBSCRIPTION_FLAG_NOTIFY_ON_DELETE == 0x2
    assert wfp.IPSEC_SA_BUNDLE_FLAG_SA_OFFLOADED == 0x200000
    assert wfp.IPSEC_SA_CONTEXT_EVENT_ADD == 1 and wfp.IPSEC_SA_CONTEXT_EVENT_DELETE == 2
    assert wfp.FWPM_GENERIC_ALL == 0x000F07FF
    assert wfp.FWPM_WEIGHT_RANGE_IKE_EXEMPTIONS == 0xC
    assert wfp.FWPM_AUTO_WEIGHT_MAX == 2**60 - 1


def test_values_the_json_lacks_match_the_reference() -> None:
    # Reference C.6 (IPsecSaContextUpdate0 flags), D.1 (DELETE), C.7.1, B.1.
    assert (C.IPSEC_SA_DETAILS_UPDATE_TRAFFIC, C.IPSEC_SA_DETAILS_UPDATE_UDP_ENCAPSULATION,
            C.IPSEC_SA_BUNDLE_UPDATE_FLAGS, C.IPSEC_SA_BUNDLE_UPDATE_NAP_CONTEXT,
            C.IPSEC_SA_BUNDLE_UPDATE_KEY_MODULE_STATE,
            C.IPSEC_SA_BUNDLE_UPDATE_PEER_V4_PRIVATE_ADDRESS,
            C.IPSEC_SA_BUNDLE_UPDATE_MM_SA_ID) == (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40)
    assert C.DELETE == 0x00010000
    assert C.HRESULT_FROM_WIN32(C.ERROR_INVALID_SECURITY_DESCR) == 0x8007053A
    assert C.HRESULT_FROM_WIN32(0) == 0
    assert C.HRESULT_FROM_WIN32(C.FWP_E_TIMEOUT) == C.FWP_E_TIMEOUT
    assert C.FWPM_TUNNEL_FLAG_POINT_TO_POINT == 0x1


def test_generic_rights_are_built_from_their_parts() -> None:
    # D.1: the winnt.h standard rights added here must reproduce the JSON's FWPM_GENERIC_*.
    assert C.FWPM_GENERIC_READ == (C.STANDARD_RIGHTS_READ | C.FWPM_ACTRL_BEGIN_READ_TXN
                                   | C.FWPM_ACTRL_CLASSIFY | C.FWPM_ACTRL_OPEN
                                   | C.FWPM_ACTRL_READ | C.FWPM_ACTRL_READ_STATS)
    assert C.FWPM_GENERIC_EXECUTE == (C.STANDARD_RIGHTS_EXECUTE | C.FWPM_ACTRL_ENUM
                                      | C.FWPM_ACTRL_SUBSCRIBE)
    assert C.FWPM_GENERIC_WRITE == (C.STANDARD_RIGHTS_WRITE | C.DELETE | C.FWPM_ACTRL_ADD
                                    | C.FWPM_ACTRL_ADD_LINK | C.FWPM_ACTRL_BEGIN_WRITE_TXN
                                    | C.FWPM_ACTRL_WRITE)
    all_wfp = 0
    for name in ("ADD", "ADD_LINK", "BEGIN_READ_TXN", "BEGIN_WRITE_TXN", "CLASSIFY", "ENUM",
                 "OPEN", "READ", "READ_STATS", "SUBSCRIBE", "WRITE"):
        all_wfp |= getattr(C, f"FWPM_ACTRL_{name}")
    assert C.FWPM_GENERIC_ALL == C.STANDARD_RIGHTS_REQUIRED | all_wfp


def test_every_enum_value(layouts: dict[str, Any], filters: dict[str, Any]) -> None:
    enums = {n: e for n, e in layouts["enums"].items() if e["header"] not in NDIS_HEADERS}
    enums.update({n: e for n, e in filters["layouts"].items() if e.get("kind") == "enums"})
    assert "FWP_IP_VERSION" in enums and "FWPM_CHANGE_TYPE" in enums
    for ename, e in enums.items():
        cls = getattr(wfp, ename)
        assert issubclass(cls, enum.IntEnum)
        for vname, value in e["values"].items():
            assert getattr(wfp, vname) == value, vname
            assert getattr(cls, vname) == value, vname


def test_every_integer_constant(layouts: dict[str, Any], filters: dict[str, Any]) -> None:
    count = 0
    for name, c in layouts["constants"].items():
        if c["header"] in NDIS_HEADERS:
            assert not hasattr(wfp, name), f"NDIS constant leaked into wfp: {name}"
            continue
        assert getattr(wfp, name) == c["decimal"] == int(c["value"], 16), name
        count += 1
    for name, value in filters["constants"].items():
        assert getattr(wfp, name) == value, name
        count += 1
    assert count == 81 + 65  # non-NDIS layouts constants + filter constants


def test_every_error(layouts: dict[str, Any]) -> None:
    fwp_e = [n for n in layouts["errors"] if n.startswith("FWP_E_")]
    assert len(fwp_e) >= 68
    for name, e in layouts["errors"].items():
        assert getattr(wfp, name) == e["decimal"] == int(e["value"], 16), name
        assert C.ERRORS[name] == e["decimal"]
        if "message" in e:
            assert C.ERROR_MESSAGES[e["decimal"]] == e["message"], name
    # E.1: the documented FWP_E range has no holes.
    assert {C.ERRORS[n] for n in fwp_e} >= set(range(0x80320001, 0x80320045))


def test_every_guid(filters: dict[str, Any]) -> None:
    for group in ("layers", "sublayers", "callouts", "conditions", "providers"):
        table = getattr(C, group.upper())
        assert set(table) == set(filters[group])
        for name, text in filters[group].items():
            value = getattr(wfp, name)
            assert isinstance(value, uuid.UUID)
            assert value == uuid.UUID(text) == table[name], name
    # HDR aliases (C.7.5): ICMP type/code are the local/remote port conditions.
    assert wfp.FWPM_CONDITION_ICMP_TYPE == wfp.FWPM_CONDITION_IP_LOCAL_PORT
    assert wfp.FWPM_CONDITION_ICMP_CODE == wfp.FWPM_CONDITION_IP_REMOTE_PORT
    assert C.guid_name(wfp.FWPM_CONDITION_IP_LOCAL_PORT) == "FWPM_CONDITION_IP_LOCAL_PORT"
    assert C.guid_name(wfp.FWPM_LAYER_INBOUND_TRANSPORT_V6) == "FWPM_LAYER_INBOUND_TRANSPORT_V6"
    assert C.guid_name(uuid.UUID(int=1)) is None
    assert C.IID_NULL == uuid.UUID(int=0)


def test_layer_conditions(filters: dict[str, Any]) -> None:
    assert {k: list(v) for k, v in C.LAYER_CONDITIONS.items()} == filters["layer_conditions"]
    for layer, conds in C.LAYER_CONDITIONS.items():
        assert layer in C.LAYERS
        assert all(c in C.CONDITIONS for c in conds)


def test_transform_ids(layouts: dict[str, Any]) -> None:
    assert len(layouts["transform_ids"]) == 14
    for name, t in layouts["transform_ids"].items():
        tid = getattr(wfp, name)
        if t["struct"] == "IPSEC_AUTH_TRANSFORM_ID0":
            assert type(tid) is wfp.IPSEC_AUTH_TRANSFORM_ID0
            kind, config = tid.authType, tid.authConfig
        else:
            assert type(tid) is wfp.IPSEC_CIPHER_TRANSFORM_ID0
            kind, config = tid.cipherType, tid.cipherConfig
        assert (kind, config) == (t["authType_value" if "authType" in t else "cipherType_value"],
                                  t["authConfig" if "authType" in t else "cipherConfig"]), name
        assert getattr(wfp, t["config_name"]) == config
        # The compiler's encoding: 4-byte enum, UINT8 config, padding to 8.
        assert struct.pack("<IB3x", kind, config).hex() == t["bytes_hex"], name
    # C.5's trap: GCM cipher configs are 6-8, GCM auth configs 3-5, type AES_xxx.
    assert wfp.IPSEC_CIPHER_TRANSFORM_ID_GCM_AES_128 == wfp.IPSEC_CIPHER_TRANSFORM_ID0(
        cipherType=wfp.IPSEC_CIPHER_TYPE_AES_128, cipherConfig=6)
    assert wfp.IPSEC_AUTH_TRANSFORM_ID_GCM_AES_256 == wfp.IPSEC_AUTH_TRANSFORM_ID0(
        authType=wfp.IPSEC_AUTH_AES_256, authConfig=5)


def test_status_names() -> None:
    assert C.status_name(0x80320012) == "FWP_E_TIMEOUT"
    assert wfp.status_name(wfp.FWP_E_ALREADY_EXISTS) == "FWP_E_ALREADY_EXISTS"
    assert C.status_name(0) == "ERROR_SUCCESS"
    assert C.status_name(5) == "ERROR_ACCESS_DENIED"  # not its RPC_S_ alias
    assert C.status_name(0x6BA) == "RPC_S_SERVER_UNAVAILABLE"
    assert C.status_name(0x12345678) == "0x12345678"
    text = C.describe_status(C.FWP_E_TIMEOUT)
    assert text.startswith("FWP_E_TIMEOUT (0x80320012): ")
    assert "transaction lock" in text
    assert C.describe_status(0xDEADBEEF) == "0xDEADBEEF (0xDEADBEEF)"


def test_package_exports_everything() -> None:
    for name in C.__all__:
        assert getattr(wfp, name) is getattr(C, name), name
    assert set(C.__all__) <= set(wfp.__all__)
    assert len(C.__all__) == len(set(C.__all__))

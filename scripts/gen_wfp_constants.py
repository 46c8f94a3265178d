#!/usr/bin/env python3
"""Generate ipsecsa.wfp.constants and ipsecsa.wfp.types from the Windows layout JSON files.

Inputs (copies of ``shared/spec``, identical bytes):
  src/ipsecsa/data/windows-layouts-x64.json   structs, unions, enums, constants, errors, ids
  src/ipsecsa/data/windows-wfp-filters.json   layer/sublayer/callout/condition/provider GUIDs,
                                              filter constants, filter-API layouts

Outputs:
  src/ipsecsa/wfp/constants.py   every WFP/IPsec value as a module attribute, Windows names
  src/ipsecsa/wfp/types.py       one dataclass per FWP*/FWPM*/IPSEC* structure, JSON field order

Why generated: the numbers and field lists were produced by a compiler from the Windows headers;
copying them by hand would be the one place they could drift. ``tests/wfp/test_constants.py``
re-runs this script in memory and fails if the committed files differ.

Usage:  python scripts/gen_wfp_constants.py            (rewrite both files)
        python scripts/gen_wfp_constants.py --check    (exit 1 if either is out of date)

A few values the JSON lacks are listed in EXTRA_CONSTANTS below, each with the reference section
(``shared/spec/windows-ipsec-reference.md``) or header that gives it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "src" / "ipsecsa" / "data"
LAYOUTS_JSON = DATA / "windows-layouts-x64.json"
FILTERS_JSON = DATA / "windows-wfp-filters.json"
CONSTANTS_PY = ROOT / "src" / "ipsecsa" / "wfp" / "constants.py"
TYPES_PY = ROOT / "src" / "ipsecsa" / "wfp" / "types.py"

#: Headers whose items belong to the NDIS side (ipsecsa.ndis), not to the WFP API.
NDIS_HEADERS = frozenset({"ndis.h", "ntddndis.h"})

#: Values the layouts/filters JSON does not carry: (name, value, where it comes from).
EXTRA_CONSTANTS: list[tuple[str, str, list[tuple[str, int]]]] = [
    ("IPsecSaContextUpdate0 flags (reference C.6; HDR fwpmu.h, UINT64 in the SDK prototype)",
     "C.6", [
         ("IPSEC_SA_DETAILS_UPDATE_TRAFFIC", 0x01),
         ("IPSEC_SA_DETAILS_UPDATE_UDP_ENCAPSULATION", 0x02),
         ("IPSEC_SA_BUNDLE_UPDATE_FLAGS", 0x04),
         ("IPSEC_SA_BUNDLE_UPDATE_NAP_CONTEXT", 0x08),
         ("IPSEC_SA_BUNDLE_UPDATE_KEY_MODULE_STATE", 0x10),
         ("IPSEC_SA_BUNDLE_UPDATE_PEER_V4_PRIVATE_ADDRESS", 0x20),
         ("IPSEC_SA_BUNDLE_UPDATE_MM_SA_ID", 0x40),
     ]),
    (("Standard and generic access rights (winnt.h). DELETE is reference D.1; the others are "
      "the parts D.1's FWPM_GENERIC_* are built from"), "D.1", [
         ("DELETE", 0x00010000),
         ("READ_CONTROL", 0x00020000),
         ("WRITE_DAC", 0x00040000),
         ("WRITE_OWNER", 0x00080000),
         ("SYNCHRONIZE", 0x00100000),
         ("STANDARD_RIGHTS_REQUIRED", 0x000F0000),
         ("STANDARD_RIGHTS_READ", 0x00020000),
         ("STANDARD_RIGHTS_WRITE", 0x00020000),
         ("STANDARD_RIGHTS_EXECUTE", 0x00020000),
         ("STANDARD_RIGHTS_ALL", 0x001F0000),
         ("GENERIC_READ", 0x80000000),
         ("GENERIC_WRITE", 0x40000000),
         ("GENERIC_EXECUTE", 0x20000000),
         ("GENERIC_ALL", 0x10000000),
     ]),
    (("FwpmIPsecTunnelAdd flags (HDR fwpmu.h; named in reference C.7.4, value from the SDK "
      "header)"), "C.7.4", [
         ("FWPM_TUNNEL_FLAG_POINT_TO_POINT", 0x00000001),
         ("FWPM_TUNNEL_FLAG_ENABLE_VIRTUAL_IF_TUNNELING", 0x00000002),
     ]),
    ("SEC_WINNT_AUTH_IDENTITY_W.Flags (rpcdce.h)", "B.1", [
         ("SEC_WINNT_AUTH_IDENTITY_ANSI", 0x1),
         ("SEC_WINNT_AUTH_IDENTITY_UNICODE", 0x2),
     ]),
]

#: Errors the JSON lacks. ERROR_INVALID_SECURITY_DESCR is winerror.h 1338; the FwpmFilterAdd0
#: page (reference C.7.1) prints it as the HRESULT 0x8007053A = HRESULT_FROM_WIN32(1338).
EXTRA_ERRORS: list[tuple[str, int, str]] = [
    ("ERROR_INVALID_SECURITY_DESCR", 0x0000053A,
     "The security descriptor structure is invalid."),
]

#: C structures that are GUIDs: represented by uuid.UUID, no dataclass.
GUID_STRUCTS = frozenset({"GUID", "IPSEC_CRYPTO_MODULE_ID"})

#: Pointer-to-array members and the count member beside them. Order within a struct follows the
#: list member's position. FWP_BYTE_BLOB.data is ``bytes``; SEC_WINNT_AUTH_IDENTITY_W's strings
#: are ``str`` counted in UTF-16 code units (its *Length members).
COUNTED: dict[str, list[tuple[str, str]]] = {
    "FWP_BYTE_BLOB": [("size", "data")],
    "FWP_TOKEN_INFORMATION": [("sidCount", "sids"), ("restrictedSidCount", "restrictedSids")],
    "FWPM_FILTER0": [("numFilterConditions", "filterCondition")],
    "FWPM_FILTER_ENUM_TEMPLATE0": [("numFilterConditions", "filterCondition")],
    "IPSEC_PROPOSAL0": [("numSaTransforms", "saTransforms")],
    "IPSEC_SA_BUNDLE0": [("numSAs", "saList")],
    "IPSEC_SA_BUNDLE1": [("numSAs", "saList")],
    "IPSEC_ID0": [("numTokens", "tokens")],
    "IPSEC_ADDRESS_INFO0": [("numV4Addresses", "v4Addresses"),
                            ("numV6Addresses", "v6Addresses")],
    "IPSEC_DOSP_OPTIONS0": [("numPublicIFLuids", "publicIFLuids"),
                            ("numInternalIFLuids", "internalIFLuids")],
    "SEC_WINNT_AUTH_IDENTITY_W": [("UserLength", "User"), ("DomainLength", "Domain"),
                                  ("PasswordLength", "Password")],
}

#: Members never shown by repr (keys, passwords).
SECRET: dict[str, list[str]] = {
    "FWP_BYTE_BLOB": ["data"],
    "SEC_WINNT_AUTH_IDENTITY_W": ["Password"],
}

#: Value types (immutable, hashable): the predefined transform ids are instances of these.
FROZEN = frozenset({"IPSEC_AUTH_TRANSFORM_ID0", "IPSEC_CIPHER_TRANSFORM_ID0"})

#: C types of pointed-to or counted scalars -> Python annotation.
_POINTER_SCALARS = {
    "UINT64 *": "int", "INT64 *": "int", "UINT32 *": "int", "double *": "float",
    "FWP_BYTE_ARRAY16 *": "bytes", "FWP_BYTE_ARRAY6 *": "bytes", "SID *": "bytes",
    "GUID *": "uuid.UUID", "IPSEC_CRYPTO_MODULE_ID *": "uuid.UUID",
    "wchar_t *": "str", "LPWSTR": "str", "short unsigned int *": "str",
    "PSID_AND_ATTRIBUTES": "SID_AND_ATTRIBUTES",
}


def sort_all(names: list[str]) -> list[str]:
    """``__all__`` order as ruff's RUF022 wants it: SCREAMING_CASE, CamelCase, rest; natural."""

    def key(name: str) -> tuple[int, list[Any]]:
        if name.upper() == name:
            group = 0
        elif name[:1].isupper():
            group = 1
        else:
            group = 2
        parts = [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
        return group, parts

    return sorted(set(names), key=key)


def load() -> tuple[dict[str, Any], dict[str, Any]]:
    layouts = json.loads(LAYOUTS_JSON.read_text(encoding="utf-8"))
    filters = json.loads(FILTERS_JSON.read_text(encoding="utf-8"))
    return layouts, filters


# --------------------------------------------------------------------------------------------
# structures


def wfp_structs(layouts: dict[str, Any], filters: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every WFP/IPsec structure of both files (NDIS/OFFLOAD ones excluded), JSON order."""
    out: dict[str, dict[str, Any]] = {}
    for name, s in layouts["structs"].items():
        if name.startswith(("FWP", "IPSEC", "SEC_WINNT")) and name not in GUID_STRUCTS:
            out[name] = s
    for name, s in filters["layouts"].items():
        if s.get("kind") == "structs":
            out[name] = s
    return out


def flat_fields(struct: dict[str, Any]) -> list[dict[str, Any]]:
    """The struct's members with each anonymous union replaced by all of its members."""
    out: list[dict[str, Any]] = []
    for f in struct["fields"]:
        if f["kind"] == "union":
            for m in f["members"]:
                if "members" in m:
                    raise ValueError(f"nested aggregate in union: {m['name']}")
                out.append(m)
        elif "members" in f:
            raise ValueError(f"anonymous struct member: {f['name']}")
        else:
            out.append(f)
    return out


def _annotation(sname: str, f: dict[str, Any], structs: dict[str, Any]) -> tuple[str, str]:
    """(annotation, default expression) for one member."""
    kind, ctype, name = f["kind"], f["type"], f["name"]
    counted = {lst for _, lst in COUNTED.get(sname, [])}
    if name in counted:
        if ctype == "UINT8 *":
            return "bytes", 'b""'
        elem = _POINTER_SCALARS.get(ctype)
        if elem is None:
            elem = ctype.rstrip(" *")
            if elem not in structs:
                raise ValueError(f"{sname}.{name}: unknown element type {ctype}")
        if elem == "str":
            return "str | None", "None"
        return f"list[{elem}]", "field(default_factory=list)"
    if kind in ("uint", "int", "enum"):
        return "int", "0"
    if kind == "float":
        return "float", "0.0"
    if kind == "array":
        return "bytes", f"bytes({f['count']})"
    if kind == "struct":
        if ctype in GUID_STRUCTS:
            return "uuid.UUID", "GUID_NULL"
        if ctype not in structs:
            raise ValueError(f"{sname}.{name}: unknown struct {ctype}")
        return ctype, f"field(default_factory={ctype})"
    if kind == "pointer":
        target = _POINTER_SCALARS.get(ctype)
        if target is None:
            target = ctype.rstrip(" *")
            if target not in structs:
                raise ValueError(f"{sname}.{name}: unknown pointer type {ctype}")
        return f"{target} | None", "None"
    raise ValueError(f"{sname}.{name}: unhandled kind {kind}")


def _embedded_deps(sname: str, s: dict[str, Any], structs: dict[str, Any]) -> set[str]:
    return {f["type"] for f in flat_fields(s)
            if f["kind"] == "struct" and f["type"] in structs and f["type"] != sname}


def _ordered(structs: dict[str, Any]) -> list[str]:
    """JSON order, moved only where an embedded struct must be defined first."""
    done: list[str] = []
    placed: set[str] = set()

    def place(n: str) -> None:
        if n in placed:
            return
        placed.add(n)
        for dep in sorted(_embedded_deps(n, structs[n], structs)):
            place(dep)
        done.append(n)

    for n in structs:
        place(n)
    return done


def render_types(layouts: dict[str, Any], filters: dict[str, Any]) -> str:
    structs = wfp_structs(layouts, filters)
    lines = [
        '"""WFP and IPsec SA-context structures as dataclasses. GENERATED: do not edit by hand.',
        "",
        "Generated by scripts/gen_wfp_constants.py from src/ipsecsa/data/windows-layouts-x64.json",
        "(``structs``) and src/ipsecsa/data/windows-wfp-filters.json (``layouts``); both are",
        "copies of shared/spec. One class per FWP*/FWPM*/IPSEC*/SEC_WINNT_AUTH_IDENTITY_W",
        "structure (the NDIS/OFFLOAD ones live in ipsecsa.ndis), members in the JSON's order.",
        "",
        "How C maps to Python (the rules of the issue 11 contract):",
        "",
        "* Every member is a keyword argument with a zero default: integers 0, floats 0.0, fixed",
        "  arrays (IPv6 addresses, ``UINT8[16]``) zero ``bytes`` of their length.",
        "* An anonymous union is flattened: each of its members is a field of the parent, in",
        "  union order, at the union's place (``FWP_VALUE0(type=FWP_UINT8, uint8=17)``,",
        "  ``IPSEC_TRAFFIC1(localV4Address=..., localV6Address=...)``). The discriminator",
        "  (``type``, ``saTransformType``, ``ipVersion``...) says which one is meant.",
        "* An embedded GUID is a ``uuid.UUID`` defaulting to GUID_NULL (the zero GUID, what",
        "  ``memset(0)`` gives in C); a ``GUID *`` is ``uuid.UUID | None``, default None (NULL).",
        "* An embedded structure defaults to a zeroed instance of its class (as in C, it is always",
        "  there); a pointer to one structure holds that structure or None (NULL).",
        "* A union member or field that is a pointer to a scalar holds the value itself:",
        "  ``uint64``/``int64`` an ``int``, ``double64`` a ``float``, ``byteArray16`` and",
        "  ``byteArray6`` ``bytes``, ``sid`` the binary SID ``bytes``, strings ``str``; None is",
        "  NULL.",
        "* A pointer-to-array with a count beside it is a ``list`` (``filterCondition`` with",
        "  ``numFilterConditions``, ``saList`` with ``numSAs``); ``FWP_BYTE_BLOB.data`` is",
        "  ``bytes`` counted by ``size``. A count left at 0 is taken from the list; any other",
        "  count must agree (``effective_count``/``check_counts``).",
        "* IPv4 addresses are host-order ``int`` (reference F.12), IPv6 addresses 16 ``bytes``.",
        "* ``FWP_BYTE_BLOB`` data and ``SEC_WINNT_AUTH_IDENTITY_W.Password`` never appear in a",
        "  repr/str, nor in the repr of any structure holding them.",
        "* Structures are mutable (build them step by step, as in C), compare by value, and",
        "  deep-copy safely (``clone``). The transform-id types are frozen and hashable: the",
        "  predefined ids in ipsecsa.wfp.constants are ``static const`` objects in fwpmu.h.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "import uuid",
        "from collections.abc import Callable",
        "from dataclasses import dataclass, field",
        "from typing import Any, ClassVar",
        "",
        "from ._structbase import (",
        "    GUID_NULL,",
        "    SID_AND_ATTRIBUTES,",
        "    CountMismatchError,",
        "    WfpStruct,",
        "    check_counts,",
        "    clone,",
        "    count_pairs,",
        "    effective_count,",
        ")",
        "",
        "__all__ = [",
    ]
    names = _ordered(structs)
    callbacks = {**layouts["callbacks"],
                 **{k: v for k, v in filters["layouts"].items() if v.get("kind") == "callbacks"}}
    helpers = ["GUID_NULL", "SID_AND_ATTRIBUTES", "CountMismatchError", "WfpStruct",
               "check_counts", "clone", "count_pairs", "effective_count", "STRUCT_NAMES"]
    exported = sort_all(names + list(callbacks) + helpers)
    lines += [f'    "{n}",' for n in exported]
    lines += ["]"]
    for n in names:
        s = structs[n]
        src = s.get("header", "?")
        frozen = ", frozen=True" if n in FROZEN else ""
        lines += ["", "", f"@dataclass(repr=False{frozen})", f"class {n}(WfpStruct):"]
        size = s.get("size")
        lines.append(f'    """{src} {n} (x64: {size} bytes)."""')
        lines.append("")
        pairs = COUNTED.get(n)
        if pairs:
            body = ", ".join(f'("{c}", "{lst}")' for c, lst in pairs)
            lines.append("    _count_pairs_: ClassVar[tuple[tuple[str, str], ...]] = (")
            lines.append(f"        {body},")
            lines.append("    )")
        if n in SECRET:
            body = ", ".join(f'"{x}"' for x in SECRET[n])
            lines.append(f"    _secret_fields_: ClassVar[frozenset[str]] = frozenset({{{body}}})")
        if pairs or n in SECRET:
            lines.append("")
        for group in _field_groups(s):
            if group[0]:
                count = len(group[0])
                what = f"{count} members, one meant at a time" if count > 1 else "1 member"
                lines.append(f"    # anonymous union, flattened ({what})")
            for f in group[1]:
                ann, default = _annotation(n, f, structs)
                line = f"    {f['name']}: {ann} = {default}  # {f['type']}"
                if len(line) > 100:
                    line = f"    {f['name']}: {ann} = {default}"
                if len(line) > 100:
                    line = f"    {f['name']}: {ann} = field(\n        {default[6:-1]}\n    )"
                lines.append(line)
            if group[0]:
                lines.append("    # end of union")
    lines += ["", "", "# Callback types (JSON `callbacks`): C's",
              "# `void CALLBACK f(void *context, const T *change)` is a callable taking the",
              "# caller's context object and the change structure."]
    for cname, cb in callbacks.items():
        params = [p.removeprefix("const ").rstrip(" *") for p in cb["param_types"]]
        if params[0] != "void" or params[1] not in structs or cb["returns"] != "void":
            raise ValueError(f"unexpected callback shape: {cname}")
        lines.append(f"{cname} = Callable[[Any, {params[1]}], None]")
    lines += ["", "", "#: Every structure class name defined here, in definition order.",
              "STRUCT_NAMES: tuple[str, ...] = ("]
    lines += [f'    "{n}",' for n in names]
    lines += [")", ""]
    return "\n".join(lines)


def _field_groups(s: dict[str, Any]) -> list[tuple[list[str], list[dict[str, Any]]]]:
    """Runs of plain members, and each union on its own: ([union member names], members)."""
    groups: list[tuple[list[str], list[dict[str, Any]]]] = []
    for f in s["fields"]:
        if f["kind"] == "union":
            groups.append(([m["name"] for m in f["members"]], list(f["members"])))
        elif groups and not groups[-1][0]:
            groups[-1][1].append(f)
        else:
            groups.append(([], [f]))
    return groups


# --------------------------------------------------------------------------------------------
# constants


def _dict_entry(key: str, value: str) -> str:
    """One ``key: value,`` line of a dict literal, wrapped to stay within 100 columns."""
    line = f"    {key}: {value},"
    if len(line) <= 100:
        return line
    if not value.startswith('"') or len(value) <= 88:
        return f"    {key}: (\n        {value}\n    ),"
    words = textwrap.wrap(json.loads(value), 80, drop_whitespace=False)
    body = "\n".join(f"        {json.dumps(w)}" for w in words)
    return f"    {key}: (\n{body}\n    ),"


def _hex(v: int) -> str:
    return f"0x{v:08X}" if v >= 0 else str(v)


def render_constants(layouts: dict[str, Any], filters: dict[str, Any]) -> str:
    out: list[str] = []
    exported: list[str] = []

    def emit(name: str, expr: str, comment: str = "") -> None:
        line = f"{name} = {expr}"
        if comment and len(line) + len(comment) + 4 <= 100:
            line += f"  # {comment}"
        elif len(line) > 100:
            line = f"{name} = (\n    {expr}\n)"
        out.append(line)
        exported.append(name)

    # enums -----------------------------------------------------------------------------------
    enums: dict[str, dict[str, Any]] = {}
    for name, e in layouts["enums"].items():
        if e["header"] not in NDIS_HEADERS:
            enums[name] = e
    for name, e in filters["layouts"].items():
        if e.get("kind") == "enums":
            enums[name] = e
    out += ["", "# " + "-" * 96, "# Enumerations (JSON `enums`, filters JSON `layouts`). Each enum",
            "# is an IntEnum named as its C typedef; every value is also a module attribute.", ""]
    for name, e in enums.items():
        out += ["", f"class {name}(enum.IntEnum):", f'    """{e["header"]} {name}."""', ""]
        for vname, v in e["values"].items():
            out.append(f"    {vname} = {v}")
        exported.append(name)
    out.append("")
    for name, e in enums.items():
        out.append("")
        for vname in e["values"]:
            emit(vname, f"{name}.{vname}")

    # integer constants ------------------------------------------------------------------------
    out += ["", "# " + "-" * 96,
            "# Integer constants (layouts JSON `constants`, NDIS headers excluded; filters JSON",
            "# `constants`)", ""]
    seen = set(exported)
    for name, c in sorted(layouts["constants"].items()):
        if c["header"] in NDIS_HEADERS:
            continue
        emit(name, _hex(c["decimal"]), c["header"])
        seen.add(name)
    out.append("")
    for name, v in sorted(filters["constants"].items()):
        if name in seen:
            raise ValueError(f"constant defined twice: {name}")
        header = filters["constant_details"].get(name, {}).get("header", "")
        emit(name, _hex(v) if v < 2**40 else f"0x{v:X}", header)
        seen.add(name)
    for title, _section, values in EXTRA_CONSTANTS:
        out += [""] + [f"# {x}" for x in textwrap.wrap(f"{title}. Not in the JSON.", 96)]
        for name, v in values:
            if name in seen:
                raise ValueError(f"extra constant already in JSON: {name}")
            emit(name, _hex(v))
            seen.add(name)

    # GUIDs ------------------------------------------------------------------------------------
    out += ["", "# " + "-" * 96, "# GUIDs (filters JSON `layers`, `sublayers`, `callouts`,",
            "# `conditions`, `providers`). FWPM_CONDITION_ICMP_TYPE/CODE are the SDK's aliases of",
            "# IP_LOCAL_PORT/IP_REMOTE_PORT (same GUIDs).", "",
            "IID_NULL = GUID_NULL", ""]
    exported.append("IID_NULL")
    for group in ("layers", "sublayers", "callouts", "conditions", "providers"):
        out += ["", f"# {group}"]
        for name, g in filters[group].items():
            if name in seen:
                raise ValueError(f"GUID name clashes: {name}")
            line = f'{name} = uuid.UUID("{g}")'
            if len(line) > 100:
                line = f'{name} = uuid.UUID(\n    "{g}"\n)'
            out.append(line)
            exported.append(name)
            seen.add(name)
        out += ["", f"#: Name -> GUID of every entry of the filters JSON `{group}`.",
                f"{group.upper()}: dict[str, uuid.UUID] = {{"]
        out += [_dict_entry(f'"{name}"', name) for name in filters[group]]
        out.append("}")
        exported.append(group.upper())
    out += ["", "#: Layer name -> names of the conditions Microsoft documents for it",
            "#: (filters JSON `layer_conditions`, DOC).",
            "LAYER_CONDITIONS: dict[str, tuple[str, ...]] = {"]
    for layer, conds in filters["layer_conditions"].items():
        out.append(f'    "{layer}": (')
        out += [f'        "{c}",' for c in conds]
        out.append("    ),")
    out.append("}")
    exported.append("LAYER_CONDITIONS")

    # transform ids ----------------------------------------------------------------------------
    out += ["", "# " + "-" * 96,
            "# Predefined transform ids (JSON `transform_ids`; `static const` objects in fwpmu.h)",
            ""]
    for name, t in layouts["transform_ids"].items():
        if t["struct"] == "IPSEC_AUTH_TRANSFORM_ID0":
            args = f"authType={t['authType']}, authConfig={t['config_name']}"
        else:
            args = f"cipherType={t['cipherType']}, cipherConfig={t['config_name']}"
        out.append(f"{name} = {t['struct']}(")
        out.append(f"    {args}")
        out.append(")")
        exported.append(name)

    # errors -----------------------------------------------------------------------------------
    out += ["", "# " + "-" * 96,
            "# Status codes (JSON `errors`, winerror.h; comments are winerror.h message texts)", ""]
    errors: list[tuple[str, int, str]] = [
        (n, e["decimal"], e.get("message", "")) for n, e in layouts["errors"].items()
    ]
    errors += EXTRA_ERRORS
    errors.sort(key=lambda x: (x[1], x[0]))
    for name, v, msg in errors:
        if name in seen:
            raise ValueError(f"error name clashes: {name}")
        emit(name, _hex(v))
        seen.add(name)
    out += ["", "#: Every status code name -> value.", "ERRORS: dict[str, int] = {"]
    out += [_dict_entry(f'"{n}"', n) for n, _, _ in errors]
    out += ["}", "", "#: winerror.h message text per status value, where the JSON gives one.",
            "ERROR_MESSAGES: dict[int, str] = {"]
    for n, _, msg in errors:
        if msg:
            out.append(_dict_entry(n, json.dumps(msg)))
    out.append("}")
    exported += ["ERRORS", "ERROR_MESSAGES"]

    header = [
        '"""WFP and IPsec SA-context constants. GENERATED: do not edit by hand.',
        "",
        "Generated by scripts/gen_wfp_constants.py from src/ipsecsa/data/windows-layouts-x64.json",
        "and src/ipsecsa/data/windows-wfp-filters.json (copies of shared/spec, compiled from the",
        "Windows SDK headers), plus the few values those files lack, each marked below with its",
        "source in shared/spec/windows-ipsec-reference.md. NDIS values (ndis.h, ntddndis.h) are",
        "in ipsecsa.ndis.constants instead.",
        "",
        "Every name is the Windows name with the Windows value: enum values are members of an",
        "IntEnum named as the C enum type and also plain module attributes; GUIDs are uuid.UUID;",
        "status codes are unsigned 32-bit ints as the functions return them (DWORD).",
        "status_name() and describe_status() turn a status back into its name for messages.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "import enum",
        "import uuid",
        "",
        "from ._structbase import GUID_NULL",
        "from .types import IPSEC_AUTH_TRANSFORM_ID0, IPSEC_CIPHER_TRANSFORM_ID0",
    ]
    footer = [
        "",
        "# " + "-" * 96,
        "# Status-code names for messages",
        "",
        "# FWP_E_* first, then ERROR_*, then the rest: RPC_S_ACCESS_DENIED is ERROR_ACCESS_DENIED.",
        "_STATUS_NAMES: dict[int, str] = {}",
        "for _prefix in (\"FWP_E_\", \"ERROR_\", \"\"):",
        "    for _name, _value in ERRORS.items():",
        "        if _name.startswith(_prefix):",
        "            _STATUS_NAMES.setdefault(_value, _name)",
        "",
        "",
        "def status_name(status: int) -> str:",
        '    """The Windows name of a DWORD status (``0x80320012 -> "FWP_E_TIMEOUT"``).',
        "",
        "    Unknown values come back as ``0x%08X`` so a message always shows something exact.",
        '    """',
        "    name = _STATUS_NAMES.get(status)",
        '    return name if name is not None else f"0x{status & 0xFFFFFFFF:08X}"',
        "",
        "",
        "def describe_status(status: int) -> str:",
        '    """``"FWP_E_TIMEOUT (0x80320012): The call timed out ..."`` for logs and errors."""',
        '    text = f"{status_name(status)} (0x{status & 0xFFFFFFFF:08X})"',
        "    message = ERROR_MESSAGES.get(status)",
        '    return f"{text}: {message}" if message else text',
        "",
        "",
        "def HRESULT_FROM_WIN32(code: int) -> int:",
        '    """winerror.h HRESULT_FROM_WIN32: a Win32 error as the 0x8007xxxx HRESULT."""',
        "    code &= 0xFFFFFFFF",
        "    return code if code == 0 or code & 0x80000000 else (code & 0xFFFF) | 0x80070000",
        "",
        "",
        "def guid_name(guid: uuid.UUID) -> str | None:",
        '    """The Windows name of a layer/sublayer/callout/condition/provider GUID, or None.',
        "",
        "    For the aliased condition GUIDs the primary name (IP_LOCAL_PORT) wins over the alias.",
        '    """',
        "    return _GUID_NAMES.get(guid)",
        "",
        "",
        "_GUID_NAMES: dict[uuid.UUID, str] = {}",
        "for _table in (LAYERS, SUBLAYERS, CALLOUTS, CONDITIONS, PROVIDERS):",
        "    for _name, _guid in _table.items():",
        "        if _name not in (\"FWPM_CONDITION_ICMP_TYPE\", \"FWPM_CONDITION_ICMP_CODE\"):",
        "            _GUID_NAMES.setdefault(_guid, _name)",
        "",
        "",
    ]
    exported += ["status_name", "describe_status", "HRESULT_FROM_WIN32", "guid_name"]
    allblock = ["", "__all__ = ["] + [f'    "{n}",' for n in sort_all(exported)] + ["]"]
    return "\n".join(header + allblock + out + footer)


def render_all() -> dict[Path, str]:
    layouts, filters = load()
    return {CONSTANTS_PY: render_constants(layouts, filters),
            TYPES_PY: render_types(layouts, filters)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a committed file differs from what would be generated")
    args = parser.parse_args(argv)
    stale = []
    for path, text in render_all().items():
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    for path in stale:
        print(f"out of date: {path.relative_to(ROOT)}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())

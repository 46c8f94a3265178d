"""A stored filter's compiled form: what a reopened durable engine needs to classify with a
filter, without rebuilding its FWPM_FILTER0 (issue 12: reopening 100,000 contexts fast).

Each stored filter row keeps the FWPM_FILTER0 as given (the ``body``, store codec JSON) and,
next to it, this compact JSON list (the ``compiled`` column), made when the filter is written::

    [FORMAT, layer name, action type, callout name or null, effective weight,
     F.16 conditions text or null, [[version, src, src mask, dst, dst mask, protocol, sport,
     dport], ...]]

— everything the filter table needs: the layer, the action and callout that decide a packet,
the F.20 order, the F.16 key of an IPsec filter (:func:`.filters.conditions_text`) and the
classifier entries its conditions index under (:meth:`.conditions.Compiled.index`). A reopen
builds the record from it; the FWPM_FILTER0 and the compiled conditions are rebuilt when first
read (Get, Enum, a candidate packet's exact test).

Trust: the row was validated by FwpmFilterAdd0 when it was written and its SHA-256 digest
covers both columns, so a reopen does not validate the caller's input again. It still never
builds what the engine could not have produced: the names must be known layers and callouts
(the same registry lookups as validation), the action one of the filter actions, the entries
classifier filters (their own checks). ``FORMAT`` names the rules that made the compiled form;
a row made under other rules (another FORMAT, or none: rows written before this column) is
validated and compiled again the full way (:meth:`ipsecsa.wfp.Engine._load`).
"""

from __future__ import annotations

import json
import uuid

from ipsecsa.sad import Filter
from ipsecsa.store.codec import compact, loads_u64
from ipsecsa.wfp import constants as C
from ipsecsa.wfp.filters import _FILTER_ACTIONS, FilterRecord
from ipsecsa.wfp.registry import (
    CALLOUT_INFO,
    CALLOUTS,
    GUID_OF,
    LAYER_CONDITIONS,
    LayerInfo,
    layer_info,
)

#: The rules the compiled form follows (validation, compilation, index, F.16 key). Bump it
#: when any of them changes: rows of another format are then compiled again on load.
FORMAT = 1

_CALLOUT_BY_NAME = {name: CALLOUT_INFO[g] for g, name in CALLOUTS.items()}
_LAYER_BY_NAME: dict[str, LayerInfo] = {}


class RowError(ValueError):
    """A compiled form that this engine could not have written."""


def compiled_form(rec: FilterRecord, entries: list[Filter]) -> str:
    """The compiled column of ``rec`` (indexed under ``entries``)."""
    cond = rec.cond_key[2] if rec.cond_key is not None else None
    return compact(
        [FORMAT, rec.layer.name, rec.action, rec.callout.name if rec.callout else None,
         rec.weight, cond,
         [[f.version, f.src, f.src_mask, f.dst, f.dst_mask, f.protocol, f.sport, f.dport]
          for f in entries]])


def record_from_row(fid: int, key: str, lifetime: str, body: str, compiled: str
                    ) -> tuple[FilterRecord, list[Filter]] | None:
    """The record of a stored filter and the classifier entries to publish it under, from its
    compiled form; None when that form follows other rules (another FORMAT): the caller
    compiles the body the full way. RowError for a form this engine could not have written."""
    try:
        form = loads_u64(compiled)
        if form[0] != FORMAT:
            return None
        if type(form[1]) is str and form[1].endswith("_V6"):
            form = json.loads(compiled)  # its entries hold 128-bit addresses (see loads_u64)
        _, layer_name, action, callout_name, weight, cond, entries = form
        layer = _LAYER_BY_NAME.get(layer_name)
        if layer is None:
            if layer_name not in LAYER_CONDITIONS:
                raise RowError(f"layer {layer_name!r}")
            layer = _LAYER_BY_NAME[layer_name] = layer_info(layer_name)
        if action not in _FILTER_ACTIONS:
            raise RowError(f"action type {action!r}")
        callout = None if callout_name is None else _CALLOUT_BY_NAME[callout_name]
        if (callout is None) == bool(action & C.FWP_ACTION_FLAG_CALLOUT) or (
                callout is not None and callout.layer != layer_name):
            raise RowError("the callout does not fit the action or the layer")
        if type(weight) is not int or not 0 <= weight < 1 << 64:
            raise RowError(f"weight {weight!r}")
        rec = object.__new__(FilterRecord)
        rec.__dict__.update(id=fid, key=uuid.UUID(key), layer=layer, weight=weight,
                            action=action, callout=callout, lifetime=lifetime, session=None,
                            handles=(), published=False, order=(-weight, fid), cond_key=None,
                            lazy_body=body)
        role = rec.ipsec_role
        if (role is None) != (cond is None):
            raise RowError("the F.16 key does not fit the action")
        if role is not None:
            if type(cond) is not str:
                raise RowError("F.16 key")
            rec.cond_key = (GUID_OF[layer_name], role, cond)
        return rec, [Filter(*e) for e in entries]
    except RowError as exc:
        raise RowError(f"stored filter {fid}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise RowError(f"stored filter {fid}: a damaged compiled form ({exc!r})") from None

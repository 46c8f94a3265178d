"""Specification data shipped with the package (see ``README.md`` in this directory).

The tables are read through :mod:`importlib.resources`, so they are found the same way from a
checkout, an editable install or a wheel -- never through a path outside the package.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

#: The x64 layouts and constants of the NDIS IPsec offload v1 and WFP IPsec SA-context APIs.
WINDOWS_LAYOUTS = "windows-layouts-x64.json"
#: The GUIDs and constants of the WFP filter API.
WFP_FILTERS = "windows-wfp-filters.json"
FILES = (WINDOWS_LAYOUTS, WFP_FILTERS)


@cache
def _text(name: str) -> str:
    if name not in FILES:
        raise ValueError(f"no package data file {name!r}; known: {', '.join(FILES)}")
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def load_json(name: str) -> dict[str, Any]:
    """A fresh parsed copy of one of :data:`FILES` (callers may mutate it)."""
    data = json.loads(_text(name))
    assert isinstance(data, dict)
    return data


def windows_layouts() -> dict[str, Any]:
    """``windows-layouts-x64.json``: ``structs``, ``unions``, ``enums``, ``constants``, ..."""
    return load_json(WINDOWS_LAYOUTS)


def wfp_filters() -> dict[str, Any]:
    """``windows-wfp-filters.json``: ``layers``, ``sublayers``, ``conditions``, ``constants``, ..."""
    return load_json(WFP_FILTERS)


__all__ = ["FILES", "WFP_FILTERS", "WINDOWS_LAYOUTS", "load_json", "wfp_filters", "windows_layouts"]

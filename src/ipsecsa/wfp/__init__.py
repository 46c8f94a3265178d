"""ipsecsa.wfp: the Windows WFP / IPsec SA-context management API (issue 11).

``from ipsecsa import wfp`` gives every structure (``wfp.FWPM_FILTER0``), constant
(``wfp.FWP_E_TIMEOUT``), GUID (``wfp.FWPM_LAYER_OUTBOUND_TRANSPORT_V4``) and predefined transform
id under its Windows name. The structures and constants are generated from the Windows layout
JSON by ``scripts/gen_wfp_constants.py``; see :mod:`ipsecsa.wfp.types` for how C maps to Python
and :mod:`ipsecsa.wfp.unions` for which flattened union member a discriminator selects.
"""

from __future__ import annotations

from . import constants, types, unions
from .constants import *
from .engine import IPSECSA_SA_CONTEXT_EVENT_STATE, Engine
from .types import *

__all__ = ["IPSECSA_SA_CONTEXT_EVENT_STATE", "Engine", "constants", "types", "unions"]
__all__ += constants.__all__
__all__ += types.__all__

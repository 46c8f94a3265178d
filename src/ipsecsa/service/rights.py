"""Rights names for tokens: the ``FWPM_ACTRL_*`` rights of the access-control model.

``parse_rights("read,enum")`` accepts a comma-separated list of ``FWPM_ACTRL_*`` names with or
without the prefix, in any case, or ``all`` (``FWPM_GENERIC_ALL``). *ipsecsa's choice*: the
``FWPM_GENERIC_*`` names (``generic_read``, ...) and the standard rights the engine also checks
(``delete``, ``read_control``, ``write_dac``, ``write_owner``) are accepted too, because without
``delete`` no principal below ``all`` could delete an SA context.
"""

from __future__ import annotations

from ipsecsa.errors import IpsecsaError
from ipsecsa.wfp import constants as C

_ACTRL = {name[len("FWPM_ACTRL_"):].lower(): int(getattr(C, name))
          for name in dir(C) if name.startswith("FWPM_ACTRL_")}
_GENERIC = {name[len("FWPM_"):].lower(): int(getattr(C, name))
            for name in dir(C) if name.startswith("FWPM_GENERIC_")}
_STANDARD = {"delete": C.DELETE, "read_control": C.READ_CONTROL, "write_dac": C.WRITE_DAC,
             "write_owner": C.WRITE_OWNER}

#: Every name a right may be given by (lower case, without prefix) -> its bits.
RIGHTS: dict[str, int] = {**_ACTRL, **_GENERIC, **_STANDARD, "all": C.FWPM_GENERIC_ALL}

#: Rights that let a token manage tokens: changing who may do what is changing the DACL.
MANAGE_TOKENS = C.WRITE_DAC


class RightsError(IpsecsaError, ValueError):
    """A rights list names no known right."""

    def __init__(self, message: str) -> None:
        self.field = "rights"
        super().__init__(message)


def parse_rights(text: str | list[str]) -> int:
    """The access mask for ``read,enum`` (or a list of names)."""
    names = text.split(",") if isinstance(text, str) else list(text)
    mask = 0
    for raw in names:
        name = raw.strip().lower()
        for prefix in ("fwpm_actrl_", "fwpm_"):
            if name.startswith(prefix) and name[len(prefix):] in RIGHTS:
                name = name[len(prefix):]
                break
        if not name:
            continue
        if name not in RIGHTS:
            raise RightsError(f"unknown right {raw.strip()!r}: an FWPM_ACTRL_* name (add, "
                              "add_link, begin_read_txn, begin_write_txn, classify, enum, open, "
                              "read, read_stats, subscribe, write), delete, or all")
        mask |= RIGHTS[name]
    if not mask:
        raise RightsError("no rights given")
    return mask


def rights_names(mask: int) -> list[str]:
    """``FWPM_ACTRL_*`` (and standard) names of the bits in ``mask``; ``all`` for all of them."""
    if mask & C.FWPM_GENERIC_ALL == C.FWPM_GENERIC_ALL:
        return ["all"]
    names = [f"FWPM_ACTRL_{n.upper()}" for n, bit in sorted(_ACTRL.items()) if mask & bit]
    names += [n.upper() for n, bit in sorted(_STANDARD.items()) if mask & bit]
    return names

"""Load SA files (``{"sas": [...]}`` in JSON or TOML) straight into security associations."""

from __future__ import annotations

import os

from ipsecsa.config import load_sa_file
from ipsecsa.datapath.sa import SecurityAssociation


def load_sas(path: str | os.PathLike[str], *, now: float | None = None
             ) -> list[SecurityAssociation]:
    """Every SA of an SA file, built and ready for traffic, in file order.

    Raises :class:`~ipsecsa.errors.ConfigError` naming the file and the field (``sas[2].spi``)."""
    return [SecurityAssociation.from_config(cfg, now=now) for cfg in load_sa_file(path)]

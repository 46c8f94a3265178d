"""Shared pieces of the key-text importers (``ip xfrm``, strongSwan, tcpdump, Wireshark).

Each importer turns another tool's text into sa-format objects (plain dicts, exactly what an SA
file holds), remembering the line each came from; :func:`build_configs` then validates them with
the one SA parser, so an imported SA is held to the same rules as a hand-written one, and an
error names the line of the source text and the field, never a key.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ipsecsa.config.model import SaConfig
from ipsecsa.config.parse import parse_sa
from ipsecsa.errors import ConfigError, IpsecsaError


class KeyTextError(IpsecsaError):
    """Text given to an importer is not in the format it expects. ``line`` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        self.reason = message
        super().__init__(f"line {line}: {message}")


@dataclass
class Imported:
    """One SA found in a text: its sa-format object and the line it starts on."""

    line: int
    sa: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def hex_key(text: str, line: int, what: str) -> str:
    """A ``0x``-prefixed hex key as our lowercase hex; KeyTextError (without the value) else."""
    value = text.strip()
    if value.lower().startswith("0x"):
        value = value[2:]
    if len(value) % 2 or any(c not in "0123456789abcdefABCDEF" for c in value):
        raise KeyTextError(line, f"{what}: not a hex key")
    return value.lower()


def build_configs(entries: Iterable[Imported]) -> list[SaConfig]:
    """Validate imported objects; a ConfigError becomes a KeyTextError naming line and field."""
    configs: list[SaConfig] = []
    for entry in entries:
        try:
            configs.append(parse_sa(entry.sa))
        except ConfigError as exc:
            field_ = f"{exc.field}: " if exc.field else ""
            raise KeyTextError(entry.line, f"{field_}{exc.reason}") from None
    return configs


__all__ = ["Imported", "KeyTextError", "build_configs", "hex_key"]

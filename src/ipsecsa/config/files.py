"""SA files: ``{"sas": [...]}`` as JSON or TOML, read with positions in errors, written 0600.

This is an edge adapter (it does file I/O); the core never imports it. Files hold keys, so a
written file is created with mode 0600 from its first byte and swapped in atomically: a reader
sees the old file or the new one, never a partial one, and nobody else ever sees either.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ipsecsa.config.model import SaConfig
from ipsecsa.config.parse import parse_sa
from ipsecsa.errors import ConfigError
from ipsecsa.securefile import SECRET_FILE_MODE, write_secret_file

_FILE_KEYS = frozenset({"sas"})
#: Owner read/write only: SA files hold keys.
FILE_MODE = SECRET_FILE_MODE


def _with_file(err: ConfigError, name: str, prefix: str | None = None) -> ConfigError:
    """The same error type, optionally re-rooted under ``prefix``, its message naming the file."""
    field = err.field
    if prefix is not None:
        field = f"{prefix}.{field}" if field else prefix
    new = type(err).__new__(type(err))
    ConfigError.__init__(new, field, f"{name}: {err.reason}")
    return new


def _decode(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"{name}: not UTF-8 text (byte {exc.start})") from None


def _is_toml(path: Path, text: str) -> bool:
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return True
    if suffix == ".json":
        return False
    # No telling extension: a JSON document starts with "{"; anything else is tried as TOML.
    return not text.lstrip().startswith("{")


def _load_document(path: Path, text: str) -> Any:
    name = path.name
    if _is_toml(path, text):
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            # tomllib's message already ends "(at line L, column C)"; it never echoes values.
            raise ConfigError("", f"{name}: invalid TOML: {exc}") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        # exc.msg is the reason only; str(exc) would be the same plus the position we add.
        raise ConfigError("", f"{name}: invalid JSON: {exc.msg} at line {exc.lineno}, "
                              f"column {exc.colno}") from None


def load_sa_file(path: str | os.PathLike[str]) -> list[SaConfig]:
    """Read an SA file (JSON, or TOML by ``.toml`` extension or content).

    Errors are :class:`~ipsecsa.errors.ConfigError` with fields such as ``"sas[3].spi"`` and the
    file name in the message; a syntax error has field ``""`` and the parser's position. Two SAs
    with the same (protocol, SPI, destination) are refused: that triple identifies an SA
    (RFC 4301 §4.1). ``OSError`` (missing file, permissions) passes through unchanged.
    """
    path = Path(path)
    name = path.name
    doc = _load_document(path, _decode(path.read_bytes(), name))
    if not isinstance(doc, dict):
        raise ConfigError("", f'{name}: the document must be an object {{"sas": [...]}}')
    for key in doc:
        if key not in _FILE_KEYS:
            raise ConfigError(str(key), f"{name}: unknown key")
    if "sas" not in doc:
        raise ConfigError("sas", f"{name}: required")
    sas = doc["sas"]
    if not isinstance(sas, list):
        raise ConfigError("sas", f"{name}: must be a list of SA objects")
    configs: list[SaConfig] = []
    # An SA is identified by (protocol, SPI, destination) within one direction; an outbound
    # and an inbound SA may share them (a loopback test file), an undirected SA clashes with both.
    seen: dict[tuple[str, int, Any], list[tuple[int, str | None]]] = {}
    for i, item in enumerate(sas):
        try:
            cfg = parse_sa(item)
        except ConfigError as exc:
            raise _with_file(exc, name, f"sas[{i}]") from None
        ident = (cfg.protocol, cfg.spi, cfg.dst)
        for j, direction in seen.get(ident, ()):
            if direction is None or cfg.direction is None or direction == cfg.direction:
                raise ConfigError(f"sas[{i}].spi", f"{name}: same protocol, SPI, dst and "
                                                   f"direction as sas[{j}]")
        seen.setdefault(ident, []).append((i, cfg.direction))
        configs.append(cfg)
    return configs


def read_sa_descriptions(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The SA objects of an SA file as written (dicts, keys included), after
    :func:`load_sa_file` has validated them: what the SA-context API and the service take."""
    load_sa_file(path)
    path = Path(path)
    doc = _load_document(path, _decode(path.read_bytes(), path.name))
    return [dict(item) for item in doc["sas"]]


def dump_sa_file(path: str | os.PathLike[str], configs: Iterable[SaConfig]) -> None:
    """Write ``configs`` as a JSON SA file, atomically, with mode 0600.

    The temporary file is created in the target's directory with ``os.open(..., 0o600)`` (so it
    is never readable by others, whatever the umask), fsynced, then ``os.replace``-d over the
    target; the directory is fsynced so the rename survives a crash.
    """
    path = Path(path)
    if path.suffix.lower() == ".toml":
        raise ConfigError("", f"{path.name}: dump_sa_file writes JSON; use a .json name")
    data = {"sas": [cfg.to_dict() for cfg in configs]}
    payload = (json.dumps(data, indent=2) + "\n").encode("utf-8")
    write_secret_file(path, payload)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object with a key given twice is an error, never "the last one wins": unknown or
    repeated keys are refused, not silently ignored (sa-format.md)."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ConfigError(key, "key given twice in one JSON object")
        obj[key] = value
    return obj


__all__ = ["dump_sa_file", "load_sa_file"]

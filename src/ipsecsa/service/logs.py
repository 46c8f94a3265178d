"""Structured log lines of the service: one ``key=value`` line per event (logfmt), on stderr.

Only what is passed by name is logged: request method, path, status, latency, principal, token
ids. Request and response bodies (SA descriptions carry keys) and tokens are never logged.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

logger = logging.getLogger("ipsecsa.service")


def _value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\\') or not text.isprintable():
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').encode(
            "unicode_escape").decode("ascii") + '"'
    return text


def format_line(event: str, level: str = "info", **fields: Any) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"
    parts = [f"ts={stamp}", f"level={level}", f"event={_value(event)}"]
    parts += [f"{k}={_value(v)}" for k, v in fields.items()]
    return " ".join(parts)


def log(event: str, level: str = "info", **fields: Any) -> None:
    logger.log(logging.getLevelName(level.upper()), "%s", format_line(event, level, **fields))


def setup(verbose: bool = True) -> None:
    """Send the service's lines to stderr as they are (no prefix: they are the format)."""
    if any(getattr(h, "_ipsecsa_service", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._ipsecsa_service = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False

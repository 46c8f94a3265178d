"""Turning exceptions into the one line a user reads (``ipsecsa: error: ...``).

Only errors that are the user's doing are phrased here (files that are missing or unreadable, SA
files that do not validate, captures that are not captures, text that does not parse); anything
else is a bug and the caller reports it as one. The library's messages already name fields and
never values, so no key can reach the terminal through them.
"""

from __future__ import annotations

import os

from ipsecsa.errors import ConfigError, IpsecsaError


class CliError(IpsecsaError):
    """A user mistake found by the command itself; ``exit_code`` is the status to exit with."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        self.exit_code = exit_code
        super().__init__(message)


def config_error_line(exc: ConfigError, source: str | os.PathLike[str] | None = None) -> str:
    """``<file>: <field>: <reason>`` for a ConfigError (the file first, once)."""
    reason = exc.reason
    name = None if source is None else os.fspath(source)
    if name is not None:
        base = os.path.basename(name)
        for prefix in (f"{name}: ", f"{base}: "):
            if reason.startswith(prefix):
                reason = reason[len(prefix):]
                break
    field = f"{exc.field}: " if exc.field else ""
    return f"{name}: {field}{reason}" if name is not None else f"{field}{reason}"


def describe(exc: BaseException) -> str | None:
    """The one-line message for a user mistake, or None if ``exc`` is not one (a bug)."""
    from ipsecsa.io.pcap import PcapError

    if isinstance(exc, CliError):
        return str(exc)
    if isinstance(exc, PcapError):
        return str(exc)
    if isinstance(exc, ConfigError):
        return config_error_line(exc)
    if isinstance(exc, IpsecsaError):
        return str(exc)
    if isinstance(exc, IsADirectoryError):
        return f"{exc.filename}: is a directory"
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte {exc.start})"
    return None


__all__ = ["CliError", "config_error_line", "describe"]

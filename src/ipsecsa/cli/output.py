"""What every command shares: loading SA files, printing JSON, tables and progress bars.

Tables and progress bars are rich's: colour and bars only when the stream is a terminal (rich
checks, and honours ``NO_COLOR``); piped output is plain text at a fixed width, so scripts and
tests see stable lines. ``--json`` output is one JSON document on stdout and nothing else there.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ipsecsa.cli.errors import CliError, config_error_line
from ipsecsa.config.model import SaConfig
from ipsecsa.errors import ConfigError

#: Width of tables when stdout is not a terminal (rich would otherwise wrap at 80 columns).
PIPE_WIDTH = 160
#: Files smaller than this get no progress bar (it would flash and vanish).
PROGRESS_MIN_BYTES = 4 * 1024 * 1024

json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print one JSON document instead of tables.")


def sa_file_option(required: bool = True) -> Callable[[Any], Any]:
    return click.option("--sa-file", "-s", "sa_file", required=required, metavar="FILE",
                        help="SA file ({\"sas\": [...]}, JSON or TOML; docs/sa-format.md).")


def load_sas(path: str, *, quiet: bool = False) -> list[SaConfig]:
    """The SAs of an SA file, or a one-line :class:`CliError` naming the file and the field.

    ``quiet`` silences the configuration warnings (for a caller that prints them itself)."""
    import logging

    from ipsecsa.config.files import load_sa_file

    logger = logging.getLogger("ipsecsa.config")
    was = logger.disabled
    logger.disabled = quiet or was
    try:
        return load_sa_file(path)
    except ConfigError as exc:
        raise CliError(config_error_line(exc, path)) from None
    except IsADirectoryError:
        raise CliError(f"{path}: is a directory, not an SA file") from None
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror or exc}") from None
    finally:
        logger.disabled = was


def check_input(path: str, what: str = "capture") -> None:
    """Refuse a missing or unreadable input with one line before any work starts."""
    if not os.path.exists(path):
        raise CliError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CliError(f"{path}: is a directory, not a {what}")
    if not os.access(path, os.R_OK):
        raise CliError(f"{path}: permission denied")


def print_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, default=str))


def console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else PIPE_WIDTH
    return Console(file=stream, width=width, soft_wrap=False)


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for name in columns:
        t.add_column(name, overflow="fold")
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    return t


@contextmanager
def progress_bar(path: str, label: str, enabled: bool = True) -> Iterator[Callable[[int], None]
                                                                          | None]:
    """A callback ``(bytes done) -> None`` drawing a bar on a terminal's stderr, or None when
    there is no terminal, the file is small, or ``enabled`` is false."""
    size = os.path.getsize(path) if os.path.exists(path) else 0
    if not enabled or not sys.stderr.isatty() or size < PROGRESS_MIN_BYTES:
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=console(stderr=True),
                  transient=True) as progress:
        task = progress.add_task(label, total=size)

        def update(done: int) -> None:
            progress.update(task, completed=done)

        yield update


__all__ = ["check_input", "console", "json_option", "load_sas", "print_json", "progress_bar",
           "sa_file_option", "table"]

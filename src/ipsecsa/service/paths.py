"""Where the service keeps its state by default, shared by ``ipsecsa serve`` and the clients.

The database lives in the user's data directory (``$XDG_DATA_HOME/ipsecsa``, else
``~/.local/share/ipsecsa``), as strongSwan keeps its state under ``/var/lib`` for root; the Unix
socket and the administrator token sit beside it, so a client with no options finds a service
started with none.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "share")
    return Path(base) / "ipsecsa"


def default_database() -> Path:
    return data_dir() / "ipsecsa.db"


def default_socket() -> Path:
    return data_dir() / "ipsecsa.sock"


def default_token_file(database: str | os.PathLike[str] | None = None) -> Path:
    """The administrator token file: beside the database."""
    db = Path(database) if database is not None else default_database()
    return db.parent / "admin.token"


def token_store(database: str | os.PathLike[str]) -> Path:
    """The hashed-token table: beside the database, named after it."""
    db = Path(database)
    return db.parent / (db.name + ".tokens.json")

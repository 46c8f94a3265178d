"""Bearer tokens of the service: who a request is (a principal) and what it may do (rights).

A token is 32 random bytes (``secrets``), shown once, at creation. The store keeps only its
SHA-256 (a token has 256 bits of entropy, so a fast hash is enough: nothing to brute-force),
with the principal and the ``FWPM_ACTRL_*`` mask, in a small JSON file beside the database,
written atomically and 0600. The rights themselves are enforced by the engine: the service
grants them with ``engine.grant`` and runs each request in a session of the principal.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ipsecsa.errors import IpsecsaError
from ipsecsa.securefile import write_secret_file

PREFIX = "ipsecsa_"
#: The principal of the administrator token written on first start.
ADMIN = "admin"


class TokenError(IpsecsaError):
    """The token store cannot be read or the token named does not exist."""


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class TokenRecord:
    """One token as stored: never the token itself."""

    id: str
    principal: str
    rights: int
    sha256: str
    created: float

    def public(self) -> dict[str, Any]:
        from ipsecsa.service.rights import rights_names

        return {"id": self.id, "principal": self.principal, "rights": rights_names(self.rights),
                "mask": self.rights, "created": self.created}


class TokenStore:
    """The token table (``<database>.tokens.json``). Thread-safe; every change is on disk
    before it returns."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._by_hash: dict[str, TokenRecord] = {}
        self.existed = self.path.exists()
        if self.existed:
            self._load()

    def _load(self) -> None:
        try:
            doc = json.loads(self.path.read_text("utf-8"))
            records = [TokenRecord(**r) for r in doc["tokens"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TokenError(f"{self.path}: unreadable token store ({type(exc).__name__})") \
                from None
        self._by_hash = {r.sha256: r for r in records}

    def _save(self) -> None:
        doc = {"version": 1, "tokens": [asdict(r) for r in self._by_hash.values()]}
        write_secret_file(self.path, json.dumps(doc, indent=1).encode())

    def create(self, principal: str, rights: int) -> tuple[str, TokenRecord]:
        """A new token for ``principal`` with ``rights``: (the token, its record)."""
        token = PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            ids = {r.id for r in self._by_hash.values()}
            tid = secrets.token_hex(4)
            while tid in ids:
                tid = secrets.token_hex(4)
            record = TokenRecord(tid, principal, rights, digest(token), time.time())
            self._by_hash[record.sha256] = record
            self._save()
        return token, record

    def lookup(self, token: str) -> TokenRecord | None:
        with self._lock:
            return self._by_hash.get(digest(token))

    def records(self) -> list[TokenRecord]:
        with self._lock:
            return sorted(self._by_hash.values(), key=lambda r: r.created)

    def revoke(self, token_id: str) -> TokenRecord:
        """Remove the token with this id (or this token itself)."""
        with self._lock:
            for key, record in self._by_hash.items():
                if record.id == token_id or key == digest(token_id):
                    del self._by_hash[key]
                    self._save()
                    return record
        raise TokenError(f"no token with id {token_id!r}")

    def rights_of(self, principal: str) -> int:
        """The union of the rights of a principal's tokens (what the engine grants it)."""
        with self._lock:
            mask = 0
            for record in self._by_hash.values():
                if record.principal.casefold() == principal.casefold():
                    mask |= record.rights
            return mask

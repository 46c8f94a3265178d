"""Access control of the engine (reference D): principals, containers and their allow entries.

Windows keeps a security descriptor per container and per object and checks it against the
caller's token. ipsecsa has no tokens, so a caller is a *principal name* (reference contract of
issue 11: ``SEC_WINNT_AUTH_IDENTITY_W`` names it) and each container keeps a table of allow
entries ``principal -> rights``:

* The engine's owner (``authIdentity`` None) holds ``FWPM_GENERIC_ALL`` everywhere (D.2: the
  Administrators entry of the default DACL).
* Everyone holds ``FWPM_ACTRL_OPEN | FWPM_ACTRL_CLASSIFY`` on the engine (D.2).
* :meth:`AccessControl.grant` adds rights to a principal on ``"engine"`` (inherited by every
  container, D.2), ``"ipsec_sa_db"`` or ``"filters"``; :meth:`~AccessControl.revoke` removes them.
  **ipsecsa's choice:** there are no per-object descriptors, so a grant or revoke takes effect at
  once on the container and everything in it, objects made before included; and a principal that
  holds ``FWPM_GENERIC_ALL`` on the engine counts as an administrator (it always gets OPEN, D.2's
  lock-out rule).

The check itself is one dict lookup per container and a mask test; every call checks at call
time, so a revoke is never cached away.
"""

from __future__ import annotations

import threading

from ipsecsa.wfp import constants as C

#: The containers a right can be granted on. Objects inherit from their container, containers
#: from the engine (reference D.2).
CONTAINERS = ("engine", "ipsec_sa_db", "filters")

#: The owner principal: the caller that passes no ``authIdentity``.
OWNER = ""
#: Everyone's entry on the engine's default DACL (reference D.2).
EVERYONE = "Everyone"

_VALID_RIGHTS = C.FWPM_GENERIC_ALL | C.FWPM_GENERIC_READ | C.FWPM_GENERIC_WRITE \
    | C.FWPM_GENERIC_EXECUTE


def _key(principal: str) -> str:
    """Windows account names are case-insensitive (``LAB\\Alice`` is ``lab\\alice``): entries
    are kept and looked up under the case-folded name."""
    return principal.casefold()


def principal_of(identity: object) -> str | None:
    """The principal an ``authIdentity`` names: ``Domain\\User``, or ``User`` without a domain;
    the owner for None. None if the identity is unusable (no user name)."""
    if identity is None:
        return OWNER
    user = getattr(identity, "User", None)
    if not isinstance(user, str) or not user:
        return None
    domain = getattr(identity, "Domain", None)
    if isinstance(domain, str) and domain:
        return f"{domain}\\{user}"
    return user


class AccessControl:
    """Allow entries per container; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, int]] = {c: {} for c in CONTAINERS}
        self._entries["engine"][_key(EVERYONE)] = C.FWPM_ACTRL_OPEN | C.FWPM_ACTRL_CLASSIFY

    @staticmethod
    def _check(container: str, rights: int) -> None:
        if container not in CONTAINERS:
            raise ValueError(f"container must be one of {', '.join(CONTAINERS)}, not "
                             f"{container!r}")
        if not isinstance(rights, int) or isinstance(rights, bool) or rights <= 0 \
                or rights & ~_VALID_RIGHTS:
            raise ValueError(f"rights must be a non-zero mask of FWPM_ACTRL_* / FWPM_GENERIC_* "
                             f"bits, not {rights!r}")

    def grant(self, principal: str, rights: int, container: str = "engine") -> None:
        """Allow ``principal`` the ``rights`` on ``container`` (added to what it has)."""
        self._check(container, rights)
        if not isinstance(principal, str) or not principal:
            raise ValueError("principal must be a non-empty name")
        key = _key(principal)
        with self._lock:
            table = self._entries[container]
            table[key] = table.get(key, 0) | rights

    def revoke(self, principal: str, rights: int, container: str = "engine") -> None:
        """Remove ``rights`` from ``principal``'s entry on ``container``."""
        self._check(container, rights)
        if not isinstance(principal, str) or not principal:
            raise ValueError("principal must be a non-empty name")
        key = _key(principal)
        with self._lock:
            table = self._entries[container]
            left = table.get(key, 0) & ~rights
            if left:
                table[key] = left
            else:
                table.pop(key, None)

    def entries(self) -> dict[str, dict[str, int]]:
        """A copy of every container's allow entries (for persistence and inspection), under
        case-folded principal names."""
        with self._lock:
            return {c: dict(t) for c, t in self._entries.items()}

    def load(self, entries: dict[str, dict[str, int]]) -> None:
        """Replace the entries (a reopened durable engine)."""
        with self._lock:
            for c in CONTAINERS:
                self._entries[c] = {_key(p): r for p, r in entries.get(c, {}).items()}

    def is_admin(self, principal: str) -> bool:
        if principal == OWNER:
            return True
        with self._lock:
            held = self._entries["engine"].get(_key(principal), 0)
        return held & C.FWPM_GENERIC_ALL == C.FWPM_GENERIC_ALL

    def rights(self, principal: str, container: str) -> int:
        """Everything ``principal`` may do on ``container`` (its own entries, the engine's, and
        Everyone's)."""
        if self.is_admin(principal):
            return C.FWPM_GENERIC_ALL
        key, everyone = _key(principal), _key(EVERYONE)
        with self._lock:
            held = 0
            for c in {"engine", container}:
                table = self._entries[c]
                held |= table.get(key, 0) | table.get(everyone, 0)
        return held

    def allowed(self, principal: str, container: str, needed: int) -> bool:
        if principal == OWNER:  # rights() of the owner, without its calls (every call asks)
            return C.FWPM_GENERIC_ALL & needed == needed
        return self.rights(principal, container) & needed == needed

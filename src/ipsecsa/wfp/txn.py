"""Sessions' transactions (reference B.4, B.5): one engine-wide lock, undo logs, the hour limit.

Every management call runs in a transaction: the session's explicit one (Begin ... Commit/Abort)
or an implicit one around the single call. Both take the engine's *transaction lock*, so a
session holding an explicit transaction keeps every other session's calls waiting, for at most
that session's ``txnWaitTimeoutInMSec`` (default 15 s) of **real** time, after which the waiting
call fails with FWP_E_TIMEOUT (B.4, DOC and OBS).

**ipsecsa's choices:**

* Read-only and read/write transactions take the same lock (Windows does not say whether
  read-only ones share; one lock keeps every reader's view consistent).
* Changes made inside an explicit transaction are applied at once to the session's view (so
  it reads what it wrote) and recorded in an undo log; Abort replays the log backwards. Changes
  that reach the *data path* (the filters packets are classified by) are deferred to Commit, so
  traffic never sees half a transaction.
* The one-hour limit (B.4) is measured with the engine's injected clock. A transaction past it is
  aborted the next time anything looks at it: its own session's next call, which then fails with
  FWP_E_TXN_ABORTED, or another session waiting for the lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: B.4: a user-mode transaction may hold the lock this long.
TXN_MAX_SECONDS = 3600.0
#: B.2: txnWaitTimeoutInMSec 0 means this.
DEFAULT_WAIT_MS = 15_000


@dataclass
class Transaction:
    """An explicit transaction of one session."""

    read_only: bool
    began: float
    #: Callables that undo what the transaction did, in the order it did it.
    undo: list[Callable[[], None]] = field(default_factory=list)
    #: Callables that publish the transaction's effects to the data path, run at commit.
    publish: list[Callable[[], None]] = field(default_factory=list)


class TxnLock:
    """The engine's transaction lock: owned by one session at a time, re-entrant for it (the
    session's explicit transaction holds it; its calls inside do not wait)."""

    def __init__(self) -> None:
        #: The condition's lock, also taken directly (a C-level ``with``) on the uncontended
        #: paths: every management call takes and releases this lock once.
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._owner: Any = None
        self._depth = 0
        #: Threads waiting in acquire(): a release wakes them only if there are any (nearly
        #: every call finds the lock free; notify_all costs ~1 µs even with nobody to wake).
        self._waiting = 0

    @property
    def owner(self) -> Any:
        return self._owner

    def acquire(self, session: Any, timeout_ms: int,
                on_wait: Callable[[Any], None] | None = None) -> bool:
        """Take the lock for ``session``; False after ``timeout_ms`` of real time.

        ``on_wait(owner)`` is called (without the lock) while waiting, so the engine can abort an
        owner whose transaction has outlived the hour limit; it runs at least every 50 ms.
        """
        with self._mutex:  # the common case: free, or already this session's
            owner = self._owner
            if owner is None or owner is session:
                self._owner = session
                self._depth += 1
                return True
        return self._wait(session, timeout_ms, on_wait)

    def _wait(self, session: Any, timeout_ms: int,
              on_wait: Callable[[Any], None] | None) -> bool:
        """:meth:`acquire` when the lock was held by another session a moment ago."""
        deadline = time.monotonic() + timeout_ms / 1000.0
        with self._cond:
            while True:
                if self._owner is None or self._owner is session:
                    self._owner = session
                    self._depth += 1
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                owner = self._owner
                if on_wait is not None:
                    self._cond.release()
                    try:
                        on_wait(owner)
                    finally:
                        self._cond.acquire()
                    if self._owner is None or self._owner is session:
                        continue
                self._waiting += 1
                try:
                    self._cond.wait(min(left, 0.05))
                finally:
                    self._waiting -= 1

    def release(self, session: Any) -> None:
        with self._mutex:
            if self._owner is not session:
                return
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                if self._waiting:
                    self._cond.notify_all()

    def release_all(self, session: Any) -> None:
        """Drop every hold ``session`` has (its explicit transaction ended)."""
        with self._mutex:
            if self._owner is session:
                self._owner = None
                self._depth = 0
                if self._waiting:
                    self._cond.notify_all()

"""Change notifications (reference C.3 Subscribe, F.13, F.23): one worker thread per engine.

Callbacks run on the worker, never on the caller's thread and never re-entrantly (one worker
delivers everything in order). A bounded queue keeps a stuck callback from eating memory: when
it is full the event is dropped and logged (F.13: the API has FWP_E_NOTIFICATION_DROPPED but no
path to deliver it). Unsubscribing waits for a running callback of that subscription to return,
unless it is called from that very callback (which would otherwise wait for itself).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("ipsecsa.wfp")

#: Events waiting for delivery at most (an implementation constant).
QUEUE_MAX = 65536


@dataclass(eq=False)
class Subscription:
    handle: int
    session: Any
    kind: str  # "sa_context" or "filter"
    template: Any  # the subscription structure as given (a private copy)
    callback: Callable[[Any, Any], None]
    context: Any
    accepts: Callable[[Any], bool]  # does this change concern the subscriber
    active: bool = True
    #: SA-context state changes too (ipsecsa's ``sa_context_subscribe_states``).
    states: bool = False


class Notifier:
    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Subscription, Any] | None] = queue.Queue(QUEUE_MAX)
        self._running: Subscription | None = None
        self._cond = threading.Condition()
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="ipsecsa-wfp-notify", daemon=True)
        self._thread.start()

    def post(self, sub: Subscription, change: Any) -> None:
        try:
            self._queue.put_nowait((sub, change))
        except queue.Full:
            self.dropped += 1
            log.warning("notification queue full: a change for subscription %d was dropped "
                        "(FWP_E_NOTIFICATION_DROPPED)", sub.handle)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            sub, change = item
            with self._cond:
                if not sub.active:
                    continue
                self._running = sub
            try:
                sub.callback(sub.context, change)
            except Exception:  # a subscriber's bug must not stop everyone's notifications
                log.exception("subscription %d callback raised", sub.handle)
            finally:
                with self._cond:
                    self._running = None
                    self._cond.notify_all()

    def cancel(self, sub: Subscription) -> None:
        """Stop ``sub``; wait for its running callback unless called from it."""
        with self._cond:
            sub.active = False
            if threading.current_thread() is self._thread:
                return
            while self._running is sub:
                self._cond.wait()

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything posted so far was delivered (tests, shutdown)."""
        done = threading.Event()
        marker = Subscription(-1, None, "", None, lambda c, ch: done.set(), None, lambda c: True)
        self.post(marker, None)
        if threading.current_thread() is not self._thread:
            done.wait(timeout)

    def close(self) -> None:
        try:
            self._queue.put(None, timeout=1.0)
        except queue.Full:
            pass
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5.0)

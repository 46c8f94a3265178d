"""The transport's half between the SA-context engine and an NDIS IPsec-offload NIC (issue 13).

On Windows a keying module installs SA contexts through WFP and the TCP/IP transport pushes their
SAs to a capable NIC with OID_TCP_TASK_IPSEC_ADD_SA (reference A.1, A.11); the NIC then does the
crypto and the transport the framing. :class:`NicOffload` is that link for
:class:`ipsecsa.wfp.Engine` (``Engine(offload=nic)``): the engine calls it at four points of a
context's life and it drives an :class:`ipsecsa.ndis.OffloadTransport`, which decides what v1 and
the NIC's advertised capabilities can carry, builds the requests and binds each SA's crypto step
to the NIC. Nothing here re-decides those rules; what is decided here is *when*:

* **Established** (:meth:`NicOffload.established`, at the end of a successful AddOutbound, before
  it returns): the context's outbound and inbound SA are offloaded as one pair, outbound first;
  if the inbound ADD is refused the outbound one is deleted again (the transport's roll-back),
  so a pair is on the NIC whole or not at all.
* **Outbound gone** (:meth:`NicOffload.outbound_gone`: Expire, a lifetime or a hard limit running
  out, and the first half of a delete): the outbound SA leaves the NIC at once.
* **Removed** (:meth:`NicOffload.removed`: DeleteById0, the end of the expire linger): whatever
  of the context is still on the NIC leaves it.
* **SaDeleteReq** (A.10): the transport deletes the inbound SA the packet arrived on and its
  paired outbound SA inside that packet's receive step; the packet is still delivered (the NIC's
  plaintext is used). The context carries on in software with the *same* SA objects: the NIC
  never held sequence numbers or replay state (A.1; :class:`ipsecsa.ndis.Miniport` keeps only
  the crypto objects per SA), so the sequence numbers continue and the replay window is kept.

Choices of ours (Windows documents none of them):

* Offload is best effort: a pair v1 or the NIC's capabilities cannot carry (``NotOffloadable``),
  any NDIS_STATUS other than SUCCESS (``OffloadError``; RESOURCES for a full table), an ESP+AH
  bundle (two SAs per direction: :class:`~ipsecsa.ndis.OffloadTransport` builds one-entry
  requests only), or even a NIC that raises, leaves the context established in software and is
  logged once for that context on ``ipsecsa.wfp.offload``; the caller sees ERROR_SUCCESS.
* The capabilities are read once, when the engine is built (A.11 rule 1: capabilities are known
  before SAs are added).
* The NIC filter of each SA is the transport's default: host to host for transport mode, every
  packet for tunnel mode (the engine, not the NIC, applies the WFP filters and C.4's
  port/protocol overrides, which Update0 may change while the SAs stay on the NIC).
* A DELETE the NIC refuses (or a NIC that raises) is logged and retried at the next hook or
  statistics call (the SA is still counted, as it is still on the NIC); the caller and the data
  path never see the error. A context whose SAs left the NIC (SaDeleteReq, a refused ADD) is not
  offered to the NIC again.
* Closing the engine deletes every SA from the NIC.
* ``offloadByteCount`` (IPSEC_TRAFFIC_STATISTICS1) counts the IPsec packets the NIC processed, as
  the wire carries them: those it encrypted on send, those it verified (and decrypted) with
  CRYPTO_SUCCESS on receive.

Thread safety: the hooks run under the engine's state lock; :meth:`_nic_asked` runs on a packet's
thread, after the transport released its lock. One lock of this object guards the bookkeeping;
the order is engine lock → this lock → transport lock → miniport lock, and the packet path takes
this lock last and alone, so no cycle exists.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from ipsecsa.ndis.transport import NotOffloadableError, OffloadError, OffloadTransport
from ipsecsa.wfp.contexts import SaContext

log = logging.getLogger("ipsecsa.wfp.offload")

__all__ = ["NicOffload"]


@dataclass(eq=False, slots=True)
class _Pair:
    ctx: SaContext
    out: int  # offload handle of the outbound SA, 0 once it left the NIC
    inb: int  # offload handle of the inbound SA, 0 once it left the NIC


class NicOffload:
    """Offloads established SA contexts to ``nic`` (an object with the miniport interface of
    :mod:`ipsecsa.ndis`: ``capabilities()``, ``oid_request``, ``send``, ``receive``)."""

    def __init__(self, nic: Any) -> None:
        for name in ("capabilities", "oid_request", "send", "receive"):
            if not callable(getattr(nic, name, None)):
                raise TypeError(f"offload: the NIC has no {name}() (the ipsecsa.ndis miniport "
                                "interface)")
        self.nic = nic
        self.transport = OffloadTransport(nic, capabilities=bytes(nic.capabilities()))
        self.transport.on_delete_request = self._nic_asked
        self._lock = threading.Lock()
        self._pairs: dict[int, _Pair] = {}  # context id -> its handles
        self._of_handle: dict[int, _Pair] = {}
        self._stuck: list[int] = []  # handles whose DELETE the NIC refused (retried)

    # ---------------------------------------------------------------- hooks of the engine
    def established(self, ctx: SaContext) -> None:
        """AddOutbound succeeded: offload the context's SA pair, or leave it in software."""
        out_b, in_b = ctx.outbound_bundle, ctx.inbound_bundle
        with self._lock:
            self._retry()
            if out_b is None or in_b is None or ctx.id in self._pairs:
                return
            if len(out_b.sas) != 1 or len(in_b.sas) != 1:
                log.info("SA context %d stays in software: ESP+AH bundles are not offloaded "
                         "(one offload v1 entry per request)", ctx.id)
                return
            try:
                h_out, h_in = self.transport.offload(out_b.sas[0], in_b.sas[0])
            except NotOffloadableError as exc:
                log.info("SA context %d stays in software: not offloadable (%s)", ctx.id, exc)
                return
            except OffloadError as exc:
                log.info("SA context %d stays in software: the NIC refused (%s)", ctx.id, exc)
                return
            except Exception:  # best effort: a failing NIC is never the caller's error
                log.warning("SA context %d stays in software: the NIC failed", ctx.id,
                            exc_info=True)
                return
            pair = _Pair(ctx, h_out, h_in)
            self._pairs[ctx.id] = pair
            self._of_handle[h_out] = self._of_handle[h_in] = pair
            ctx.offloaded = True
            log.debug("SA context %d offloaded: handles %d (out), %d (in)", ctx.id, h_out, h_in)

    def outbound_gone(self, ctx: SaContext) -> None:
        """The context's outbound SA stops (expire, lifetime, delete): off the NIC at once."""
        with self._lock:
            self._retry()
            pair = self._pairs.get(ctx.id)
            if pair is not None and pair.out:
                self._remove(pair, pair.out)

    def removed(self, ctx: SaContext) -> None:
        """The context is gone (delete, end of the linger): nothing of it stays on the NIC."""
        with self._lock:
            self._retry()
            pair = self._pairs.get(ctx.id)
            if pair is None:
                return
            for h in (pair.out, pair.inb):
                if h:
                    self._remove(pair, h)
            self._pairs.pop(ctx.id, None)

    def bytes_offloaded(self) -> tuple[int, int]:
        """(outbound, inbound) bytes of the packets the NIC processed (``offloadByteCount``,
        :meth:`ipsecsa.ndis.OffloadTransport.offloaded_bytes`)."""
        return self.transport.offloaded_bytes()

    def sa_count(self) -> int:
        """SAs on the NIC (IPSEC_AGGREGATE_SA_STATISTICS0.offloadedSas)."""
        with self._lock:
            self._retry()
            return len(self.transport.handles)

    def close(self) -> None:
        """The engine stops: every SA leaves the NIC."""
        with self._lock:
            for pair in list(self._pairs.values()):
                for h in (pair.out, pair.inb):
                    if h:
                        self._remove(pair, h)
            self._pairs.clear()
            self._retry()

    # ---------------------------------------------------------------- internals
    def _remove(self, pair: _Pair, handle: int) -> None:
        """Delete one SA from the NIC; called with the lock held."""
        if pair.out == handle:
            pair.out = 0
        if pair.inb == handle:
            pair.inb = 0
        pair.ctx.offloaded = bool(pair.out or pair.inb)
        self._of_handle.pop(handle, None)
        try:
            self.transport.remove((handle,), missing_ok=True)
        except Exception as exc:  # noqa: BLE001 - a refusal or a raising NIC: not the caller's
            log.warning("SA context %d: the NIC did not delete offload handle %d (%s); "
                        "retried at the next call", pair.ctx.id, handle, exc)
            self._stuck.append(handle)

    def _retry(self) -> None:
        if not self._stuck:
            return
        stuck, self._stuck = self._stuck, []
        for handle in stuck:
            try:
                self.transport.remove((handle,), missing_ok=True)
            except Exception:  # noqa: BLE001 - still refused: logged once, tried again later
                self._stuck.append(handle)

    def _nic_asked(self, handles: tuple[int, ...]) -> None:
        """The transport honoured a SaDeleteReq (on a packet's thread): those SAs left the NIC."""
        with self._lock:
            seen: set[int] = set()
            for h in handles:
                pair = self._of_handle.pop(h, None)
                if pair is None:
                    continue
                if pair.out == h:
                    pair.out = 0
                if pair.inb == h:
                    pair.inb = 0
                pair.ctx.offloaded = bool(pair.out or pair.inb)
                if pair.ctx.id not in seen:
                    seen.add(pair.ctx.id)
                    log.info("SA context %d moved back to software: the NIC asked for room "
                             "(SaDeleteReq)", pair.ctx.id)

"""Inbound anti-replay window (RFC 4303 §3.4.3, ESN inference per RFC 4303 Appendix A).

The check is split in two, as RFC 4303 §3.4.3 asks:

* :meth:`ReplayWindow.check` runs on the 32 bits carried in the packet *before* the ICV is
  verified. It is cheap, changes nothing, and returns the full sequence number (the high half is
  inferred when ESN is on, and that value must enter the ICV computation) or ``None`` to drop.
  Rejecting duplicates here keeps a flood of replays from costing an ICV computation each.
* :meth:`ReplayWindow.commit` runs only *after* the ICV verified. Only then may the window move:
  a forged packet must never advance it. It re-checks, because two copies of one packet can both
  pass ``check`` before either commits; the second commit returns ``False`` and changes nothing.

Representation: an RFC 6479 ring of 64-bit words. Bit ``seq & 63`` of word
``(seq >> 6) & (n - 1)`` records sequence number ``seq``; ``n`` is a power of two with at least
one word more than the window needs, so moving the right edge only zeroes the words that come
into use (at most ``n``: a jump far ahead costs O(words), never O(distance)) and bits still inside
the window are never shifted or copied. A single Python ``int`` shifted on every advance was
measured against it as prototypes (check + commit per packet, 200k packets in order / reordered
in blocks of 8, CPython 3.11, quiet machine):

======  ===================  ====================
window  int bitmap (shift)   ring of 64-bit words
======  ===================  ====================
64      174 / 227 ns         273 / 309 ns
4096    285 / 327 ns         259 / 305 ns
65536   1774 / 1640 ns       269 / 317 ns
======  ===================  ====================

The shifted int wins by ~100 ns at the default window but costs O(window) per packet because
Python ints are immutable; the ring is flat in the window size, so it is the one used. This
module measured the same way: ~270 / ~350 ns without ESN and ~390 / ~470 ns with ESN (the
inference), for every window from 64 to 65536.

Restored windows: only the right edge (``top``, the SA's ``seq`` field) is persisted, not the
bitmap. A window built with ``top=N`` therefore treats every number at or below ``N`` as already
received. That is the safe choice: it can only drop late packets that were in flight when the SA
was saved (the peer's transport recovers them), whereas guessing "not received" could accept a
replay of a packet that was delivered before the save. A fresh window is the same rule with
``top=0``: sequence number 0 is never valid (the first packet is 1, RFC 4303 §3.3.3).
"""

from __future__ import annotations

from ipsecsa.errors import ConfigError

__all__ = [
    "DEFAULT_REPLAY_WINDOW",
    "ESN_INFERENCE_WINDOW_WHEN_OFF",
    "MAX_REPLAY_WINDOW",
    "MIN_REPLAY_WINDOW",
    "SEQ_MAX_32",
    "SEQ_MAX_64",
    "ReplayWindow",
    "new_window",
]

# --- Specification constants (RFC 4303) -------------------------------------------------------

#: §3.4.3: receivers must support a window of at least 32 packets.
MIN_REPLAY_WINDOW = 32
#: §3.4.3: 64 packets is the preferred window and the recommended default.
DEFAULT_REPLAY_WINDOW = 64
#: Appendix A2: the ESN inference assumes a window of at most 2^31 packets.
#: With anti-replay off (size 0) this is the W used to infer the high half: the inferred number
#: is then the one nearest to ``top`` (at most 2^31 - 1 behind or 2^31 ahead), which tolerates the
#: most reordering and loss that an unchecked receiver can still place correctly.
ESN_INFERENCE_WINDOW_WHEN_OFF = 1 << 31

#: Largest 32-bit sequence number (§2.2) and largest extended sequence number (§2.2.1): the one
#: statement of these limits (the SA's outbound exhaustion, the configuration's ``seq`` bound).
SEQ_MAX_32 = (1 << 32) - 1
SEQ_MAX_64 = (1 << 64) - 1
_HIGH_MAX = SEQ_MAX_32  # largest high half; Th + 1 beyond it means the 64-bit space is exhausted

# --- Implementation constants -----------------------------------------------------------------

#: Largest window accepted; the same bound as ``ipsecsa.config``'s ``REPLAY_WINDOW_MAX`` (kept
#: here too so that this module does not depend on the configuration layer). The ring would
#: allow more (one list slot per 64 packets; 2048 slots at this size); the ESN inference up to 2^31.
MAX_REPLAY_WINDOW = 65536

_WORD_BITS = 64
_WORD_SHIFT = 6
_WORD_MASK = _WORD_BITS - 1
_ALL_ONES = (1 << _WORD_BITS) - 1


def _validate(size: int, esn: bool, top: int) -> int:
    """Check a window's parameters (ConfigError naming the field); returns the top limit."""
    if type(size) is not int or not (
        size == 0 or MIN_REPLAY_WINDOW <= size <= MAX_REPLAY_WINDOW
    ):
        raise ConfigError(
            "replay_window",
            f"must be 0 (off) or an integer from {MIN_REPLAY_WINDOW} to {MAX_REPLAY_WINDOW}",
        )
    if not isinstance(esn, bool):
        raise ConfigError("esn", "must be a boolean")
    limit = SEQ_MAX_64 if esn else SEQ_MAX_32
    if type(top) is not int or not 0 <= top <= limit:
        raise ConfigError(
            "seq", f"must be an integer from 0 to 2^{64 if esn else 32} - 1 (highest received)"
        )
    return limit


def new_window(size: int, esn: bool, top: int = 0, *, native: bool = False) -> ReplayWindow:
    """A window: this module's :class:`ReplayWindow`, or with ``native`` its C twin
    ``ipsecsa._fastesp.Replay`` (same API and semantics; what an SA on the native fast path
    holds, shared by both paths). The arguments are checked here either way."""
    _validate(size, esn, top)
    if native:
        from ipsecsa.datapath import native as _native

        win = _native.new_window(size, esn, top)
        if win is None:
            raise ConfigError("native", _native.why_off() or "native fast path unavailable")
        return win  # type: ignore[no-any-return]
    return ReplayWindow(size, esn, top)


def _ring_words(size: int) -> int:
    """Words in the ring for a ``size``-packet window: a power of two, at least one spare.

    The window spans at most ``ceil(size / 64) + 1`` words (it need not start on a word boundary);
    the spare word is the one being zeroed while the oldest is still in use.
    """
    need = -(-size // _WORD_BITS) + 1
    return 1 << (need - 1).bit_length()


class ReplayWindow:
    """The receive side of one SA's sequence numbers: ESN inference and anti-replay.

    ``size`` is the window in packets (0 turns anti-replay off; ESN high-half inference still
    runs, with W = :data:`ESN_INFERENCE_WINDOW_WHEN_OFF`). ``top`` is the highest sequence number
    received so far (full 64-bit with ESN); everything at or below it counts as received (see the
    module docstring). Not thread-safe: one SA's inbound packets are handled in order.
    """

    __slots__ = ("_esn", "_infer_w", "_max", "_nmask", "_ring", "_size", "_top")

    def __init__(self, size: int, esn: bool, top: int = 0) -> None:
        limit = _validate(size, esn, top)
        self._size = size
        self._esn = esn
        self._top = top
        self._max = limit
        self._infer_w = size if size else ESN_INFERENCE_WINDOW_WHEN_OFF
        words = _ring_words(size) if size else 1
        self._nmask = words - 1
        # Everything <= top is received: older words all ones, and in top's own word the bits up
        # to top's (bits above it must stay 0: they are numbers not received yet).
        ring = [_ALL_ONES] * words
        ring[(top >> _WORD_SHIFT) & self._nmask] = (2 << (top & _WORD_MASK)) - 1
        self._ring = ring

    @property
    def size(self) -> int:
        """Window size in packets; 0 means anti-replay is off."""
        return self._size

    @property
    def esn(self) -> bool:
        """Whether 64-bit extended sequence numbers are in use (RFC 4303 §2.2.1)."""
        return self._esn

    @property
    def top(self) -> int:
        """Highest sequence number committed so far: the right edge of the window."""
        return self._top

    def __repr__(self) -> str:
        return f"ReplayWindow(size={self._size}, esn={self._esn}, top={self._top})"

    def check(self, seq_low: int) -> int | None:
        """Return the full sequence number if a packet carrying ``seq_low`` may be accepted.

        ``seq_low`` is the 32-bit field from the packet (0 to 2^32 - 1; not re-validated here).
        ``None`` means drop as a replay: a duplicate, left of the window, sequence number 0, or,
        with ESN, a number that would fall outside the 64-bit space. With ESN the high half is
        inferred per RFC 4303 Appendix A2.2; the result must be used for the ICV. Changes nothing.
        """
        top = self._top
        if self._esn:
            tl = top & SEQ_MAX_32
            th = top >> 32
            w = self._infer_w
            if tl >= w - 1:  # Case A: the window lies within one subspace.
                if seq_low >= tl - w + 1:
                    seq = (th << 32) | seq_low
                elif th == _HIGH_MAX:  # Th + 1 does not exist: 64-bit space exhausted.
                    return None
                else:
                    seq = ((th + 1) << 32) | seq_low
            elif seq_low >= tl - w + 1 + (1 << 32):  # Case B, left part: previous subspace.
                if not th:  # Th - 1 < 0: would be before the SA's first packet.
                    return None
                seq = ((th - 1) << 32) | seq_low
            else:  # Case B, right part.
                seq = (th << 32) | seq_low
            if seq > top:
                return seq
            if not seq:
                return None
        else:
            if seq_low > top:  # top >= 0, so this is never 0
                return seq_low
            if not seq_low:
                return None
            seq = seq_low
        size = self._size
        if not size:
            return seq
        if top - seq >= size:
            return None
        if self._ring[(seq >> _WORD_SHIFT) & self._nmask] >> (seq & _WORD_MASK) & 1:
            return None
        return seq

    def commit(self, seq: int) -> bool:
        """Record ``seq`` (the full number :meth:`check` returned) once its ICV has verified.

        Moves the right edge if ``seq`` is beyond it. Returns ``False`` and changes nothing if
        ``seq`` is (by now) a replay: committed meanwhile by another copy, or left of the window
        because the window moved on since :meth:`check`; also for 0 or out-of-range values.
        """
        if not 0 < seq <= self._max:
            return False
        top = self._top
        size = self._size
        if seq > top:
            if size:
                ring = self._ring
                nmask = self._nmask
                old = top >> _WORD_SHIFT
                new = seq >> _WORD_SHIFT
                gap = new - old
                if gap == 1:
                    ring[new & nmask] = 0
                elif gap > nmask:  # every word leaves the window: a fresh ring, O(words)
                    ring = self._ring = [0] * (nmask + 1)
                elif gap:  # zero words old+1 .. new: one or two slices of the ring
                    start = (old + 1) & nmask
                    end = start + gap
                    if end <= nmask + 1:
                        ring[start:end] = [0] * gap
                    else:
                        ring[start:] = [0] * (nmask + 1 - start)
                        ring[: end - nmask - 1] = [0] * (end - nmask - 1)
                ring[new & nmask] |= 1 << (seq & _WORD_MASK)
            self._top = seq
            return True
        if not size:
            return True
        if top - seq >= size:
            return False
        ring = self._ring
        index = (seq >> _WORD_SHIFT) & self._nmask
        bit = 1 << (seq & _WORD_MASK)
        word = ring[index]
        if word & bit:
            return False
        ring[index] = word | bit
        return True

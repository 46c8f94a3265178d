"""Typed errors and the one enum of packet drop reasons.

Two kinds of failure exist in an IPsec engine and they are kept apart on purpose:

* a *caller mistake* (a bad SA description, a wrong key length, an API misuse) raises an
  exception from the :class:`IpsecsaError` tree, naming the offending field;
* *bad peer input* (a malformed, forged, replayed or unexpected packet) is routine: it is never an
  exception leaving the data path, but a :class:`DropReason` verdict that is also counted.

Messages never contain key material: fields are named, values of keys are not.
"""

from __future__ import annotations

import enum


class IpsecsaError(Exception):
    """Root of every exception raised by ipsecsa."""


class ConfigError(IpsecsaError, ValueError):
    """An SA description or API argument is invalid.

    ``field`` is the dotted path of the offending key (``"encryption.key"``,
    ``"lifetime.hard.bytes"``, ``"sas[3].spi"``) so that tools can point at it.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.reason = message
        super().__init__(f"{field}: {message}")

    def at(self, prefix: str) -> ConfigError:
        """Return a copy of this error with ``prefix`` prepended to the field path."""
        field = f"{prefix}.{self.field}" if self.field else prefix
        err = type(self).__new__(type(self))
        ConfigError.__init__(err, field, self.reason)
        return err


class UnknownAlgorithmError(ConfigError):
    """An algorithm name, alias or number is not known."""


class AmbiguousAlgorithmError(UnknownAlgorithmError):
    """An algorithm name that different tools read differently (bare ``hmac(sha256)``: a 96-bit
    ICV to ``ip xfrm``, 128 to RFC 4868). Refused with a "did you mean", never guessed."""


class KeyLengthError(ConfigError):
    """A key has a length the algorithm does not accept."""


class DirectionError(ConfigError):
    """An operation the SA's ``direction`` does not allow: ``protect`` on an inbound SA or on one
    whose description has no direction (the offline tools' "either way" SA, which may only
    unprotect), ``unprotect`` on an outbound SA. A caller mistake, so an exception naming the
    field ``direction`` rather than a counted drop."""

    def __init__(self, message: str) -> None:
        super().__init__("direction", message)


def packet_type_error(packet: object) -> TypeError:
    """The one ``TypeError`` every packet entry point raises for a packet that is not
    bytes-like (``protect``/``unprotect`` and their batches, the SA database, the miniport)."""
    return TypeError(
        f"packet must be bytes, bytearray or memoryview, not {type(packet).__name__}")


def as_packet(packet: object) -> bytes:
    """``packet`` as ``bytes`` (a copy of a bytearray/memoryview), or :func:`packet_type_error`.

    Entry points call it only when ``packet.__class__ is not bytes``, so the common case costs
    one comparison."""
    if isinstance(packet, (bytes, bytearray, memoryview)):
        return bytes(packet)
    raise packet_type_error(packet)


class SaStateError(IpsecsaError):
    """An operation is not allowed in the SA's current life-cycle state."""


class MalformedPacket(Exception):
    """Internal signal from packet parsers to the data path's entry points.

    Deliberately *not* an :class:`IpsecsaError`: it never leaves the data path. Entry points catch
    it and turn it into a drop verdict counted under ``reason``.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: DropReason, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)


@enum.unique
class DropReason(enum.Enum):
    """Why a packet was not delivered. One value per reason, for the whole data path.

    Every packet that is not delivered is counted under exactly one of these, per SA where an SA
    is known and globally otherwise.
    """

    #: Too short for the headers it claims (IP, ESP/AH header, IV, ICV).
    TRUNCATED = "truncated"
    #: Not a well-formed packet: bad version, header length, length fields, extension chain.
    MALFORMED = "malformed"
    #: Not ESP/AH (or UDP-encapsulated ESP) where an SA expected it, or the wrong IPsec protocol.
    WRONG_PROTOCOL = "wrong_protocol"
    #: No SA for this SPI/protocol/destination.
    BAD_SPI = "bad_spi"
    #: Outbound traffic that no policy/SA covers.
    NO_POLICY = "no_policy"
    #: Anti-replay: sequence number already seen or left of the window.
    REPLAY = "replay"
    #: Integrity check value did not verify (or AEAD tag failure).
    ICV_FAILURE = "icv_failure"
    #: Ciphertext not a multiple of the cipher block size.
    BAD_LENGTH = "bad_length"
    #: Decrypted padding is not the monotonic 1, 2, 3, ... sequence RFC 4303 requires.
    BAD_PADDING = "bad_padding"
    #: Decapsulated packet is not covered by the SA's traffic selectors (RFC 4301 §5.2).
    SELECTOR_MISMATCH = "selector_mismatch"
    #: Inner packet family/next header does not fit the SA's mode.
    BAD_INNER = "bad_inner"
    #: SA hard lifetime reached (bytes, packets or seconds); the SA refuses traffic.
    EXPIRED = "expired"
    #: Outbound sequence number space exhausted; RFC 4303 forbids wrapping.
    SEQ_EXHAUSTED = "seq_exhausted"
    #: Outbound: the next sequence number is beyond ``seq_limit`` (the numbers reserved durably)
    #: and the SA's ``seq_limit_hook`` did not extend it; no number was spent.
    SEQ_UNRESERVED = "seq_unreserved"
    #: An ESP packet with next header 59 (RFC 4303 §2.6 dummy packet): discarded by design.
    DUMMY_PACKET = "dummy_packet"
    #: RFC 6040 ECN decapsulation: outer CE over a Not-ECT inner packet must be dropped.
    ECN_DROP = "ecn_drop"
    #: Fragment could not be reassembled (overlap, too large, timed out, table full).
    FRAGMENT = "fragment"
    #: A NAT-T keepalive (RFC 3948 §2.3): consumed, never delivered.
    NATT_KEEPALIVE = "natt_keepalive"
    #: A UDP-encapsulated packet with the non-ESP marker (IKE): not for the data path.
    NON_ESP_MARKER = "non_esp_marker"
    #: Bad UDP length or checksum on a UDP-encapsulated ESP packet.
    BAD_UDP = "bad_udp"
    #: The outer IPv4 header checksum does not verify (RFC 791): corrupted in transit.
    BAD_CHECKSUM = "bad_checksum"
    #: Packet too big for the path after encapsulation, with DF set.
    TOO_BIG = "too_big"
    #: The SA is not usable (deleted, or not yet installed). A call its ``direction`` does not
    #: allow is a caller mistake and raises :class:`DirectionError` instead.
    SA_UNUSABLE = "sa_unusable"
    #: A filter blocked the packet (a BLOCK action, or an IPsec callout with no SA to use).
    BLOCKED = "blocked"
    #: Clear text arrived where a filter demands IPsec (Windows: invalidClearTextInbound).
    CLEAR_TEXT = "clear_text"


__all__ = [
    "AmbiguousAlgorithmError",
    "ConfigError",
    "DirectionError",
    "DropReason",
    "IpsecsaError",
    "KeyLengthError",
    "MalformedPacket",
    "SaStateError",
    "UnknownAlgorithmError",
    "as_packet",
    "packet_type_error",
]

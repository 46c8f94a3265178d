"""The typed, validated form of one SA description (``docs/sa-format.md``).

:class:`SaConfig` is the single place where the *meaning* of a description is checked: ranges,
which protocol may use which algorithm, lifetimes, mode-specific options. It validates itself on
construction, so an ``SaConfig`` built by hand or by :func:`dataclasses.replace` (an export that
updates ``seq``, say) is held to the same rules as one parsed from JSON. Turning JSON values into
these Python values (type checks, hex keys, algorithm aliases) is :mod:`ipsecsa.config.parse`'s job.

Every error is a :class:`~ipsecsa.errors.ConfigError` whose ``field`` is the dotted path of the
key in the sa-format object (``"encryption.key"``, ``"lifetime.soft.bytes"``), and no message,
repr or log line ever contains key material.
"""

from __future__ import annotations

import builtins
import hmac
import ipaddress
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from ipsecsa.crypto.algorithms import EncryptionAlgorithm, IntegrityAlgorithm, check_key
from ipsecsa.datapath.replay import SEQ_MAX_32, SEQ_MAX_64  # RFC 4303 §2.2, §2.2.1
from ipsecsa.errors import ConfigError
from ipsecsa.selectors import Selector

log = logging.getLogger("ipsecsa.config")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# --- Specification constants -------------------------------------------------------------------
#: RFC 4303 §2.1: SPI 0 is reserved for local use and never sent; 1-255 are reserved by IANA.
SPI_MIN = 256
SPI_MAX = 2**32 - 1
#: RFC 4303 §3.4.3: "A minimum window size of 32 packets MUST be supported when 32-bit sequence
#: numbers are employed; a window size of 64 is preferred and SHOULD be employed as the default.
#: Another window size (larger than the minimum) MAY be chosen by the receiver."
REPLAY_WINDOW_MIN = 32
REPLAY_WINDOW_DEFAULT = 64
PORT_MAX = 65535
#: IPv4 TTL / IPv6 hop limit is an 8-bit field; 0 would be discarded by the first router.
TTL_MIN, TTL_MAX = 1, 255
#: DSCP is the upper 6 bits of the TOS / traffic class octet (RFC 2474).
DSCP_MAX = 63

# --- Implementation constants ------------------------------------------------------------------
#: Largest anti-replay window we keep a bitmap for (Linux XFRM's replay-window ESN limit is larger;
#: 65536 packets is ample for multi-gigabit reordering and bounds memory per SA).
REPLAY_WINDOW_MAX = 65536
#: TFC padding target cap: a padded inner packet must still fit a 16-bit IP length.
TFC_PADDING_MAX = 65535
TTL_DEFAULT = 64

PROTOCOLS = ("esp", "ah")
MODES = ("transport", "tunnel")
DIRECTIONS = ("outbound", "inbound")
DF_MODES = ("copy", "set", "clear")


def _is_int(value: object) -> bool:
    # bool is an int subclass in Python; JSON ``true`` is never a number.
    return isinstance(value, int) and not isinstance(value, bool)


class SecretKey:
    """Key bytes that never show themselves: ``repr``/``str`` say only ``<key, N bytes>``.

    Read the value with ``.bytes`` or ``bytes(key)``. Equality is constant-time so that comparing
    two configurations leaks nothing through timing; the hash depends only on the length.
    """

    __slots__ = ("_key",)

    def __init__(self, key: bytes | bytearray | memoryview) -> None:
        if not isinstance(key, (bytes, bytearray, memoryview)):
            raise ConfigError("key", "must be bytes")
        self._key = bytes(key)

    @property
    def bytes(self) -> bytes:
        """The key material."""
        return self._key

    def __bytes__(self) -> builtins.bytes:
        return self._key

    def __len__(self) -> int:
        return len(self._key)

    def __repr__(self) -> str:
        return f"<key, {len(self._key)} bytes>"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretKey):
            return NotImplemented
        return hmac.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash(("SecretKey", len(self._key)))

    def hex(self) -> str:
        """Lowercase hex without ``0x``, for exporting (sa-format ``key``). Never log this."""
        return self._key.hex()


def _check_limit(value: object, name: str, *, allow_float: bool) -> int | float | None:
    if value is None:
        return None
    if allow_float:
        ok = _is_int(value) or isinstance(value, float)
    else:
        ok = _is_int(value)
    if not ok:
        raise ConfigError(name, "must be a number" if allow_float else "must be an integer")
    assert isinstance(value, (int, float))
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(name, "must be finite (leave it out, or 0, for no limit)")
    if value < 0:
        raise ConfigError(name, "must not be negative")
    return value if value != 0 else None


@dataclass(frozen=True, slots=True)
class Lifetime:
    """One set of limits (RFC 4301 §4.4.2.1). ``None`` means no limit in that dimension.

    Zero is read as "no limit" as well and stored as ``None`` (strongSwan and the NDIS fields use 0
    that way; a limit of zero would make an SA that can carry nothing).
    """

    bytes: int | None = None
    packets: int | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "bytes", _check_limit(self.bytes, "bytes", allow_float=False))
        object.__setattr__(self, "packets",
                           _check_limit(self.packets, "packets", allow_float=False))
        object.__setattr__(self, "seconds",
                           _check_limit(self.seconds, "seconds", allow_float=True))

    @property
    def unlimited(self) -> bool:
        return self.bytes is None and self.packets is None and self.seconds is None


#: The lifetime with no limit in any dimension, shared by every SA that has none.
NO_LIMITS = Lifetime()


@dataclass(frozen=True, slots=True)
class UdpEncapsulation:
    """UDP-encapsulated ESP (RFC 3948): the outer UDP ports."""

    sport: int
    dport: int

    def __post_init__(self) -> None:
        for name in ("sport", "dport"):
            value = getattr(self, name)
            if not _is_int(value):
                raise ConfigError(name, "must be an integer")
            if not 1 <= value <= PORT_MAX:
                raise ConfigError(name, f"must be between 1 and {PORT_MAX}")


def _combined_mode(alg: EncryptionAlgorithm) -> bool:
    """AEAD ciphers and ESP-GMAC carry their own integrity (RFC 4303 §3.2.3, RFC 4543)."""
    return bool(alg.aead) or alg.kind == "gmac"


@dataclass(frozen=True, kw_only=True, slots=True)
class SaConfig:
    """One security association, validated (see the module docstring).

    ``integrity`` is ``None`` when the description has none (absent or ``"none"``); the ``none``
    algorithm object is normalised to ``None`` so there is one way to say "no integrity".
    ``encryption`` is ``None`` exactly for AH. ``*_key`` is ``None`` exactly when its algorithm is.
    ``df``/``ttl``/``dscp`` are ipsecsa extensions for the outer header in tunnel mode
    (``docs/sa-format.md``). ``warnings`` is derived: accepted but discouraged choices.
    """

    spi: int
    protocol: Literal["esp", "ah"]
    mode: Literal["transport", "tunnel"] = "transport"
    direction: Literal["outbound", "inbound"] | None = None
    src: IPAddress
    dst: IPAddress
    encryption: EncryptionAlgorithm | None = None
    encryption_key: SecretKey | None = None
    integrity: IntegrityAlgorithm | None = None
    integrity_key: SecretKey | None = None
    esn: bool = False
    replay_window: int = REPLAY_WINDOW_DEFAULT
    encapsulation: UdpEncapsulation | None = None
    selectors: tuple[Selector, ...] = ()
    # One shared "no limits" value (Lifetime is frozen): an SA without lifetimes carries no
    # Lifetime objects of its own (memory per installed SA, issue 16).
    soft: Lifetime = field(default=NO_LIMITS)
    hard: Lifetime = field(default=NO_LIMITS)
    seq: int = 0
    tfc_padding: int = 0
    df: Literal["copy", "set", "clear"] = "copy"
    ttl: int = TTL_DEFAULT
    dscp: Literal["copy"] | int = "copy"
    warnings: tuple[str, ...] = field(init=False, compare=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "warnings", tuple(_validate(self)))

    def completed(self, *, direction: str,
                  encapsulation: UdpEncapsulation | None = None) -> SaConfig:
        """A copy with the ``direction`` (and, when given, the UDP ``encapsulation``) that an SA
        context supplies, checked by the rules that read those two fields and no others: no
        other rule of the format reads them, so re-running the whole validation (keys,
        lifetimes, selectors...) on a configuration already validated could not change its
        outcome, only cost time (an SA context installs every SA through here). A change of
        ``mode`` is not offered: many rules read it, use ``dataclasses.replace``."""
        new = object.__new__(SaConfig)
        setattr_ = object.__setattr__
        for name in _FIELDS:
            setattr_(new, name, getattr(self, name))
        setattr_(new, "direction", direction)
        if encapsulation is not None:
            setattr_(new, "encapsulation", encapsulation)
        _check_direction(new)
        _check_encapsulation(new)
        return new

    def to_dict(self) -> dict[str, Any]:
        """The sa-format object (keys as lowercase hex): ``parse_sa(cfg.to_dict()) == cfg``."""
        from ipsecsa.config.parse import format_sa

        return format_sa(self)

    @classmethod
    def from_dict(cls, obj: Any) -> SaConfig:
        """Same as :func:`ipsecsa.config.parse.parse_sa`."""
        from ipsecsa.config.parse import parse_sa

        return parse_sa(obj)

    def log_warnings(self) -> None:
        """Emit ``warnings`` on the ``ipsecsa.config`` logger (the SPI, never a key)."""
        log_warnings(self.spi, self.protocol, self.warnings)


def log_warnings(spi: int, protocol: str, warnings: Iterable[str]) -> None:
    """Emit the warnings of an SA on the ``ipsecsa.config`` logger (the SPI, never a key)."""
    for text in warnings:
        log.warning("SA spi=0x%08x (%s): %s", spi, protocol, text)


def _choice(value: object, name: str, allowed: tuple[str, ...], *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, str) or value not in allowed:
        shown = " or ".join(f'"{a}"' for a in allowed)
        raise ConfigError(name, f"must be {shown}")


def _check_direction(cfg: SaConfig) -> None:
    _choice(cfg.direction, "direction", DIRECTIONS, optional=True)


def _check_encapsulation(cfg: SaConfig) -> None:
    if cfg.encapsulation is not None:
        if not isinstance(cfg.encapsulation, UdpEncapsulation):
            raise ConfigError("encapsulation", "must be a UdpEncapsulation")
        if cfg.protocol != "esp":
            raise ConfigError("encapsulation", "UDP encapsulation (RFC 3948) is for ESP only")


def _validate(cfg: SaConfig) -> list[str]:
    """Check every rule of the format; return the warnings. Raises ConfigError on the first error."""
    warnings: list[str] = []
    setattr_ = object.__setattr__

    # --- identity ---------------------------------------------------------------------------
    if not _is_int(cfg.spi):
        raise ConfigError("spi", "must be an integer or a \"0x...\" hex string")
    if cfg.spi == 0:
        raise ConfigError("spi", "0 is reserved for local use and never sent (RFC 4303 §2.1)")
    if 1 <= cfg.spi < SPI_MIN:
        raise ConfigError("spi", "1-255 are reserved by IANA (RFC 4303 §2.1)")
    if not SPI_MIN <= cfg.spi <= SPI_MAX:
        raise ConfigError("spi", "must fit in 32 bits (256..0xffffffff)")
    _choice(cfg.protocol, "protocol", PROTOCOLS)
    _choice(cfg.mode, "mode", MODES)
    _check_direction(cfg)
    for name in ("src", "dst"):
        if not isinstance(getattr(cfg, name), (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            raise ConfigError(name, "must be an IPv4 or IPv6 address")
    if cfg.src.version != cfg.dst.version:
        raise ConfigError("dst", f"is IPv{cfg.dst.version} but src is IPv{cfg.src.version}; "
                                 "both outer addresses must be the same family")
    esp = cfg.protocol == "esp"
    tunnel = cfg.mode == "tunnel"

    # --- algorithms and keys ------------------------------------------------------------------
    enc, integ = cfg.encryption, cfg.integrity
    if enc is not None and not isinstance(enc, EncryptionAlgorithm):
        raise ConfigError("encryption.algorithm", "must be an EncryptionAlgorithm")
    if integ is not None and not isinstance(integ, IntegrityAlgorithm):
        raise ConfigError("integrity.algorithm", "must be an IntegrityAlgorithm")
    for name in ("encryption_key", "integrity_key"):
        value = getattr(cfg, name)
        if value is not None and not isinstance(value, SecretKey):
            raise ConfigError(name.replace("_", "."), "must be a SecretKey")

    if integ is not None and integ.name == "none":
        if cfg.integrity_key is not None and len(cfg.integrity_key):
            raise ConfigError("integrity.key", "the none algorithm takes no key")
        setattr_(cfg, "integrity", None)
        setattr_(cfg, "integrity_key", None)
        integ = None

    if esp:
        if enc is None:
            raise ConfigError("encryption", 'required for ESP (use {"algorithm": "null"} for '
                                            "integrity-only ESP)")
        if _combined_mode(enc):
            if integ is not None:
                raise ConfigError("integrity", f"{enc.name} already provides integrity; leave "
                                               'integrity out or set it to "none"')
        elif integ is None:
            if enc.kind == "null":
                raise ConfigError("integrity", "null encryption without integrity protects "
                                               "nothing; RFC 4303 §3.2: both MUST NOT be NULL")
            warnings.append(f"encryption-only ESP ({enc.name} without integrity): RFC 4303 "
                            "allows it but it is open to active attacks (§1, §3.2); add integrity "
                            "or use an AEAD cipher")
        if integ is not None and integ.name == "aes-gmac":
            raise ConfigError("integrity.algorithm", "aes-gmac integrity is for AH only "
                                                     "(RFC 4543); ESP uses null-aes-gmac encryption")
    else:
        if enc is not None or cfg.encryption_key is not None:
            raise ConfigError("encryption", "AH provides no confidentiality; use ESP to encrypt")
        if integ is None:
            raise ConfigError("integrity", "AH requires an integrity algorithm other than none")

    for alg, key_attr, base in ((enc, "encryption_key", "encryption"),
                                (integ, "integrity_key", "integrity")):
        key = getattr(cfg, key_attr)
        if alg is None:
            if key is not None:
                raise ConfigError(f"{base}.key", f"a key without a {base} algorithm")
            continue
        if key is None:
            key = SecretKey(b"")
            setattr_(cfg, key_attr, key)
        check_key(alg, key.bytes, f"{base}.key")
        if alg.legacy:
            warnings.append(f"{alg.name} is a legacy algorithm, kept for interoperability only")

    # --- sequence numbers and anti-replay ------------------------------------------------------
    if not isinstance(cfg.esn, bool):
        raise ConfigError("esn", "must be true or false")
    rw = cfg.replay_window
    if not _is_int(rw):
        raise ConfigError("replay_window", "must be an integer")
    if not 0 <= rw <= REPLAY_WINDOW_MAX:
        raise ConfigError("replay_window", f"must be 0 (anti-replay off) or "
                                           f"{REPLAY_WINDOW_MIN}..{REPLAY_WINDOW_MAX}")
    if 0 < rw < REPLAY_WINDOW_MIN:
        raise ConfigError("replay_window", f"windows below {REPLAY_WINDOW_MIN} packets are "
                          f"refused: RFC 4303 §3.4.3 makes {REPLAY_WINDOW_MIN} the minimum every "
                          "receiver supports and allows only larger sizes; use 0 to turn "
                          "anti-replay off")
    if not _is_int(cfg.seq):
        raise ConfigError("seq", "must be an integer")
    seq_max = SEQ_MAX_64 if cfg.esn else SEQ_MAX_32
    if not 0 <= cfg.seq <= seq_max:
        raise ConfigError("seq", f"must be between 0 and {seq_max} "
                                 f"({'64' if cfg.esn else '32'}-bit sequence numbers)")

    # --- encapsulation, selectors, lifetimes ---------------------------------------------------
    _check_encapsulation(cfg)

    selectors = cfg.selectors
    if isinstance(selectors, list):
        selectors = tuple(selectors)
        setattr_(cfg, "selectors", selectors)
    if not isinstance(selectors, tuple):
        raise ConfigError("selectors", "must be a tuple of Selector")
    for i, sel in enumerate(selectors):
        if not isinstance(sel, Selector):
            raise ConfigError(f"selectors[{i}]", "must be a Selector")
        if not tunnel and sel.version and sel.version != cfg.src.version:
            which = "src" if sel.src is not None else "dst"
            raise ConfigError(f"selectors[{i}].{which}",
                              f"IPv{sel.version} selector on a transport-mode SA between "
                              f"IPv{cfg.src.version} hosts")

    for name in ("soft", "hard"):
        if not isinstance(getattr(cfg, name), Lifetime):
            raise ConfigError(f"lifetime.{name}", "must be a Lifetime")
    for dim in ("bytes", "packets", "seconds"):
        soft, hard = getattr(cfg.soft, dim), getattr(cfg.hard, dim)
        if soft is not None and hard is not None and soft > hard:
            raise ConfigError(f"lifetime.soft.{dim}", f"soft limit exceeds the hard limit "
                                                      f"({soft} > {hard})")

    # --- ESP tunnel options ---------------------------------------------------------------------
    if not _is_int(cfg.tfc_padding):
        raise ConfigError("tfc_padding", "must be an integer")
    if not 0 <= cfg.tfc_padding <= TFC_PADDING_MAX:
        raise ConfigError("tfc_padding", f"must be between 0 and {TFC_PADDING_MAX}")
    if cfg.tfc_padding and not (esp and tunnel):
        raise ConfigError("tfc_padding", "TFC padding is for ESP tunnel mode only "
                                         "(RFC 4303 §2.4)")

    _choice(cfg.df, "df", DF_MODES)
    if not _is_int(cfg.ttl):
        raise ConfigError("ttl", "must be an integer")
    if not TTL_MIN <= cfg.ttl <= TTL_MAX:
        raise ConfigError("ttl", f"must be between {TTL_MIN} and {TTL_MAX}")
    if cfg.dscp != "copy":
        if not _is_int(cfg.dscp):
            raise ConfigError("dscp", f'must be "copy" or an integer 0..{DSCP_MAX}')
        assert isinstance(cfg.dscp, int)
        if not 0 <= cfg.dscp <= DSCP_MAX:
            raise ConfigError("dscp", f"must be between 0 and {DSCP_MAX}")
    if not tunnel:
        for name, default in (("df", "copy"), ("ttl", TTL_DEFAULT), ("dscp", "copy")):
            if getattr(cfg, name) != default:
                raise ConfigError(name, "sets the outer header, which only tunnel mode builds")
    elif cfg.df != "copy" and cfg.src.version == 6:
        raise ConfigError("df", "IPv6 has no DF bit; leave df out (or \"copy\") for an IPv6 "
                                "tunnel")
    return warnings


_FIELDS = tuple(f.name for f in fields(SaConfig))

__all__ = ["Lifetime", "SaConfig", "SecretKey", "UdpEncapsulation"]

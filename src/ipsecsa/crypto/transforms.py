"""Per-SA cryptographic transforms for ESP and AH, built once per SA over pyca/cryptography.

Everything derivable from the SA is prepared in the constructors: the keyed AEAD objects and their
bound ``encrypt``/``decrypt`` methods, the ``algorithms.AES(key)`` objects, the salts, the keyed
HMAC/CMAC templates that are ``.copy()``-ed per packet, the XCBC subkeys. The per-packet methods
then do the least possible work; the variant (ESN or not, counter IV or injected IV) is chosen at
construction by binding the specialised method to ``self.seal`` / ``self.open``, not tested per
packet.

Two things cannot be hoisted out of the per-packet path, because cryptography's API binds the IV
(or the chaining state) to the cipher *context*: CBC and CTR need a new ``Cipher(...).encryptor()``
per packet, and so does GCM with a truncated 8- or 12-byte ICV on the receive side (the AEAD class
verifies only full 16-byte tags). Those contexts reuse the per-SA ``algorithms.AES`` object.

IVs (RFC 4303 §3.3.2):

* GCM, CCM, ChaCha20-Poly1305, null-AES-GMAC, CTR (ESP) and AES-GMAC (AH) need an 8-byte IV that is
  never repeated under one key; it need not be unpredictable (RFC 4106 §3.1, RFC 4309 §3.1,
  RFC 7634 §2.1, RFC 4543 §3.1, RFC 3686 §3). A bare sequence number would do *if* every key had
  exactly one sender whose counter never restarted -- but two SA objects built from one
  description, or an SA file reloaded with a stale ``seq``, both start at the same number, and
  for GCM a repeated nonce also gives away the authentication key. Our CHOICE, modelled on Linux's
  ``seqiv`` template: each transform object draws a random 64-bit ``iv_mask`` at construction
  (``os.urandom(8)``) and the IV of a packet is ``(seq ^ iv_mask)`` as 8 bytes big-endian, ``seq``
  being the full 64-bit (ESN) number. Within one object the IVs are unique because ``seq`` never
  repeats under one SA (RFC 4303 §3.3.3, the engine enforces it); between objects sharing a key
  they collide only with the probability of two random 64-bit values meeting.
  The receiver reads the IV from the packet, so the mask never has to be known to the peer.
* CBC uses ``os.urandom`` per packet: RFC 3602 §3 / RFC 2451 require an unpredictable IV.
  ``iv_mask`` is 0 on transforms that have no counter IV (CBC, null, the AH MACs).
* ``unsafe_iv_source(seq) -> bytes`` overrides both, for known-answer tests only (``iv_mask`` is
  then 0); :data:`COUNTER_IV` is the ready-made override "IV = the sequence number", which some
  published vectors assume. Never for traffic.

Extended sequence numbers: AEAD AAD is SPI ‖ seq-high ‖ seq-low (RFC 4106 §5, RFC 4309 §5,
RFC 7634 §2.3, RFC 4543 §5); for integrity algorithms seq-high is appended after the ESP payload
for the ICV computation only (RFC 4303 §2.2.1, §3.3.2.1). Keys never appear in any repr or message.
"""

from __future__ import annotations

import hmac as _hmac
import os
import struct
from collections.abc import Callable
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import cmac, hashes
from cryptography.hazmat.primitives import hmac as c_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, CipherAlgorithm, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

from ipsecsa.crypto.algorithms import EncryptionAlgorithm, IntegrityAlgorithm, check_key
from ipsecsa.crypto.xcbc import AesXcbcMac
from ipsecsa.errors import ConfigError, DropReason, MalformedPacket

try:  # cryptography >= 43 fences the legacy ciphers off in "decrepit".
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover - older cryptography
    TripleDES = algorithms.TripleDES  # type: ignore[attr-defined,misc]

IvSource = Callable[[int], bytes]

#: Bits of an 8-byte counter IV (``iv_mask`` and the sequence number are both 64-bit).
_U64 = 0xFFFFFFFFFFFFFFFF


class _SealFn(Protocol):
    """A specialised per-SA ``seal`` (the signature of :meth:`EspTransform.seal`)."""

    def __call__(self, esp_header: bytes, seq: int, plaintext: bytes) -> tuple[bytes, bytes]: ...


class _OpenFn(Protocol):
    """A specialised per-SA ``open`` (the signature of :meth:`EspTransform.open`)."""

    def __call__(self, esp_header: bytes, seq: int, iv: bytes, ct_icv: bytes) -> bytes | None: ...


_ENC_KEY = "encryption.key"
_INTEG_KEY = "integrity.key"
_CTR_INITIAL_BLOCK_COUNTER = b"\x00\x00\x00\x01"  # RFC 3686 §4: block counter starts at 1
_GCM_FULL_TAG = 16


# --- MACs ---------------------------------------------------------------------------------------


class _CopyMac:
    """HMAC or CMAC: the keyed context is built once and ``.copy()``-ed per message."""

    __slots__ = ("_n", "_template")

    def __init__(self, template: c_hmac.HMAC | cmac.CMAC, n: int) -> None:
        self._template = template
        self._n = n

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<key hidden>, icv_len={self._n})"

    def digest(self, *parts: bytes) -> bytes:
        h = self._template.copy()
        for p in parts:
            h.update(p)
        return h.finalize()[: self._n]


class _XcbcMac:
    __slots__ = ("_mac", "_n")

    def __init__(self, key: bytes, n: int) -> None:
        self._mac = AesXcbcMac(key).mac
        self._n = n

    def __repr__(self) -> str:
        return f"_XcbcMac(<key hidden>, icv_len={self._n})"

    def digest(self, *parts: bytes) -> bytes:
        return self._mac(b"".join(parts))[: self._n]


_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "hmac-md5-96": hashes.MD5,
    "hmac-sha1-96": hashes.SHA1,
    "hmac-sha256-128": hashes.SHA256,
    "hmac-sha256-96": hashes.SHA256,
    "hmac-sha384-192": hashes.SHA384,
    "hmac-sha512-256": hashes.SHA512,
}


def _make_mac(integ: IntegrityAlgorithm, key: bytes) -> _CopyMac | _XcbcMac:
    key = bytes(key)
    if integ.name in _HASHES:
        return _CopyMac(c_hmac.HMAC(key, _HASHES[integ.name]()), integ.icv_len)
    if integ.name == "aes-cmac-96":
        return _CopyMac(cmac.CMAC(algorithms.AES(key)), integ.icv_len)
    if integ.name == "aes-xcbc-96":
        return _XcbcMac(key, integ.icv_len)
    raise ConfigError("integrity.algorithm", f"{integ.name} is not a MAC usable here")


# --- ESP ----------------------------------------------------------------------------------------


class EspTransform:
    """The per-SA ESP cryptographic step.

    ``seal(esp_header, seq, plaintext) -> (iv, ciphertext ‖ icv)`` and
    ``open(esp_header, seq, iv, ct_icv) -> plaintext | None`` (None: ICV/tag failure; a bad tag
    never raises). ``esp_header`` is the 8-byte SPI ‖ seq-low, ``seq`` the full 64-bit number.
    ``plaintext`` is payload ‖ padding ‖ pad length ‖ next header, already aligned to
    ``block_size``.
    """

    # Slotted: one transform per installed SA. ``seal``/``open`` are slots of each subclass
    # (the specialised per-SA functions), shadowing the documenting methods below.
    __slots__ = ("algorithm", "block_size", "icv_len", "iv_len", "iv_mask")

    iv_len: int
    icv_len: int
    block_size: int
    algorithm: str
    #: The random 64-bit mask of this object's counter IVs (``seq ^ iv_mask``, module doc); 0 for
    #: CBC and null (no counter IV) and when ``unsafe_iv_source`` decides the IVs.
    iv_mask: int

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.algorithm} iv_len={self.iv_len} "
            f"icv_len={self.icv_len} block_size={self.block_size} (keys hidden)>"
        )

    def seal(self, esp_header: bytes, seq: int, plaintext: bytes) -> tuple[bytes, bytes]:
        raise NotImplementedError  # replaced per instance by the specialised bound method

    def open(self, esp_header: bytes, seq: int, iv: bytes, ct_icv: bytes) -> bytes | None:
        raise NotImplementedError


def COUNTER_IV(seq: int) -> bytes:
    """``unsafe_iv_source`` giving IV = the 64-bit sequence number, big-endian (8 bytes).

    Known-answer tests only: the IVs some published vectors assume. Two SA objects sharing a key
    would send the same IVs; the default (a per-object random ``iv_mask``) exists to prevent it.
    Refused for CBC, whose IVs must be unpredictable.
    """
    return _PACK_Q(seq)


def new_iv_mask() -> int:
    """A fresh random 64-bit mask for one transform object's counter IVs (see module doc)."""
    return int.from_bytes(os.urandom(8), "big")


_new_iv_mask = new_iv_mask


def _checked_iv_source(source: IvSource, n: int) -> IvSource:
    def iv_of(seq: int) -> bytes:
        iv = source(seq)
        if len(iv) != n:
            raise ConfigError("unsafe_iv_source", f"expected {n}-byte IVs, got {len(iv)}")
        return bytes(iv)

    return iv_of


def _counter_ivs(unsafe_iv_source: IvSource | None, mask: int | None = None
                 ) -> tuple[int, IvSource]:
    """``(iv_mask, iv_of)`` for a counter-IV transform: a fresh random mask (or the given one)
    and ``iv_of(seq) = (seq ^ mask)`` as 8 bytes big-endian, or mask 0 and the checked override."""
    if unsafe_iv_source is not None:
        return 0, _checked_iv_source(unsafe_iv_source, 8)
    if mask is None:
        mask = _new_iv_mask()
    pack_q = _PACK_Q

    def iv_of(seq: int) -> bytes:
        return pack_q((seq ^ mask) & _U64)

    return mask, iv_of


# Hot path. The sealing/opening functions are closures over the per-SA values (bound AEAD method,
# salt, precompiled structs) and are stored on the instance: no attribute lookups, no branches,
# no bound-method creation per packet.
_PACK_Q = struct.Struct(">Q").pack  # a 64-bit counter as the 8-byte IV
_PACK_ESN_AAD = struct.Struct(">4sQ").pack  # SPI (first 4 bytes of the header) ‖ seq-hi ‖ seq-lo


def _aead_seal(encrypt: Callable[..., bytes], salt: bytes, esn: bool, mask: int) -> _SealFn:
    # seq and mask are both below 2**64, so seq ^ mask is too: no masking needed per packet.
    pack_q = _PACK_Q
    if esn:
        pack_aad = _PACK_ESN_AAD

        def seal_esn(esp_header: bytes, seq: int, plaintext: bytes) -> tuple[bytes, bytes]:
            iv = pack_q(seq ^ mask)
            return iv, encrypt(salt + iv, plaintext, pack_aad(esp_header, seq))

        return seal_esn

    def seal(esp_header: bytes, seq: int, plaintext: bytes) -> tuple[bytes, bytes]:
        # Without ESN the AAD is the ESP header itself (SPI ‖ seq-low): no copy.
        iv = pack_q(seq ^ mask)
        return iv, encrypt(salt + iv, plaintext, esp_header)

    return seal


def _aead_open(decrypt: Callable[..., bytes], salt: bytes, esn: bool) -> _OpenFn:
    if esn:
        pack_aad = _PACK_ESN_AAD

        def open_esn(esp_header: bytes, seq: int, iv: bytes, ct_icv: bytes) -> bytes | None:
            try:
                return decrypt(salt + iv, ct_icv, pack_aad(esp_header, seq))
            except InvalidTag:
                return None

        return open_esn

    def open_(esp_header: bytes, seq: int, iv: bytes, ct_icv: bytes) -> bytes | None:
        try:
            return decrypt(salt + iv, ct_icv, esp_header)
        except InvalidTag:
            return None

    return open_


class _AeadTransform(EspTransform):
    """RFC 4106 AES-GCM, RFC 4309 AES-CCM, RFC 7634 ChaCha20-Poly1305: nonce = salt ‖ IV."""

    __slots__ = (
        "_aes", "_decrypt", "_drop", "_encrypt", "_esn", "_iv_of", "_n", "_salt", "open", "seal",
    )

    def __init__(
        self, enc: EncryptionAlgorithm, key: bytes, esn: bool, unsafe_iv_source: IvSource | None,
        iv_mask: int | None = None,
    ):
        self.algorithm = enc.name
        self.iv_len = enc.iv_len
        self.icv_len = enc.icv_len
        self.block_size = enc.block_size
        cipher_key, self._salt = bytes(key[: -enc.salt_len]), bytes(key[-enc.salt_len :])
        n = enc.icv_len
        aead: AESGCM | AESCCM | ChaCha20Poly1305
        if enc.kind == "gcm":
            aead = AESGCM(cipher_key)
        elif enc.kind == "ccm":
            aead = AESCCM(cipher_key, tag_length=n)
        else:
            aead = ChaCha20Poly1305(cipher_key)
        self._encrypt = aead.encrypt
        self._decrypt = aead.decrypt
        self.iv_mask, self._iv_of = _counter_ivs(unsafe_iv_source, iv_mask)
        # GCM with a truncated ICV: tag = the first n bytes of the full tag (RFC 4106 §6, SP
        # 800-38D §5.2.1.2). Sealing drops the tail; opening needs a Cipher context (see module doc).
        self._drop = _GCM_FULL_TAG - n if enc.kind == "gcm" else 0
        self._n = n
        self._esn = esn
        # The ``open``/``seal`` slots deliberately shadow EspTransform's documenting methods
        # (no dispatch per packet); mypy cannot see that, hence the method-assign ignores.
        if self._drop:
            # Set only here: ``_open_truncated_gcm``, its only reader, is bound only here.
            self._aes = algorithms.AES(cipher_key)
            self.open = self._open_truncated_gcm  # type: ignore[method-assign]
        else:
            self.open = _aead_open(self._decrypt, self._salt, esn)  # type: ignore[method-assign]
        if unsafe_iv_source is not None or self._drop:
            self.seal = self._seal_general  # type: ignore[method-assign]
        else:
            self.seal = _aead_seal(  # type: ignore[method-assign]
                self._encrypt, self._salt, esn, self.iv_mask
            )

    def _seal_general(self, esp_header: bytes, seq: int, plaintext: bytes) -> tuple[bytes, bytes]:
        iv = self._iv_of(seq)
        aad = _PACK_ESN_AAD(esp_header, seq) if self._esn else esp_header
        out = self._encrypt(self._salt + iv, plaintext, aad)
        if self._drop:
            out = out[: -self._drop]
        return iv, out

    def _open_truncated_gcm(
        self, esp_header: bytes, seq: int, iv: bytes, ct_icv: bytes
    ) -> bytes | None:
        n = self._n
        if len(ct_icv) < n:
            return None
        aad = _PACK_ESN_AAD(esp_header, seq) if self._esn else esp_header
        dec = Cipher(
            self._aes, modes.GCM(self._salt + iv, ct_icv[-n:], min_tag_length=n)
        ).decryptor()
        dec.authenticate_additional_data(aad)
        pt = dec.update(ct_icv[:-n])
        try:
            dec.finalize()
        except InvalidTag:
            return None
        return pt


class _GmacTransform(EspTransform):
    """RFC 4543 ENCR_NULL_AUTH_AES_GMAC: nothing is encrypted; the whole ESP body is AAD.

    AAD = SPI ‖ [seq-high] ‖ seq-low ‖ IV ‖ plaintext (RFC 4543 §3.2, §5), GCM plaintext empty,
    output = plaintext ‖ 16-byte tag.
    """

    __slots__ = ("_decrypt", "_encrypt", "_esn", "_iv_of", "_salt", "open", "seal")

    def __init__(
        self, enc: EncryptionAlgorithm, key: bytes, esn: bool, unsafe_iv_source: IvSource | None,
        iv_mask: int | None = None,
    ):
        self.algorithm = enc.name
        self.iv_len = enc.iv_len
        self.icv_len = enc.icv_len
        self.block_size = enc.block_size
        aead = AESGCM(bytes(key[:-4]))
        self._salt = bytes(key[-4:])
        self._encrypt = aead.encrypt
        self._decrypt = aead.decrypt
        self._esn = esn
        self.iv_mask, self._iv_of = _counter_ivs(unsafe_iv_source, iv_mask)
        # Slots shadowing EspTransform's documenting methods (see _AeadTransform).
        self.seal = self._seal_gmac  # type: ignore[method-assign]
        self.open = self._open_gmac  # type: ignore[method-assign]

    def _seal_gmac(self, esp_header: bytes, seq: int, plaintext: bytes) -> tuple[bytes, bytes]:
        iv = self._iv_of(seq)
        head = _PACK_ESN_AAD(esp_header, seq) if self._esn else esp_header
        tag = self._encrypt(self._salt + iv, b"", b"".join((head, iv, plaintext)))
        return iv, plaintext + tag

    def _open_gmac(self, esp_header: bytes, seq: int, iv: bytes, ct_icv: bytes) -> bytes | None:
        if len(ct_icv) < 16:
            return None
        plaintext, tag = ct_icv[:-16], ct_icv[-16:]
        head = _PACK_ESN_AAD(esp_header, seq) if self._esn else esp_header
        try:
            self._decrypt(self._salt + iv, tag, b"".join((head, iv, plaintext)))
        except InvalidTag:
            return None
        return plaintext


class _EncryptThenMac(EspTransform):
    """CBC (RFC 3602 / 2451 / 2405), CTR (RFC 3686) or null (RFC 2410) with an optional MAC.

    ICV = MAC(ESP header ‖ IV ‖ ciphertext [‖ seq-high]) truncated (RFC 4303 §2.8, §3.3.2.1).
    With integrity ``none`` the ICV is empty (encryption-only ESP) and ``open`` cannot fail.
    """

    __slots__ = (
        "_cipher_alg", "_esn", "_iv_of", "_kind", "_mac", "_mode", "_nonce", "open", "seal",
    )

    def __init__(
        self,
        enc: EncryptionAlgorithm,
        enc_key: bytes,
        integ: IntegrityAlgorithm | None,
        integ_key: bytes | None,
        esn: bool,
        unsafe_iv_source: IvSource | None,
        iv_mask: int | None = None,
    ):
        self.algorithm = enc.name if integ is None else f"{enc.name}+{integ.name}"
        self.iv_len = enc.iv_len
        self.block_size = enc.block_size
        self._kind = enc.kind
        self._esn = esn
        key = bytes(enc_key)
        self._cipher_alg: CipherAlgorithm
        if enc.kind == "cbc":
            # Single DES is 3DES-EDE with K1 = K2 = K3 (E-D-E collapses to one DES encryption);
            # OpenSSL 3 keeps no plain DES outside the legacy provider, TripleDES covers it.
            if enc.name == "aes-cbc":
                self._cipher_alg = algorithms.AES(key)
            else:
                self._cipher_alg = TripleDES(key * 3 if len(key) == 8 else key)
            self._mode = modes.CBC
        elif enc.kind == "ctr":
            self._cipher_alg = algorithms.AES(key[:-4])
            self._nonce = key[-4:]
        self._mac = None if integ is None or integ.icv_len == 0 else _make_mac(integ, integ_key or b"")
        self.icv_len = 0 if self._mac is None else integ.icv_len  # type: ignore[union-attr]
        self.iv_mask = 0
        if enc.kind == "ctr":
            self.iv_mask, self._iv_of = _counter_ivs(unsafe_iv_source, iv_mask)
        elif unsafe_iv_source is not None:
            if unsafe_iv_source is COUNTER_IV:
                raise ConfigError(
                    "unsafe_iv_source",
                    f"COUNTER_IV is for counter-IV algorithms; {enc.name} needs "
                    "unpredictable IVs (RFC 3602 §3)" if enc.kind == "cbc"
                    else f"COUNTER_IV is for counter-IV algorithms; {enc.name} has no IV",
                )
            self._iv_of = _checked_iv_source(unsafe_iv_source, self.iv_len)
        elif enc.kind == "cbc":
            n = self.iv_len
            self._iv_of = lambda seq: os.urandom(n)
        else:
            self._iv_of = lambda seq: b""
        # Slots shadowing EspTransform's documenting methods (see _AeadTransform).
        self.seal = self._seal_etm  # type: ignore[method-assign]
        self.open = self._open_etm  # type: ignore[method-assign]

    def _crypt(self, iv: bytes, data: bytes, encrypt: bool) -> bytes:
        kind = self._kind
        if kind == "null":
            return data
        mode: modes.CBC | modes.CTR
        if kind == "cbc":
            if len(data) % self.block_size:
                if encrypt:
                    raise ConfigError(
                        "plaintext", f"length {len(data)} is not a multiple of {self.block_size}"
                    )
                raise MalformedPacket(DropReason.BAD_LENGTH, "ciphertext not block aligned")
            mode = modes.CBC(iv)
        else:
            mode = modes.CTR(self._nonce + iv + _CTR_INITIAL_BLOCK_COUNTER)
        c = Cipher(self._cipher_alg, mode)
        ctx = c.encryptor() if encrypt else c.decryptor()
        return ctx.update(data)  # aligned CBC / stream CTR: finalize() would add nothing

    def _icv(self, esp_header: bytes, seq: int, iv: bytes, ct: bytes) -> bytes:
        assert self._mac is not None
        if self._esn:
            return self._mac.digest(esp_header, iv, ct, (seq >> 32).to_bytes(4, "big"))
        return self._mac.digest(esp_header, iv, ct)

    def _seal_etm(self, esp_header: bytes, seq: int, plaintext: bytes) -> tuple[bytes, bytes]:
        iv = self._iv_of(seq)
        ct = self._crypt(iv, plaintext, True)
        if self._mac is None:
            return iv, ct
        return iv, ct + self._icv(esp_header, seq, iv, ct)

    def _open_etm(self, esp_header: bytes, seq: int, iv: bytes, ct_icv: bytes) -> bytes | None:
        n = self.icv_len
        if n:
            if len(ct_icv) < n:
                return None
            ct, icv = ct_icv[:-n], ct_icv[-n:]
            if not _hmac.compare_digest(self._icv(esp_header, seq, iv, ct), icv):
                return None
        else:
            ct = ct_icv
        return self._crypt(iv, ct, False)


def make_esp_transform(
    enc: EncryptionAlgorithm,
    enc_key: bytes,
    integ: IntegrityAlgorithm | None,
    integ_key: bytes | None,
    *,
    esn: bool,
    unsafe_iv_source: IvSource | None = None,
    iv_mask: int | None = None,
) -> EspTransform:
    """Build the per-SA ESP transform; validates the combination and the key lengths.

    Raises :class:`ConfigError` for a combination RFC 4303 does not allow (null encryption
    without integrity, an AEAD with a separate integrity algorithm, AH-only ``aes-gmac`` in ESP)
    and :class:`KeyLengthError` naming ``encryption.key`` / ``integrity.key``.

    ``unsafe_iv_source(seq) -> bytes`` replaces IV generation -- known-answer tests only (module
    doc); without it counter IVs are ``seq ^ iv_mask`` with a fresh random mask per transform,
    or with ``iv_mask`` when given: an SA that builds its transform only when its Python path
    first needs it draws the mask up front, so that its native path (which uses the mask from
    the start) and the Python path share it and never repeat an IV (ipsecsa.datapath.native).
    """
    if integ is not None and integ.name == "none":
        integ = None
    check_key(enc, enc_key, _ENC_KEY)
    if enc.aead:
        if integ is not None:
            raise ConfigError(
                "integrity.algorithm",
                f"{enc.name} is a combined-mode algorithm with its own ICV; integrity must be none",
            )
        if enc.kind == "gmac":
            return _GmacTransform(enc, enc_key, esn, unsafe_iv_source, iv_mask)
        return _AeadTransform(enc, enc_key, esn, unsafe_iv_source, iv_mask)
    if integ is None:
        if enc.kind == "null":
            raise ConfigError(
                "integrity.algorithm",
                "null encryption without integrity protects nothing (RFC 4303 §3.2 forbids it)",
            )
    else:
        if integ.name == "aes-gmac":
            raise ConfigError(
                "integrity.algorithm",
                "aes-gmac is the AH form of RFC 4543; for ESP use encryption null-aes-gmac",
            )
        if integ_key is None:
            raise ConfigError(_INTEG_KEY, f"{integ.name} needs a key")
        check_key(integ, integ_key, _INTEG_KEY)
    return _EncryptThenMac(enc, enc_key, integ, integ_key, esn, unsafe_iv_source, iv_mask)


def esp_lengths(enc: EncryptionAlgorithm, integ: IntegrityAlgorithm | None
                ) -> tuple[int, int, int]:
    """``(iv_len, icv_len, block_size)`` of the transform :func:`make_esp_transform` would build
    for this (valid) combination, without building it."""
    if integ is not None and integ.name == "none":
        integ = None
    if enc.aead:
        return enc.iv_len, enc.icv_len, enc.block_size
    return enc.iv_len, 0 if integ is None else integ.icv_len, enc.block_size


# --- AH -----------------------------------------------------------------------------------------


class AhIntegrity:
    """The per-SA AH ICV computation (RFC 4302).

    ``data`` is the whole packet as the caller prepared it for the ICV (mutable fields and the
    ICV field zeroed, RFC 4302 §3.3.3.1). ``seq`` is the full 64-bit sequence number; with ESN
    the caller still passes the full number and **this object appends the 4-byte seq-high after
    the packet** for the computation (RFC 4302 §2.5.1, §3.3.3.2.1: included in the ICV,
    not transmitted). Without ESN nothing is appended (the caller may pass ``seq`` anyway).

    ``icv_len`` is the algorithm's ICV length; alignment padding of the AH ICV field (RFC 4302
    §2.6, 4 bytes for IPv4, 8 for IPv6) is the packet layer's business.

    ``icv_off`` (where the ICV field starts in ``data``) is passed by the packet layer for the
    algorithms whose ICV field carries an input (AES-GMAC's IV, see :class:`_AhGmacIntegrity`);
    the MACs ignore it. ``iv_len`` is the size of that input at the start of the field (0 here).
    """

    iv_len = 0
    #: No IV, so no mask (see :class:`_AhGmacIntegrity` for the one AH algorithm with an IV).
    iv_mask = 0

    def __init__(self, integ: IntegrityAlgorithm, key: bytes, esn: bool) -> None:
        self.algorithm = integ.name
        self.icv_len = integ.icv_len
        self._esn = esn
        self._mac = _make_mac(integ, key)

    def __repr__(self) -> str:
        return f"<AhIntegrity {self.algorithm} icv_len={self.icv_len} (key hidden)>"

    def compute(self, data: bytes, seq: int, icv_off: int = 0) -> bytes:
        if self._esn:
            return self._mac.digest(data, (seq >> 32).to_bytes(4, "big"))
        return self._mac.digest(data)

    def verify(self, data: bytes, seq: int, icv: bytes, icv_off: int = 0) -> bool:
        """Constant-time comparison of ``icv`` with the computed ICV."""
        return _hmac.compare_digest(self.compute(data, seq), icv)


class _AhGmacIntegrity(AhIntegrity):
    """RFC 4543 §4 AUTH_AES_GMAC: the AH ICV field is IV (8) ‖ GMAC tag (16), ``icv_len`` 24.

    Nonce = salt ‖ IV (§3.2), IV = ``seq ^ iv_mask`` like ESP's counter IVs (module doc; §3.1
    asks only for uniqueness per key) or ``unsafe_iv_source(seq)``,
    full untruncated tag (§3.4). AAD = the AH ICV input of RFC 4302 §3.3.3 (``data``: mutable
    fields zeroed, everything after AH, seq-high appended with ESN) with the IV *in place* at the
    start of the ICV field and only the tag (and the sender's padding) zeroed: "the IV is included
    in the additional authenticated data" (§7). GCM plaintext empty. ``icv_off`` is required.
    """

    iv_len = 8

    def __init__(
        self, integ: IntegrityAlgorithm, key: bytes, esn: bool, unsafe_iv_source: IvSource | None
    ) -> None:
        self.algorithm = integ.name
        self.icv_len = self.iv_len + integ.icv_len
        self._esn = esn
        n = integ.salt_len
        aead = AESGCM(bytes(key[:-n]))
        self._salt = bytes(key[-n:])
        self._encrypt = aead.encrypt
        self._decrypt = aead.decrypt
        self.iv_mask, self._iv_of = _counter_ivs(unsafe_iv_source)

    def _aad(self, data: bytes, seq: int, iv: bytes, icv_off: int) -> bytes:
        mv = memoryview(data)
        if self._esn:
            return b"".join((mv[:icv_off], iv, mv[icv_off + 8:], (seq >> 32).to_bytes(4, "big")))
        return b"".join((mv[:icv_off], iv, mv[icv_off + 8:]))

    def compute(self, data: bytes, seq: int, icv_off: int) -> bytes:  # type: ignore[override]
        """The ICV field content, IV ‖ tag; ``data`` holds zeros at ``icv_off``."""
        iv = self._iv_of(seq)
        return iv + self._encrypt(self._salt + iv, b"", self._aad(data, seq, iv, icv_off))

    def verify(self, data: bytes, seq: int, icv: bytes, icv_off: int) -> bool:  # type: ignore[override]
        """``icv`` is the received IV ‖ tag; the tag is checked by AESGCM (constant time)."""
        if len(icv) != self.icv_len:
            return False
        iv = bytes(icv[:8])
        try:
            self._decrypt(self._salt + iv, bytes(icv[8:]), self._aad(data, seq, iv, icv_off))
        except InvalidTag:
            return False
        return True


def make_ah_integrity(
    integ: IntegrityAlgorithm,
    key: bytes,
    *,
    esn: bool,
    unsafe_iv_source: IvSource | None = None,
) -> AhIntegrity:
    """Build the per-SA AH integrity object.

    ``esn`` (required keyword, like :func:`make_esp_transform`'s) is an addition to the documented
    signature: whether seq-high enters the ICV is a property of the SA, and ``compute(data, seq)``
    cannot know it otherwise. It is required on purpose: a silent default would make ESN AH SAs
    compute a wrong ICV.
    ``unsafe_iv_source`` (known-answer tests only) is used by AES-GMAC (RFC 4543 §4) only and
    ignored by the MACs.
    """
    if integ.name == "none":
        raise ConfigError("integrity.algorithm", "AH requires an integrity algorithm")
    check_key(integ, key, _INTEG_KEY)
    if integ.name == "aes-gmac":
        return _AhGmacIntegrity(integ, key, esn, unsafe_iv_source)
    return AhIntegrity(integ, key, esn)


__all__ = ["COUNTER_IV", "AhIntegrity", "EspTransform", "esp_lengths", "make_ah_integrity",
           "make_esp_transform", "new_iv_mask"]

"""AES-XCBC-MAC (RFC 3566) assembled from OpenSSL's AES block operations.

pyca/cryptography offers no XCBC, so the construction is composed here; no block cipher is
implemented in Python:

* at construction, K1, K2 and K3 are derived with one AES-ECB encryption each of the constant
  blocks 0x01.., 0x02.., 0x03.. under the SA key (RFC 3566 §4 step 1), and the ``algorithms.AES(K1)``
  object is built once;
* per message, the CBC-MAC is an AES-CBC encryption with an all-zero IV under K1 whose last
  output block is the MAC (RFC 3566 §4 steps 2-3); a fresh CBC encryptor per message is required
  because cryptography binds the IV/chaining state to the context;
* the only Python arithmetic is the XOR of the final block with K2 (complete block) or K3
  (0x80-padded partial or empty block), done on 128-bit integers.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_BLOCK = 16
_ZERO_IV = bytes(_BLOCK)


class AesXcbcMac:
    """AES-XCBC-MAC with a 128-bit key; ``mac(data)`` returns the full 16-byte value."""

    __slots__ = ("_aes1", "_cbc", "_k2", "_k3")

    def __init__(self, key: bytes) -> None:
        if len(key) != 16:
            # Callers validate with check_key first; this guards direct use. No key bytes shown.
            raise ValueError(f"AES-XCBC-MAC needs a 16-byte key, got {len(key)}")
        ecb = Cipher(algorithms.AES(bytes(key)), modes.ECB()).encryptor()
        derived = ecb.update(b"\x01" * 16 + b"\x02" * 16 + b"\x03" * 16) + ecb.finalize()
        self._aes1 = algorithms.AES(derived[:16])
        self._k2 = int.from_bytes(derived[16:32], "big")
        self._k3 = int.from_bytes(derived[32:48], "big")
        self._cbc = modes.CBC(_ZERO_IV)

    def __repr__(self) -> str:
        return "AesXcbcMac(<key hidden>)"

    def mac(self, data: bytes) -> bytes:
        """RFC 3566 §4: the 128-bit AES-XCBC-MAC of ``data``."""
        n = len(data)
        rem = n % _BLOCK
        if n and not rem:
            head = data[: n - _BLOCK]
            last = int.from_bytes(data[n - _BLOCK :], "big") ^ self._k2
        else:
            head = data[: n - rem]
            last = int.from_bytes(data[n - rem :] + b"\x80" + bytes(_BLOCK - 1 - rem), "big")
            last ^= self._k3
        enc = Cipher(self._aes1, self._cbc).encryptor()
        out = enc.update(head + last.to_bytes(_BLOCK, "big"))
        return out[-_BLOCK:]

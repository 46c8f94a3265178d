"""ipsecsa.crypto: IPsec algorithms over pyca/cryptography (OpenSSL); nothing hand-rolled.

``algorithms`` names and resolves algorithms and checks key lengths; ``transforms`` builds the
per-SA ESP/AH cryptographic step. See ``docs/internals.md``.
"""

from ipsecsa.crypto.algorithms import (
    ENCRYPTION,
    INTEGRITY,
    EncryptionAlgorithm,
    IntegrityAlgorithm,
    check_key,
    list_algorithms,
    lookup_encryption,
    lookup_integrity,
    resolve_encryption,
    resolve_integrity,
)
from ipsecsa.crypto.transforms import (
    AhIntegrity,
    EspTransform,
    make_ah_integrity,
    make_esp_transform,
)

__all__ = [
    "ENCRYPTION",
    "INTEGRITY",
    "AhIntegrity",
    "EncryptionAlgorithm",
    "EspTransform",
    "IntegrityAlgorithm",
    "check_key",
    "list_algorithms",
    "lookup_encryption",
    "lookup_integrity",
    "make_ah_integrity",
    "make_esp_transform",
    "resolve_encryption",
    "resolve_integrity",
]

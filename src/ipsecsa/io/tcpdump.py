"""tcpdump's ESP secrets (``tcpdump -E``): read and write them.

tcpdump (``print-esp.c``, ``esp_print_decode_onesecret`` / ``espprint_decode_encalgo``) takes
secrets as ``spi@address algo:secret``, several separated by commas on the command line, or one
per line in a file named by ``-E file NAME`` (lines starting with ``#`` are comments). ``spi`` is
read with ``strtoul(..., 0)`` (``0x`` hex or decimal); ``address`` is the destination (IPv4 or
IPv6); ``algo`` is an OpenSSL cipher name after tcpdump strips a ``-hmac96`` suffix (which means
"a 12-byte ICV follows") and a ``-cbc`` suffix (``aes128-cbc`` -> ``aes128``; ``3des`` is mapped
to ``des-ede3-cbc``); ``secret`` is ``0x`` hex or the key's ASCII text.

tcpdump decrypts and never verifies: its secrets carry **no integrity key, no source address
and no mode**, and it only handles CBC ciphers. So that an export is complete and an import of it
gives back the same SAs, :func:`tcpdump_secrets` writes, before each secret, a comment line that
tcpdump ignores and :func:`parse_tcpdump` reads: the rest of the SA description as compact
JSON (everything but the SPI, destination and encryption, which the secret itself carries)::

    # ipsecsa: {"protocol":"esp","mode":"tunnel","src":"192.0.2.1","integrity":{...},...}

(the comment holds the integrity key: the file is written 0600 like every key file). A secret without
that comment needs the missing facts from the caller (``src``, ``mode``) and, for ``-hmac96``
secrets, an integrity algorithm and key, since ipsecsa verifies every ICV it has.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from ipsecsa.config.model import SaConfig
from ipsecsa.errors import ConfigError
from ipsecsa.io.keytext import Imported, KeyTextError, hex_key

#: OpenSSL names tcpdump accepts (after -cbc / -hmac96 are stripped) -> (ours, key bytes).
_CIPHERS: dict[str, tuple[str, int | None]] = {
    "aes128": ("aes-cbc", 16), "aes-128": ("aes-cbc", 16),
    "aes192": ("aes-cbc", 24), "aes-192": ("aes-cbc", 24),
    "aes256": ("aes-cbc", 32), "aes-256": ("aes-cbc", 32),
    "aes": ("aes-cbc", None),
    "3des": ("3des-cbc", 24), "des-ede3": ("3des-cbc", 24), "des3": ("3des-cbc", 24),
    "des": ("des-cbc", 8),
}
_EXPORT_NAMES = {("aes-cbc", 16): "aes128-cbc", ("aes-cbc", 24): "aes192-cbc",
                 ("aes-cbc", 32): "aes256-cbc", ("3des-cbc", 24): "3des-cbc",
                 ("des-cbc", 8): "des-cbc"}
_META = "# ipsecsa:"
#: tcpdump's -hmac96 suffix: a 12-byte ICV.
HMAC96_ICV = 12


def _meta(line: str, lineno: int) -> dict[str, Any]:
    try:
        value = json.loads(line[len(_META):])
    except ValueError:
        raise KeyTextError(lineno, "the ipsecsa comment is not a JSON object") from None
    if not isinstance(value, dict):
        raise KeyTextError(lineno, "the ipsecsa comment is not a JSON object")
    return value


def _secrets(text: str) -> list[tuple[int, str, dict[str, Any]]]:
    """(line, secret, metadata) for each secret of a file or a comma-separated -E value."""
    out = []
    meta: dict[str, Any] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith(_META):
            meta = _meta(line, lineno)
            continue
        if not line or line.startswith("#"):
            continue
        for secret in line.split(","):
            if secret.strip():
                out.append((lineno, secret.strip(), meta))
        meta = {}
    return out


def parse_tcpdump(text: str, *, src: str | None = None, mode: str = "tunnel",
                  integrity: tuple[str, str] | None = None) -> list[Imported]:
    """SA objects from tcpdump ESP secrets (module docstring). ``integrity`` is
    ``(algorithm, hex key)`` for ``-hmac96`` secrets that have no ipsecsa comment."""
    out: list[Imported] = []
    for lineno, secret, meta in _secrets(text):
        head, _, decode = secret.partition(" ")
        if not decode:
            raise KeyTextError(lineno, "a default secret (no spi@address) does not identify "
                                       "an SA; write spi@address algo:secret")
        if head.lower() in ("file", "ikev2"):
            raise KeyTextError(lineno, f"'{head}' lines are not ESP secrets")
        spi_text, at, address = head.partition("@")
        if not at:
            raise KeyTextError(lineno, "expected spi@address")
        try:
            spi = int(spi_text, 0)
            dst = ipaddress.ip_address(address)
        except ValueError:
            raise KeyTextError(lineno, "bad spi or address in spi@address") from None
        algo, colon, secret_text = decode.strip().partition(":")
        if not colon:
            raise KeyTextError(lineno, "expected algo:secret")
        name = algo.lower()
        icv = 0
        if name.endswith("-hmac96"):
            name, icv = name[:-len("-hmac96")], HMAC96_ICV
        name = name.removesuffix("-cbc")
        if name == "none":
            enc, size = "null", 0
        elif name in _CIPHERS:
            enc, size_ = _CIPHERS[name]
            size = size_ or 0
        else:
            raise KeyTextError(lineno, f"cipher {algo!r}: tcpdump decrypts CBC ciphers only; "
                                       "no ipsecsa equivalent")
        key = (hex_key(secret_text, lineno, "secret") if secret_text.startswith("0x")
               else secret_text.encode("utf-8").hex())
        if size and len(key) // 2 != size:
            raise KeyTextError(lineno, f"{algo}: the secret is {len(key) // 2} bytes, the "
                                       f"cipher takes {size}")
        source = meta.get("src") or src or ("0.0.0.0" if dst.version == 4 else "::")
        sa: dict[str, Any] = {"protocol": "esp", "mode": mode, **meta,
                              "spi": spi, "src": source, "dst": str(dst),
                              "encryption": {"algorithm": enc, "key": key} if key else
                              {"algorithm": enc}}
        notes = []
        if "integrity" in meta:
            pass
        elif icv:
            if integrity is None:
                raise KeyTextError(lineno, f"{algo}: tcpdump's secret has a 96-bit ICV but no "
                                           "integrity key; give --integrity ALG:HEXKEY")
            sa["integrity"] = {"algorithm": integrity[0],
                               "key": hex_key(integrity[1], lineno, "integrity key")}
        if not meta.get("src") and src is None:
            notes.append(f"SPI 0x{spi:08x}: source address unknown (tcpdump names only the "
                         f"destination); {source} used")
        out.append(Imported(lineno, sa, notes))
    if not out:
        raise KeyTextError(1, "no ESP secret found")
    return out


def tcpdump_secrets(configs: list[SaConfig]) -> list[str]:
    """Lines of a ``tcpdump -E file NAME`` secrets file for ``configs`` (module docstring).

    Raises ConfigError (``sas[i].<field>``) for an SA tcpdump cannot decrypt: AH, and any
    cipher but AES-CBC/3DES-CBC/DES-CBC/NULL, or an ICV other than none or 96 bits.
    """
    lines = []
    for i, cfg in enumerate(configs):
        try:
            lines += _secret_lines(cfg)
        except ConfigError as exc:
            raise exc.at(f"sas[{i}]") from None
    return lines


def _secret_lines(cfg: SaConfig) -> list[str]:
    if cfg.protocol != "esp":
        raise ConfigError("protocol", "tcpdump decrypts ESP only")
    assert cfg.encryption is not None
    key = cfg.encryption_key.bytes if cfg.encryption_key is not None else b""
    if cfg.encryption.name == "null":
        algo = "none"
    else:
        algo_ = _EXPORT_NAMES.get((cfg.encryption.name, len(key)))
        if algo_ is None:
            raise ConfigError("encryption.algorithm", f"{cfg.encryption.name}: tcpdump "
                                                      "decrypts CBC ciphers only")
        algo = algo_
    icv = cfg.integrity.icv_len if cfg.integrity is not None else 0
    if icv not in (0, HMAC96_ICV):
        raise ConfigError("integrity.algorithm", f"{cfg.integrity.name if cfg.integrity else ''}"
                                                 f": tcpdump can skip only a 96-bit ICV")
    if icv:
        algo += "-hmac96"
    meta = {k: v for k, v in cfg.to_dict().items() if k not in ("spi", "dst", "encryption")}
    secret = f"0x{key.hex()}" if key else "0x"
    return [f"{_META} " + json.dumps(meta, separators=(",", ":")),
            f"0x{cfg.spi:08x}@{cfg.dst} {algo}:{secret}"]


__all__ = ["parse_tcpdump", "tcpdump_secrets"]

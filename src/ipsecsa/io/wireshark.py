"""Wireshark's ESP SA table (the ``esp_sa`` UAT) for our SA descriptions.

With these entries Wireshark and tshark decrypt the traffic our SAs protect and check its ICV
(preferences ``esp.enable_encryption_decode`` and ``esp.enable_authentication_check``). One entry
is one line of the UAT file ``esp_sa`` in a Wireshark profile directory, or the value of
``tshark -o "uat:esp_sa:<line>"``: comma-separated, double-quoted fields

    "IPv4","192.0.2.1","198.51.100.1","0xc0000101","AES-CBC [RFC3602]","0x<key>",
    "HMAC-SHA-256-128 [RFC4868]","0x<key>"

(protocol, source, destination, SPI, encryption algorithm, encryption key, authentication
algorithm, authentication key). The algorithm fields must be the exact display strings of
``esp_encryption_type_vals`` / ``esp_authentication_type_vals`` in Wireshark's
``epan/dissectors/packet-ipsec.c``; the keys are ``0x``-prefixed hex. Facts taken from that file
(the 3.x/4.0 shape, checked against the strings in the installed libwireshark 4.0.17 and by the
tshark interop tests) that shape this module:

* For AES-CTR and AES-GCM the key field is the key *with its 4-byte salt/nonce appended*
  (Wireshark subtracts 4 bytes and uses them as the salt), exactly our ``key ‖ salt``.
* AES-GCM has one entry per ICV length (8, 12, 16 octets) and must be paired with authentication
  ``NULL``; the ICV length is taken from the encryption entry.
* HMAC ICV lengths are fixed per entry: SHA-1/MD5 96 bits, SHA-256 128, SHA-384 192, SHA-512 256
  (RFC 4868 truncations; the "HMAC-SHA-256-96" draft entry is never used).
* The HMAC is computed over the ESP header and payload only and the GCM AAD is SPI ‖ seq-low:
  these versions have no notion of extended sequence numbers, so for an ESN SA they still
  decrypt but report every ICV as bad. We write the entry and log a warning.
* Not implemented by Wireshark 4.0, so refused (or skipped with ``skip_unsupported=True``):
  AES-CCM, ENCR_NULL_AUTH_AES_GMAC, ChaCha20-Poly1305, AES-XCBC-96, AES-CMAC-96, and AH SAs (the
  table is ESP-only; Wireshark dissects AH without keys and never verifies its ICV).

Wireshark 4.0 adds the ICV verdict (``esp.icv_good`` / ``esp.icv_bad``) *after* dissecting the
decrypted payload, so a dissector exception in the inner traffic hides the verdict for that frame.
UDP-encapsulated ESP on port 4500 is decoded (``udpencap``) without any extra option.

Newer Wireshark sources (the current ``packet-ipsec.c``) add two trailing fields, ``SN``
(``"32-bit"`` / ``"64-bit"``) and ``ESN High Bits`` (hex), and the encryption entry
``"ChaCha20 with Poly1305 [RFC7634]"``. We emit that 10-field form when the caller says the
Wireshark version is at least :data:`ESN_FIELDS_MIN_VERSION`; that profile follows the upstream
source but is *not* exercised here (the interop tests run against the installed 4.0). Missing
trailing UAT fields take their defaults, so the 8-field form stays readable by newer versions.

Keys are written to the file only: never to logs or messages, and the file is created 0600 and
atomically replaced. Putting keys on a tshark command line (``-o uat:esp_sa:...``) works too, but
exposes them to every local user through the process list; prefer the file in a private profile
directory (``WIRESHARK_CONFIG_DIR``).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ipsecsa.config.model import SaConfig
from ipsecsa.errors import ConfigError
from ipsecsa.securefile import write_secret_file

log = logging.getLogger("ipsecsa.io.wireshark")

# --- Specification constants (Wireshark's packet-ipsec.c) ---------------------------------------
#: File name of the ESP SA table in a Wireshark profile directory, and the UAT name for ``-o``.
ESP_SA_UAT = "esp_sa"
#: Preferences that turn decryption and ICV checking on (both default to off).
PREF_DECRYPT = "esp.enable_encryption_decode"
PREF_CHECK_ICV = "esp.enable_authentication_check"
#: esp_proto_type_vals.
PROTOCOL_STRINGS = {4: "IPv4", 6: "IPv6"}
#: esp_encryption_type_vals entries for our canonical encryption algorithms (Wireshark 3.x-4.0).
ENCRYPTION_STRINGS: dict[str, str] = {
    "null": "NULL",
    "3des-cbc": "TripleDES-CBC [RFC2451]",
    "aes-cbc": "AES-CBC [RFC3602]",
    "aes-ctr": "AES-CTR [RFC3686]",
    "des-cbc": "DES-CBC [RFC2405]",
    "aes-gcm-8": "AES-GCM with 8 octet ICV [RFC4106]",
    "aes-gcm-12": "AES-GCM with 12 octet ICV [RFC4106]",
    "aes-gcm-16": "AES-GCM with 16 octet ICV [RFC4106]",
}
#: esp_authentication_type_vals entries for our canonical integrity algorithms.
INTEGRITY_STRINGS: dict[str, str] = {
    "none": "NULL",
    "hmac-sha1-96": "HMAC-SHA-1-96 [RFC2404]",
    "hmac-sha256-128": "HMAC-SHA-256-128 [RFC4868]",
    "hmac-sha256-96": "HMAC-SHA-256-96 [draft-ietf-ipsec-ciph-sha-256-00]",
    "hmac-sha384-192": "HMAC-SHA-384-192 [RFC4868]",
    "hmac-sha512-256": "HMAC-SHA-512-256 [RFC4868]",
    "hmac-md5-96": "HMAC-MD5-96 [RFC2403]",
}
#: The first Wireshark version assumed to have the ``SN``/``ESN High Bits`` fields and the
#: ChaCha20-Poly1305 entry (present in the current upstream source, absent from 4.0; the exact
#: release is not verified here).
ESN_FIELDS_MIN_VERSION = (4, 2)
MODERN_ENCRYPTION_STRINGS = {"chacha20-poly1305": "ChaCha20 with Poly1305 [RFC7634]"}
SN_LENGTH_STRINGS = {False: "32-bit", True: "64-bit"}
#: The version this module's default output targets (and the tests exercise).
DEFAULT_WIRESHARK_VERSION = (4, 0)

#: Why Wireshark cannot use an algorithm of ours (named in errors and warnings).
_UNSUPPORTED_REASONS = {
    "aes-ccm-8": "AES-CCM is not implemented by Wireshark's ESP dissector",
    "aes-ccm-12": "AES-CCM is not implemented by Wireshark's ESP dissector",
    "aes-ccm-16": "AES-CCM is not implemented by Wireshark's ESP dissector",
    "null-aes-gmac": "ENCR_NULL_AUTH_AES_GMAC is not implemented by Wireshark's ESP dissector",
    "chacha20-poly1305": "ChaCha20-Poly1305 needs a Wireshark newer than "
                         f"{DEFAULT_WIRESHARK_VERSION[0]}.{DEFAULT_WIRESHARK_VERSION[1]} (pass "
                         "wireshark_version for a newer one)",
    "aes-xcbc-96": "AES-XCBC-MAC-96 is not implemented by Wireshark's ESP dissector",
    "aes-cmac-96": "AES-CMAC-96 is not implemented by Wireshark's ESP dissector",
}


@dataclass(frozen=True)
class _Profile:
    encryption: dict[str, str]
    integrity: dict[str, str]
    esn_fields: bool


def _profile(version: tuple[int, ...]) -> _Profile:
    if tuple(version[:2]) >= ESN_FIELDS_MIN_VERSION:
        return _Profile({**ENCRYPTION_STRINGS, **MODERN_ENCRYPTION_STRINGS}, INTEGRITY_STRINGS,
                        True)
    return _Profile(ENCRYPTION_STRINGS, INTEGRITY_STRINGS, False)


def _as_config(item: Any) -> SaConfig:
    if isinstance(item, SaConfig):
        return item
    config = getattr(item, "config", None)  # a SecurityAssociation
    if isinstance(config, SaConfig):
        return config
    if isinstance(item, dict):
        return SaConfig.from_dict(item)
    raise ConfigError("", f"expected an SaConfig, SecurityAssociation or sa-format object, "
                          f"got {type(item).__name__}")


def _uat_field(value: str) -> str:
    # Our values are addresses, hex and fixed names; a quote or backslash would need UAT escapes.
    if '"' in value or "\\" in value or not value.isprintable():
        raise ValueError("internal: a UAT field with characters that would need escaping")
    return f'"{value}"'


def _key_field(key: Any) -> str:
    return "0x" + key.hex() if key is not None and len(key) else ""


def _unsupported(cfg: SaConfig) -> tuple[str, str] | None:
    """(field, reason) if Wireshark cannot decrypt this SA with the profile, else None."""
    if cfg.protocol != "esp":
        reason = ("AH SAs have no entry in Wireshark's ESP SA table (Wireshark dissects AH "
                  "without keys and does not verify AH ICVs)")
        return ("protocol", reason)
    return None


def _entry(cfg: SaConfig, profile: _Profile) -> tuple[list[str] | None, tuple[str, str] | None]:
    problem = _unsupported(cfg)
    if problem:
        return None, problem
    assert cfg.encryption is not None
    enc_name = cfg.encryption.name
    enc = profile.encryption.get(enc_name)
    if enc is None:
        return None, ("encryption.algorithm",
                      f"{enc_name}: {_UNSUPPORTED_REASONS.get(enc_name, 'not supported')}")
    integ_name = cfg.integrity.name if cfg.integrity is not None else "none"
    auth = profile.integrity.get(integ_name)
    if auth is None:
        return None, ("integrity.algorithm",
                      f"{integ_name}: {_UNSUPPORTED_REASONS.get(integ_name, 'not supported')}")
    fields = [
        PROTOCOL_STRINGS[cfg.src.version],
        cfg.src.exploded if cfg.src.version == 6 else str(cfg.src),
        cfg.dst.exploded if cfg.dst.version == 6 else str(cfg.dst),
        f"0x{cfg.spi:08x}",
        enc,
        _key_field(cfg.encryption_key),
        auth,
        _key_field(cfg.integrity_key),
    ]
    if profile.esn_fields:
        fields += [SN_LENGTH_STRINGS[cfg.esn], f"{cfg.seq >> 32:x}" if cfg.esn else "0"]
    elif cfg.esn:
        log.warning("SA spi=0x%08x uses extended sequence numbers, which this Wireshark "
                    "version ignores: it will decrypt the packets but report their ICVs as bad",
                    cfg.spi)
    return fields, None


def esp_sa_lines(configs: Iterable[Any], *, skip_unsupported: bool = False,
                 wireshark_version: tuple[int, ...] = DEFAULT_WIRESHARK_VERSION) -> list[str]:
    """The ``esp_sa`` UAT lines for ``configs`` (SaConfig, SecurityAssociation or sa-format dicts).

    Each line is also a valid ``-o uat:esp_sa:<line>`` value. An SA Wireshark cannot handle
    (AH, or an algorithm it lacks) raises :class:`ConfigError` naming ``sas[i].<field>`` and the
    algorithm, unless ``skip_unsupported`` is true: then it is left out with a logged warning.
    ``wireshark_version`` selects the field set and algorithm table (see the module docstring;
    :func:`installed_wireshark_version` reads it from ``tshark``). The lines contain keys.
    """
    profile = _profile(wireshark_version)
    lines: list[str] = []
    for i, item in enumerate(configs):
        try:
            cfg = _as_config(item)
        except ConfigError as exc:
            raise exc.at(f"sas[{i}]") from None
        fields, problem = _entry(cfg, profile)
        if problem is not None:
            field, reason = problem
            if not skip_unsupported:
                raise ConfigError(f"sas[{i}].{field}", f"Wireshark cannot decrypt this SA: "
                                                       f"{reason}")
            log.warning("SA spi=0x%08x left out of the Wireshark ESP SA table: %s",
                        cfg.spi, reason)
            continue
        assert fields is not None
        lines.append(",".join(_uat_field(f) for f in fields))
    return lines


_HEADER = (
    "# Wireshark ESP SA table (esp_sa UAT), written by ipsecsa.\n"
    "# It contains keys: keep it private (mode 0600) and delete it when done.\n"
)


def write_esp_sa_file(path: str | os.PathLike[str], configs: Iterable[Any], *,
                      skip_unsupported: bool = False,
                      wireshark_version: tuple[int, ...] = DEFAULT_WIRESHARK_VERSION) -> int:
    """Write :func:`esp_sa_lines` to ``path`` (e.g. ``<profile dir>/esp_sa``); return the count.

    The file is created with mode 0600 from the start (never world-readable, whatever the umask)
    in the target directory and atomically renamed over ``path``, so a reader sees the old file
    or the new one, never a partial one.
    """
    lines = esp_sa_lines(configs, skip_unsupported=skip_unsupported,
                         wireshark_version=wireshark_version)
    text = _HEADER + "".join(line + "\n" for line in lines)
    write_secret_file(path, text.encode("ascii"))
    return len(lines)


def tshark_preferences(*, check_icv: bool = True) -> list[str]:
    """The ``-o`` arguments that make tshark use the ESP SA table (no keys in them)."""
    args = ["-o", f"{PREF_DECRYPT}:TRUE"]
    if check_icv:
        args += ["-o", f"{PREF_CHECK_ICV}:TRUE"]
    return args


_VERSION_RE = re.compile(r"\(Wireshark\)\s+(\d+)\.(\d+)(?:\.(\d+))?|TShark\s+(\d+)\.(\d+)")


def installed_wireshark_version(tshark: str = "tshark") -> tuple[int, int, int] | None:
    """The version of ``tshark`` (``tshark --version``), or None if it cannot be run/parsed."""
    try:
        out = subprocess.run([tshark, "--version"], capture_output=True, text=True,
                             timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = _VERSION_RE.search(out)
    if m is None:
        return None
    if m.group(1) is not None:
        return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    return int(m.group(4)), int(m.group(5)), 0


# --- Reading an esp_sa table (ours, Wireshark's, or strongSwan's save-keys plugin's) ------------
#: Display strings that name no ICV length of their own: the deprecated generic AES-GCM entry
#: (Wireshark 2.x, and what strongSwan's save-keys plugin writes for every GCM SA) takes its ICV
#: length from the "ANY n bit authentication" entry paired with it.
_GENERIC_GCM = "aes-gcm [rfc4106]"
_ANY_BITS = re.compile(r"^any (\d+) bit authentication")
#: Entries of other tools' tables that differ from ours only by case or are older names.
_EXTRA_ENCRYPTION = {"tripledes-cbc [rfc2451]": "3des-cbc"}
_ENCRYPTION_BY_STRING = {v.lower(): k for k, v in {**ENCRYPTION_STRINGS,
                                                   **MODERN_ENCRYPTION_STRINGS}.items()}
_INTEGRITY_BY_STRING = {v.lower(): k for k, v in INTEGRITY_STRINGS.items()}


def _uat_fields(line: str, lineno: int) -> list[str]:
    """The fields of one UAT line: comma-separated, double-quoted, ``\\xHH`` escapes."""
    from ipsecsa.io.keytext import KeyTextError

    fields: list[str] = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n or line[i] != '"':
            raise KeyTextError(lineno, "expected a double-quoted field")
        i += 1
        value = []
        while True:
            if i >= n:
                raise KeyTextError(lineno, "unterminated quoted field")
            c = line[i]
            if c == "\\" and i + 1 < n:
                if line[i + 1] == "x" and i + 3 < n:
                    value.append(chr(int(line[i + 2:i + 4], 16)))
                    i += 4
                    continue
                value.append(line[i + 1])
                i += 2
                continue
            if c == '"':
                i += 1
                break
            value.append(c)
            i += 1
        fields.append("".join(value))
        while i < n and line[i] in " \t":
            i += 1
        if i < n:
            if line[i] != ",":
                raise KeyTextError(lineno, "expected a comma between fields")
            i += 1
    return fields


def parse_esp_sa(text: str, *, mode: str = "tunnel",
                 encapsulation: tuple[int, int] | None = None) -> list[Any]:
    """SA objects (:class:`~ipsecsa.io.keytext.Imported`) from an ``esp_sa`` table.

    Reads what :func:`esp_sa_lines` writes, Wireshark's own table (8 or 10 fields) and the
    output of strongSwan's save-keys plugin (its generic "AES-GCM [RFC4106]" entry with an
    "ANY n bit authentication" partner, "TripleDes-CBC"). The table records neither the mode
    nor UDP encapsulation, so they come from ``mode`` and ``encapsulation`` (sport, dport);
    the 10-field form's SN column sets ``esn``. Wildcard entries (``*``) cannot become an SA and
    are refused, naming the line.
    """
    from ipsecsa.io.keytext import Imported, KeyTextError, hex_key

    out: list[Imported] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        f = _uat_fields(line, lineno)
        if len(f) not in (8, 10):
            raise KeyTextError(lineno, f"an esp_sa entry has 8 or 10 fields, this one {len(f)}")
        proto, src, dst, spi, enc_s, enc_key, auth_s, auth_key = f[:8]
        if "*" in (src, dst, spi) or proto.lower() == "any":
            raise KeyTextError(lineno, "a wildcard entry (*) does not identify one SA")
        enc_l, auth_l = enc_s.strip().lower(), auth_s.strip().lower()
        any_bits = _ANY_BITS.match(auth_l)
        if enc_l == _GENERIC_GCM:
            icv = int(any_bits.group(1)) // 8 if any_bits else 16
            if icv not in (8, 12, 16):
                raise KeyTextError(lineno, f"AES-GCM with a {icv * 8}-bit ICV is not defined")
            enc = f"aes-gcm-{icv}"
        else:
            enc_name = _ENCRYPTION_BY_STRING.get(enc_l) or _EXTRA_ENCRYPTION.get(enc_l)
            if enc_name is None:
                raise KeyTextError(lineno, f"encryption {enc_s!r} has no ipsecsa equivalent")
            enc = enc_name
        sa: dict[str, Any] = {"spi": spi.strip(), "protocol": "esp", "mode": mode,
                              "src": src.strip(), "dst": dst.strip()}
        encryption: dict[str, Any] = {"algorithm": enc}
        key = hex_key(enc_key, lineno, "encryption key") if enc_key.strip() else ""
        if key:
            encryption["key"] = key
        sa["encryption"] = encryption
        if any_bits is not None:
            if enc not in ("aes-gcm-8", "aes-gcm-12", "aes-gcm-16", "chacha20-poly1305"):
                raise KeyTextError(lineno, f"{auth_s!r} does not say which integrity algorithm "
                                           "to verify with")
        elif auth_l not in ("null", ""):
            integ = _INTEGRITY_BY_STRING.get(auth_l)
            if integ is None:
                raise KeyTextError(lineno, f"authentication {auth_s!r} has no ipsecsa equivalent")
            sa["integrity"] = {"algorithm": integ,
                               "key": hex_key(auth_key, lineno, "authentication key")}
        if len(f) == 10:
            sa["esn"] = f[8].strip().lower().startswith("64")
            if sa["esn"] and f[9].strip() not in ("", "0"):
                sa["seq"] = int(f[9].strip(), 16) << 32
        if encapsulation is not None:
            sa["encapsulation"] = {"type": "udp", "sport": encapsulation[0],
                                   "dport": encapsulation[1]}
        out.append(Imported(lineno, sa))
    return out


__all__ = [
    "DEFAULT_WIRESHARK_VERSION",
    "ENCRYPTION_STRINGS",
    "ESP_SA_UAT",
    "INTEGRITY_STRINGS",
    "PREF_CHECK_ICV",
    "PREF_DECRYPT",
    "esp_sa_lines",
    "installed_wireshark_version",
    "parse_esp_sa",
    "tshark_preferences",
    "write_esp_sa_file",
]

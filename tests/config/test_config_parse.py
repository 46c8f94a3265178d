"""parse_sa: every validation rule names its field; every algorithm family and mode parses."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from ipsecsa.config import Lifetime, SaConfig, UdpEncapsulation, parse_sa
from ipsecsa.crypto.algorithms import ENCRYPTION, INTEGRITY, accepted_key_lengths
from ipsecsa.errors import (
    AmbiguousAlgorithmError,
    ConfigError,
    KeyLengthError,
    UnknownAlgorithmError,
)

DELETE = object()

GCM_KEY = "11" * 20  # AES-128 key ‖ 4-byte salt
CBC_KEY = "22" * 16
SHA256_KEY = "33" * 32

ESP_GCM: dict[str, Any] = {
    "spi": 0x1000, "protocol": "esp", "src": "192.0.2.1", "dst": "192.0.2.2",
    "encryption": {"algorithm": "aes-gcm-16", "key": GCM_KEY},
}
ESP_CBC: dict[str, Any] = {
    "spi": 0x1001, "protocol": "esp", "src": "192.0.2.1", "dst": "192.0.2.2",
    "encryption": {"algorithm": "aes-cbc", "key": CBC_KEY},
    "integrity": {"algorithm": "hmac-sha256-128", "key": SHA256_KEY},
}
ESP_TUNNEL: dict[str, Any] = {**ESP_GCM, "mode": "tunnel"}
ESP_TUNNEL6: dict[str, Any] = {**ESP_TUNNEL, "src": "2001:db8::1", "dst": "2001:db8::2"}
AH: dict[str, Any] = {
    "spi": 0x1002, "protocol": "ah", "src": "192.0.2.1", "dst": "192.0.2.2",
    "integrity": {"algorithm": "hmac-sha256-128", "key": SHA256_KEY},
}


def mutate(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """Copy ``base`` and set dotted paths (``lifetime__soft__bytes`` or via ``at``)."""
    out = copy.deepcopy(base)
    for path, value in changes.items():
        keys = path.split("__")
        node = out
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        if value is DELETE:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return out


def key_hex(alg: Any, fill: str = "ab") -> str:
    return fill * accepted_key_lengths(alg)[0]


# (id, object, expected field, expected exception type)
ERROR_CASES: list[tuple[str, Any, str, type[ConfigError]]] = [
    # shape
    ("not-an-object", [ESP_GCM], "", ConfigError),
    ("unknown-top-key", mutate(ESP_GCM, colour="blue"), "colour", ConfigError),
    ("unknown-encryption-key", mutate(ESP_GCM, encryption__salt="00"), "encryption.salt",
     ConfigError),
    ("unknown-integrity-key", mutate(ESP_CBC, integrity__icv=12), "integrity.icv", ConfigError),
    ("unknown-encap-key", mutate(ESP_GCM, encapsulation={"type": "udp", "sport": 4500,
                                                         "dport": 4500, "mtu": 1}),
     "encapsulation.mtu", ConfigError),
    ("unknown-lifetime-key", mutate(ESP_GCM, lifetime={"medium": {}}), "lifetime.medium",
     ConfigError),
    ("unknown-limit-key", mutate(ESP_GCM, lifetime={"soft": {"octets": 1}}),
     "lifetime.soft.octets", ConfigError),
    ("unknown-selector-key", mutate(ESP_GCM, selectors=[{"port": 1}]), "selectors[0].port",
     ConfigError),
    # spi
    ("spi-missing", mutate(ESP_GCM, spi=DELETE), "spi", ConfigError),
    ("spi-zero", mutate(ESP_GCM, spi=0), "spi", ConfigError),
    ("spi-one", mutate(ESP_GCM, spi=1), "spi", ConfigError),
    ("spi-255", mutate(ESP_GCM, spi=255), "spi", ConfigError),
    ("spi-hex-255", mutate(ESP_GCM, spi="0xff"), "spi", ConfigError),
    ("spi-33-bits", mutate(ESP_GCM, spi=2**32), "spi", ConfigError),
    ("spi-negative", mutate(ESP_GCM, spi=-4096), "spi", ConfigError),
    ("spi-bool", mutate(ESP_GCM, spi=True), "spi", ConfigError),
    ("spi-float", mutate(ESP_GCM, spi=4096.0), "spi", ConfigError),
    ("spi-decimal-string", mutate(ESP_GCM, spi="4096"), "spi", ConfigError),
    ("spi-bad-hex", mutate(ESP_GCM, spi="0xzz"), "spi", ConfigError),
    # protocol, mode, direction
    ("protocol-missing", mutate(ESP_GCM, protocol=DELETE), "protocol", ConfigError),
    ("protocol-unknown", mutate(ESP_GCM, protocol="ipcomp"), "protocol", ConfigError),
    ("protocol-number", mutate(ESP_GCM, protocol=50), "protocol", ConfigError),
    ("mode-unknown", mutate(ESP_GCM, mode="beet"), "mode", ConfigError),
    ("mode-not-string", mutate(ESP_GCM, mode=1), "mode", ConfigError),
    ("direction-unknown", mutate(ESP_GCM, direction="both"), "direction", ConfigError),
    # addresses
    ("src-missing", mutate(ESP_GCM, src=DELETE), "src", ConfigError),
    ("dst-missing", mutate(ESP_GCM, dst=DELETE), "dst", ConfigError),
    ("src-invalid", mutate(ESP_GCM, src="192.0.2.300"), "src", ConfigError),
    ("src-prefix", mutate(ESP_GCM, src="192.0.2.0/24"), "src", ConfigError),
    ("src-int", mutate(ESP_GCM, src=3221225985), "src", ConfigError),
    ("family-mismatch", mutate(ESP_GCM, dst="2001:db8::2"), "dst", ConfigError),
    # ESP algorithm rules
    ("esp-no-encryption", mutate(ESP_GCM, encryption=DELETE), "encryption", ConfigError),
    ("esp-null-json-encryption", mutate(ESP_GCM, encryption=None), "encryption", ConfigError),
    ("encryption-not-object", mutate(ESP_GCM, encryption=["aes-gcm-16"]), "encryption",
     ConfigError),
    ("encryption-algorithm-missing", mutate(ESP_GCM, encryption={"key": GCM_KEY}),
     "encryption.algorithm", ConfigError),
    ("encryption-unknown", mutate(ESP_GCM, encryption__algorithm="rot13"),
     "encryption.algorithm", UnknownAlgorithmError),
    ("encryption-unknown-number", mutate(ESP_GCM, encryption__algorithm=99),
     "encryption.algorithm", UnknownAlgorithmError),
    ("encryption-algorithm-bool", mutate(ESP_GCM, encryption__algorithm=True),
     "encryption.algorithm", ConfigError),
    ("aead-with-integrity", mutate(ESP_GCM, integrity={"algorithm": "hmac-sha256-128",
                                                       "key": SHA256_KEY}),
     "integrity", ConfigError),
    ("gmac-with-integrity", mutate(ESP_GCM, encryption__algorithm="null-aes-gmac",
                                   integrity={"algorithm": "hmac-sha256-128", "key": SHA256_KEY}),
     "integrity", ConfigError),
    ("null-without-integrity", mutate(ESP_GCM, encryption={"algorithm": "null"}), "integrity",
     ConfigError),
    ("null-with-integrity-none", mutate(ESP_GCM, encryption={"algorithm": "null"},
                                        integrity="none"), "integrity", ConfigError),
    ("esp-aes-gmac-integrity", mutate(ESP_CBC, integrity={"algorithm": "aes-gmac",
                                                          "key": "44" * 20}),
     "integrity.algorithm", ConfigError),
    ("integrity-unknown", mutate(ESP_CBC, integrity__algorithm="crc32"), "integrity.algorithm",
     UnknownAlgorithmError),
    ("integrity-truncation-not-known", mutate(ESP_CBC, integrity__algorithm="hmac(sha256) 64"),
     "integrity.algorithm", UnknownAlgorithmError),
    ("integrity-ambiguous", mutate(ESP_CBC, integrity__algorithm="hmac(sha256)"),
     "integrity.algorithm", AmbiguousAlgorithmError),
    # AH rules
    ("ah-with-encryption", mutate(AH, encryption={"algorithm": "aes-cbc", "key": CBC_KEY}),
     "encryption", ConfigError),
    ("ah-with-aead", mutate(AH, encryption={"algorithm": "aes-gcm-16", "key": GCM_KEY},
                            integrity=DELETE), "encryption", ConfigError),
    ("ah-with-null-encryption", mutate(AH, encryption={"algorithm": "null"}), "encryption",
     ConfigError),
    ("ah-no-integrity", mutate(AH, integrity=DELETE), "integrity", ConfigError),
    ("ah-integrity-none", mutate(AH, integrity={"algorithm": "none"}), "integrity",
     ConfigError),
    ("ah-aead-as-integrity", mutate(AH, integrity__algorithm="aes-gcm-16"),
     "integrity.algorithm", UnknownAlgorithmError),
    # keys
    ("key-odd-length", mutate(ESP_GCM, encryption__key="abc"), "encryption.key", ConfigError),
    ("key-non-hex", mutate(ESP_GCM, encryption__key="zz" * 20), "encryption.key", ConfigError),
    ("key-odd-group", mutate(ESP_GCM, encryption__key="1:" + "11" * 19 + "1"),
     "encryption.key", ConfigError),
    ("key-not-string", mutate(ESP_GCM, encryption__key=1234), "encryption.key", ConfigError),
    ("key-too-short", mutate(ESP_GCM, encryption__key="11" * 16), "encryption.key",
     KeyLengthError),
    ("key-missing", mutate(ESP_GCM, encryption__key=DELETE), "encryption.key", KeyLengthError),
    ("key-alias-size-mismatch", mutate(ESP_GCM, encryption__algorithm="aes128gcm16",
                                       encryption__key="11" * 36), "encryption.key",
     KeyLengthError),
    ("integrity-key-wrong-length", mutate(ESP_CBC, integrity__key="33" * 20), "integrity.key",
     KeyLengthError),
    ("integrity-key-non-hex", mutate(ESP_CBC, integrity__key="3g" * 32), "integrity.key",
     ConfigError),
    ("integrity-none-with-key", mutate(ESP_GCM, integrity={"algorithm": "none", "key": "00"}),
     "integrity.key", ConfigError),
    ("null-with-key", mutate(ESP_CBC, encryption={"algorithm": "null", "key": "00" * 16}),
     "encryption.key", KeyLengthError),
    # esn, replay window, seq
    ("esn-string", mutate(ESP_GCM, esn="yes"), "esn", ConfigError),
    ("esn-int", mutate(ESP_GCM, esn=1), "esn", ConfigError),
    ("replay-1", mutate(ESP_GCM, replay_window=1), "replay_window", ConfigError),
    ("replay-31", mutate(ESP_GCM, replay_window=31), "replay_window", ConfigError),
    ("replay-negative", mutate(ESP_GCM, replay_window=-1), "replay_window", ConfigError),
    ("replay-too-big", mutate(ESP_GCM, replay_window=65537), "replay_window", ConfigError),
    ("replay-bool", mutate(ESP_GCM, replay_window=True), "replay_window", ConfigError),
    ("replay-string", mutate(ESP_GCM, replay_window="64"), "replay_window", ConfigError),
    ("seq-negative", mutate(ESP_GCM, seq=-1), "seq", ConfigError),
    ("seq-33-bits-no-esn", mutate(ESP_GCM, seq=2**32), "seq", ConfigError),
    ("seq-65-bits-esn", mutate(ESP_GCM, seq=2**64, esn=True), "seq", ConfigError),
    ("seq-bool", mutate(ESP_GCM, seq=False), "seq", ConfigError),
    ("seq-float", mutate(ESP_GCM, seq=1.0), "seq", ConfigError),
    # encapsulation
    ("encap-ah", mutate(AH, encapsulation={"type": "udp", "sport": 4500, "dport": 4500}),
     "encapsulation", ConfigError),
    ("encap-type", mutate(ESP_GCM, encapsulation={"type": "tcp", "sport": 4500, "dport": 4500}),
     "encapsulation.type", ConfigError),
    ("encap-sport-zero", mutate(ESP_GCM, encapsulation={"type": "udp", "sport": 0,
                                                        "dport": 4500}),
     "encapsulation.sport", ConfigError),
    ("encap-dport-big", mutate(ESP_GCM, encapsulation={"type": "udp", "sport": 4500,
                                                       "dport": 65536}),
     "encapsulation.dport", ConfigError),
    ("encap-dport-missing", mutate(ESP_GCM, encapsulation={"type": "udp", "sport": 4500}),
     "encapsulation.dport", ConfigError),
    ("encap-sport-bool", mutate(ESP_GCM, encapsulation={"type": "udp", "sport": True,
                                                        "dport": 4500}),
     "encapsulation.sport", ConfigError),
    ("encap-not-object", mutate(ESP_GCM, encapsulation="udp"), "encapsulation", ConfigError),
    # selectors
    ("selectors-not-list", mutate(ESP_GCM, selectors={"src": "10.0.0.0/8"}), "selectors",
     ConfigError),
    ("selector-not-object", mutate(ESP_GCM, selectors=[{}, "10.0.0.0/8"]), "selectors[1]",
     ConfigError),
    ("selector-dport", mutate(ESP_GCM, selectors=[{}, {"dport": 70000}]), "selectors[1].dport",
     ConfigError),
    ("selector-protocol-bool", mutate(ESP_GCM, selectors=[{"protocol": True}]),
     "selectors[0].protocol", ConfigError),
    ("selector-host-bits", mutate(ESP_GCM, selectors=[{"src": "192.0.2.1/24"}]),
     "selectors[0].src", ConfigError),
    ("selector-families", mutate(ESP_TUNNEL, selectors=[{"src": "10.0.0.0/8",
                                                         "dst": "2001:db8::/32"}]),
     "selectors[0].dst", ConfigError),
    ("selector-family-transport", mutate(ESP_GCM, selectors=[{"dst": "2001:db8::/32"}]),
     "selectors[0].dst", ConfigError),
    # lifetimes
    ("lifetime-not-object", mutate(ESP_GCM, lifetime=[]), "lifetime", ConfigError),
    ("limits-not-object", mutate(ESP_GCM, lifetime={"hard": 100}), "lifetime.hard",
     ConfigError),
    ("lifetime-negative", mutate(ESP_GCM, lifetime={"soft": {"bytes": -1}}),
     "lifetime.soft.bytes", ConfigError),
    ("lifetime-float-packets", mutate(ESP_GCM, lifetime={"hard": {"packets": 1.5}}),
     "lifetime.hard.packets", ConfigError),
    ("lifetime-bool-bytes", mutate(ESP_GCM, lifetime={"hard": {"bytes": True}}),
     "lifetime.hard.bytes", ConfigError),
    ("lifetime-string-seconds", mutate(ESP_GCM, lifetime={"hard": {"seconds": "60"}}),
     "lifetime.hard.seconds", ConfigError),
    ("lifetime-inf-seconds", mutate(ESP_GCM, lifetime={"hard": {"seconds": math.inf}}),
     "lifetime.hard.seconds", ConfigError),
    ("lifetime-nan-seconds", mutate(ESP_GCM, lifetime={"soft": {"seconds": math.nan}}),
     "lifetime.soft.seconds", ConfigError),
    ("soft-over-hard-bytes", mutate(ESP_GCM, lifetime={"soft": {"bytes": 2000},
                                                       "hard": {"bytes": 1000}}),
     "lifetime.soft.bytes", ConfigError),
    ("soft-over-hard-packets", mutate(ESP_GCM, lifetime={"soft": {"packets": 11},
                                                         "hard": {"packets": 10}}),
     "lifetime.soft.packets", ConfigError),
    ("soft-over-hard-seconds", mutate(ESP_GCM, lifetime={"soft": {"seconds": 3600.5},
                                                         "hard": {"seconds": 3600}}),
     "lifetime.soft.seconds", ConfigError),
    # TFC padding and the tunnel extensions
    ("tfc-transport", mutate(ESP_GCM, tfc_padding=100), "tfc_padding", ConfigError),
    ("tfc-ah-tunnel", mutate(AH, mode="tunnel", tfc_padding=100), "tfc_padding", ConfigError),
    ("tfc-too-big", mutate(ESP_TUNNEL, tfc_padding=65536), "tfc_padding", ConfigError),
    ("tfc-negative", mutate(ESP_TUNNEL, tfc_padding=-1), "tfc_padding", ConfigError),
    ("tfc-bool", mutate(ESP_TUNNEL, tfc_padding=True), "tfc_padding", ConfigError),
    ("df-unknown", mutate(ESP_TUNNEL, df="maybe"), "df", ConfigError),
    ("df-ipv6", mutate(ESP_TUNNEL6, df="set"), "df", ConfigError),
    ("df-transport", mutate(ESP_GCM, df="set"), "df", ConfigError),
    ("ttl-zero", mutate(ESP_TUNNEL, ttl=0), "ttl", ConfigError),
    ("ttl-256", mutate(ESP_TUNNEL, ttl=256), "ttl", ConfigError),
    ("ttl-bool", mutate(ESP_TUNNEL, ttl=True), "ttl", ConfigError),
    ("ttl-transport", mutate(ESP_GCM, ttl=32), "ttl", ConfigError),
    ("dscp-64", mutate(ESP_TUNNEL, dscp=64), "dscp", ConfigError),
    ("dscp-negative", mutate(ESP_TUNNEL, dscp=-1), "dscp", ConfigError),
    ("dscp-word", mutate(ESP_TUNNEL, dscp="keep"), "dscp", ConfigError),
    ("dscp-bool", mutate(ESP_TUNNEL, dscp=True), "dscp", ConfigError),
    ("dscp-transport", mutate(ESP_GCM, dscp=46), "dscp", ConfigError),
]


@pytest.mark.parametrize(("obj", "field", "exc_type"), [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
def test_validation_error_names_field(obj: Any, field: str, exc_type: type[ConfigError]) -> None:
    with pytest.raises(exc_type) as info:
        parse_sa(obj)
    assert info.value.field == field, str(info.value)
    assert str(info.value).startswith(f"{field}: ")
    assert info.value.reason


def test_error_ids_are_unique() -> None:
    ids = [c[0] for c in ERROR_CASES]
    assert len(ids) == len(set(ids))


# --- valid descriptions --------------------------------------------------------------------------


def _esp(enc: str, integ: str | None, **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "spi": 0x2000, "protocol": "esp", "src": "198.51.100.1", "dst": "198.51.100.2",
        "encryption": {"algorithm": enc, "key": key_hex(ENCRYPTION[enc])},
    }
    if not ENCRYPTION[enc].key_sizes[0]:
        del obj["encryption"]["key"]
    if integ is not None:
        obj["integrity"] = {"algorithm": integ, "key": key_hex(INTEGRITY[integ], "cd")}
    obj.update(extra)
    return obj


COMBINED = [n for n, a in ENCRYPTION.items() if a.aead or a.kind == "gmac"]
PLAIN = [n for n, a in ENCRYPTION.items() if not (a.aead or a.kind == "gmac") and n != "null"]
ESP_INTEGRITY = [n for n in INTEGRITY if n not in ("none", "aes-gmac")]
AH_INTEGRITY = [n for n in INTEGRITY if n != "none"]


@pytest.mark.parametrize("mode", ["transport", "tunnel"])
@pytest.mark.parametrize("enc", COMBINED)
def test_combined_mode_ciphers_parse(enc: str, mode: str) -> None:
    cfg = parse_sa(_esp(enc, None, mode=mode))
    assert cfg.encryption is ENCRYPTION[enc]
    assert cfg.integrity is None and cfg.integrity_key is None
    assert cfg.mode == mode
    assert not [w for w in cfg.warnings if "encryption-only" in w]


@pytest.mark.parametrize("enc", COMBINED)
def test_combined_mode_with_explicit_none(enc: str) -> None:
    for integrity in ("none", {"algorithm": "none"}, {"algorithm": "none", "key": ""}, 0):
        cfg = parse_sa({**_esp(enc, None), "integrity": integrity})
        assert cfg.integrity is None


@pytest.mark.parametrize("integ", ESP_INTEGRITY)
@pytest.mark.parametrize("enc", PLAIN + ["null"])
def test_esp_cipher_with_integrity_parses(enc: str, integ: str) -> None:
    cfg = parse_sa(_esp(enc, integ))
    assert cfg.encryption is ENCRYPTION[enc]
    assert cfg.integrity is INTEGRITY[integ]
    assert len(cfg.integrity_key) == accepted_key_lengths(INTEGRITY[integ])[0]
    legacy = ENCRYPTION[enc].legacy or INTEGRITY[integ].legacy
    assert any("legacy" in w for w in cfg.warnings) is legacy


@pytest.mark.parametrize("enc", PLAIN)
def test_encryption_only_esp_is_accepted_with_a_warning(enc: str, caplog: Any) -> None:
    with caplog.at_level("WARNING", logger="ipsecsa.config"):
        cfg = parse_sa(_esp(enc, None))
    assert cfg.integrity is None
    assert any("encryption-only" in w for w in cfg.warnings)
    assert any("encryption-only" in r.getMessage() and r.name == "ipsecsa.config"
               and r.levelname == "WARNING" for r in caplog.records)


@pytest.mark.parametrize("mode", ["transport", "tunnel"])
@pytest.mark.parametrize("integ", AH_INTEGRITY)
def test_ah_parses(integ: str, mode: str) -> None:
    cfg = parse_sa({**AH, "mode": mode,
                    "integrity": {"algorithm": integ, "key": key_hex(INTEGRITY[integ])}})
    assert cfg.protocol == "ah" and cfg.encryption is None and cfg.encryption_key is None
    assert cfg.integrity is INTEGRITY[integ]


@pytest.mark.parametrize(("alias", "canonical", "key_len"), [
    ("ENCR_AES_GCM_16", "aes-gcm-16", 20),
    (20, "aes-gcm-16", 36),
    ("rfc4106(gcm(aes)) 128", "aes-gcm-16", 36),
    ("rfc4106(gcm(aes)) 64", "aes-gcm-8", 20),
    ("aes256gcm16", "aes-gcm-16", 36),
    ("IPSEC_CIPHER_TYPE_AES_128", "aes-cbc", 16),
    ("cbc(aes)", "aes-cbc", 32),
    ("aes128", "aes-cbc", 16),
    ("3des", "3des-cbc", 24),
    ("rfc7539esp(chacha20,poly1305)", "chacha20-poly1305", 36),
])
def test_encryption_aliases_resolve_to_canonical(alias: Any, canonical: str, key_len: int) -> None:
    integ = None if ENCRYPTION[canonical].aead else {"algorithm": "sha256", "key": "00" * 32}
    obj = {**ESP_GCM, "encryption": {"algorithm": alias, "key": "5a" * key_len}}
    if integ:
        obj["integrity"] = integ
    cfg = parse_sa(obj)
    assert cfg.encryption is ENCRYPTION[canonical]
    assert cfg.to_dict()["encryption"]["algorithm"] == canonical


@pytest.mark.parametrize(("alias", "canonical"), [
    ("AUTH_HMAC_SHA2_256_128", "hmac-sha256-128"),
    (12, "hmac-sha256-128"),
    ("hmac(sha256) 128", "hmac-sha256-128"),
    ("hmac(sha256) 96", "hmac-sha256-96"),
    ("sha256", "hmac-sha256-128"),
    ("IPSEC_AUTH_TYPE_SHA_256", "hmac-sha256-128"),
])
def test_integrity_aliases_resolve_to_canonical(alias: Any, canonical: str) -> None:
    cfg = parse_sa(mutate(AH, integrity__algorithm=alias))
    assert cfg.integrity is INTEGRITY[canonical]


@pytest.mark.parametrize("text", [
    "0x" + "0123456789abcdef0123456789abcdef01234567",
    "0X" + "0123456789ABCDEF0123456789ABCDEF01234567",
    ":".join(["01", "23", "45", "67", "89", "ab", "cd", "ef"] * 2 + ["01", "23", "45", "67"]),
    "0123456789abcdef 0123456789abcdef 01234567",
    "  01 23 45 67 89 ab cd ef 01 23 45 67 89 ab cd ef 01 23 45 67  ",
    "0x0123456789abcdef:0123456789abcdef:01234567",
])
def test_key_text_formats(text: str) -> None:
    cfg = parse_sa(mutate(ESP_GCM, encryption__key=text))
    assert cfg.encryption_key.bytes == bytes.fromhex("0123456789abcdef0123456789abcdef01234567")
    assert cfg.to_dict()["encryption"]["key"] == "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(("spi", "value"), [
    (256, 256), ("0x100", 256), ("0xFFFFFFFF", 2**32 - 1), (2**32 - 1, 2**32 - 1),
    ("0xc0ffee01", 0xC0FFEE01),
])
def test_spi_forms(spi: Any, value: int) -> None:
    assert parse_sa(mutate(ESP_GCM, spi=spi)).spi == value


@pytest.mark.parametrize("window", [0, 32, 64, 1024, 65536])
def test_replay_window_accepted(window: int) -> None:
    assert parse_sa(mutate(ESP_GCM, replay_window=window)).replay_window == window


def test_replay_window_message_explains() -> None:
    with pytest.raises(ConfigError) as info:
        parse_sa(mutate(ESP_GCM, replay_window=16))
    assert "32" in info.value.reason and "0" in info.value.reason


def test_seq_limits_follow_esn() -> None:
    assert parse_sa(mutate(ESP_GCM, seq=2**32 - 1)).seq == 2**32 - 1
    assert parse_sa(mutate(ESP_GCM, seq=2**64 - 1, esn=True)).seq == 2**64 - 1


def test_defaults() -> None:
    cfg = parse_sa(ESP_GCM)
    assert cfg.mode == "transport" and cfg.direction is None
    assert cfg.esn is False and cfg.replay_window == 64 and cfg.seq == 0
    assert cfg.encapsulation is None and cfg.selectors == ()
    assert cfg.soft == Lifetime() and cfg.hard == Lifetime()
    assert cfg.tfc_padding == 0
    assert (cfg.df, cfg.ttl, cfg.dscp) == ("copy", 64, "copy")
    assert cfg.warnings == ()


def test_full_tunnel_description() -> None:
    obj = {
        **ESP_TUNNEL, "direction": "outbound", "esn": True, "replay_window": 128,
        "encapsulation": {"type": "udp", "sport": 4500, "dport": 4501},
        "selectors": [{"src": "10.0.0.0/8", "dst": "10.1.0.0/16", "protocol": 6, "dport": 443},
                      {"src": "2001:db8::/32"}],
        "lifetime": {"soft": {"bytes": 1000, "packets": 10, "seconds": 1.5},
                     "hard": {"bytes": 2000, "packets": 20, "seconds": 3}},
        "seq": 2**40, "tfc_padding": 1400, "df": "clear", "ttl": 32, "dscp": 46,
    }
    cfg = parse_sa(obj)
    assert cfg.direction == "outbound" and cfg.esn
    assert cfg.encapsulation == UdpEncapsulation(4500, 4501)
    assert len(cfg.selectors) == 2
    assert cfg.soft == Lifetime(1000, 10, 1.5) and cfg.hard == Lifetime(2000, 20, 3)
    assert (cfg.df, cfg.ttl, cfg.dscp, cfg.tfc_padding) == ("clear", 32, 46, 1400)
    assert parse_sa(cfg.to_dict()) == cfg


def test_ipv6_tunnel_and_encapsulation_without_type() -> None:
    cfg = parse_sa({**ESP_TUNNEL6, "encapsulation": {"sport": 4500, "dport": 4500},
                    "ttl": 255, "dscp": 0})
    assert cfg.src.version == 6 and cfg.ttl == 255 and cfg.dscp == 0


def test_zero_limit_means_no_limit() -> None:
    cfg = parse_sa(mutate(ESP_GCM, lifetime={"hard": {"bytes": 0, "packets": 0, "seconds": 0}}))
    assert cfg.hard == Lifetime()


def test_soft_equal_to_hard_and_one_sided_limits() -> None:
    cfg = parse_sa(mutate(ESP_GCM, lifetime={"soft": {"bytes": 10, "seconds": 50},
                                             "hard": {"bytes": 10, "packets": 5}}))
    assert cfg.soft == Lifetime(bytes=10, seconds=50)
    assert cfg.hard == Lifetime(bytes=10, packets=5)


def test_extensions_at_their_defaults_are_fine_in_transport_mode() -> None:
    cfg = parse_sa(mutate(ESP_GCM, df="copy", ttl=64, dscp="copy", tfc_padding=0))
    assert cfg == parse_sa(ESP_GCM)


def test_direct_construction_is_validated() -> None:
    cfg = parse_sa(ESP_CBC)
    import dataclasses

    with pytest.raises(ConfigError) as info:
        dataclasses.replace(cfg, replay_window=8)
    assert info.value.field == "replay_window"
    moved = dataclasses.replace(cfg, seq=77)
    assert moved.seq == 77 and moved.warnings == cfg.warnings
    with pytest.raises(ConfigError) as info:
        SaConfig(spi=300, protocol="esp", src=cfg.src, dst=cfg.dst)
    assert info.value.field == "encryption"


def test_to_dict_is_json_and_canonical() -> None:
    import json

    obj = mutate(ESP_CBC, encryption__algorithm="aes128", integrity__algorithm=12,
                 spi="0x1001", direction="inbound")
    out = parse_sa(obj).to_dict()
    assert json.loads(json.dumps(out)) == out
    assert out["spi"] == 0x1001
    assert out["encryption"] == {"algorithm": "aes-cbc", "key": CBC_KEY}
    assert out["integrity"] == {"algorithm": "hmac-sha256-128", "key": SHA256_KEY}
    assert out["direction"] == "inbound"
    assert not {"df", "ttl", "dscp"} & out.keys()


@pytest.mark.parametrize("name", ["hmac-sha256-96", "hmac(sha256) 96", "sha256_96"])
def test_legacy_hmac_sha256_96_parses_with_a_warning(name: str, caplog: Any) -> None:
    """Captures of old Linux tunnels (``auth-trunc hmac(sha256) ... 96``) can be read."""
    with caplog.at_level("WARNING", logger="ipsecsa.config"):
        cfg = parse_sa(mutate(_esp("aes-cbc", "hmac-sha256-128"), integrity__algorithm=name))
    assert cfg.integrity is INTEGRITY["hmac-sha256-96"]
    assert cfg.warnings == ("hmac-sha256-96 is a legacy algorithm, kept for interoperability only",)
    assert any("hmac-sha256-96 is a legacy algorithm" in r.getMessage() for r in caplog.records)
    assert cfg.to_dict()["integrity"]["algorithm"] == "hmac-sha256-96"

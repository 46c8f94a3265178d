"""Keys never show: not in reprs, error messages, tracebacks or log records."""

from __future__ import annotations

import copy
import logging
import pickle
import traceback
from typing import Any

import pytest

from ipsecsa.config import SecretKey, parse_sa
from ipsecsa.errors import ConfigError

# Distinctive key material, so that any leak is easy to spot in any rendering.
ENC_HEX = "c0ffee11" * 5  # 20 bytes: AES-128 ‖ salt
INT_HEX = "deadbeef" * 8  # 32 bytes: HMAC-SHA-256
CBC_HEX = "facade99" * 4


def _renderings(key_hex: str) -> list[str]:
    raw = bytes.fromhex(key_hex)
    return [key_hex, key_hex.upper(), key_hex[:12], repr(raw)[2:14], raw.hex(":")[:14]]


def assert_no_key(text: str, *keys: str) -> None:
    for key in keys:
        for form in _renderings(key):
            assert form not in text, f"key material {form!r} leaked into: {text}"


def test_secret_key_hides_itself() -> None:
    key = SecretKey(bytes.fromhex(ENC_HEX))
    assert repr(key) == str(key) == f"{key}" == "<key, 20 bytes>"
    assert key.bytes == bytes(key) == bytes.fromhex(ENC_HEX)
    assert len(key) == 20
    assert key == SecretKey(bytes.fromhex(ENC_HEX))
    assert key != SecretKey(bytes.fromhex(ENC_HEX)[:-1] + b"\0")
    assert key != bytes.fromhex(ENC_HEX)  # a SecretKey equals only SecretKeys
    assert hash(key) == hash(SecretKey(bytes(20)))  # the hash depends on the length only
    assert key.hex() == ENC_HEX


def test_secret_key_equality_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    calls = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert SecretKey(b"a" * 16) == SecretKey(b"a" * 16)
    assert calls


def _sa(**extra: Any) -> dict[str, Any]:
    obj = {
        "spi": 0x3000, "protocol": "esp", "src": "192.0.2.1", "dst": "192.0.2.2",
        "encryption": {"algorithm": "aes-cbc", "key": CBC_HEX},
        "integrity": {"algorithm": "hmac-sha256-128", "key": INT_HEX},
    }
    obj.update(extra)
    return obj


def test_config_repr_and_str_hide_keys() -> None:
    cfg = parse_sa(_sa())
    for text in (repr(cfg), str(cfg), f"{cfg}", repr(cfg.encryption_key)):
        assert_no_key(text, CBC_HEX, INT_HEX)
    assert "<key, 16 bytes>" in repr(cfg) and "<key, 32 bytes>" in repr(cfg)
    gcm = parse_sa({**_sa(integrity=None), "encryption": {"algorithm": "aes-gcm-16",
                                                          "key": ENC_HEX}})
    assert_no_key(repr(gcm), ENC_HEX)


def test_copies_keep_keys_and_stay_equal() -> None:
    cfg = parse_sa(_sa())
    assert copy.deepcopy(cfg) == cfg
    assert pickle.loads(pickle.dumps(cfg)) == cfg


BAD_KEYS = [
    # (description, expected field) — each key is real-looking material that must not leak
    (_sa(encryption={"algorithm": "aes-cbc", "key": CBC_HEX + "ab"}), "encryption.key"),
    (_sa(encryption={"algorithm": "aes-cbc", "key": CBC_HEX + "a"}), "encryption.key"),
    (_sa(encryption={"algorithm": "aes-cbc", "key": CBC_HEX[:-1] + "g"}), "encryption.key"),
    (_sa(integrity={"algorithm": "hmac-sha256-128", "key": INT_HEX[:-2]}), "integrity.key"),
    (_sa(integrity={"algorithm": "hmac-sha1-96", "key": INT_HEX}), "integrity.key"),
    (_sa(integrity={"algorithm": "none", "key": INT_HEX}), "integrity.key"),
    (_sa(encryption={"algorithm": "aes-gcm-16", "key": ENC_HEX}), "integrity"),
    (_sa(encryption={"algorithm": "aes256", "key": CBC_HEX}), "encryption.key"),
    (_sa(protocol="ah"), "encryption"),
    (_sa(replay_window=3), "replay_window"),
]


@pytest.mark.parametrize(("obj", "field"), BAD_KEYS)
def test_errors_never_contain_keys(obj: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_sa(obj)
    err = info.value
    assert err.field == field
    text = "".join(traceback.format_exception(err))
    assert_no_key(str(err) + repr(err) + err.reason + text, CBC_HEX, INT_HEX, ENC_HEX)


def test_log_records_never_contain_keys(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        parse_sa(_sa(integrity=None))  # encryption-only: warns
        parse_sa(_sa(encryption={"algorithm": "3des-cbc", "key": INT_HEX[:48]},
                     integrity={"algorithm": "hmac-md5-96", "key": CBC_HEX}))  # legacy: warns
    assert len([r for r in caplog.records if r.name == "ipsecsa.config"]) >= 3
    for record in caplog.records:
        assert_no_key(record.getMessage() + repr(record.args), CBC_HEX, INT_HEX)
    assert any("spi=0x00003000" in r.getMessage() for r in caplog.records)
    assert any("3des-cbc" in r.getMessage() and "legacy" in r.getMessage()
               for r in caplog.records)

"""SA files: JSON and TOML loading with positioned errors; atomic 0600 dumping."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from ipsecsa.config import dump_sa_file, load_sa_file, parse_sa
from ipsecsa.config import files as files_mod
from ipsecsa.errors import ConfigError, KeyLengthError

GCM_KEY = "0a1b2c3d" * 5
CBC_KEY = "5e6f7a8b" * 4
SHA_KEY = "9c0d1e2f" * 8

SA_OUT = {
    "spi": "0x00001001", "protocol": "esp", "mode": "tunnel", "direction": "outbound",
    "src": "192.0.2.1", "dst": "192.0.2.2",
    "encryption": {"algorithm": "aes-gcm-16", "key": GCM_KEY},
    "selectors": [{"src": "10.0.0.0/8", "dst": "10.1.0.0/16"}],
    "lifetime": {"soft": {"seconds": 3000}, "hard": {"seconds": 3600}},
}
SA_IN = {
    "spi": 4098, "protocol": "esp", "direction": "inbound",
    "src": "192.0.2.2", "dst": "192.0.2.1",
    "encryption": {"algorithm": "aes-cbc", "key": CBC_KEY},
    "integrity": {"algorithm": "hmac-sha256-128", "key": SHA_KEY},
    "replay_window": 128,
}

TOML_DOC = f"""
# Two SAs, as a human would write them
[[sas]]
spi = 0x1001
protocol = "esp"
mode = "tunnel"
direction = "outbound"
src = "192.0.2.1"
dst = "192.0.2.2"
encryption = {{ algorithm = "aes-gcm-16", key = "{GCM_KEY}" }}
selectors = [ {{ src = "10.0.0.0/8", dst = "10.1.0.0/16" }} ]
lifetime.soft.seconds = 3000
lifetime.hard.seconds = 3600

[[sas]]
spi = 4098
protocol = "esp"
direction = "inbound"
src = "192.0.2.2"
dst = "192.0.2.1"
replay_window = 128

[sas.encryption]
algorithm = "aes-cbc"
key = "{CBC_KEY}"

[sas.integrity]
algorithm = "hmac-sha256-128"
key = "{SHA_KEY}"
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_load_json(tmp_path: Path) -> None:
    path = write(tmp_path / "sas.json", json.dumps({"sas": [SA_OUT, SA_IN]}))
    configs = load_sa_file(path)
    assert configs == [parse_sa(SA_OUT), parse_sa(SA_IN)]
    assert load_sa_file(str(path)) == configs


@pytest.mark.parametrize("name", ["sas.toml", "sas.conf", "SAS.TOML"])
def test_load_toml_by_extension_or_content(tmp_path: Path, name: str) -> None:
    configs = load_sa_file(write(tmp_path / name, TOML_DOC))
    assert configs == [parse_sa(SA_OUT), parse_sa(SA_IN)]


def test_json_by_content_without_extension(tmp_path: Path) -> None:
    path = write(tmp_path / "sas", "\n  " + json.dumps({"sas": [SA_IN]}))
    assert load_sa_file(path) == [parse_sa(SA_IN)]


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"sas": [SA_IN]}).encode())
    assert load_sa_file(path) == [parse_sa(SA_IN)]


def test_empty_list(tmp_path: Path) -> None:
    assert load_sa_file(write(tmp_path / "e.json", '{"sas": []}')) == []


def test_sa_error_names_index_and_file(tmp_path: Path) -> None:
    doc = {"sas": [SA_OUT, SA_IN, {**SA_OUT, "spi": "0x2001"}, {**SA_IN, "spi": 7}]}
    path = write(tmp_path / "site-a.json", json.dumps(doc))
    with pytest.raises(ConfigError) as info:
        load_sa_file(path)
    assert info.value.field == "sas[3].spi"
    assert "site-a.json" in str(info.value)


def test_error_subclass_is_kept(tmp_path: Path) -> None:
    bad = {**SA_IN, "integrity": {"algorithm": "hmac-sha256-128", "key": SHA_KEY[:-2]}}
    path = write(tmp_path / "k.json", json.dumps({"sas": [bad]}))
    with pytest.raises(KeyLengthError) as info:
        load_sa_file(path)
    assert info.value.field == "sas[0].integrity.key"
    assert SHA_KEY[:16] not in str(info.value)


def test_toml_error_names_index(tmp_path: Path) -> None:
    path = write(tmp_path / "s.toml", TOML_DOC.replace("replay_window = 128",
                                                       "replay_window = 16"))
    with pytest.raises(ConfigError) as info:
        load_sa_file(path)
    assert info.value.field == "sas[1].replay_window"
    assert "s.toml" in str(info.value)


def test_duplicate_sa_identity_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "d.json", json.dumps({"sas": [SA_IN, SA_OUT, SA_IN]}))
    with pytest.raises(ConfigError) as info:
        load_sa_file(path)
    assert info.value.field == "sas[2].spi"
    assert "sas[0]" in info.value.reason


def test_same_spi_other_destination_is_fine(tmp_path: Path) -> None:
    other = {**SA_IN, "dst": "192.0.2.9"}
    assert len(load_sa_file(write(tmp_path / "o.json", json.dumps({"sas": [SA_IN, other]})))) == 2


def test_same_identity_both_directions_is_fine(tmp_path: Path) -> None:
    # A loopback file: the outbound and inbound halves of one SA share SPI and destination.
    out = {**SA_IN, "direction": "outbound"}
    assert len(load_sa_file(write(tmp_path / "l.json", json.dumps({"sas": [SA_IN, out]})))) == 2


def test_undirected_sa_clashes_with_either_direction(tmp_path: Path) -> None:
    both = {k: v for k, v in SA_IN.items() if k != "direction"}
    with pytest.raises(ConfigError) as info:
        load_sa_file(write(tmp_path / "u.json", json.dumps({"sas": [SA_IN, both]})))
    assert info.value.field == "sas[1].spi"


@pytest.mark.parametrize(("text", "field"), [
    ('{"sas": [}', ""),
    ('{"sas": []', ""),
    ("[1, 2]", ""),
    ('{"sas": {}}', "sas"),
    ("{}", "sas"),
    ('{"sas": [], "version": 1}', "version"),
    ('{"sas": [1]}', "sas[0]"),
])
def test_document_errors(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_sa_file(write(tmp_path / "doc.json", text))
    assert info.value.field == field
    assert "doc.json" in str(info.value)


def test_malformed_json_reports_position(tmp_path: Path) -> None:
    text = '{\n  "sas": [\n    {"spi": 4096,, "protocol": "esp"}\n  ]\n}\n'
    with pytest.raises(ConfigError) as info:
        load_sa_file(write(tmp_path / "broken.json", text))
    assert info.value.field == ""
    assert "line 3" in str(info.value) and "column" in str(info.value)
    assert "broken.json" in str(info.value)


def test_malformed_toml_reports_position(tmp_path: Path) -> None:
    text = '[[sas]]\nspi = 4096\nprotocol = "esp\n'
    with pytest.raises(ConfigError) as info:
        load_sa_file(write(tmp_path / "broken.toml", text))
    assert info.value.field == ""
    assert "line 3" in str(info.value)
    assert "broken.toml" in str(info.value)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bin.json"
    path.write_bytes(b'{"sas": ["\xff"]}')
    with pytest.raises(ConfigError) as info:
        load_sa_file(path)
    assert info.value.field == ""


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_sa_file(tmp_path / "nope.json")


# --- dump -----------------------------------------------------------------------------------------


@pytest.fixture
def open_umask() -> Any:
    """Run with umask 0, so that only the code's own mode keeps the file private."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_dump_round_trips_with_mode_0600(tmp_path: Path, open_umask: None) -> None:
    configs = [parse_sa(SA_OUT), parse_sa(SA_IN)]
    path = tmp_path / "out.json"
    dump_sa_file(path, configs)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_sa_file(path) == configs
    assert json.loads(path.read_text())["sas"][1]["integrity"]["key"] == SHA_KEY
    assert sorted(os.listdir(tmp_path)) == ["out.json"]  # no temporary file left behind


def test_dump_replaces_a_world_readable_file(tmp_path: Path, open_umask: None) -> None:
    path = write(tmp_path / "old.json", '{"sas": []}')
    os.chmod(path, 0o644)
    dump_sa_file(path, [parse_sa(SA_IN)])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_sa_file(path) == [parse_sa(SA_IN)]


def test_dump_creates_the_temp_file_0600_exclusively(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_open = os.open

    def spy(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        calls.append((Path(path), flags, mode))
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(files_mod.os, "open", spy)
    target = tmp_path / "x.json"
    dump_sa_file(target, [parse_sa(SA_IN)])
    created = [c for c in calls if c[1] & os.O_CREAT]
    assert len(created) == 1
    tmp, flags, mode = created[0]
    assert tmp.parent == tmp_path and tmp != target
    assert mode == 0o600 and flags & os.O_EXCL


def test_failed_dump_leaves_the_old_file_and_no_temp(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "keep.json", '{"sas": []}')

    def boom(src: Any, dst: Any) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(files_mod.os, "replace", boom)
    with pytest.raises(OSError):
        dump_sa_file(path, [parse_sa(SA_IN)])
    assert path.read_text() == '{"sas": []}'
    assert os.listdir(tmp_path) == ["keep.json"]


def test_dump_refuses_toml_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        dump_sa_file(tmp_path / "x.toml", [])


def test_dump_writes_current_seq(tmp_path: Path) -> None:
    import dataclasses

    cfg = dataclasses.replace(parse_sa(SA_IN), seq=12345)
    path = tmp_path / "seq.json"
    dump_sa_file(path, [cfg])
    assert load_sa_file(path)[0].seq == 12345


def test_a_key_given_twice_in_json_is_refused(tmp_path: Path) -> None:
    """sa-format.md: keys are never silently ignored, so "the last one wins" is no answer."""
    text = '{"sas": [{"spi": 4097, "spi": 4098, "protocol": "esp"}]}'
    with pytest.raises(ConfigError) as info:
        load_sa_file(write(tmp_path / "dup.json", text))
    assert info.value.field == "spi" and "twice" in info.value.reason

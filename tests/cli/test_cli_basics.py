"""The command tree as a user meets it: help everywhere, --version, one-line errors.

Every user mistake must end as exactly one stderr line ``ipsecsa: error: ...`` naming the file and
the field, with exit status 1 and no traceback; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json

import click
import pytest

from ipsecsa.cli.main import main
from tests.cli.helpers import ipsecsa, ipsecsa_many


def _command_paths(group: click.Group, ctx: click.Context, prefix=()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            paths += _command_paths(cmd, ctx, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


def test_help_at_every_level():
    paths = _command_paths(main, click.Context(main))
    assert ("pcap", "unprotect") in paths and ("import", "xfrm") in paths
    assert ("sa", "check") in paths and ("export", "wireshark") in paths
    runs = ipsecsa_many([[*p, "--help"] for p in paths if p != ("demo",)])
    for run in runs:
        assert run.returncode == 0, (run.args, run.stderr)
        assert "Usage:" in run.stdout, run.args
    demo = ipsecsa("demo", "--help")
    assert "--packets" in demo.stdout


def test_version_says_which_optional_parts_are_present():
    out = ipsecsa("--version").stdout
    assert out.startswith("ipsecsa ")
    assert "tshark:" in out and "rich:" in out


def _sa(**changes):
    sa = {"spi": "0x1000", "protocol": "esp", "src": "192.0.2.1", "dst": "192.0.2.2",
          "encryption": {"algorithm": "aes-gcm-16", "key": "00" * 20}}
    sa.update(changes)
    return json.dumps({"sas": [sa]})


BAD_SA_FILES = {
    "syntax": ('{"sas": [', "invalid JSON"),
    "unknown-algorithm": (_sa(encryption={"algorithm": "rot13", "key": "00"}),
                          "sas[0].encryption.algorithm"),
    "key-length": (_sa(encryption={"algorithm": "aes-gcm-16", "key": "00" * 7}),
                   "sas[0].encryption.key"),
    "unknown-key": (_sa(colour="blue"), "colour"),
}


@pytest.mark.parametrize("case", sorted(BAD_SA_FILES))
def test_bad_sa_file_is_one_line_naming_file_and_field(tmp_path, case):
    text, needle = BAD_SA_FILES[case]
    path = tmp_path / f"{case}.json"
    path.write_text(text)
    runs = ipsecsa_many([["sa", "check", "-s", str(path)],
                         ["pcap", "unprotect", "-s", str(path), "in.pcap", "out.pcap"],
                         ["export", "wireshark", "-s", str(path)]])
    for run in runs:
        assert run.returncode == 1, run.args
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1, run.stderr
        assert lines[0].startswith("ipsecsa: error: ") and str(path) in lines[0]
        assert needle in lines[0] and "Traceback" not in run.stderr
        assert "00000000" not in run.stderr  # never a key


def test_missing_files_are_one_line(tmp_path):
    good = tmp_path / "sas.json"
    good.write_text(_sa())
    runs = ipsecsa_many([
        ["sa", "check", "-s", str(tmp_path / "nope.json")],
        ["pcap", "unprotect", "-s", str(good), str(tmp_path / "nope.pcap"), "o.pcap"],
        ["pcap", "inspect", "-s", str(good), str(tmp_path / "nope.pcap")],
        ["import", "xfrm", str(tmp_path / "nope.txt")],
    ])
    for run in runs:
        assert run.returncode == 1, run.args
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and "nope." in lines[0], run.stderr


def test_debug_shows_the_traceback(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(BAD_SA_FILES["key-length"][0])
    run = ipsecsa("--debug", "sa", "check", "-s", str(path), check=False)
    assert run.returncode == 1 and "Traceback" in run.stderr


def test_sa_check_describes_without_keys(tmp_path):
    path = tmp_path / "sas.json"
    path.write_text(json.dumps({"sas": [
        {"spi": 4096, "protocol": "esp", "mode": "tunnel", "direction": "outbound",
         "src": "192.0.2.1", "dst": "192.0.2.2", "esn": True,
         "encryption": {"algorithm": "3des-cbc", "key": "ab" * 24}},
        {"spi": 4097, "protocol": "ah", "src": "2001:db8::1", "dst": "2001:db8::2",
         "integrity": {"algorithm": "hmac-sha256-128", "key": "cd" * 32}}]}))
    text, js = ipsecsa_many([["sa", "check", "-s", str(path)],
                             ["sa", "check", "-s", str(path), "--json"]])
    doc = json.loads(js.stdout)
    assert doc["valid"] and [s["spi"] for s in doc["sas"]] == ["0x00001000", "0x00001001"]
    assert doc["sas"][0]["encryption"] == {"algorithm": "3des-cbc", "key_bits": 192,
                                           "salt_bytes": 0, "legacy": True}
    warnings = " ".join(doc["warnings"])
    assert "legacy" in warnings and "encryption-only" in warnings
    for run in (text, js):
        assert "abab" not in run.stdout + run.stderr and "cdcd" not in run.stdout + run.stderr
    assert "warning: sas[0]" in text.stdout and "0x00001001" in text.stdout

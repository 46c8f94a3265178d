"""The CLI against a real service, as subprocesses: token create/list/revoke, sa
create/list/show/expire/delete, stats, events; connection options before and after the
subcommand, IPSECSA_URL and IPSECSA_TOKEN; a service that is not running is one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.service.server import Server, pair


def run(server: Server, *args: str, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "ipsecsa", *args], capture_output=True,
                            check=False, text=True, timeout=60, env=env if env is not None else server.env())
    if check:
        assert result.returncode == 0, result.stderr
    return result


def sa_file(path: Path, out: dict[str, Any], inb: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"sas": [dict(out, direction="outbound"),
                                        dict(inb, direction="inbound")]}))
    path.chmod(0o600)
    return path


def test_sa_lifecycle_and_option_positions(server: Server, tmp_path: Path) -> None:
    sock, tok = str(server.socket), str(server.token_file)
    out, inb = pair(40)
    f = sa_file(tmp_path / "pair.json", out, inb)
    created = run(server, "sa", "create", "--sa-file", str(f), "--socket", sock,
                  "--token-file", tok)
    ctx_id = int(created.stdout.strip())  # the id alone
    # The same SPIs again: refused, naming the live context.
    again = run(server, "--socket", sock, "--token-file", tok, "sa", "create", "--sa-file",
                str(f), check=False)
    assert again.returncode == 1 and again.stdout == ""
    assert f"in use by live SA context {ctx_id}" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1

    listed = json.loads(run(server, "sa", "--socket", sock, "--token-file", tok, "list",
                            "--json").stdout)
    mine = next(c for c in listed if c["id"] == ctx_id)
    assert mine["state"] == "established" and mine["inbound_spi"] == inb["spi"]
    assert mine["outbound"][0]["packets"] == 0 and "key" not in json.dumps(mine)

    env = server.env(IPSECSA_URL=server.url, IPSECSA_TOKEN=server.admin_token)
    table = run(server, "sa", "list", env=env).stdout
    assert f"0x{inb['spi']:08x}" in table and "established" in table
    shown = json.loads(run(server, "sa", "show", str(ctx_id), "--json", env=env).stdout)
    assert shown["id"] == ctx_id
    run(server, "sa", "expire", str(ctx_id), env=env)
    assert json.loads(run(server, "sa", "show", str(ctx_id), "--json", env=env).stdout)[
        "state"] == "expiring"
    run(server, "sa", "delete", str(ctx_id), env=env)
    gone = run(server, "sa", "show", str(ctx_id), env=env, check=False)
    assert gone.returncode == 1 and "FWP_E_NOT_FOUND" in gone.stderr
    stats = json.loads(run(server, "stats", "--json", env=env).stdout)
    assert "aggregateSaStatistics" in stats


def test_token_commands(server: Server) -> None:
    env = server.env(IPSECSA_TOKEN=server.admin_token)
    made = run(server, "token", "create", "--principal", "alice", "--rights", "read,enum",
               "--socket", str(server.socket), env=env)
    token = made.stdout.strip()
    assert made.stdout == token + "\n" and token.startswith("ipsecsa_")
    listed = json.loads(run(server, "--socket", str(server.socket), "token", "list", "--json",
                            env=env).stdout)
    alice = [t for t in listed if t["principal"] == "alice"][-1]
    assert alice["rights"] == ["FWPM_ACTRL_ENUM", "FWPM_ACTRL_READ"]
    as_alice = server.env(IPSECSA_TOKEN=token)
    run(server, "sa", "list", "--socket", str(server.socket), env=as_alice)
    denied = run(server, "token", "create", "--principal", "eve", "--rights", "all",
                 "--socket", str(server.socket), env=as_alice, check=False)
    assert denied.returncode == 1 and "WRITE_DAC" in denied.stderr
    bad = run(server, "token", "create", "--principal", "x", "--rights", "READ,teleport",
              "--socket", str(server.socket), env=env, check=False)
    assert bad.returncode == 1 and "teleport" in bad.stderr
    run(server, "token", "revoke", alice["id"], "--socket", str(server.socket), env=env)
    refused = run(server, "sa", "list", "--socket", str(server.socket), env=as_alice,
                  check=False)
    assert refused.returncode == 1 and "valid token" in refused.stderr


def test_events_command(server: Server, tmp_path: Path) -> None:
    env = server.env(IPSECSA_URL=server.url, IPSECSA_TOKEN=server.admin_token)
    watcher = subprocess.Popen([sys.executable, "-m", "ipsecsa", "events", "--json",
                                "--timeout", "4"], stdout=subprocess.PIPE, text=True, env=env)
    out, inb = pair(41)
    f = sa_file(tmp_path / "p.json", out, inb)
    ids = []
    import time

    time.sleep(1.5)  # the watcher subscribes
    ctx_id = run(server, "sa", "create", "-s", str(f), env=env).stdout.strip()
    run(server, "sa", "delete", ctx_id, env=env)
    ids.append(int(ctx_id))
    stdout, _ = watcher.communicate(timeout=30)
    assert watcher.returncode == 0
    events = [json.loads(line) for line in stdout.splitlines()]
    assert {"kind": "added", "context_id": ids[0]} in events
    assert {"kind": "deleted", "context_id": ids[0]} in events


def test_no_service_is_one_line(tmp_path: Path) -> None:
    sock = tmp_path / "nobody.sock"
    result = subprocess.run([sys.executable, "-m", "ipsecsa", "sa", "list", "--socket",
                             str(sock)], capture_output=True, text=True, timeout=60,
        check=False)
    assert result.returncode == 1
    assert result.stderr == (f"ipsecsa: error: no ipsecsa service at {sock}; start it with "
                             "`ipsecsa serve`\n")
    result = subprocess.run([sys.executable, "-m", "ipsecsa", "token", "list", "--url",
                             "http://127.0.0.1:9"], capture_output=True, text=True, timeout=60,
        check=False)
    assert result.returncode == 1 and "no ipsecsa service at http://127.0.0.1:9" in result.stderr

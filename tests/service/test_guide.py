"""docs/guide.md's service examples, run as they are written, against a real service.

The guide marks its runnable blocks with ``<!-- guide-test: KIND -->`` comments (invisible when
rendered): ``file NAME`` blocks are written to NAME, ``shell`` blocks run in bash with
``set -euo pipefail``, ``python`` blocks in the venv's Python, and the ``events`` block's
``--json --timeout`` line runs in the background while a context is created and deleted (the
other two lines of that block stream until interrupted, so they are not run). The service is
started as the guide's ``serve`` block says, with the defaults, under a temporary HOME and
XDG_DATA_HOME (so ``~/.local/share/ipsecsa`` and the default socket are this test's) and with
``--http 127.0.0.1:PORT`` on a free port in place of 8080, the one substitution made. The
shell blocks are one reader's shell: a variable a block sets (``TOKEN=...``) is set again before
the later ones.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.service.server import free_port

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide.md"
BLOCK = re.compile(r"<!-- guide-test: (?P<kind>[^>]*?) -->\n```[a-z]*\n(?P<body>.*?)```",
                   re.DOTALL)
ASSIGNMENT = re.compile(r"^[A-Z_]+=\S")


def blocks() -> list[tuple[str, str]]:
    found = [(m["kind"].strip(), m["body"]) for m in BLOCK.finditer(GUIDE.read_text())]
    assert found, "no guide-test blocks in docs/guide.md"
    return found


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    return tmp_path


def test_guide_service_examples_run(home: Path) -> None:
    missing = [tool for tool in ("curl", "jq", "bash") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the guide's examples use {', '.join(missing)} (scripts/test.sh installs "
                    "them when it runs as root)")
    port = free_port()
    bindir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IPSECSA_", "XDG_"))}
    env.update(HOME=str(home), PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}")
    data = home / ".local" / "share" / "ipsecsa"

    def port_of(text: str) -> str:
        return text.replace("127.0.0.1:8080", f"127.0.0.1:{port}")

    log = (home / "serve.log").open("wb")
    serve = subprocess.Popen([str(bindir / "ipsecsa"), "serve", "--http", f"127.0.0.1:{port}"],
                             cwd=home, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while not (data / "ipsecsa.sock").exists():
            assert serve.poll() is None, (home / "serve.log").read_text()
            assert time.monotonic() < deadline, "the service did not start in 30 s"
            time.sleep(0.05)
        outputs = []
        assignments = ""  # the shell blocks are one reader's shell: its variables carry over
        for kind, body in blocks():
            if kind.startswith("file "):
                (home / kind.split()[1]).write_text(body)
            elif kind == "shell":
                outputs.append(_run(["bash", "-c", "set -euo pipefail\n" + assignments
                                     + port_of(body)], home, env))
                assignments += "".join(line + "\n" for line in body.splitlines()
                                       if ASSIGNMENT.match(line))
            elif kind == "python":
                outputs.append(_run([sys.executable, "-c", body], home, env))
            elif kind == "events":
                outputs.append(_events(body, home, env))
            else:
                assert kind.startswith("serve"), f"unknown guide-test block kind {kind!r}"
    finally:
        serve.terminate()
        assert serve.wait(30) == 0, (home / "serve.log").read_text()
        log.close()
    sa_cli, python, curl, events, metrics, tokens = outputs
    assert sa_cli.splitlines()[0] == "1"  # sa create printed the new context's id
    assert python.split() == ["established", "68", "50", "None", "1"]
    assert '"state":"established"' in curl.replace(" ", "")
    assert '"added"' in events and '"deleted"' in events
    assert "ipsecsa_sa_packets_total" in metrics
    assert "refused: alice lacks read_stats" in tokens
    assert "refused: the token is revoked" in tokens


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, f"{argv[-1][:300]}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    return done.stdout


def _events(body: str, cwd: Path, env: dict[str, str]) -> str:
    """The block's ``--json --timeout`` line, with a context created and deleted meanwhile."""
    line = next(x for x in body.splitlines() if "--json --timeout" in x).split("#")[0]
    argv = line.replace("--timeout 30", "--timeout 3").split()
    watcher = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, text=True)
    time.sleep(1.5)  # subscribed before the change
    made = _run(["ipsecsa", "sa", "create", "--sa-file", "host-a.json"], cwd, env).strip()
    _run(["ipsecsa", "sa", "delete", made], cwd, env)
    out, _ = watcher.communicate(timeout=60)
    assert watcher.returncode == 0
    return out

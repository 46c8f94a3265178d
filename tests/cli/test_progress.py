"""The progress bar of the capture tools, on a real terminal and off one.

The command is run as a real subprocess whose stdin, stdout and stderr are the slave side of a
pseudo-terminal (``pty.openpty``, a window size set with TIOCSWINSZ), so ``isatty()`` is true
for the process exactly as in an interactive shell; everything it writes is read back from the
master side. The capture is larger than ``PROGRESS_MIN_BYTES`` (smaller files get no bar).
Off a terminal (pipes), nothing but the summary may appear: no bar, no escape sequences.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time

import pytest

from ipsecsa import SecurityAssociation
from ipsecsa.cli.output import PROGRESS_MIN_BYTES
from ipsecsa.config import parse_sa
from ipsecsa.packet.ipv4 import build_ipv4_header
from ipsecsa.packet.udp import build_udp
from tests.cli.helpers import ether, write_pcap

SA = {"spi": "0xc0000101", "protocol": "esp", "mode": "tunnel", "src": "192.0.2.1",
      "dst": "198.51.100.1", "encryption": {"algorithm": "aes-gcm-16", "key": "4d" * 20}}
#: The cursor hide/show sequences rich's Live display writes around a bar.
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: A task line of the bar once escape sequences are removed: label, bar, "done/total MB".
PROGRESS_LINE = re.compile(r"(?:unprotect|protect|inspect) [━╺╸ ]+ [0-9.]+/[0-9.]+ [kMG]?B")


@pytest.fixture(scope="module")
def big_capture(tmp_path_factory):
    """An ESP capture a little over PROGRESS_MIN_BYTES, and its SA file."""
    work = tmp_path_factory.mktemp("progress")
    sa = SecurityAssociation.from_config(dataclasses.replace(parse_sa(SA),
                                                             direction="outbound"))
    src, dst = bytes((10, 1, 0, 1)), bytes((10, 2, 0, 1))
    udp = build_udp(src, dst, 1000, 53, bytes(400))
    inner = build_ipv4_header(tos=0, total_length=20 + len(udp), ident=1, flags=0,
                              frag_offset=0, ttl=64, protocol=17, src=src, dst=dst) + udp
    frame = ether(sa.protect(inner).packet, 0x0800)
    count = PROGRESS_MIN_BYTES // (16 + len(frame)) + 500
    records = [(1_700_000_000_000_000 + i, ether(sa.protect(inner).packet, 0x0800))
               for i in range(count)]
    path = work / "big.pcap"
    write_pcap(path, 1, records)
    assert os.path.getsize(path) > PROGRESS_MIN_BYTES
    sa_file = work / "sa.json"
    sa_file.write_text(json.dumps({"sas": [SA]}))
    return path, sa_file, count


def _flat(text: str) -> str:
    """``text`` without escape sequences, its lines (wrapped at the terminal width) joined."""
    return " ".join(ANSI.sub("", text).split())


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("NO_COLOR", "COLUMNS", "LINES", "IPSECSA_DEBUG", "TERM"):
        env.pop(name, None)
    env["TERM"] = "xterm-256color"
    return env


def run_on_pty(args: list[str], timeout: float = 120.0) -> tuple[int, str]:
    """Run ``python -m ipsecsa ARGS`` with a pseudo-terminal as stdin, stdout and stderr;
    return (exit status, everything written to the terminal)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 132, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "ipsecsa", *args], stdin=slave,
                            stdout=slave, stderr=slave, env=_env(), close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"ipsecsa {' '.join(args)} did not finish in {timeout} s")
            try:
                data = os.read(master, 65536)
            except OSError as exc:  # EIO: the slave side is closed (the process exited)
                if exc.errno != errno.EIO:
                    raise
                break
            if not data:
                break
            chunks.append(data)
        status = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return status, b"".join(chunks).decode("utf-8", "replace")


def test_progress_bar_is_drawn_on_a_terminal(big_capture, tmp_path):
    path, sa_file, count = big_capture
    status, screen = run_on_pty(["pcap", "unprotect", "-s", str(sa_file), str(path),
                                 str(tmp_path / "out.pcap")])
    assert status == 0, screen
    # The bar: rich's Live display hides the cursor, draws the task line with its label and
    # bar glyphs, and (transient) shows the cursor again when done.
    assert HIDE_CURSOR in screen and SHOW_CURSOR in screen
    assert screen.index(HIDE_CURSOR) < screen.index(SHOW_CURSOR)
    bar_lines = [ANSI.sub("", line) for line in re.split(r"[\r\n]", screen)
                 if PROGRESS_LINE.search(ANSI.sub("", line))]
    assert bar_lines, screen
    # Sizes as DownloadColumn prints them: done/total in MB, total = the file's size.
    total_mb = os.path.getsize(path) / 1e6
    assert any(f"/{total_mb:.1f} MB" in line for line in bar_lines), bar_lines
    # The last frame of the bar, drawn when the run ends, shows the whole file done.
    assert f"{total_mb:.1f}/{total_mb:.1f} MB" in bar_lines[-1], bar_lines[-1]
    # After the bar, the summary.
    assert f"{count} frames, {count} unprotected" in _flat(screen[screen.rindex(SHOW_CURSOR):])


def test_inspect_draws_a_bar_too(big_capture):
    path, sa_file, _count = big_capture
    status, screen = run_on_pty(["pcap", "inspect", "-s", str(sa_file), str(path)])
    assert status == 0, screen
    lines = [ANSI.sub("", line) for line in re.split(r"[\r\n]", screen)]
    assert any(PROGRESS_LINE.search(line) and line.startswith("inspect") for line in lines)


def test_json_on_a_terminal_has_no_bar(big_capture, tmp_path):
    path, sa_file, count = big_capture
    status, screen = run_on_pty(["pcap", "unprotect", "-s", str(sa_file), str(path),
                                 str(tmp_path / "out.pcap"), "--json"])
    assert status == 0, screen
    assert HIDE_CURSOR not in screen and not PROGRESS_LINE.search(ANSI.sub("", screen))
    assert json.loads(screen.replace("\r\n", "\n"))["transformed"] == count


def test_no_progress_output_off_a_terminal(big_capture, tmp_path):
    """stdout and stderr are pipes: stderr stays empty, stdout is the plain summary."""
    path, sa_file, count = big_capture
    proc = subprocess.run([sys.executable, "-m", "ipsecsa", "pcap", "unprotect", "-s",
                           str(sa_file), str(path), str(tmp_path / "out.pcap")],
                          capture_output=True, text=True, env=_env(), timeout=120,
                          stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "\x1b" not in proc.stdout and not PROGRESS_LINE.search(proc.stdout)
    assert f"{count} frames, {count} unprotected" in _flat(proc.stdout)


def test_no_progress_when_only_stdout_is_a_terminal(big_capture, tmp_path):
    """The bar goes to stderr; with stderr a pipe there is none, even if stdout is a terminal."""
    path, sa_file, count = big_capture
    master, slave = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "ipsecsa", "pcap", "unprotect", "-s",
                               str(sa_file), str(path), str(tmp_path / "out.pcap")],
                              stdout=slave, stderr=subprocess.PIPE, env=_env(), timeout=120,
                              stdin=subprocess.DEVNULL, check=False)
    finally:
        os.close(slave)
    os.set_blocking(master, False)
    try:
        screen = os.read(master, 1 << 20).decode("utf-8", "replace")
    except BlockingIOError:
        screen = ""
    finally:
        os.close(master)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    assert HIDE_CURSOR not in screen and not PROGRESS_LINE.search(ANSI.sub("", screen))
    assert f"{count} frames, {count} unprotected" in _flat(screen)

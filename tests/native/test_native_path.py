"""The native fast path as a whole: that it is loaded where it must be, how it says it is off,
the cases it hands to the Python path, the sequence-number reservation limit, threads.

Byte-for-byte agreement with the Python path over random SAs and streams is
``test_differential.py``; the published vectors, scapy and tshark run on both paths through the
``backend`` fixture (tests/conftest.py).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading

import pytest

import ipsecsa
from ipsecsa import SecurityAssociation
from ipsecsa.datapath import native
from ipsecsa.errors import ConfigError, DropReason
from ipsecsa.packet.ipv4 import build_ipv4_header

KEY = bytes(range(20)).hex()
BASE = {"spi": "0xc0000101", "protocol": "esp", "mode": "tunnel", "src": "192.0.2.1",
        "dst": "198.51.100.1", "encryption": {"algorithm": "aes-gcm-16", "key": KEY}}


def _inner(n: int, size: int = 40) -> bytes:
    payload = struct.pack("!HHHH", 1000, 2000, 8 + size, 0) + bytes([n & 0xFF]) * size
    return build_ipv4_header(tos=0, total_length=20 + len(payload), ident=n & 0xFFFF, flags=0,
                             frag_offset=0, ttl=64, protocol=17, src=bytes([10, 0, 0, 1]),
                             dst=bytes([10, 0, 0, 2])) + payload


def _sa(direction: str, native_: bool | None = True, **extra: object) -> SecurityAssociation:
    return SecurityAssociation.from_dict(dict(BASE, direction=direction, **extra), now=0.0,
                                         native=native_)


def _seq_of(wire: bytes) -> int:
    return int.from_bytes(wire[24:28], "big")  # outer IPv4 (20) + SPI (4)


needs_native = pytest.mark.skipif(not native.available(),
                                  reason=f"native fast path off: {native.why_off()}")


# ---------------------------------------------------------------------------- loaded or why not
def test_native_is_loaded_when_required() -> None:
    """scripts/test.sh sets IPSECSA_REQUIRE_NATIVE=1 where it can build the extension: there the
    whole suite must have run on it, never silently on the fallback."""
    if os.environ.get("IPSECSA_REQUIRE_NATIVE") != "1":
        pytest.skip("IPSECSA_REQUIRE_NATIVE is not 1 (set by scripts/test.sh when it can build)")
    info = ipsecsa.info()
    assert info["native"] is True, info["why_off"]
    assert str(info["openssl"]).startswith("OpenSSL 3.")
    assert SecurityAssociation.from_dict(dict(BASE, direction="outbound")).native


def test_info_says_which_path_and_why() -> None:
    info = ipsecsa.info()
    assert info["version"] == ipsecsa.__version__
    assert info["native"] is native.available()
    assert (info["why_off"] is None) is native.available()


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    # The child's choice of path is the test's, not the environment the suite runs in (the
    # suite also runs under IPSECSA_PURE_PYTHON=1).
    base = {k: v for k, v in os.environ.items() if k != "IPSECSA_PURE_PYTHON"}
    return subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True,
                          text=True, env={**base, **env}, timeout=60, check=False)


ROUNDTRIP = f"""
import ipsecsa, struct
base = {BASE!r}
o = ipsecsa.SecurityAssociation.from_dict(dict(base, direction="outbound"))
i = ipsecsa.SecurityAssociation.from_dict(dict(base, direction="inbound"))
pkt = bytes.fromhex({_inner(1).hex()!r})
assert i.unprotect(o.protect(pkt).packet).packet == pkt
print("native", o.native, i.native, ipsecsa.info()["why_off"])
"""


def test_pure_python_env_forces_the_reference_path_quietly() -> None:
    r = _run(ROUNDTRIP, IPSECSA_PURE_PYTHON="1")
    assert r.returncode == 0, r.stderr
    assert "native False False IPSECSA_PURE_PYTHON=1 is set" in r.stdout
    assert "fast path off" not in r.stderr  # a deliberate choice is not warned about


def test_without_the_extension_it_runs_and_says_so_once() -> None:
    code = "import sys; sys.modules['ipsecsa._fastesp'] = None\n" + ROUNDTRIP + \
        "import ipsecsa.datapath.native\n"
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert "native False False the native extension ipsecsa._fastesp is not available" in r.stdout
    assert r.stderr.count("native ESP fast path off") == 1, r.stderr


@needs_native
def test_native_true_refuses_what_it_cannot_do() -> None:
    ccm = dict(BASE, direction="outbound",
               encryption={"algorithm": "aes-ccm-16", "key": bytes(19).hex()})
    with pytest.raises(ConfigError) as exc:
        SecurityAssociation.from_dict(ccm, native=True)
    assert exc.value.field == "native"
    assert not SecurityAssociation.from_dict(ccm).native  # default: the Python path, silently
    ah = {"spi": 300, "protocol": "ah", "mode": "transport", "src": "192.0.2.1",
          "dst": "192.0.2.2", "integrity": {"algorithm": "hmac-sha256-128", "key": KEY[:64]}}
    with pytest.raises(ConfigError):
        SecurityAssociation.from_dict(ah, native=True)


# ---------------------------------------------------------------------------- hand-backs
@needs_native
@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_other_buffers_go_through_the_python_path_with_the_same_result(kind: type) -> None:
    o_nat, o_py = _sa("outbound", True, seq=5), _sa("outbound", False, seq=5)
    a, b = o_nat.protect(kind(_inner(1))), o_py.protect(kind(_inner(1)))
    assert len(a.packet) == len(b.packet) and a.drop is b.drop is None
    assert o_nat.seq == o_py.seq == 6
    # Not a buffer at all: the one TypeError of every entry point, on both paths.
    for sa in (o_nat, o_py):
        with pytest.raises(TypeError, match="packet must be bytes"):
            sa.protect("not bytes" * 5)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            sa.protect_batch(b"one packet")


@needs_native
def test_time_lifetimes_through_the_gate_match_the_python_path() -> None:
    life = {"soft": {"seconds": 10}, "hard": {"seconds": 20}}
    sas = [_sa("outbound", flag, lifetime=life) for flag in (True, False)]
    for now in (1.0, 9.9, 10.0, 15.0, 19.9, 20.0, 25.0):
        results = [sa.protect_batch([_inner(1), _inner(2)], now) for sa in sas]
        assert [r.drop for r in results[0]] == [r.drop for r in results[1]]
        assert [type(e) for e in sas[0].drain_events()] == [type(e) for e in sas[1].drain_events()]
        assert sas[0].counters == sas[1].counters and sas[0].state == sas[1].state
    assert sas[0].counters.drops == {DropReason.EXPIRED: 4}


# ---------------------------------------------------------------------------- seq_limit hook
@pytest.mark.parametrize("native_", [False, True])
def test_seq_limit_is_never_passed(native_: bool) -> None:
    if native_ and not native.available():
        pytest.skip(f"native fast path off: {native.why_off()}")
    sa = _sa("outbound", native_)
    assert sa.seq_limit == 2**32 - 1
    sa.seq_limit = 5
    res = sa.protect_batch([_inner(i) for i in range(8)], 1.0)
    assert [r.drop for r in res] == [None] * 5 + [DropReason.SEQ_UNRESERVED] * 3
    assert [_seq_of(r.packet) for r in res[:5]] == [1, 2, 3, 4, 5]
    assert sa.seq == 5 and sa.counters.packets == 5  # no number was spent on the refusals
    assert sa.protect(_inner(9)).drop is DropReason.SEQ_UNRESERVED
    sa.seq_limit = None
    assert _seq_of(sa.protect(_inner(9)).packet) == 6
    with pytest.raises(ConfigError):
        sa.seq_limit = 2**32


@pytest.mark.parametrize("native_", [False, True])
def test_seq_limit_hook_reserves_blocks(native_: bool) -> None:
    if native_ and not native.available():
        pytest.skip(f"native fast path off: {native.why_off()}")
    calls: list[int] = []

    def reserve(sa: SecurityAssociation, seq: int) -> None:
        calls.append(seq)
        sa.seq_limit = sa.seq_limit + 3  # "made the next block of 3 durable"

    sa = _sa("outbound", native_)
    sa.seq_limit, sa.seq_limit_hook = 3, reserve
    res = sa.protect_batch([_inner(i) for i in range(10)], 1.0)
    assert [_seq_of(r.packet) for r in res] == list(range(1, 11))
    assert calls == [4, 7, 10]


@needs_native
def test_seq_limit_native_and_python_outputs_are_identical() -> None:
    def iv(seq: int) -> bytes:
        return seq.to_bytes(8, "big")

    outs = []
    for flag in (True, False):
        sa = SecurityAssociation.from_dict(dict(BASE, direction="outbound"), now=0.0,
                                           native=flag, unsafe_iv_source=iv)
        sa.seq_limit, sa.seq_limit_hook = 2, lambda s, q: setattr(s, "seq_limit", q + 1)
        outs.append(sa.protect_batch([_inner(i) for i in range(6)], 1.0))
    assert outs[0] == outs[1]


def test_seq_limit_on_ah() -> None:
    ah = SecurityAssociation.from_dict(
        {"spi": 300, "protocol": "ah", "mode": "transport", "direction": "outbound",
         "src": "10.0.0.1", "dst": "10.0.0.2",
         "integrity": {"algorithm": "hmac-sha256-128", "key": bytes(32).hex()}})
    ah.seq_limit = 1
    assert ah.protect(_inner(1)).drop is None
    assert ah.protect(_inner(2)).drop is DropReason.SEQ_UNRESERVED
    assert ah.seq == 1


# ---------------------------------------------------------------------------- threads
@needs_native
def test_two_threads_on_one_sa_never_share_a_sequence_number() -> None:
    out, inn = _sa("outbound"), _sa("inbound", replay_window=4096)
    batches = [[_inner(i, 200) for i in range(64)] for _ in range(40)]
    wires: list[list[bytes]] = [[], []]

    def send(k: int) -> None:
        for b in batches[k::2]:
            wires[k].extend(r.packet for r in out.protect_batch(b))

    threads = [threading.Thread(target=send, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seqs = [_seq_of(w) for w in wires[0] + wires[1]]
    assert sorted(seqs) == list(range(1, 64 * 40 + 1))
    assert out.seq == out.counters.packets == 64 * 40

    # Inbound, the two halves on two threads: every packet delivered once, counters add up.
    delivered: list[int] = [0, 0]

    def receive(k: int) -> None:
        w = wires[k]
        for i in range(0, len(w), 64):
            delivered[k] += sum(r.packet is not None for r in inn.unprotect_batch(w[i:i + 64]))

    threads = [threading.Thread(target=receive, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    c = inn.counters
    assert c.packets + c.dropped == 64 * 40
    assert sum(delivered) == c.packets
    # Reordering between the threads can push numbers out of the 4096 window, never duplicate.
    assert set(c.drops) <= {DropReason.REPLAY}

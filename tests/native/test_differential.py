"""Differential tests: the native ESP fast path against the pure-Python reference (hypothesis).

For random SAs (every algorithm the native engine implements, transport and tunnel, IPv4 and
IPv6, ESN, UDP encapsulation, replay windows, initial sequence numbers near the 2^32 edge, TFC
padding, DSCP/DF choices, selectors, packet and byte lifetimes) and random packet streams, two
copies of each SA are driven side by side, one with ``native=False`` and one with
``native=True``, and must agree on everything observable:

* outbound: byte-identical packets (IVs come from the same ``unsafe_iv_source`` on both: the
  native engine calls it back), the same drop reasons, counters, sequence numbers and events;
* inbound: the Python SA's output, reordered, replayed, tampered (bit flips, truncation, garbage
  appended or alone) and split into random batches, gives the same verdicts, delivered bytes,
  counters, replay-window edge and events on both.

The native SA is also switched to its Python path for random packets mid-stream (``_py_out`` /
``_py_in``): the state is shared, so that must change nothing either.
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsecsa import SecurityAssociation
from ipsecsa.datapath import native

if not native.available():  # pragma: no cover - exercised where the extension is missing
    pytest.skip(f"native fast path off: {native.why_off()}", allow_module_level=True)

#: IPSECSA_DIFF_EXAMPLES raises the example count for a longer local run.
SETTINGS = settings(deadline=None, max_examples=int(os.environ.get("IPSECSA_DIFF_EXAMPLES", "120")),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

#: (encryption, key bytes incl. salt, integrity, integrity key bytes, IV bytes)
ALGS = [
    ("aes-gcm-16", 20, None, 0, 8), ("aes-gcm-16", 36, None, 0, 8),
    ("aes-gcm-12", 28, None, 0, 8), ("aes-gcm-8", 20, None, 0, 8),
    ("chacha20-poly1305", 36, None, 0, 8), ("null-aes-gmac", 20, None, 0, 8),
    ("null-aes-gmac", 36, None, 0, 8),
    ("aes-cbc", 16, "hmac-sha1-96", 20, 16), ("aes-cbc", 32, "hmac-sha256-128", 32, 16),
    ("aes-cbc", 24, "hmac-sha384-192", 48, 16), ("aes-cbc", 16, "hmac-sha512-256", 64, 16),
]
ADDR = {4: ("192.0.2.1", "198.51.100.7"), 6: ("2001:db8::1", "2001:db8:ffff::7")}
INNER = {4: (bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])),
         6: (bytes.fromhex("20010db8000100000000000000000001"),
             bytes.fromhex("20010db8000200000000000000000002"))}
NOW = 1000.0


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def inner_packet(version: int, proto: int, size: int, tos: int, df: bool, seed: int) -> bytes:
    """An IPv4/IPv6 packet with a UDP (17), TCP (6) or other payload of ``size`` bytes."""
    src, dst = INNER[version]
    body = bytes((seed + i) & 0xFF for i in range(size))
    if proto == 17:
        l4 = struct.pack("!HHHH", 1000 + seed % 7, 2000 + seed % 5, 8 + size, 0) + body
    elif proto == 6:
        l4 = struct.pack("!HHIIBBHHH", 1000 + seed % 7, 443, seed, 0, 0x50, 0x10, 1000, 0, 0) + body
    else:
        l4 = body
    if version == 4:
        h = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(l4), seed & 0xFFFF,
                                  0x4000 if df else 0, 64, proto, 0, src, dst))
        struct.pack_into("!H", h, 10, _csum(bytes(h)))
        return bytes(h) + l4
    return struct.pack("!IHBB16s16s", 6 << 28 | tos << 20 | (seed & 0xFFFFF), len(l4), proto,
                       64, src, dst) + l4


@st.composite
def sa_descriptions(draw: st.DrawFn) -> tuple[dict, int]:
    enc, klen, integ, ilen, ivlen = draw(st.sampled_from(ALGS))
    mode = draw(st.sampled_from(["transport", "tunnel"]))
    fam = draw(st.sampled_from([4, 6]))
    esn = draw(st.booleans())
    src, dst = ADDR[fam]
    desc: dict = {"spi": draw(st.integers(256, 2**32 - 1)), "protocol": "esp", "mode": mode,
                  "src": src, "dst": dst,
                  "encryption": {"algorithm": enc, "key": draw(st.binary(min_size=klen,
                                                                         max_size=klen)).hex()},
                  "esn": esn,
                  "replay_window": draw(st.sampled_from([0, 32, 64, 128, 1024]))}
    if integ:
        desc["integrity"] = {"algorithm": integ,
                             "key": draw(st.binary(min_size=ilen, max_size=ilen)).hex()}
    if draw(st.booleans()):
        desc["encapsulation"] = {"type": "udp", "sport": draw(st.sampled_from([4500, 40000])),
                                 "dport": 4500}
    top = 2**64 - 1 if esn else 2**32 - 1
    desc["seq"] = draw(st.one_of(st.just(0), st.integers(0, 1000),
                                 st.integers(2**32 - 40, 2**32 + 40).filter(lambda s: s < top)))
    if mode == "tunnel":
        if draw(st.booleans()):
            desc["tfc_padding"] = draw(st.sampled_from([64, 300]))
        desc["dscp"] = draw(st.sampled_from(["copy", 0, 46]))
        if fam == 4:  # IPv6 has no DF bit
            desc["df"] = draw(st.sampled_from(["copy", "set", "clear"]))
    if draw(st.integers(0, 3)) == 0:
        sel: dict = {"protocol": draw(st.sampled_from([0, 17, 6]))}
        if mode == "tunnel" and draw(st.booleans()):
            sel["src"] = "10.0.0.0/8" if fam == 4 else "2001:db8:1::/48"
        if draw(st.booleans()):
            sel["dport"] = 2000
        desc["selectors"] = [sel]
    if draw(st.integers(0, 2)) == 0:
        soft = draw(st.integers(2, 30))
        desc["lifetime"] = {"soft": {"packets": soft},
                            "hard": {"packets": soft + draw(st.integers(1, 30)),
                                     "bytes": draw(st.integers(500, 20000))}}
    return desc, ivlen


def iv_source_for(ivlen: int):
    def source(seq: int) -> bytes:
        return ((seq * 0x9E3779B97F4A7C15 + 12345) & ((1 << 64) - 1)).to_bytes(8, "big")[
            :ivlen].rjust(ivlen, b"\x5a")
    return source


def pair(desc: dict, direction: str, ivlen: int) -> tuple[SecurityAssociation, SecurityAssociation]:
    d = dict(desc, direction=direction)
    src = iv_source_for(ivlen)
    py = SecurityAssociation.from_dict(d, now=0.0, unsafe_iv_source=src, native=False)
    nat = SecurityAssociation.from_dict(d, now=0.0, unsafe_iv_source=src, native=True)
    assert nat.native and not py.native
    return py, nat


def same_state(a: SecurityAssociation, b: SecurityAssociation) -> None:
    assert a.counters == b.counters
    assert a.seq == b.seq
    assert a.state == b.state
    assert [(type(e), e.spi, getattr(e, "kind", None)) for e in a.drain_events()] == \
        [(type(e), e.spi, getattr(e, "kind", None)) for e in b.drain_events()]


def drive(sa: SecurityAssociation, packets: list[bytes], splits: list[int], switch: list[bool],
          outbound: bool) -> list:
    """Feed packets in batches of the given sizes; on the native SA, packets whose ``switch``
    flag is set go through its Python path instead (shared state)."""
    out, i, k = [], 0, 0
    one = sa.protect if outbound else sa.unprotect
    batch = sa.protect_batch if outbound else sa.unprotect_batch
    py = getattr(sa, "_py_out" if outbound else "_py_in")
    while i < len(packets):
        n = max(1, splits[k % len(splits)]) if splits else 1
        k += 1
        chunk = packets[i:i + n]
        if len(chunk) == 1:
            out.append((py if switch[i % len(switch)] else one)(chunk[0], NOW))
        else:
            out.extend(batch(chunk, NOW))
        i += n
    return out


@st.composite
def streams(draw: st.DrawFn, desc: dict) -> list[bytes]:
    fam = 4 if ":" not in desc["src"] else 6
    pkts = []
    for _ in range(draw(st.integers(1, 24))):
        v = fam if desc["mode"] == "transport" else draw(st.sampled_from([4, 6]))
        p = inner_packet(v, draw(st.sampled_from([17, 6, 1])), draw(st.integers(0, 300)),
                         draw(st.integers(0, 255)), draw(st.booleans()), draw(st.integers(0, 999)))
        junk = draw(st.integers(0, 12))
        if junk == 0:
            p = p[:draw(st.integers(0, len(p)))]  # truncated
        elif junk == 1:
            p = p + b"\xee" * 5  # bytes past the IP length
        elif junk == 2:
            p = draw(st.binary(max_size=60))
        pkts.append(p)
    return pkts


@SETTINGS
@given(data=st.data())
def test_protect_and_unprotect_agree(data: st.DataObject) -> None:
    desc, ivlen = data.draw(sa_descriptions())
    out_py, out_nat = pair(desc, "outbound", ivlen)
    packets = data.draw(streams(desc))
    splits = data.draw(st.lists(st.integers(1, 9), min_size=1, max_size=5))
    switch = data.draw(st.lists(st.booleans(), min_size=1, max_size=5))
    got_py = drive(out_py, packets, splits, [False], True)
    got_nat = drive(out_nat, packets, splits, switch, True)
    assert got_py == got_nat
    same_state(out_py, out_nat)

    # Inbound: the wire as a network and an attacker may make it.
    wire = [r.packet for r in got_py if r.packet is not None]
    ops = data.draw(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 10**6)),
                             min_size=len(wire), max_size=len(wire) + 10))
    arriving: list[bytes] = []
    for j, (op, x) in enumerate(ops):
        if not wire:
            break
        p = wire[j % len(wire)] if j < len(wire) else wire[x % len(wire)]
        if op == 1:  # tamper one bit
            b = bytearray(p)
            b[x % len(b)] ^= 1 << (x % 8)
            p = bytes(b)
        elif op == 2:  # truncate
            p = p[:x % (len(p) + 1)]
        elif op == 3 and arriving:  # swap with an earlier one (reordering)
            k = x % len(arriving)
            arriving[k], p = p, arriving[k]
        arriving.append(p)
    in_py, in_nat = pair(desc, "inbound", ivlen)
    splits = data.draw(st.lists(st.integers(1, 12), min_size=1, max_size=5))
    switch = data.draw(st.lists(st.booleans(), min_size=1, max_size=5))
    res_py = drive(in_py, arriving, splits, [False], False)
    res_nat = drive(in_nat, arriving, splits, switch, False)
    assert res_py == res_nat
    same_state(in_py, in_nat)


@SETTINGS
@given(desc=sa_descriptions(), data=st.data())
def test_default_counter_ivs_are_seq_xor_the_transforms_mask(desc: tuple[dict, int],
                                                             data: st.DataObject) -> None:
    """Without an IV source the native engine's counter IVs are ``seq ^ iv_mask`` of the SA's
    own transform (issue 10), and the Python path of a peer SA opens them."""
    d, _ = desc
    d = dict(d, lifetime={}, selectors=[])
    if d["mode"] == "transport":  # the receiver's NAT checksum fix-up would rewrite L4 sums
        d.pop("encapsulation", None)
    if d["encryption"]["algorithm"] == "aes-cbc":
        return
    out = SecurityAssociation.from_dict(dict(d, direction="outbound"), now=0.0, native=True)
    inn = SecurityAssociation.from_dict(dict(d, direction="inbound"), now=0.0, native=False)
    mask = out.transform.iv_mask
    v = 4 if d["mode"] == "transport" and ":" not in d["src"] else 6
    for n in range(data.draw(st.integers(1, 5))):
        pkt = inner_packet(v if d["mode"] == "transport" else 4, 17, 10 * n, 0, False, n)
        res = out.protect(pkt, NOW)
        if res.packet is None:
            return  # e.g. the sequence space was exhausted by the drawn seq
        wire = res.packet
        esp = (40 if ":" in d["src"] else 20) + (8 if "encapsulation" in d else 0)
        assert wire[esp + 8:esp + 16] == (out.seq ^ mask).to_bytes(8, "big")
        assert inn.unprotect(wire, NOW).packet == pkt

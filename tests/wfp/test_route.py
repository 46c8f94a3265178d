"""The engine's native outbound route (``_fastesp.Flows``; engine.py's module docstring).

* The route and the Python reference path give the same results, the same counters and the
  same sequence numbers for the same packets (two engines with the same keys, clock and IVs,
  one with the route, one with ``_python_only()``), single packets and batches mixed.
* Everything that changes what a packet is classified against empties the route table (a
  filter added or deleted, a context expired, deleted or updated), and a context's route dies
  with its outbound bundle; expiry is still evaluated on every packet (lifetime, idle timeout)
  and the injected clock is called once per packet.
* The route takes the context's own lock: a packet waits while Python code holds it, and
  threads sending through both paths never share a sequence number.
* Sequence-number reservation lives on the SAs (``seq_limit``/``seq_limit_hook``): none on an
  in-memory engine, synced blocks on a durable one.

The peers are ipsecsa engines; the wire format itself is proven against independent decryption
in test_traffic.py and the interop tests.
"""

from __future__ import annotations

import random
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ipsecsa import api, wfp
from ipsecsa.datapath import native
from ipsecsa.errors import DropReason
from ipsecsa.wfp import engine as wfp_engine
from ipsecsa.wfp.persist import (
    SEQ_BLOCK,
    SEQ_BLOCK_FAST_SECONDS,
    SEQ_BLOCK_MAX,
    SEQ_BLOCK_SLOW_SECONDS,
)
from tests.api.helpers import A, B, esp_of, udp4
from tests.wfp.helpers import open_engine, plain_filter

C, D = "203.0.113.7", "203.0.113.9"
KEY_AB, KEY_BA = "11" * 20, "22" * 20

needs_native = pytest.mark.skipif(not native.available(),
                                  reason="the native extension is not built: no route")


class Clock:
    """An injected clock that counts its calls."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.now


def counter_iv(seq: int) -> bytes:
    """Deterministic IVs (known-answer style), so that two engines' outputs can be compared."""
    return struct.pack("!Q", seq)


def desc(spi: int, src: str, dst: str, key: str, algorithm: str = "aes-gcm-16",
         **extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"spi": spi, "protocol": "esp", "src": src, "dst": dst,
                         "encryption": {"algorithm": algorithm, "key": key}}
    d.update(extra)
    return d


def ah(spi: int, src: str, dst: str) -> dict[str, Any]:
    return {"spi": spi, "protocol": "ah", "src": src, "dst": dst,
            "integrity": {"algorithm": "hmac-sha1-96", "key": "33" * 20}}


def engine(clock: Clock, python_only: bool = False, database: Path | None = None) -> api.Engine:
    e = api.Engine(database, clock=clock)
    e.wfp._unsafe_iv_source = counter_iv
    if python_only:
        e.wfp._python_only()
    return e


def established(e: api.Engine, remote: str = B, spi: int = 0x1001, **extra: Any) -> int:
    out = desc(spi, A, remote, KEY_AB, **extra)
    inb = desc(spi + 1, remote, A, KEY_BA)
    return e.create_context(outbound=out, inbound=inb).id


def ctx_of(e: api.Engine, cid: int) -> Any:
    return e.wfp._contexts[cid]


def routed(e: api.Engine) -> int:
    return int(e.wfp._routes.stats["routed"])


# ---------------------------------------------------------------- the same results either way
def _world(e: api.Engine) -> None:
    """Four contexts: A->B one ESP SA (routed), A->C ESP+AH (Python), A->D ChaCha20 with a
    hard limit of 20 packets (routed until the limit expires it), and nothing for others."""
    established(e, B, 0x1001)
    out = [desc(0x2001, A, C, KEY_AB), ah(0x2001, A, C)]
    inb = [desc(0x2002, C, A, KEY_BA), ah(0x2002, C, A)]
    e.create_context(outbound=out, inbound=inb)
    out, inb = (desc(0x3001, A, D, "44" * 36, algorithm="chacha20-poly1305",
                     lifetime={"hard": {"packets": 20}}), desc(0x3002, D, A, "55" * 36,
                                                                algorithm="chacha20-poly1305"))
    e.create_context(outbound=out, inbound=inb)


def _packets(rng: random.Random, n: int, batch: bool) -> list[Any]:
    """``batch``: no packet for D. (Its context expires at its limit; in the middle of a batch
    that changes the classification of the packets after it in the route, which goes in
    order, but not in the Python batch, which classifies the whole batch first: a packet of
    the expired context is then refused with another drop reason. Never sent either way.)"""
    out: list[Any] = []
    for i in range(n):
        kind = rng.randrange(10)
        dst = (B, B, B, C, "192.0.2.99", D)[rng.randrange(5 if batch else 6)]
        pkt = udp4(A, dst, bytes(rng.randrange(0, 300)), sport=5000 + rng.randrange(3),
                   ident=i)
        if kind == 0:  # a first fragment: not cached, classified in Python, dropped by ESP
            pkt = pkt[:6] + b"\x20\x00" + pkt[8:]
        elif kind == 2:  # too big for ESP once protected (TOO_BIG, counted)
            pkt = udp4(A, dst, bytes(65507), ident=i)
        elif kind == 3:  # truncated: the total length is larger than the packet
            pkt = pkt[:30]
        elif kind == 4:  # a header byte mutated (version, IHL, flags, protocol, addresses...)
            at = rng.randrange(24)
            pkt = pkt[:at] + bytes([rng.randrange(256)]) + pkt[at + 1:]
        out.append(pkt)
    return out


def _state(e: api.Engine) -> Any:
    bfe = e.wfp
    sas = {cid: [(sa.seq, sa.packets, sa.bytes, sa.state) for sa in c.outbound_bundle.sas]
           if c.outbound_bundle is not None else c.state
           for cid, c in bfe._contexts.items()}
    return dict(bfe._stats), sas


@needs_native
def test_route_and_python_path_give_identical_results_counters_and_numbers() -> None:
    clocks = Clock(), Clock()
    fast, ref = engine(clocks[0]), engine(clocks[1], python_only=True)
    try:
        for e in (fast, ref):
            _world(e)
        rng = random.Random(11)
        for _ in range(300):
            step = rng.choice((0.0, 0.0, 0.25))
            take = rng.choice((1, 1, 1, 7, 64))
            chunk = _packets(rng, take, take > 1)
            if rng.randrange(15) == 0:  # not bytes: the reference path's conversion
                chunk[0] = bytearray(chunk[0])
            got = []
            for e, clock in zip((fast, ref), clocks, strict=True):
                clock.now += step
                if take == 1:
                    got.append([e.wfp.outbound(chunk[0])])
                else:
                    got.append(e.wfp.outbound_batch(chunk))
            assert got[0] == got[1]
        assert _state(fast) == _state(ref)
        assert clocks[0].calls == clocks[1].calls  # the route calls the clock as Python does
        stats = fast.wfp._routes.stats
        assert stats["routed"] > 500 and ref.wfp._routes is None
        # the limited context reached its limit and expired on both
        assert ctx_of(fast, 3).outbound_bundle is None and ctx_of(ref, 3).outbound_bundle is None
        assert fast.wfp._stats["out-drop:too_big"] > 0
    finally:
        fast.close()
        ref.close()


@needs_native
def test_the_route_is_learned_only_for_one_native_esp_sa() -> None:
    clock = Clock()
    e = engine(clock)
    try:
        _world(e)
        for dst in (B, C, D):
            assert e.outbound(udp4(A, dst)).drop is None
        assert ctx_of(e, 1).route and ctx_of(e, 1).route.alive
        assert ctx_of(e, 2).route is False  # ESP+AH: the Python path, always
        assert ctx_of(e, 3).route and ctx_of(e, 3).route.alive
        before = routed(e)
        assert e.outbound(udp4(A, C)).drop is None
        assert routed(e) == before
        assert e.outbound(udp4(A, B)).drop is None
        assert routed(e) == before + 1
    finally:
        e.close()


@needs_native
def test_python_path_ah_only_and_python_sas_never_take_the_route() -> None:
    old = native.set_default(False)  # SAs built on the Python data path
    try:
        e = engine(Clock())
        established(e)
        for _ in range(3):
            assert e.outbound(udp4(A, B)).drop is None
        assert ctx_of(e, 1).route is False and routed(e) == 0
        e.close()
    finally:
        native.set_default(old)
    e = engine(Clock())
    try:
        e.create_context(outbound=[ah(0x5001, A, B)], inbound=[ah(0x5002, B, A)])
        assert e.outbound(udp4(A, B)).packet[9] == 51
        assert e.outbound(udp4(A, B)).packet[9] == 51
        assert ctx_of(e, 1).route is False and routed(e) == 0
    finally:
        e.close()


# ---------------------------------------------------------------- invalidation
@needs_native
def test_a_filter_added_or_deleted_reroutes_the_next_packet() -> None:
    e = engine(Clock())
    try:
        established(e)
        pkt = udp4(A, B)
        assert e.outbound(pkt).packet[9] == 50
        assert e.outbound(pkt).packet[9] == 50
        assert e.wfp._routes.stats["flows"] == 1
        h = open_engine(e.wfp)
        st, fid = e.wfp.FwpmFilterAdd0(h, plain_filter("outbound", wfp.FWP_ACTION_BLOCK,
                                                       weight=wfp.FWP_VALUE0(type=wfp.FWP_UINT8,
                                                                             uint8=15)), None)
        assert st == 0
        assert e.wfp._routes.stats["flows"] == 0
        assert e.outbound(pkt).drop is DropReason.BLOCKED
        assert e.wfp.FwpmFilterDeleteById0(h, fid) == 0
        assert e.outbound(pkt).packet[9] == 50
        assert esp_of(e.outbound(pkt).packet)[1] == 4  # numbering went on
    finally:
        e.close()


@needs_native
@pytest.mark.parametrize("change", ["expire", "delete", "update"])
def test_a_context_changed_mid_stream(change: str) -> None:
    e = engine(Clock())
    try:
        cid = established(e)
        pkt = udp4(A, B)
        for i in range(1, 4):
            assert esp_of(e.outbound(pkt).packet)[1] == i
        route = ctx_of(e, cid).route
        gen = e.wfp._routes.gen
        if change == "expire":
            e.expire(cid)
            assert not route.alive
            assert e.outbound(pkt).drop is DropReason.NO_POLICY  # F.20: the filter demands IPsec
            assert e.outbound_batch([pkt, pkt])[1].drop is DropReason.NO_POLICY
        elif change == "delete":
            e.delete(cid)  # the context and the API's filters
            assert not route.alive
            assert e.outbound(pkt) == (pkt, None)  # no filter any more: in clear
        else:
            h = open_engine(e.wfp)
            _, snap = e.wfp.IPsecSaContextGetById1(h, cid)
            upd = wfp.IPSEC_SA_CONTEXT1(saContextId=cid, outboundSa=snap.outboundSa)
            assert e.wfp.IPsecSaContextUpdate0(h, wfp.IPSEC_SA_DETAILS_UPDATE_TRAFFIC, upd) == 0
            assert e.wfp._routes.gen > gen and e.wfp._routes.stats["flows"] == 0
            assert route.alive  # same SAs: the route lives on, relearned by the next packet
            assert esp_of(e.outbound(pkt).packet)[1] == 4
            before = routed(e)
            assert esp_of(e.outbound(pkt).packet)[1] == 5
            assert routed(e) == before + 1
    finally:
        e.close()


@needs_native
def test_a_lifetime_running_out_stops_the_very_next_packet() -> None:
    clock = Clock()
    e = engine(clock)
    try:
        established(e, lifetime={"hard": {"seconds": 30}})
        pkt = udp4(A, B)
        for _ in range(3):
            clock.now += 9.99
            assert e.outbound(pkt).drop is None
        assert routed(e) >= 2
        clock.now += 0.04  # 30.01 s after the install
        assert e.outbound(pkt).drop is DropReason.NO_POLICY
    finally:
        e.close()


@needs_native
def test_an_idle_timeout_is_evaluated_on_every_packet() -> None:
    from tests.wfp.helpers import bundle, gcm_sa
    from tests.wfp.test_contexts import created, getspi

    clock = Clock()
    bfe = wfp.Engine(clock=clock)
    try:
        h = open_engine(bfe)
        cid, fin, _ = created(bfe, h)
        _, spi = bfe.IPsecSaContextGetSpi1(h, cid, getspi(fin))
        assert bfe.IPsecSaContextAddInbound1(h, cid, bundle(gcm_sa(spi, bytes(20)),
                                                            idleTimeoutSeconds=10)) == 0
        assert bfe.IPsecSaContextAddOutbound1(h, cid, bundle(gcm_sa(0xC1000001, bytes(20)),
                                                             idleTimeoutSeconds=10)) == 0
        pkt = udp4("192.0.2.1", "198.51.100.2")
        for _ in range(30):
            clock.now += 3
            assert bfe.outbound(pkt).drop is None  # each packet keeps it alive
        assert bfe._routes.stats["routed"] >= 15  # most between two timer checks
        clock.now += 10.5
        assert bfe.outbound(pkt).drop is DropReason.NO_POLICY
        assert bfe.IPsecSaContextGetById1(h, cid)[1].outboundSa is None
    finally:
        bfe.close()


@needs_native
def test_the_injected_clock_is_called_once_per_packet() -> None:
    clock = Clock()
    e = engine(clock)
    try:
        established(e)
        pkt = udp4(A, B)
        e.outbound(pkt)
        calls, before = clock.calls, routed(e)
        for _ in range(50):
            e.wfp.outbound(pkt)
        assert clock.calls == calls + 50 and routed(e) == before + 50
        e.wfp.outbound_batch([pkt] * 10)
        assert clock.calls == calls + 51  # one reading per batch, as the Python batch
    finally:
        e.close()


@needs_native
def test_an_offloaded_context_never_takes_the_route() -> None:
    from ipsecsa.ndis import Miniport
    from tests.wfp.test_offload import establish, host, tdes

    a, b = host(A, B, nic=Miniport(), clock=Clock()), host(B, A, clock=Clock())
    try:
        establish(a, b, tdes)  # 3DES: what the offload v1 NIC takes
        assert a.bfe._contexts[a.ctx].offloaded
        for i in range(5):
            out = a.bfe.outbound(udp4(A, B, ident=i))
            assert out.drop is None and b.bfe.inbound(out.packet).drop is None
        assert a.bfe._routes.stats["routed"] == 0 and a.bfe._contexts[a.ctx].route is False
        assert a.bfe._offload.bytes_offloaded()[0] > 0  # the NIC did the crypto
    finally:
        a.bfe.close()
        b.bfe.close()


@needs_native
def test_a_native_sa_whose_crypto_a_nic_does_leaves_the_route() -> None:
    """A NIC step on the SA (``sa._nic``, as ipsecsa.ndis binds it) sends its packets through
    the Python path, which hands the crypto to the NIC (here a step that declines, so the
    software does it after all; the point is that it was asked)."""
    e = engine(Clock())
    try:
        cid = established(e)
        pkt = udp4(A, B)
        e.outbound(pkt)
        e.outbound(pkt)
        sa = ctx_of(e, cid).outbound_bundle.sas[0]
        asked: list[int] = []

        class Step:
            def send(self, *parts: bytes) -> None:
                asked.append(len(parts))  # declines: None, the software does it

        sa._nic = Step()
        before = routed(e)
        for i in range(3):
            assert esp_of(e.outbound(pkt).packet)[1] == 3 + i
        assert e.outbound_batch([pkt, pkt])[1].drop is None
        assert routed(e) == before and len(asked) == 5
        sa._nic = None
        e.outbound(pkt)
        assert routed(e) == before + 1
    finally:
        e.close()


# ---------------------------------------------------------------- the shared lock, threads
@needs_native
def test_a_packet_waits_while_python_code_holds_the_context_lock() -> None:
    e = engine(Clock())
    try:
        cid = established(e)
        pkt = udp4(A, B)
        e.outbound(pkt)
        e.outbound(pkt)  # learned: the next one would be routed
        lock = ctx_of(e, cid).lock
        assert type(lock).__name__ == "Lock" and type(lock).__module__ == "ipsecsa._fastesp"
        done: list[Any] = []
        lock.acquire()
        t = threading.Thread(target=lambda: done.append(e.wfp.outbound(pkt)))
        t.start()
        time.sleep(0.2)
        assert not done  # blocked on the lock (the GIL released meanwhile: we run)
        lock.release()
        t.join(5)
        assert done and esp_of(done[0].packet)[1] == 3
        with pytest.raises(RuntimeError):
            lock.release()
        assert lock.acquire(timeout=0.01) and not lock.acquire(timeout=0.01)
        lock.release()
    finally:
        e.close()


@needs_native
def test_threads_on_both_paths_never_share_a_sequence_number() -> None:
    e = engine(Clock())
    try:
        established(e)
        pkt = udp4(A, B)
        seqs: list[int] = []
        seqs_lock = threading.Lock()
        h = open_engine(e.wfp)

        def send(n: int, how: str) -> None:
            mine = []
            for i in range(n):
                if how == "batch":
                    results = e.wfp.outbound_batch([pkt] * 8)
                elif how == "python":  # bytearray: the reference path, same lock
                    results = [e.wfp.outbound(bytearray(pkt))]
                else:
                    results = [e.wfp.outbound(pkt)]
                mine += [esp_of(r.packet)[1] for r in results]
            with seqs_lock:
                seqs.extend(mine)

        def churn() -> None:  # invalidations all the while
            for _ in range(40):
                st, fid = e.wfp.FwpmFilterAdd0(h, plain_filter(
                    "outbound", wfp.FWP_ACTION_PERMIT,
                    [wfp.FWPM_FILTER_CONDITION0(
                        fieldKey=wfp.FWPM_CONDITION_IP_REMOTE_PORT, matchType=wfp.FWP_MATCH_EQUAL,
                        conditionValue=wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_UINT16,
                                                                uint16=9))]), None)
                assert st == 0
                assert e.wfp.FwpmFilterDeleteById0(h, fid) == 0

        threads = [threading.Thread(target=send, args=(400, how))
                   for how in ("single", "single", "batch", "python")]
        threads.append(threading.Thread(target=churn))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        total = 400 * 3 + 400 * 8
        assert sorted(seqs) == list(range(1, total + 1))
        assert routed(e) > 0
    finally:
        e.close()


# ---------------------------------------------------------------- sequence-number reservation
def test_an_in_memory_engine_reserves_nothing() -> None:
    e = api.Engine()
    try:
        cid = established(e)
        e.outbound(udp4(A, B))
        sa = ctx_of(e, cid).outbound_bundle.sas[0]
        assert sa.seq_limit_hook is None and sa.seq_limit == 2**32 - 1
    finally:
        e.close()


@pytest.mark.parametrize("python_only", [False, True])
def test_a_durable_engine_reserves_synced_blocks_through_the_sa(tmp_path: Path,
                                                                python_only: bool) -> None:
    db = tmp_path / "seq.db"
    e = engine(Clock(), python_only=python_only, database=db)
    try:
        cid = established(e)
        sa = ctx_of(e, cid).outbound_bundle.sas[0]
        assert sa.seq_limit_hook is not None and sa.seq_limit == 0  # nothing reserved yet
        pkt = udp4(A, B)
        e.outbound(pkt)
        assert sa.seq_limit == SEQ_BLOCK
        stored = e.wfp._store.sa_state(cid, "out")[0]
        assert stored[0] == SEQ_BLOCK  # on disk before any number of the block was used
        results = e.outbound_batch([pkt] * (SEQ_BLOCK + 10))
        assert [esp_of(r.packet)[1] for r in results] == list(range(2, SEQ_BLOCK + 12))
        # the second block: as large, or twice (the first went in under half a second)
        assert sa.seq_limit in (2 * SEQ_BLOCK, 3 * SEQ_BLOCK)
        assert e.wfp._store.sa_state(cid, "out")[0][0] == sa.seq_limit
    finally:
        e.close()
    again = api.Engine(db)
    try:
        assert esp_of(again.outbound(pkt).packet)[1] > SEQ_BLOCK + 11  # never a number again
        if native.available():  # a reopened context (SAs built at first use) is routed too
            for _ in range(3):
                assert again.outbound(pkt).drop is None
            assert routed(again) >= 1
    finally:
        again.close()


def test_the_reserved_block_follows_the_sending_rate(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A fast sender's blocks double (fewer fsyncs) up to SEQ_BLOCK_MAX; a slow one's halve
    back to SEQ_BLOCK (fewer numbers skipped at a crash). Real time, faked here."""
    e = engine(Clock(), database=tmp_path / "rate.db")
    try:
        cid = established(e)
        sa = ctx_of(e, cid).outbound_bundle.sas[0]
        hook = sa.seq_limit_hook
        t = [50.0]
        monkeypatch.setattr(wfp_engine.time, "monotonic", lambda: t[0])
        blocks = []

        def reserve(after: float) -> None:
            t[0] += after
            before = sa._seq = sa.seq_limit  # the block used up (as if sent)
            hook(sa, sa.seq + 1)
            blocks.append(sa.seq_limit - before)
            assert e.wfp._store.sa_state(cid, "out")[0][0] == sa.seq_limit

        reserve(0)
        for _ in range(8):
            reserve(SEQ_BLOCK_FAST_SECONDS / 2)
        assert blocks[0] == SEQ_BLOCK
        assert blocks[1:7] == [SEQ_BLOCK << k for k in range(1, 7)]
        assert max(blocks) == SEQ_BLOCK_MAX == blocks[-1]
        reserve(1.0)  # neither fast nor slow: kept
        assert blocks[-1] == SEQ_BLOCK_MAX
        for _ in range(8):
            reserve(SEQ_BLOCK_SLOW_SECONDS * 2)
        assert blocks[-8:] == [SEQ_BLOCK_MAX >> k for k in range(1, 6)] + [SEQ_BLOCK] * 3
    finally:
        e.close()


def test_a_control_write_during_a_reservation_never_lowers_it(tmp_path: Path) -> None:
    """The reservation's synced write and the SAs' new limit are two steps; a control call
    persisting the context in between (another thread: it does not take the context's lock)
    must write the new reservation, never the old limit over it."""
    e = engine(Clock(), database=tmp_path / "race.db")
    try:
        cid = established(e)
        ctx = ctx_of(e, cid)
        store = e.wfp._store
        real = store.put_sa_state

        def put_then_persist(rows: Any, sync: bool = False) -> None:
            real(rows, sync)
            e.wfp._persist_ctx(ctx)  # e.g. an Update0 landing right after the sync

        pkt = udp4(A, B)
        e.outbound_batch([pkt] * SEQ_BLOCK)  # the first block, used up
        sa = ctx.outbound_bundle.sas[0]
        assert sa.seq == sa.seq_limit == SEQ_BLOCK
        store.put_sa_state = put_then_persist
        e.outbound(pkt)  # reserves the second block
        store.put_sa_state = real
        assert sa.seq_limit > SEQ_BLOCK
        assert store.sa_state(cid, "out")[0][0] == sa.seq_limit
    finally:
        e.close()

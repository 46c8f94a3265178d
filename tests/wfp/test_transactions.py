"""Transactions (reference B.4, B.5, C.3 "Txn", F.9, F.19, F.21): begin/commit/abort, read-only
transactions, all-or-nothing with failures in the middle, ids never reused, the SA-context calls
that refuse an explicit transaction, the transaction lock (real-time wait, FWP_E_TIMEOUT), the
one-hour limit (injected clock, FWP_E_TXN_ABORTED), and traffic never seeing half a transaction.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from ipsecsa import wfp
from ipsecsa.errors import DropReason

from .helpers import (
    A4,
    B4,
    add_filter,
    all_contexts,
    all_filters,
    bundle,
    create_context,
    gcm_sa,
    ipsec_pair,
    open_engine,
    plain_filter,
    traffic,
    udp4,
)

OK = wfp.ERROR_SUCCESS
RO = wfp.FWPM_TXN_READ_ONLY
BLOCK, PERMIT = wfp.FWP_ACTION_BLOCK, wfp.FWP_ACTION_PERMIT


class FakeClock:
    """The engine's injected clock (seconds); moved by hand."""

    def __init__(self) -> None:
        self.now = [1000.0]

    def __call__(self) -> float:
        return self.now[0]


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def bfe(clock):
    engine = wfp.Engine(clock=clock)
    yield engine
    engine.close()


@pytest.fixture
def h(bfe):
    return open_engine(bfe)


def session(wait_ms: int = 0, **kw: Any) -> wfp.FWPM_SESSION0:
    return wfp.FWPM_SESSION0(displayData=wfp.FWPM_DISPLAY_DATA0(name="txn test"),
                             txnWaitTimeoutInMSec=wait_ms, **kw)


def block(**kw: Any) -> wfp.FWPM_FILTER0:
    return plain_filter("outbound", BLOCK, **kw)


def sent(bfe: wfp.Engine) -> Any:
    return bfe.outbound(udp4(A4, B4, b"payload")).drop


# =================================================================== B.5 basics
def test_begin_commit_abort_statuses(bfe, h):
    assert bfe.FwpmTransactionCommit0(h) == wfp.FWP_E_NO_TXN_IN_PROGRESS
    assert bfe.FwpmTransactionAbort0(h) == wfp.FWP_E_NO_TXN_IN_PROGRESS
    assert bfe.FwpmTransactionBegin0(h, 0) == OK
    assert bfe.FwpmTransactionBegin0(h, 0) == wfp.FWP_E_TXN_IN_PROGRESS
    assert bfe.FwpmTransactionBegin0(h, RO) == wfp.FWP_E_TXN_IN_PROGRESS
    assert bfe.FwpmTransactionCommit0(h) == OK
    assert bfe.FwpmTransactionCommit0(h) == wfp.FWP_E_NO_TXN_IN_PROGRESS
    assert bfe.FwpmTransactionBegin0(h, RO) == OK
    assert bfe.FwpmTransactionBegin0(h, RO) == wfp.FWP_E_TXN_IN_PROGRESS
    assert bfe.FwpmTransactionAbort0(h) == OK
    assert bfe.FwpmTransactionAbort0(h) == wfp.FWP_E_NO_TXN_IN_PROGRESS


@pytest.mark.parametrize("flags,status", [
    (0x2, wfp.FWP_E_INVALID_FLAGS), (0x80000001, wfp.FWP_E_INVALID_FLAGS),
    (-1, wfp.FWP_E_OUT_OF_BOUNDS), (None, wfp.FWP_E_INVALID_PARAMETER),
])
def test_begin_bad_flags(bfe, h, flags, status):
    assert bfe.FwpmTransactionBegin0(h, flags) == status
    # nothing began
    assert bfe.FwpmTransactionCommit0(h) == wfp.FWP_E_NO_TXN_IN_PROGRESS


def test_commit_keeps_changes(bfe, h):
    old = add_filter(bfe, h, block())
    assert bfe.FwpmTransactionBegin0(h, 0) == OK
    new = add_filter(bfe, h, block())
    assert bfe.FwpmFilterDeleteById0(h, old) == OK
    # the session reads what it wrote
    assert bfe.FwpmFilterGetById0(h, new)[0] == OK
    assert bfe.FwpmFilterGetById0(h, old) == (wfp.FWP_E_FILTER_NOT_FOUND, None)
    assert [f.filterId for f in all_filters(bfe, h)] == [new]
    assert bfe.FwpmTransactionCommit0(h) == OK
    assert [f.filterId for f in all_filters(bfe, h)] == [new]


def test_read_only_transaction(bfe, h):
    fid = add_filter(bfe, h, block())
    before = all_filters(bfe, h)
    assert bfe.FwpmTransactionBegin0(h, RO) == OK
    assert bfe.FwpmFilterAdd0(h, block(), None) == (wfp.FWP_E_INCOMPATIBLE_TXN, None)
    assert bfe.FwpmFilterDeleteById0(h, fid) == wfp.FWP_E_INCOMPATIBLE_TXN
    assert bfe.FwpmFilterDeleteByKey0(h, before[0].filterKey) == wfp.FWP_E_INCOMPATIBLE_TXN
    # INCOMPATIBLE_TXN comes before the argument checks
    assert bfe.FwpmFilterAdd0(h, None, None) == (wfp.FWP_E_INCOMPATIBLE_TXN, None)
    # reads are fine
    assert bfe.FwpmFilterGetById0(h, fid)[0] == OK
    assert all_filters(bfe, h) == before
    assert bfe.FwpmTransactionCommit0(h) == OK
    assert all_filters(bfe, h) == before
    # and the id was not consumed
    assert add_filter(bfe, h, block()) == fid + 1


# =================================================================== abort, failure in the middle
def test_abort_undoes_adds_and_deletes(bfe, h):
    k1, k2 = uuid.uuid4(), uuid.uuid4()
    f1 = add_filter(bfe, h, block(filterKey=k1))
    f2 = add_filter(bfe, h, plain_filter("inbound", PERMIT, filterKey=k2))
    before = all_filters(bfe, h)
    assert bfe.FwpmTransactionBegin0(h, 0) == OK
    added = add_filter(bfe, h, block())
    assert bfe.FwpmFilterDeleteById0(h, f1) == OK
    assert bfe.FwpmFilterDeleteByKey0(h, k2) == OK
    # a key deleted inside the transaction may be reused inside it
    reused = add_filter(bfe, h, block(filterKey=k1))
    assert bfe.FwpmTransactionAbort0(h) == OK
    assert all_filters(bfe, h) == before  # same ids, same keys, same everything
    assert bfe.FwpmFilterGetByKey0(h, k1) == (OK, before[0])
    assert bfe.FwpmFilterGetById0(h, f2) == (OK, before[1])
    for fid in (added, reused):
        assert bfe.FwpmFilterGetById0(h, fid) == (wfp.FWP_E_FILTER_NOT_FOUND, None)
    # the restored filter still classifies, and can be deleted normally
    assert sent(bfe) == DropReason.BLOCKED
    assert bfe.FwpmFilterDeleteByKey0(h, k1) == OK
    assert sent(bfe) is None


def test_failure_in_the_middle_then_commit(bfe, h):
    assert bfe.FwpmTransactionBegin0(h, 0) == OK
    good1 = add_filter(bfe, h, block())
    bad = block(flags=wfp.FWPM_FILTER_FLAG_DISABLED)
    assert bfe.FwpmFilterAdd0(h, bad, None) == (wfp.FWP_E_INVALID_FLAGS, None)
    assert bfe.FwpmFilterDeleteById0(h, 0x99999) == wfp.FWP_E_FILTER_NOT_FOUND
    good2 = add_filter(bfe, h, block())
    assert good2 == good1 + 1  # the failure consumed no id
    assert bfe.FwpmTransactionCommit0(h) == OK  # a failing call does not doom it (B.4)
    assert [f.filterId for f in all_filters(bfe, h)] == [good1, good2]


def test_failure_in_the_middle_then_abort(bfe, h):
    assert bfe.FwpmTransactionBegin0(h, 0) == OK
    add_filter(bfe, h, block())
    assert bfe.FwpmFilterAdd0(h, None, None) == (wfp.FWP_E_NULL_POINTER, None)
    add_filter(bfe, h, block())
    assert bfe.FwpmTransactionAbort0(h) == OK
    assert all_filters(bfe, h) == []


def test_ids_of_an_aborted_transaction_are_not_reused(bfe, h):
    first = add_filter(bfe, h, block())
    assert bfe.FwpmTransactionBegin0(h, 0) == OK
    burnt = [add_filter(bfe, h, block()) for _ in range(3)]
    assert burnt == [first + 1, first + 2, first + 3]
    assert bfe.FwpmTransactionAbort0(h) == OK
    assert add_filter(bfe, h, block()) == first + 4  # F.19/F.21


def test_notifications_only_for_committed_changes(bfe, h):
    seen: list[tuple[int, int]] = []
    assert bfe.FwpmFilterSubscribeChanges0(h, wfp.FWPM_FILTER_SUBSCRIPTION0(),
                                           lambda c, ch: seen.append((ch.changeType,
                                                                      ch.filterId)),
                                           None)[0] == OK
    assert bfe.FwpmTransactionBegin0(h, 0) == OK
    aborted = add_filter(bfe, h, block())
    assert bfe.FwpmTransactionAbort0(h) == OK
    assert bfe.FwpmTransactionBegin0(h, 0) == OK
    kept = add_filter(bfe, h, block())
    bfe.flush_notifications()
    assert seen == []  # nothing before commit
    assert bfe.FwpmTransactionCommit0(h) == OK
    bfe.flush_notifications()
    assert seen == [(wfp.FWPM_CHANGE_ADD, kept)]
    assert aborted != kept


# =================================================================== traffic and transactions
def test_traffic_does_not_see_an_uncommitted_add(bfe, h):
    assert bfe.FwpmTransactionBegin0(h, 0) == OK
    add_filter(bfe, h, block())
    assert sent(bfe) is None  # passes before commit
    assert bfe.FwpmTransactionCommit0(h) == OK
    assert sent(bfe) == DropReason.BLOCKED


def test_traffic_does_not_see_an_uncommitted_delete(bfe, h):
    fid = add_filter(bfe, h, block())
    assert bfe.FwpmTransactionBegin0(h, 0) == OK
    assert bfe.FwpmFilterDeleteById0(h, fid) == OK
    assert sent(bfe) == DropReason.BLOCKED  # still enforced until commit
    assert bfe.FwpmTransactionCommit0(h) == OK
    assert sent(bfe) is None


def test_traffic_never_sees_an_aborted_add(bfe, h):
    assert bfe.FwpmTransactionBegin0(h, 0) == OK
    add_filter(bfe, h, block())
    assert bfe.FwpmTransactionAbort0(h) == OK
    assert sent(bfe) is None


# =================================================================== SA-context calls (C.3, F.9)
def _ctx_calls(bfe, h, ctx, fin):
    getspi = wfp.IPSEC_GETSPI1(inboundIpsecTraffic=traffic(A4, B4, fin),
                               ipVersion=wfp.FWP_IP_VERSION_V4)
    key = bytes(range(20))
    return {
        "Create1": lambda: bfe.IPsecSaContextCreate1(h, traffic(A4, B4, fin + 1), None)[0],
        "Create0": lambda: bfe.IPsecSaContextCreate0(h, None)[0],
        "GetSpi1": lambda: bfe.IPsecSaContextGetSpi1(h, ctx, getspi)[0],
        "SetSpi0": lambda: bfe.IPsecSaContextSetSpi0(h, ctx, getspi, 0xC0000123),
        "AddInbound1": lambda: bfe.IPsecSaContextAddInbound1(h, ctx, bundle(gcm_sa(1, key))),
        "AddOutbound1": lambda: bfe.IPsecSaContextAddOutbound1(h, ctx, bundle(gcm_sa(1, key))),
        "Update0": lambda: bfe.IPsecSaContextUpdate0(
            h, 0, wfp.IPSEC_SA_CONTEXT1(saContextId=ctx)),
        "Expire0": lambda: bfe.IPsecSaContextExpire0(h, ctx),
        "DeleteById0": lambda: bfe.IPsecSaContextDeleteById0(h, ctx),
        "Subscribe0": lambda: bfe.IPsecSaContextSubscribe0(
            h, wfp.IPSEC_SA_CONTEXT_SUBSCRIPTION0(), lambda c, ch: None, None)[0],
        "Unsubscribe0": lambda: bfe.IPsecSaContextUnsubscribe0(h, 12345),
        "GetStatistics0": lambda: bfe.IPsecGetStatistics0(h)[0],
        "GetStatistics1": lambda: bfe.IPsecGetStatistics1(h)[0],
    }


@pytest.mark.parametrize("flags", [0, RO])
def test_sa_context_calls_refuse_a_transaction(bfe, h, flags):
    fin, fout = ipsec_pair(bfe, h)
    ctx = create_context(bfe, h, fout)
    before = all_contexts(bfe, h)
    assert bfe.FwpmTransactionBegin0(h, flags) == OK
    for name, call in _ctx_calls(bfe, h, ctx, fin).items():
        assert call() == wfp.FWP_E_TXN_IN_PROGRESS, name
    # allowed in any transaction (F.9): GetById and enumeration
    st, got = bfe.IPsecSaContextGetById1(h, ctx)
    assert st == OK and got.saContextId == ctx
    assert bfe.IPsecSaContextGetById0(h, ctx)[0] == OK
    assert all_contexts(bfe, h) == before
    st, eh = bfe.IPsecSaCreateEnumHandle0(h, None)
    assert st == OK
    assert bfe.IPsecSaEnum1(h, eh, 10) == (OK, [], 0)
    assert bfe.IPsecSaContextSubscriptionsGet0(h) == (OK, [], 0)
    assert bfe.FwpmTransactionCommit0(h) == OK
    # nothing changed: still CREATED, GetSpi works now
    assert all_contexts(bfe, h) == before
    calls = _ctx_calls(bfe, h, ctx, fin)
    assert calls["GetSpi1"]() == OK
    assert calls["DeleteById0"]() == OK


# =================================================================== the lock (B.4)
def test_lock_wait_times_out(bfe, h):
    assert bfe.FwpmTransactionBegin0(h, 0) == OK
    mine = add_filter(bfe, h, block())
    b = open_engine(bfe, session=session(200))
    for call in (lambda: bfe.FwpmFilterAdd0(b, block(), None)[0],
                 lambda: bfe.FwpmTransactionBegin0(b, 0),
                 lambda: bfe.FwpmTransactionBegin0(b, RO),
                 lambda: bfe.FwpmFilterGetById0(b, mine)[0],
                 lambda: bfe.FwpmFilterDeleteById0(b, mine)):
        t0 = time.monotonic()
        assert call() == wfp.FWP_E_TIMEOUT
        elapsed = time.monotonic() - t0
        assert 0.19 <= elapsed < 2.0, elapsed
    # B has no transaction after its Begin timed out
    assert bfe.FwpmTransactionCommit0(b) == wfp.FWP_E_NO_TXN_IN_PROGRESS
    assert bfe.FwpmTransactionCommit0(h) == OK
    assert [f.filterId for f in all_filters(bfe, b)] == [mine]


def test_lock_wait_succeeds_once_the_owner_commits(bfe, h):
    assert bfe.FwpmTransactionBegin0(h, 0) == OK
    add_filter(bfe, h, block())
    b = open_engine(bfe, session=session(5000))
    out: dict[str, Any] = {}

    def worker() -> None:
        t0 = time.monotonic()
        out["result"] = bfe.FwpmFilterAdd0(b, plain_filter("inbound", PERMIT), None)
        out["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=worker)
    t.start()
    time.sleep(0.2)
    assert "result" not in out  # still waiting for the lock
    assert bfe.FwpmTransactionCommit0(h) == OK
    t.join(5)
    assert out["result"][0] == OK
    assert 0.15 <= out["elapsed"] < 2.0
    assert len(all_filters(bfe, h)) == 2


def test_lock_wait_succeeds_once_the_owner_aborts(bfe, h):
    assert bfe.FwpmTransactionBegin0(h, RO) == OK  # read-only transactions hold it too
    b = open_engine(bfe, session=session(5000))
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.setdefault("st", bfe.FwpmTransactionBegin0(b, 0)))
    t.start()
    time.sleep(0.1)
    assert "st" not in out
    assert bfe.FwpmTransactionAbort0(h) == OK
    t.join(5)
    assert out["st"] == OK
    assert bfe.FwpmTransactionCommit0(b) == OK


def test_implicit_calls_of_one_session_do_not_block_each_other(bfe, h):
    # the owner's own calls inside its transaction never wait
    assert bfe.FwpmTransactionBegin0(h, 0) == OK
    t0 = time.monotonic()
    for _ in range(20):
        add_filter(bfe, h, block())
    assert time.monotonic() - t0 < 2.0
    assert bfe.FwpmTransactionCommit0(h) == OK


# =================================================================== the hour limit (B.4)
def test_transaction_past_an_hour_is_aborted(bfe, h, clock):
    keep = add_filter(bfe, h, block())
    assert bfe.FwpmTransactionBegin0(h, 0) == OK
    add_filter(bfe, h, block())
    assert bfe.FwpmFilterDeleteById0(h, keep) == OK
    clock.now[0] += 3600  # exactly one hour: still allowed
    extra = add_filter(bfe, h, block())
    clock.now[0] += 0.5
    assert bfe.FwpmFilterGetById0(h, keep) == (wfp.FWP_E_TXN_ABORTED, None)
    # the transaction's changes are undone, and it is gone
    assert [f.filterId for f in all_filters(bfe, h)] == [keep]
    assert bfe.FwpmFilterGetById0(h, extra) == (wfp.FWP_E_FILTER_NOT_FOUND, None)
    assert bfe.FwpmTransactionCommit0(h) == wfp.FWP_E_NO_TXN_IN_PROGRESS
    assert sent(bfe) == DropReason.BLOCKED
    # the session works normally afterwards
    assert bfe.FwpmTransactionBegin0(h, 0) == OK
    assert bfe.FwpmTransactionCommit0(h) == OK


@pytest.mark.parametrize("call", ["commit", "abort", "begin", "add"])
def test_the_next_call_of_any_kind_reports_the_abort(bfe, h, clock, call):
    assert bfe.FwpmTransactionBegin0(h, 0) == OK
    fid = add_filter(bfe, h, block())
    clock.now[0] += 3601
    calls = {
        "commit": lambda: bfe.FwpmTransactionCommit0(h),
        "abort": lambda: bfe.FwpmTransactionAbort0(h),
        "begin": lambda: bfe.FwpmTransactionBegin0(h, 0),
        "add": lambda: bfe.FwpmFilterAdd0(h, block(), None)[0],
    }
    assert calls[call]() == wfp.FWP_E_TXN_ABORTED
    assert bfe.FwpmFilterGetById0(h, fid) == (wfp.FWP_E_FILTER_NOT_FOUND, None)
    assert all_filters(bfe, h) == []


def test_other_session_gets_the_lock_past_the_hour(bfe, h, clock):
    assert bfe.FwpmTransactionBegin0(h, 0) == OK
    owned = add_filter(bfe, h, block())
    b = open_engine(bfe, session=session(5000))
    out: dict[str, Any] = {}

    def worker() -> None:
        t0 = time.monotonic()
        out["result"] = bfe.FwpmFilterAdd0(b, plain_filter("inbound", PERMIT), None)
        out["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=worker)
    t.start()
    time.sleep(0.15)
    assert "result" not in out
    clock.now[0] += 3601  # the owner outlives the limit while B waits
    t.join(5)
    st, fid = out["result"]
    assert st == OK and out["elapsed"] < 2.0
    assert [f.filterId for f in all_filters(bfe, b)] == [fid]  # the owner's add is undone
    assert fid == owned + 1
    assert bfe.FwpmFilterAdd0(h, block(), None) == (wfp.FWP_E_TXN_ABORTED, None)
    assert bfe.FwpmFilterAdd0(h, block(), None)[0] == OK


def test_other_session_with_a_short_wait_is_not_blocked_by_an_old_transaction(bfe, h, clock):
    assert bfe.FwpmTransactionBegin0(h, 0) == OK
    clock.now[0] += 4000
    b = open_engine(bfe, session=session(200))
    t0 = time.monotonic()
    assert bfe.FwpmTransactionBegin0(b, 0) == OK
    assert time.monotonic() - t0 < 0.5
    assert bfe.FwpmTransactionCommit0(b) == OK
    assert bfe.FwpmTransactionCommit0(h) == wfp.FWP_E_TXN_ABORTED


# =================================================================== many threads
def test_concurrent_sessions_and_transactions(bfe, h):
    """Four sessions add filters from four threads, half of them in explicit transactions
    of five adds, while packets flow: every id is unique, a transaction's ids are contiguous
    (it holds the lock throughout), and every filter is there at the end."""
    results: dict[int, list[list[int]]] = {}
    errors: list[Any] = []

    def worker(n: int) -> None:
        s = open_engine(bfe, session=session(10_000))
        groups = []
        try:
            for i in range(6):
                if i % 2:
                    assert bfe.FwpmTransactionBegin0(s, 0) == OK
                    ids = [add_filter(bfe, s, plain_filter("inbound", PERMIT)) for _ in range(5)]
                    assert bfe.FwpmTransactionCommit0(s) == OK
                else:
                    ids = [add_filter(bfe, s, plain_filter("inbound", PERMIT))]
                groups.append(ids)
                bfe.outbound(udp4(A4, B4, b"x"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        results[n] = groups

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    every = [fid for groups in results.values() for ids in groups for fid in ids]
    assert len(every) == len(set(every)) == 4 * (3 * 5 + 3)
    assert sorted(every) == list(range(0x10000, 0x10000 + len(every)))
    for groups in results.values():
        for ids in groups:
            assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert [f.filterId for f in all_filters(bfe, h)] == sorted(every)

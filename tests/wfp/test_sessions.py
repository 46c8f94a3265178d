"""Engine sessions (reference B.1–B.3, B.6, B.7, C.7.1, F.8, F.15, F.16): opening and closing,
session keys and flags, invalid handles, a stopped engine, dynamic sessions and what dies with
them, FwpmFreeMemory0. Statuses are the Windows values the reference names."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from ipsecsa import wfp
from ipsecsa.errors import DropReason

from .helpers import (
    A4,
    B4,
    add_filter,
    addr_conditions,
    all_contexts,
    all_filters,
    create_context,
    ipsec_filter,
    ipsec_pair,
    open_engine,
    plain_filter,
    traffic,
    udp4,
)

OK = wfp.ERROR_SUCCESS
DYN = wfp.FWPM_SESSION_FLAG_DYNAMIC


@pytest.fixture
def bfe():
    engine = wfp.Engine()
    yield engine
    engine.close()


def session(**kw: Any) -> wfp.FWPM_SESSION0:
    return wfp.FWPM_SESSION0(displayData=wfp.FWPM_DISPLAY_DATA0(name="test session"), **kw)


def key_of(bfe: wfp.Engine, h: int) -> uuid.UUID:
    """The session key BFE recorded, seen through a subscription the session makes (the
    subscription structure carries its session's key)."""
    st, sub = bfe.FwpmFilterSubscribeChanges0(
        h, wfp.FWPM_FILTER_SUBSCRIPTION0(flags=wfp.FWPM_SUBSCRIPTION_FLAG_NOTIFY_ON_ADD),
        lambda c, ch: None, None)
    assert st == OK
    st, entries, _ = bfe.FwpmFilterSubscriptionsGet0(h)
    assert bfe.FwpmFilterUnsubscribeChanges0(h, sub) == OK
    return next(e.sessionKey for e in entries)


# =================================================================== B.1 FwpmEngineOpen0
def test_open_with_defaults_and_both_authn_services(bfe):
    for service in (wfp.RPC_C_AUTHN_WINNT, wfp.RPC_C_AUTHN_DEFAULT):
        st, h = bfe.FwpmEngineOpen0(None, service, None, None)
        assert st == OK and isinstance(h, int) and h
        st, h2 = bfe.FwpmEngineOpen0(None, service, None, session())
        assert st == OK and h2 != h
    assert wfp.RPC_C_AUTHN_WINNT == 10 and wfp.RPC_C_AUTHN_DEFAULT == 0xFFFFFFFF


@pytest.mark.parametrize("server", ["", "localhost", "\\\\HOST"])
def test_server_name_must_be_null(bfe, server):
    assert bfe.FwpmEngineOpen0(server, wfp.RPC_C_AUTHN_WINNT, None, None) == \
        (wfp.FWP_E_INVALID_PARAMETER, None)


@pytest.mark.parametrize("service", [0, 9, 16, 0xFFFFFFFE, None, "10"])
def test_authn_service_values(bfe, service):
    assert bfe.FwpmEngineOpen0(None, service, None, None) == (wfp.FWP_E_INVALID_PARAMETER, None)


@pytest.mark.parametrize("kw,status", [
    ({"flags": 0x2}, wfp.FWP_E_INVALID_FLAGS),
    ({"flags": 0x80000000}, wfp.FWP_E_INVALID_FLAGS),
    ({"flags": -1}, wfp.FWP_E_OUT_OF_BOUNDS),
    ({"txnWaitTimeoutInMSec": -1}, wfp.FWP_E_OUT_OF_BOUNDS),
    ({"txnWaitTimeoutInMSec": 1 << 32}, wfp.FWP_E_OUT_OF_BOUNDS),
    ({"sessionKey": "not a guid"}, wfp.FWP_E_INVALID_PARAMETER),
])
def test_bad_session_structures(bfe, kw, status):
    assert bfe.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, None, session(**kw)) == \
        (status, None)
    assert bfe.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, None, {"flags": 0}) == \
        (wfp.FWP_E_INVALID_PARAMETER, None)


def test_session_flags_accepted(bfe):
    for flags in (0, DYN, wfp.FWPM_SESSION_FLAG_RESERVED, DYN | wfp.FWPM_SESSION_FLAG_RESERVED):
        st, h = bfe.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, None, session(flags=flags))
        assert st == OK, flags
        assert bfe.FwpmEngineClose0(h) == OK


def test_duplicate_session_key(bfe):
    key = uuid.uuid4()
    h = open_engine(bfe, session=session(sessionKey=key))
    assert key_of(bfe, h) == key
    assert bfe.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, None, session(sessionKey=key)) == \
        (wfp.FWP_E_ALREADY_EXISTS, None)
    # also for a dynamic session with that key
    assert bfe.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, None,
                               session(sessionKey=key, flags=DYN)) == \
        (wfp.FWP_E_ALREADY_EXISTS, None)
    # the first session is untouched, and the key is free again once it is closed
    assert bfe.FwpmFilterAdd0(h, plain_filter("outbound", wfp.FWP_ACTION_BLOCK), None)[0] == OK
    assert bfe.FwpmEngineClose0(h) == OK
    h2 = open_engine(bfe, session=session(sessionKey=key))
    assert key_of(bfe, h2) == key


def test_generated_session_keys(bfe):
    h1 = open_engine(bfe)
    h2 = open_engine(bfe, session=session())  # sessionKey zero: BFE generates one (B.2)
    k1, k2 = key_of(bfe, h1), key_of(bfe, h2)
    assert wfp.GUID_NULL not in (k1, k2)
    assert k1 != k2
    # a generated key is a key like any other: it is taken
    assert bfe.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, None, session(sessionKey=k1)) == \
        (wfp.FWP_E_ALREADY_EXISTS, None)


def test_caller_session_structure_is_not_changed(bfe):
    given = session(flags=DYN, txnWaitTimeoutInMSec=100)
    copy = wfp.types.clone(given)
    open_engine(bfe, session=given)
    assert given == copy


# =================================================================== handles, close
def test_close_and_invalid_handles(bfe):
    h = open_engine(bfe)
    other = open_engine(bfe)
    assert bfe.FwpmEngineClose0(h) == OK
    assert bfe.FwpmEngineClose0(h) == wfp.ERROR_INVALID_HANDLE
    for bad in (h, 0, None, -1, "h", 10**30, 1.5):
        assert bfe.FwpmEngineClose0(bad) == wfp.ERROR_INVALID_HANDLE
        assert bfe.FwpmTransactionBegin0(bad, 0) == wfp.ERROR_INVALID_HANDLE
        assert bfe.FwpmTransactionCommit0(bad) == wfp.ERROR_INVALID_HANDLE
        assert bfe.FwpmTransactionAbort0(bad) == wfp.ERROR_INVALID_HANDLE
        assert bfe.FwpmFilterAdd0(bad, plain_filter("outbound", wfp.FWP_ACTION_BLOCK),
                                  None) == (wfp.ERROR_INVALID_HANDLE, None)
        assert bfe.FwpmFilterDeleteById0(bad, 0x10000) == wfp.ERROR_INVALID_HANDLE
        assert bfe.FwpmFilterGetById0(bad, 0x10000) == (wfp.ERROR_INVALID_HANDLE, None)
        assert bfe.FwpmFilterCreateEnumHandle0(bad, None) == (wfp.ERROR_INVALID_HANDLE, None)
        assert bfe.IPsecSaContextCreate1(bad, traffic(A4, B4, 1), None) == \
            (wfp.ERROR_INVALID_HANDLE, None, None)
        assert bfe.IPsecSaContextGetById1(bad, 1) == (wfp.ERROR_INVALID_HANDLE, None)
        assert bfe.IPsecGetStatistics1(bad) == (wfp.ERROR_INVALID_HANDLE, None)
    # the other session still works
    assert all_filters(bfe, other) == []


def test_closing_a_session_aborts_its_transaction(bfe):
    h = open_engine(bfe)
    other = open_engine(bfe)
    keep = add_filter(bfe, h, plain_filter("outbound", wfp.FWP_ACTION_PERMIT))
    assert bfe.FwpmTransactionBegin0(h, 0) == OK
    add_filter(bfe, h, plain_filter("outbound", wfp.FWP_ACTION_BLOCK))
    assert bfe.FwpmFilterDeleteById0(h, keep) == OK
    assert bfe.FwpmEngineClose0(h) == OK
    assert [f.filterId for f in all_filters(bfe, other)] == [keep]
    # and released the transaction lock
    assert bfe.FwpmTransactionBegin0(other, 0) == OK
    assert bfe.FwpmTransactionCommit0(other) == OK


def test_static_objects_survive_their_session(bfe):
    h = open_engine(bfe)
    fin, fout = ipsec_pair(bfe, h)
    ctx = create_context(bfe, h, fout)
    assert bfe.FwpmEngineClose0(h) == OK
    other = open_engine(bfe)
    assert [f.filterId for f in all_filters(bfe, other)] == [fin, fout]
    st, got = bfe.IPsecSaContextGetById1(other, ctx)
    assert st == OK and got.saContextId == ctx  # F.8: contexts are never dynamic


# =================================================================== a stopped engine
def test_stopped_engine_answers_ept_s_not_registered(bfe):
    h = open_engine(bfe)
    fid = add_filter(bfe, h, plain_filter("outbound", wfp.FWP_ACTION_BLOCK))
    bfe.close()
    bfe.close()  # idempotent
    e = wfp.EPT_S_NOT_REGISTERED
    assert e == 0x6D9
    assert bfe.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, None, None) == (e, None)
    assert bfe.FwpmEngineClose0(h) == e
    assert bfe.FwpmTransactionBegin0(h, 0) == e
    assert bfe.FwpmFilterAdd0(h, plain_filter("outbound", wfp.FWP_ACTION_BLOCK), None) == \
        (e, None)
    assert bfe.FwpmFilterGetById0(h, fid) == (e, None)
    assert bfe.FwpmFilterDeleteById0(h, fid) == e
    assert bfe.FwpmFilterEnum0(h, 1, 1) == (e, None, None)
    assert bfe.IPsecSaContextCreate1(h, traffic(A4, B4, fid), None) == (e, None, None)
    assert bfe.IPsecSaContextDeleteById0(h, 1) == e
    assert bfe.IPsecGetStatistics1(h) == (e, None)
    # no traffic goes through a stopped engine
    assert bfe.outbound(udp4(A4, B4, b"x")).packet is None


# =================================================================== dynamic sessions
def test_dynamic_filters_die_with_their_session(bfe):
    static = open_engine(bfe)
    keep = add_filter(bfe, static, plain_filter("outbound", wfp.FWP_ACTION_PERMIT))
    dyn = open_engine(bfe, session=session(flags=DYN))
    gone = [add_filter(bfe, dyn, plain_filter("outbound", wfp.FWP_ACTION_BLOCK,
                                              weight=wfp.FWP_VALUE0(type=wfp.FWP_UINT8,
                                                                    uint8=15))),
            add_filter(bfe, dyn, good_ipsec())]
    assert [f.filterId for f in all_filters(bfe, static)] == [keep, *gone]
    assert bfe.outbound(udp4(A4, B4, b"x")).drop == DropReason.BLOCKED
    changes = []
    st, _ = bfe.FwpmFilterSubscribeChanges0(static, wfp.FWPM_FILTER_SUBSCRIPTION0(),
                                            lambda c, ch: changes.append((ch.changeType,
                                                                          ch.filterId)), None)
    assert st == OK
    assert bfe.FwpmEngineClose0(dyn) == OK
    assert [f.filterId for f in all_filters(bfe, static)] == [keep]
    for fid in gone:
        assert bfe.FwpmFilterGetById0(static, fid) == (wfp.FWP_E_FILTER_NOT_FOUND, None)
    assert bfe.outbound(udp4(A4, B4, b"x")).drop is None  # the block is gone from traffic
    bfe.flush_notifications()
    assert sorted(changes) == [(wfp.FWPM_CHANGE_DELETE, fid) for fid in gone]


def good_ipsec() -> wfp.FWPM_FILTER0:
    return ipsec_filter("outbound", addr_conditions(A4, B4))


def test_dynamic_end_deletes_referencing_contexts_first(bfe):
    static = open_engine(bfe)
    dyn = open_engine(bfe, session=session(flags=DYN))
    fin, fout = ipsec_pair(bfe, dyn)
    # the dynamic session cannot create a context: a static session does, naming its filters
    ctx = create_context(bfe, static, fout)
    untouched_in, untouched_out = ipsec_pair(bfe, static, "192.0.2.7", B4)
    other_ctx = create_context(bfe, static, untouched_out, "192.0.2.7", B4)
    seen: list[tuple[int, int]] = []
    order: list[str] = []
    lock = threading.Lock()

    def on_ctx(context: Any, change: Any) -> None:
        with lock:
            seen.append((change.changeType, change.saContextId))
            order.append("ctx")

    def on_filter(context: Any, change: Any) -> None:
        with lock:
            order.append("filter")

    assert bfe.IPsecSaContextSubscribe0(static, wfp.IPSEC_SA_CONTEXT_SUBSCRIPTION0(), on_ctx,
                                        None)[0] == OK
    assert bfe.FwpmFilterSubscribeChanges0(static, wfp.FWPM_FILTER_SUBSCRIPTION0(), on_filter,
                                           None)[0] == OK
    # while the context lives, even the owning session cannot delete the filter
    assert bfe.FwpmFilterDeleteById0(dyn, fout) == wfp.FWP_E_IN_USE
    assert bfe.FwpmEngineClose0(dyn) == OK
    bfe.flush_notifications()
    assert seen == [(wfp.IPSEC_SA_CONTEXT_EVENT_DELETE, ctx)]
    assert order == ["ctx", "filter", "filter"]  # F.16: the contexts go first
    assert bfe.IPsecSaContextGetById1(static, ctx) == (wfp.FWP_E_NOT_FOUND, None)
    assert [c.saContextId for c in all_contexts(bfe, static)] == [other_ctx]
    assert [f.filterId for f in all_filters(bfe, static)] == [untouched_in, untouched_out]
    assert fin not in [f.filterId for f in all_filters(bfe, static)]


@pytest.mark.parametrize("flags", [wfp.FWPM_FILTER_FLAG_PERSISTENT, wfp.FWPM_FILTER_FLAG_BOOTTIME,
                                   wfp.FWPM_FILTER_FLAG_PERSISTENT | wfp.FWPM_FILTER_FLAG_INDEXED])
def test_dynamic_session_cannot_add_lasting_filters(bfe, flags):
    dyn = open_engine(bfe, session=session(flags=DYN))
    flt = plain_filter("outbound", wfp.FWP_ACTION_BLOCK, flags=flags)
    assert bfe.FwpmFilterAdd0(dyn, flt, None) == (wfp.FWP_E_DYNAMIC_SESSION_IN_PROGRESS, None)
    # the session check comes before the argument checks (F.21)
    flt.displayData = wfp.FWPM_DISPLAY_DATA0()
    assert bfe.FwpmFilterAdd0(dyn, flt, None) == (wfp.FWP_E_DYNAMIC_SESSION_IN_PROGRESS, None)
    assert all_filters(bfe, dyn) == []
    # the filter ids were not consumed
    assert add_filter(bfe, dyn, plain_filter("outbound", wfp.FWP_ACTION_BLOCK)) == 0x10000


def test_dynamic_session_and_sa_contexts(bfe):
    static = open_engine(bfe)
    dyn = open_engine(bfe, session=session(flags=DYN))
    fin, fout = ipsec_pair(bfe, static)
    assert bfe.IPsecSaContextCreate1(dyn, traffic(A4, B4, fout), None) == \
        (wfp.FWP_E_DYNAMIC_SESSION_IN_PROGRESS, None, None)
    assert bfe.IPsecSaContextCreate0(dyn, wfp.IPSEC_TRAFFIC0(
        ipVersion=wfp.FWP_IP_VERSION_V4, localV4Address=1, remoteV4Address=2,
        ipsecFilterId=fout)) == (wfp.FWP_E_DYNAMIC_SESSION_IN_PROGRESS, None, None)
    # the session check precedes the argument checks (F.10)
    assert bfe.IPsecSaContextCreate1(dyn, None, None) == \
        (wfp.FWP_E_DYNAMIC_SESSION_IN_PROGRESS, None, None)
    assert all_contexts(bfe, static) == []
    ctx = create_context(bfe, static, fout)
    assert bfe.IPsecSaContextDeleteById0(dyn, ctx) == wfp.FWP_E_DYNAMIC_SESSION_IN_PROGRESS
    assert bfe.IPsecSaContextDeleteById0(dyn, 999) == wfp.FWP_E_DYNAMIC_SESSION_IN_PROGRESS
    # F.9: the functions the docs are silent on do not check for dynamic sessions
    st, spi = bfe.IPsecSaContextGetSpi1(dyn, ctx, wfp.IPSEC_GETSPI1(
        inboundIpsecTraffic=traffic(A4, B4, fin), ipVersion=wfp.FWP_IP_VERSION_V4))
    assert st == OK and spi
    st, got = bfe.IPsecSaContextGetById1(dyn, ctx)
    assert st == OK and got.saContextId == ctx
    assert bfe.IPsecSaContextExpire0(dyn, ctx) == OK
    assert [c.saContextId for c in all_contexts(bfe, static)] == [ctx]
    assert bfe.IPsecSaContextDeleteById0(static, ctx) == OK


def test_dynamic_delete_rules(bfe):
    static = open_engine(bfe)
    dyn1 = open_engine(bfe, session=session(flags=DYN))
    dyn2 = open_engine(bfe, session=session(flags=DYN))
    s_key = uuid.uuid4()
    s_id = add_filter(bfe, static, plain_filter("outbound", wfp.FWP_ACTION_BLOCK,
                                                filterKey=s_key))
    d1_key = uuid.uuid4()
    d1 = add_filter(bfe, dyn1, plain_filter("outbound", wfp.FWP_ACTION_BLOCK, filterKey=d1_key))
    d2 = add_filter(bfe, dyn2, plain_filter("outbound", wfp.FWP_ACTION_BLOCK))
    before = all_filters(bfe, static)
    # C.7.1: a dynamic session may delete only its own dynamic filters
    assert bfe.FwpmFilterDeleteById0(dyn1, s_id) == wfp.FWP_E_DYNAMIC_SESSION_IN_PROGRESS
    assert bfe.FwpmFilterDeleteByKey0(dyn1, s_key) == wfp.FWP_E_DYNAMIC_SESSION_IN_PROGRESS
    assert bfe.FwpmFilterDeleteById0(dyn2, d1) == wfp.FWP_E_WRONG_SESSION
    assert bfe.FwpmFilterDeleteByKey0(dyn2, d1_key) == wfp.FWP_E_WRONG_SESSION
    assert bfe.FwpmFilterDeleteById0(dyn1, 0x7777777) == wfp.FWP_E_FILTER_NOT_FOUND
    assert all_filters(bfe, static) == before
    assert bfe.FwpmFilterDeleteByKey0(dyn1, d1_key) == OK
    # a non-dynamic session may delete a dynamic filter; its session's end then skips it
    assert bfe.FwpmFilterDeleteById0(static, d2) == OK
    assert bfe.FwpmEngineClose0(dyn2) == OK
    assert bfe.FwpmEngineClose0(dyn1) == OK
    assert [f.filterId for f in all_filters(bfe, static)] == [s_id]


def test_dynamic_filter_added_in_an_aborted_transaction_is_not_deleted_twice(bfe):
    static = open_engine(bfe)
    dyn = open_engine(bfe, session=session(flags=DYN))
    assert bfe.FwpmTransactionBegin0(dyn, 0) == OK
    add_filter(bfe, dyn, plain_filter("outbound", wfp.FWP_ACTION_BLOCK))
    assert bfe.FwpmTransactionAbort0(dyn) == OK
    kept = add_filter(bfe, dyn, plain_filter("outbound", wfp.FWP_ACTION_BLOCK))
    changes = []
    assert bfe.FwpmFilterSubscribeChanges0(static, wfp.FWPM_FILTER_SUBSCRIPTION0(),
                                           lambda c, ch: changes.append(ch.filterId),
                                           None)[0] == OK
    assert bfe.FwpmEngineClose0(dyn) == OK
    bfe.flush_notifications()
    assert changes == [kept]
    assert all_filters(bfe, static) == []


def test_sa_context_subscriptions_die_with_their_session(bfe):
    h = open_engine(bfe)
    other = open_engine(bfe)
    seen = []
    assert bfe.IPsecSaContextSubscribe0(h, wfp.IPSEC_SA_CONTEXT_SUBSCRIPTION0(),
                                        lambda c, ch: seen.append(ch), None)[0] == OK
    st, _entries, n = bfe.IPsecSaContextSubscriptionsGet0(other)
    assert (st, n) == (OK, 1)
    assert bfe.FwpmEngineClose0(h) == OK
    assert bfe.IPsecSaContextSubscriptionsGet0(other) == (OK, [], 0)
    _, fout = ipsec_pair(bfe, other)
    create_context(bfe, other, fout)
    bfe.flush_notifications()
    assert seen == []


# =================================================================== B.6 FwpmFreeMemory0
def test_free_memory_accepts_what_the_engine_returns(bfe):
    h = open_engine(bfe)
    fid = add_filter(bfe, h, plain_filter("outbound", wfp.FWP_ACTION_BLOCK))
    _, flt = bfe.FwpmFilterGetById0(h, fid)
    st, eh = bfe.FwpmFilterCreateEnumHandle0(h, None)
    assert st == OK
    _, entries, _ = bfe.FwpmFilterEnum0(h, eh, 10)
    _, stats = bfe.IPsecGetStatistics1(h)
    for p in (flt, entries, stats, None):
        assert bfe.FwpmFreeMemory0(p) is None
    # freeing changes nothing in the engine
    assert bfe.FwpmFilterGetById0(h, fid) == (OK, flt)
    # and still answers (void) on a stopped engine
    bfe.close()
    assert bfe.FwpmFreeMemory0(flt) is None


def test_dynamic_filter_is_not_resurrected_by_another_sessions_abort(bfe):
    static = open_engine(bfe)
    dyn = open_engine(bfe, session=session(flags=DYN))
    fid = add_filter(bfe, dyn, plain_filter("outbound", wfp.FWP_ACTION_BLOCK))
    assert bfe.FwpmTransactionBegin0(static, 0) == OK
    assert bfe.FwpmFilterDeleteById0(static, fid) == OK
    assert bfe.FwpmEngineClose0(dyn) == OK
    assert bfe.FwpmTransactionAbort0(static) == OK
    assert all_filters(bfe, static) == []
    assert bfe.outbound(udp4(A4, B4, b"x")).drop is None


def test_close_while_a_callback_calls_the_engine():
    import time

    bfe = wfp.Engine()  # not closed on failure: a deadlocked engine cannot be
    s, other = open_engine(bfe), open_engine(bfe)
    in_callback = threading.Event()
    result: dict[str, Any] = {}

    def callback(context: Any, change: Any) -> None:
        in_callback.set()
        time.sleep(0.2)  # FwpmEngineClose0 starts meanwhile
        result["get"] = bfe.FwpmFilterGetById0(other, change.filterId)[0]

    assert bfe.FwpmFilterSubscribeChanges0(s, wfp.FWPM_FILTER_SUBSCRIPTION0(), callback,
                                           None)[0] == OK
    add_filter(bfe, other, plain_filter("outbound", wfp.FWP_ACTION_BLOCK))
    assert in_callback.wait(5)
    closer = threading.Thread(target=lambda: result.setdefault("close", bfe.FwpmEngineClose0(s)),
                              daemon=True)
    closer.start()
    closer.join(1.5)
    assert result == {"get": OK, "close": OK}
    bfe.close()

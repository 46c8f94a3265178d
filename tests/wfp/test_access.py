"""Access control (reference D, F.9, F.10, F.21 and the issue's grant/revoke contract): the
default DACL, every right each call needs, grants and revokes taking effect at once, the F.10 check
order, enumeration and notifications limited to READ-able objects, and identities never showing
their password."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from ipsecsa import wfp

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
)

OK = wfp.ERROR_SUCCESS
DENIED = wfp.ERROR_ACCESS_DENIED
SECRET = "correct-horse-battery-staple"
ALICE = "LAB\\alice"


def alice_identity(password: str = SECRET) -> wfp.SEC_WINNT_AUTH_IDENTITY_W:
    return wfp.SEC_WINNT_AUTH_IDENTITY_W(User="alice", Domain="LAB", Password=password)


@pytest.fixture
def bfe():
    engine = wfp.Engine()
    yield engine
    engine.close()


@pytest.fixture
def owner(bfe):
    return open_engine(bfe)


@pytest.fixture
def world(bfe, owner):
    return _populate(bfe, owner)


def _populate(bfe: wfp.Engine, owner: int) -> dict[str, Any]:
    """A populated engine: a filter pair, a created context (GetSpi done), a BLOCK filter."""
    fin, fout = ipsec_pair(bfe, owner)
    ctx = create_context(bfe, owner, fout)
    st, spi = bfe.IPsecSaContextGetSpi1(owner, ctx, getspi(fin))
    assert st == OK
    block = add_filter(bfe, owner, plain_filter("outbound", wfp.FWP_ACTION_BLOCK))
    st, stored = bfe.FwpmFilterGetById0(owner, block)
    assert st == OK
    return {"fin": fin, "fout": fout, "ctx": ctx, "spi": spi, "block": block,
            "block_key": stored.filterKey}


def getspi(fin: int) -> wfp.IPSEC_GETSPI1:
    return wfp.IPSEC_GETSPI1(inboundIpsecTraffic=traffic(A4, B4, fin),
                             ipVersion=wfp.FWP_IP_VERSION_V4)


def snapshot(bfe: wfp.Engine, owner: int) -> tuple[Any, ...]:
    """Everything a denied call must leave alone."""
    return (all_filters(bfe, owner), all_contexts(bfe, owner),
            bfe.FwpmFilterSubscriptionsGet0(owner), bfe.IPsecSaContextSubscriptionsGet0(owner))


def calls(bfe: wfp.Engine, h: int, w: dict[str, Any]) -> dict[str, Any]:
    """Every call a session can make beyond opening, each returning its status; with the right
    each needs (D.1, F.9, F.21) and the container it is checked on."""
    key = bytes(range(20))
    cb = (lambda c, ch: None)
    return {
        "FwpmFilterAdd0": (lambda: bfe.FwpmFilterAdd0(
            h, plain_filter("inbound", wfp.FWP_ACTION_PERMIT), None)[0],
            "filters", wfp.FWPM_ACTRL_ADD | wfp.FWPM_ACTRL_ADD_LINK),
        "FwpmFilterDeleteById0": (lambda: bfe.FwpmFilterDeleteById0(h, w["block"]),
                                  "filters", wfp.DELETE),
        "FwpmFilterDeleteByKey0": (lambda: bfe.FwpmFilterDeleteByKey0(h, w["block_key"]),
                                   "filters", wfp.DELETE),
        "FwpmFilterGetById0": (lambda: bfe.FwpmFilterGetById0(h, w["block"])[0],
                               "filters", wfp.FWPM_ACTRL_READ),
        "FwpmFilterGetByKey0": (lambda: bfe.FwpmFilterGetByKey0(h, w["block_key"])[0],
                                "filters", wfp.FWPM_ACTRL_READ),
        "FwpmFilterCreateEnumHandle0": (lambda: bfe.FwpmFilterCreateEnumHandle0(h, None)[0],
                                        "filters", wfp.FWPM_ACTRL_ENUM),
        "FwpmFilterSubscribeChanges0": (lambda: bfe.FwpmFilterSubscribeChanges0(
            h, wfp.FWPM_FILTER_SUBSCRIPTION0(), cb, None)[0],
            "filters", wfp.FWPM_ACTRL_SUBSCRIBE),
        "FwpmFilterSubscriptionsGet0": (lambda: bfe.FwpmFilterSubscriptionsGet0(h)[0],
                                        "filters", wfp.FWPM_ACTRL_READ),
        "FwpmTransactionBegin0(rw)": (lambda: bfe.FwpmTransactionBegin0(h, 0),
                                      "engine", wfp.FWPM_ACTRL_BEGIN_WRITE_TXN),
        "FwpmTransactionBegin0(ro)": (lambda: bfe.FwpmTransactionBegin0(h, wfp.FWPM_TXN_READ_ONLY),
                                      "engine", wfp.FWPM_ACTRL_BEGIN_READ_TXN),
        "IPsecSaContextCreate1": (lambda: bfe.IPsecSaContextCreate1(
            h, traffic(A4, B4, w["fout"]), None)[0], "ipsec_sa_db", wfp.FWPM_ACTRL_ADD),
        "IPsecSaContextCreate0": (lambda: bfe.IPsecSaContextCreate0(h, wfp.IPSEC_TRAFFIC0(
            ipVersion=wfp.FWP_IP_VERSION_V4, localV4Address=traffic(A4, B4, 0).localV4Address,
            remoteV4Address=traffic(A4, B4, 0).remoteV4Address,
            ipsecFilterId=w["fout"]))[0], "ipsec_sa_db", wfp.FWPM_ACTRL_ADD),
        "IPsecSaContextGetSpi1": (lambda: bfe.IPsecSaContextGetSpi1(h, w["ctx"],
                                                                    getspi(w["fin"]))[0],
                                  "ipsec_sa_db", wfp.FWPM_ACTRL_ADD),
        "IPsecSaContextSetSpi0": (lambda: bfe.IPsecSaContextSetSpi0(h, w["ctx"], getspi(w["fin"]),
                                                                    w["spi"]),
                                  "ipsec_sa_db", wfp.FWPM_ACTRL_ADD),
        "IPsecSaContextAddInbound1": (lambda: bfe.IPsecSaContextAddInbound1(
            h, w["ctx"], bundle(gcm_sa(w["spi"], key))), "ipsec_sa_db", wfp.FWPM_ACTRL_ADD),
        "IPsecSaContextAddOutbound1": (lambda: bfe.IPsecSaContextAddOutbound1(
            h, w["ctx"], bundle(gcm_sa(0x1234, key))), "ipsec_sa_db", wfp.FWPM_ACTRL_ADD),
        "IPsecSaContextUpdate0": (lambda: bfe.IPsecSaContextUpdate0(
            h, 0, wfp.IPSEC_SA_CONTEXT1(saContextId=w["ctx"])), "ipsec_sa_db",
            wfp.FWPM_ACTRL_ADD),
        "IPsecSaContextExpire0": (lambda: bfe.IPsecSaContextExpire0(h, w["ctx"]),
                                  "ipsec_sa_db", wfp.DELETE),
        "IPsecSaContextDeleteById0": (lambda: bfe.IPsecSaContextDeleteById0(h, w["ctx"]),
                                      "ipsec_sa_db", wfp.DELETE),
        "IPsecSaContextGetById1": (lambda: bfe.IPsecSaContextGetById1(h, w["ctx"])[0],
                                   "ipsec_sa_db", wfp.FWPM_ACTRL_READ),
        "IPsecSaContextGetById0": (lambda: bfe.IPsecSaContextGetById0(h, w["ctx"])[0],
                                   "ipsec_sa_db", wfp.FWPM_ACTRL_READ),
        "IPsecSaContextCreateEnumHandle0": (lambda: bfe.IPsecSaContextCreateEnumHandle0(
            h, None)[0], "ipsec_sa_db", wfp.FWPM_ACTRL_ENUM | wfp.FWPM_ACTRL_READ),
        "IPsecSaCreateEnumHandle0": (lambda: bfe.IPsecSaCreateEnumHandle0(h, None)[0],
                                     "ipsec_sa_db", wfp.FWPM_ACTRL_ENUM | wfp.FWPM_ACTRL_READ),
        "IPsecSaContextSubscribe0": (lambda: bfe.IPsecSaContextSubscribe0(
            h, wfp.IPSEC_SA_CONTEXT_SUBSCRIPTION0(), cb, None)[0],
            "ipsec_sa_db", wfp.FWPM_ACTRL_SUBSCRIBE),
        "IPsecSaContextSubscriptionsGet0": (lambda: bfe.IPsecSaContextSubscriptionsGet0(h)[0],
                                            "ipsec_sa_db", wfp.FWPM_ACTRL_READ),
        "IPsecGetStatistics0": (lambda: bfe.IPsecGetStatistics0(h)[0],
                                "ipsec_sa_db", wfp.FWPM_ACTRL_READ_STATS),
        "IPsecGetStatistics1": (lambda: bfe.IPsecGetStatistics1(h)[0],
                                "ipsec_sa_db", wfp.FWPM_ACTRL_READ_STATS),
    }


# =================================================================== the default DACL (D.2)
def test_everyone_may_open_but_nothing_else(bfe, owner, world):
    st, h = bfe.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, alice_identity(), None)
    assert st == OK
    before = snapshot(bfe, owner)
    for name, (call, _, _) in calls(bfe, h, world).items():
        assert call() == DENIED, name
        assert snapshot(bfe, owner) == before, name
    # the calls that need no right beyond the session (F.9)
    assert bfe.FwpmTransactionCommit0(h) == wfp.FWP_E_NO_TXN_IN_PROGRESS
    assert bfe.FwpmFilterUnsubscribeChanges0(h, None) == OK
    assert bfe.FwpmEngineClose0(h) == OK


def test_a_user_without_a_domain_and_bad_identities(bfe, owner):
    st, h = bfe.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT,
                                wfp.SEC_WINNT_AUTH_IDENTITY_W(User="bob", Password="pw"), None)
    assert st == OK
    assert bfe.FwpmFilterAdd0(h, plain_filter("outbound", wfp.FWP_ACTION_BLOCK), None) == \
        (DENIED, None)
    bfe.grant("bob", wfp.FWPM_ACTRL_ADD | wfp.FWPM_ACTRL_ADD_LINK, "filters")
    assert bfe.FwpmFilterAdd0(h, plain_filter("outbound", wfp.FWP_ACTION_BLOCK), None)[0] == OK
    # an identity that names nobody
    for ident in (wfp.SEC_WINNT_AUTH_IDENTITY_W(), wfp.SEC_WINNT_AUTH_IDENTITY_W(User=""),
                  wfp.SEC_WINNT_AUTH_IDENTITY_W(Domain="LAB", Password="x")):
        assert bfe.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, ident, None) == (DENIED, None)


def _implied(granted_on: str, granted: int, container: str, needed: int) -> bool:
    """D.2: a grant on the engine is inherited by the containers; one on a container covers
    only it."""
    return granted_on in ("engine", container) and needed & ~granted == 0


def test_each_right_alone_allows_exactly_its_calls():
    """Granting one call's rights on its container lets that call past the access check, and
    every call that needs something else is still denied."""
    probe = calls(wfp.Engine(), 0, {"fin": 0, "fout": 0, "ctx": 0, "spi": 0, "block": 0,
                                    "block_key": None})
    for target, (_, container, rights) in probe.items():
        engine = wfp.Engine()
        try:
            o = open_engine(engine)
            w = _populate(engine, o)
            engine.grant(ALICE, rights, container)
            st, h = engine.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, alice_identity(), None)
            assert st == OK
            for other, (call, c2, r2) in calls(engine, h, w).items():
                status = call()
                if other == target:
                    assert status != DENIED, (target, hex(status))
                elif not _implied(container, rights, c2, r2):
                    assert status == DENIED, (target, other, hex(status))
                if other.startswith("FwpmTransactionBegin0") and status == OK:
                    assert engine.FwpmTransactionAbort0(h) == OK
        finally:
            engine.close()


# =================================================================== grant / revoke
def test_grant_and_revoke_take_effect_at_once_for_open_sessions(bfe, owner, world):
    h = open_engine(bfe, alice_identity())
    flt = plain_filter("inbound", wfp.FWP_ACTION_PERMIT)
    assert bfe.FwpmFilterAdd0(h, flt, None) == (DENIED, None)
    bfe.grant(ALICE, wfp.FWPM_ACTRL_ADD, "filters")
    assert bfe.FwpmFilterAdd0(h, flt, None) == (DENIED, None)  # ADD_LINK is needed too (C.7.1)
    bfe.grant(ALICE, wfp.FWPM_ACTRL_ADD_LINK, "filters")
    st, fid = bfe.FwpmFilterAdd0(h, flt, None)
    assert st == OK
    # READ on the container covers filters made before the grant (the owner's) and after
    assert bfe.FwpmFilterGetById0(h, world["block"]) == (DENIED, None)
    bfe.grant(ALICE, wfp.FWPM_ACTRL_READ, "filters")
    assert bfe.FwpmFilterGetById0(h, world["block"])[0] == OK
    assert bfe.FwpmFilterGetById0(h, fid)[0] == OK
    # but not the SA database
    assert bfe.IPsecSaContextGetById1(h, world["ctx"]) == (DENIED, None)
    bfe.revoke(ALICE, wfp.FWPM_ACTRL_READ, "filters")
    assert bfe.FwpmFilterGetById0(h, fid) == (DENIED, None)
    bfe.revoke(ALICE, wfp.FWPM_ACTRL_ADD, "filters")
    before = snapshot(bfe, owner)
    assert bfe.FwpmFilterAdd0(h, flt, None) == (DENIED, None)
    assert snapshot(bfe, owner) == before


def test_engine_grants_are_inherited_by_the_containers(bfe, owner, world):
    h = open_engine(bfe, alice_identity())
    bfe.grant(ALICE, wfp.FWPM_ACTRL_READ, "engine")
    assert bfe.FwpmFilterGetById0(h, world["block"])[0] == OK
    assert bfe.IPsecSaContextGetById1(h, world["ctx"])[0] == OK
    bfe.revoke(ALICE, wfp.FWPM_ACTRL_READ, "engine")
    assert bfe.FwpmFilterGetById0(h, world["block"]) == (DENIED, None)
    assert bfe.IPsecSaContextGetById1(h, world["ctx"]) == (DENIED, None)
    # a container grant does not spill into the other container
    bfe.grant(ALICE, wfp.FWPM_ACTRL_READ, "ipsec_sa_db")
    assert bfe.IPsecSaContextGetById1(h, world["ctx"])[0] == OK
    assert bfe.FwpmFilterGetById0(h, world["block"]) == (DENIED, None)


def test_generic_rights(bfe, owner, world):
    h = open_engine(bfe, alice_identity())
    bfe.grant(ALICE, wfp.FWPM_GENERIC_READ, "ipsec_sa_db")
    assert bfe.IPsecSaContextGetById1(h, world["ctx"])[0] == OK
    assert bfe.IPsecGetStatistics1(h)[0] == OK
    assert bfe.IPsecSaContextCreateEnumHandle0(h, None) == (DENIED, None)  # ENUM is EXECUTE
    bfe.grant(ALICE, wfp.FWPM_GENERIC_EXECUTE, "ipsec_sa_db")
    assert bfe.IPsecSaContextCreateEnumHandle0(h, None)[0] == OK
    assert bfe.IPsecSaContextDeleteById0(h, world["ctx"]) == DENIED
    bfe.grant(ALICE, wfp.FWPM_GENERIC_WRITE, "ipsec_sa_db")
    assert bfe.IPsecSaContextDeleteById0(h, world["ctx"]) == OK
    assert all_contexts(bfe, owner) == []


def test_admin_always_gets_open(bfe, owner):
    bfe.revoke("Everyone", wfp.FWPM_ACTRL_OPEN, "engine")
    assert bfe.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, alice_identity(), None) == \
        (DENIED, None)
    assert open_engine(bfe)  # the owner
    # an administrator (GENERIC_ALL, D.2) opens although Everyone lost OPEN
    bfe.grant(ALICE, wfp.FWPM_GENERIC_ALL, "engine")
    h = open_engine(bfe, alice_identity())
    add_filter(bfe, h, plain_filter("outbound", wfp.FWP_ACTION_BLOCK))
    bfe.grant("Everyone", wfp.FWPM_ACTRL_OPEN, "engine")
    assert open_engine(bfe, wfp.SEC_WINNT_AUTH_IDENTITY_W(User="carol"))


def test_an_administrator_by_grant_holds_everything(bfe, owner, world):
    bfe.grant(ALICE, wfp.FWPM_GENERIC_ALL, "engine")
    h = open_engine(bfe, alice_identity())
    for name, (call, _, _) in calls(bfe, h, world).items():
        assert call() != DENIED, name
        if name.startswith("FwpmTransactionBegin0"):
            assert bfe.FwpmTransactionAbort0(h) == OK
    bfe.revoke(ALICE, wfp.FWPM_GENERIC_ALL, "engine")
    assert bfe.FwpmFilterGetById0(h, world["block"]) == (DENIED, None)


@pytest.mark.parametrize("args", [
    ("alice", wfp.FWPM_ACTRL_READ, "nowhere"),
    ("alice", 0, "engine"),
    ("alice", -1, "engine"),
    ("alice", 1 << 40, "engine"),
    ("alice", True, "engine"),
    ("", wfp.FWPM_ACTRL_READ, "engine"),
    (None, wfp.FWPM_ACTRL_READ, "engine"),
])
def test_grant_rejects_bad_arguments(bfe, args):
    with pytest.raises(ValueError):
        bfe.grant(*args)


def test_revoke_of_something_never_granted_is_harmless(bfe, owner, world):
    bfe.revoke("nobody", wfp.FWPM_ACTRL_READ, "filters")
    with pytest.raises(ValueError):
        bfe.revoke("alice", wfp.FWPM_ACTRL_READ, "elsewhere")
    assert all_filters(bfe, owner)


# =================================================================== F.10 order
def test_access_is_checked_before_arguments(bfe, owner, world):
    h = open_engine(bfe, alice_identity())
    before = snapshot(bfe, owner)
    assert bfe.FwpmFilterAdd0(h, None, None) == (DENIED, None)
    assert bfe.FwpmFilterAdd0(h, "garbage", object()) == (DENIED, None)
    assert bfe.FwpmFilterDeleteById0(h, "garbage") == DENIED
    assert bfe.FwpmFilterDeleteByKey0(h, None) == DENIED
    assert bfe.FwpmFilterGetById0(h, 0x7FFFFFFF) == (DENIED, None)  # no "not found" leak
    assert bfe.FwpmFilterGetByKey0(h, None) == (DENIED, None)
    assert bfe.FwpmFilterCreateEnumHandle0(h, "garbage") == (DENIED, None)
    assert bfe.FwpmFilterSubscribeChanges0(h, None, None, None) == (DENIED, None)
    assert bfe.FwpmTransactionBegin0(h, 0x999) == DENIED
    assert bfe.IPsecSaContextCreate1(h, None, None) == (DENIED, None, None)
    assert bfe.IPsecSaContextGetSpi1(h, 999999, None) == (DENIED, None)
    assert bfe.IPsecSaContextSetSpi0(h, 999999, None, 1) == DENIED
    assert bfe.IPsecSaContextAddInbound1(h, 999999, None) == DENIED
    assert bfe.IPsecSaContextAddOutbound0(h, 999999, "x") == DENIED
    assert bfe.IPsecSaContextUpdate0(h, 1 << 70, None) == DENIED
    assert bfe.IPsecSaContextExpire0(h, 999999) == DENIED
    assert bfe.IPsecSaContextDeleteById0(h, 999999) == DENIED
    assert bfe.IPsecSaContextGetById1(h, 999999) == (DENIED, None)
    assert bfe.IPsecSaContextCreateEnumHandle0(h, "garbage") == (DENIED, None)
    assert bfe.IPsecSaCreateEnumHandle0(h, "garbage") == (DENIED, None)
    assert bfe.IPsecSaContextSubscribe0(h, None, None, None) == (DENIED, None)
    assert snapshot(bfe, owner) == before


def test_invalid_handle_is_checked_before_access(bfe, owner, world):
    h = open_engine(bfe, alice_identity())
    assert bfe.FwpmEngineClose0(h) == OK
    assert bfe.FwpmFilterAdd0(h, None, None) == (wfp.ERROR_INVALID_HANDLE, None)
    assert bfe.IPsecSaContextDeleteById0(h, world["ctx"]) == wfp.ERROR_INVALID_HANDLE
    assert bfe.IPsecGetStatistics1(h) == (wfp.ERROR_INVALID_HANDLE, None)
    assert bfe.FwpmTransactionBegin0(h, 0) == wfp.ERROR_INVALID_HANDLE


def test_access_is_checked_before_transaction_and_session_rules(bfe, owner, world):
    bfe.grant(ALICE, wfp.FWPM_ACTRL_BEGIN_READ_TXN | wfp.FWPM_ACTRL_BEGIN_WRITE_TXN, "engine")
    h = open_engine(bfe, alice_identity())
    assert bfe.FwpmTransactionBegin0(h, wfp.FWPM_TXN_READ_ONLY) == OK
    # not INCOMPATIBLE_TXN / TXN_IN_PROGRESS: access comes first
    assert bfe.FwpmFilterAdd0(h, plain_filter("outbound", wfp.FWP_ACTION_BLOCK), None) == \
        (DENIED, None)
    assert bfe.IPsecSaContextCreate1(h, traffic(A4, B4, world["fout"]), None) == \
        (DENIED, None, None)
    assert bfe.IPsecGetStatistics1(h) == (DENIED, None)
    assert bfe.FwpmTransactionAbort0(h) == OK
    dyn = open_engine(bfe, alice_identity(), wfp.FWPM_SESSION0(flags=wfp.FWPM_SESSION_FLAG_DYNAMIC))
    persistent = plain_filter("outbound", wfp.FWP_ACTION_BLOCK,
                              flags=wfp.FWPM_FILTER_FLAG_PERSISTENT)
    assert bfe.FwpmFilterAdd0(dyn, persistent, None) == (DENIED, None)
    assert bfe.IPsecSaContextCreate1(dyn, None, None) == (DENIED, None, None)
    assert bfe.IPsecSaContextDeleteById0(dyn, world["ctx"]) == DENIED


# =================================================================== READ-able objects only
def test_enumeration_returns_only_readable_objects(bfe, owner, world):
    h = open_engine(bfe, alice_identity())
    bfe.grant(ALICE, wfp.FWPM_ACTRL_ENUM, "filters")
    st, eh = bfe.FwpmFilterCreateEnumHandle0(h, None)
    assert st == OK
    assert bfe.FwpmFilterEnum0(h, eh, 100) == (OK, [], 0)
    bfe.grant(ALICE, wfp.FWPM_ACTRL_READ, "filters")
    st, eh2 = bfe.FwpmFilterCreateEnumHandle0(h, None)
    assert st == OK
    st, entries, n = bfe.FwpmFilterEnum0(h, eh2, 100)
    assert (st, n) == (OK, 3)
    assert entries == all_filters(bfe, owner)
    # the SA database needs ENUM and READ for its enumeration handles (C.3)
    bfe.grant(ALICE, wfp.FWPM_ACTRL_ENUM, "ipsec_sa_db")
    assert bfe.IPsecSaContextCreateEnumHandle0(h, None) == (DENIED, None)
    bfe.grant(ALICE, wfp.FWPM_ACTRL_READ, "ipsec_sa_db")
    st, ch = bfe.IPsecSaContextCreateEnumHandle0(h, None)
    assert st == OK
    st, ctxs, n = bfe.IPsecSaContextEnum1(h, ch, 100)
    assert (st, n) == (OK, 1) and ctxs[0].saContextId == world["ctx"]


def test_notifications_only_for_readable_objects(bfe, owner, world):
    h = open_engine(bfe, alice_identity())
    bfe.grant(ALICE, wfp.FWPM_ACTRL_SUBSCRIBE, "filters")
    bfe.grant(ALICE, wfp.FWPM_ACTRL_SUBSCRIBE, "ipsec_sa_db")
    filter_changes: list[int] = []
    ctx_changes: list[int] = []
    assert bfe.FwpmFilterSubscribeChanges0(h, wfp.FWPM_FILTER_SUBSCRIPTION0(),
                                           lambda c, ch: filter_changes.append(ch.filterId),
                                           None)[0] == OK
    assert bfe.IPsecSaContextSubscribe0(h, wfp.IPSEC_SA_CONTEXT_SUBSCRIPTION0(),
                                        lambda c, ch: ctx_changes.append(ch.saContextId),
                                        None)[0] == OK
    hidden = add_filter(bfe, owner, plain_filter("inbound", wfp.FWP_ACTION_PERMIT))
    assert bfe.IPsecSaContextDeleteById0(owner, world["ctx"]) == OK
    bfe.flush_notifications()
    assert filter_changes == [] and ctx_changes == []
    bfe.grant(ALICE, wfp.FWPM_ACTRL_READ, "engine")  # at once, for the live subscriptions
    assert bfe.FwpmFilterDeleteById0(owner, hidden) == OK
    ctx = create_context(bfe, owner, world["fout"])
    bfe.flush_notifications()
    assert filter_changes == [hidden]
    assert ctx_changes == [ctx]


# =================================================================== secrets
def test_password_never_shown(bfe, owner, caplog):
    ident = alice_identity()
    assert SECRET not in repr(ident) and SECRET not in str(ident)
    assert "Password" in repr(ident)  # the field is there, its value is not
    with caplog.at_level(logging.DEBUG, logger="ipsecsa"):
        h = open_engine(bfe, ident)
        assert bfe.FwpmFilterAdd0(h, None, None) == (DENIED, None)
        bfe.revoke("Everyone", wfp.FWPM_ACTRL_OPEN, "engine")
        assert bfe.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, ident, None) == (DENIED, None)
    assert caplog.records  # the denials were logged ...
    assert all(SECRET not in r.getMessage() for r in caplog.records)  # ... without the secret
    assert ident.Password == SECRET  # and the caller's structure is intact


def test_open_checks_access_before_its_arguments(bfe, owner):
    bfe.revoke("Everyone", wfp.FWPM_ACTRL_OPEN, "engine")
    assert bfe.FwpmEngineOpen0("remote", 12345, alice_identity(), "garbage") == (DENIED, None)
    bfe.grant(ALICE, wfp.FWPM_ACTRL_OPEN, "engine")
    assert bfe.FwpmEngineOpen0("remote", wfp.RPC_C_AUTHN_WINNT, alice_identity(), None) == \
        (wfp.FWP_E_INVALID_PARAMETER, None)
    assert bfe.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, alice_identity(), None)[0] == OK


def test_everyone_entries_on_a_container(bfe, owner, world):
    h = open_engine(bfe, alice_identity())
    bob = open_engine(bfe, wfp.SEC_WINNT_AUTH_IDENTITY_W(User="bob"))
    bfe.grant("Everyone", wfp.FWPM_ACTRL_READ, "filters")
    for s in (h, bob):
        assert bfe.FwpmFilterGetById0(s, world["block"])[0] == OK
        assert bfe.IPsecSaContextGetById1(s, world["ctx"]) == (DENIED, None)
    bfe.revoke("Everyone", wfp.FWPM_ACTRL_READ, "filters")
    assert bfe.FwpmFilterGetById0(bob, world["block"]) == (DENIED, None)


def test_enum_handles_need_no_right_after_creation(bfe, owner, world):
    """F.9: Enum/Destroy check only that the handle belongs to the session."""
    h = open_engine(bfe, alice_identity())
    bfe.grant(ALICE, wfp.FWPM_ACTRL_ENUM | wfp.FWPM_ACTRL_READ, "filters")
    st, eh = bfe.FwpmFilterCreateEnumHandle0(h, None)
    assert st == OK
    bfe.revoke(ALICE, wfp.FWPM_ACTRL_ENUM | wfp.FWPM_ACTRL_READ, "filters")
    st, _entries, n = bfe.FwpmFilterEnum0(h, eh, 10)
    assert (st, n) == (OK, 3)
    assert bfe.FwpmFilterDestroyEnumHandle0(h, eh) == OK
    assert bfe.FwpmFilterCreateEnumHandle0(h, None) == (DENIED, None)
    # the owner cannot use alice's handle either
    bfe.grant(ALICE, wfp.FWPM_ACTRL_ENUM, "filters")
    st, eh = bfe.FwpmFilterCreateEnumHandle0(h, None)
    assert st == OK
    assert bfe.FwpmFilterEnum0(owner, eh, 10) == (wfp.ERROR_INVALID_HANDLE, None, None)


def test_principal_names_are_case_insensitive(bfe, owner, world):
    """Windows account names are case-insensitive: a grant to LAB\\Alice is one to lab\\alice."""
    h = open_engine(bfe, alice_identity())
    bfe.grant("lab\\ALICE", wfp.FWPM_ACTRL_READ, "filters")
    assert bfe.FwpmFilterGetById0(h, world["block"])[0] == OK
    bfe.revoke("Lab\\Alice", wfp.FWPM_ACTRL_READ, "filters")
    assert bfe.FwpmFilterGetById0(h, world["block"]) == (DENIED, None)
    bfe.revoke("everyone", wfp.FWPM_ACTRL_OPEN, "engine")
    assert bfe.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, alice_identity(), None) == \
        (DENIED, None)
    bfe.grant("LAB\\alice", wfp.FWPM_GENERIC_ALL, "engine")
    upper = wfp.SEC_WINNT_AUTH_IDENTITY_W(User="ALICE", Domain="lab")
    assert open_engine(bfe, upper)
    with pytest.raises(ValueError):
        bfe.revoke("", wfp.FWPM_ACTRL_READ, "filters")

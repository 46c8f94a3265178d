"""Every error the Pythonic API raises: the typed exception, the exact FWP_E_* (or Win32)
status the Windows-faithful method returned, its name, and the field at fault. A failed
create_context leaves nothing behind."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest

from ipsecsa import api, wfp
from tests.api.helpers import A, B, pair, sa


@pytest.fixture
def engine() -> Iterator[api.Engine]:
    with api.Engine() as e:
        yield e


def assert_nothing_left(engine: api.Engine) -> None:
    assert engine.contexts() == []
    bfe = engine.wfp
    with engine.session() as s:
        _status, enum = bfe.FwpmFilterCreateEnumHandle0(s.handle, None)
        assert bfe.FwpmFilterEnum0(s.handle, enum, 100)[2] == 0


def check(exc: pytest.ExceptionInfo[api.WfpError], cls: type, status: int, field: str) -> None:
    err = exc.value
    assert type(err) is cls and isinstance(err, api.WfpError)
    assert err.status == status and err.status_name == api.status_name(status)
    assert err.field == field
    assert json.loads(json.dumps(err.to_dict())) == {
        "status": status, "status_name": err.status_name, "field": field,
        "message": err.message}


def test_not_found(engine: api.Engine) -> None:
    for op in (engine.context, engine.delete, engine.expire):
        with pytest.raises(api.NotFound) as exc:
            op(42)
        check(exc, api.NotFound, wfp.FWP_E_NOT_FOUND, "context_id")
    with pytest.raises(api.NotFound) as exc:
        engine.delete_filter(0x99999)
    check(exc, api.NotFound, wfp.FWP_E_FILTER_NOT_FOUND, "filter_id")
    with pytest.raises(LookupError):  # also a LookupError
        engine.context(42)


def test_new_context_with_a_missing_filter(engine: api.Engine) -> None:
    with pytest.raises(api.NotFound) as exc:
        engine.new_context(local=A, remote=B, outbound_filter=0x12345)
    check(exc, api.NotFound, wfp.FWP_E_FILTER_NOT_FOUND, "outbound_filter")


def test_already_exists_spi_in_use(engine: api.Engine) -> None:
    ab, ba = pair()
    engine.create_context(outbound=ab, inbound=ba)
    # Another host pair, but this host's inbound SPI 0x2002 is taken on A.
    other = sa(0x2002, "203.0.113.9", A)
    with pytest.raises(api.AlreadyExists) as exc:
        engine.create_context(outbound=sa(0x9009, A, "203.0.113.9"), inbound=other)
    check(exc, api.AlreadyExists, wfp.FWP_E_ALREADY_EXISTS, "inbound.spi")
    assert len(engine.contexts()) == 1


def test_access_denied(engine: api.Engine) -> None:
    with engine.session("nobody") as s:
        with pytest.raises(api.AccessDenied) as exc:
            s.contexts()
        check(exc, api.AccessDenied, wfp.ERROR_ACCESS_DENIED, "")
        assert isinstance(exc.value, PermissionError)


def test_invalid_key_names_the_field(engine: api.Engine) -> None:
    ab, ba = pair()
    ba["encryption"]["key"] = "00" * 5
    with pytest.raises(api.InvalidArgument) as exc:
        engine.create_context(outbound=ab, inbound=ba)
    check(exc, api.InvalidArgument, wfp.FWP_E_INVALID_PARAMETER, "inbound.encryption.key")
    assert "00" * 5 not in str(exc.value)  # no key material in the message
    assert_nothing_left(engine)


def test_failure_after_create_rolls_everything_back(engine: api.Engine) -> None:
    ab, ba = pair()
    ab["direction"] = "inbound"  # found by the engine, after Create, SetSpi and AddInbound
    with pytest.raises(api.InvalidArgument) as exc:
        engine.create_context(outbound=ab, inbound=ba)
    check(exc, api.InvalidArgument, wfp.FWP_E_INVALID_PARAMETER, "outbound.direction")
    assert_nothing_left(engine)


def test_bundle_fields_are_indexed(engine: api.Engine) -> None:
    ab, ba = pair()
    ah = {"spi": 0x2002, "protocol": "ah", "src": B, "dst": A,
          "integrity": {"algorithm": "hmac-sha384-192", "key": "ab" * 47}}
    with pytest.raises(api.InvalidArgument) as exc:
        engine.create_context(outbound=ab, inbound=[ba, ah])
    check(exc, api.InvalidArgument, wfp.FWP_E_INVALID_PARAMETER, "inbound[1].integrity.key")
    assert_nothing_left(engine)


def test_traffic_mismatch(engine: api.Engine) -> None:
    ab, _ = pair()
    with pytest.raises(api.TrafficMismatch) as exc:
        engine.create_context(outbound=ab, inbound=sa(0x2002, "203.0.113.7", A))
    check(exc, api.TrafficMismatch, wfp.FWP_E_TRAFFIC_MISMATCH, "inbound.src")
    assert isinstance(exc.value, api.InvalidArgument)
    ab, ba = pair()
    ba["mode"] = "tunnel"
    with pytest.raises(api.TrafficMismatch) as exc:
        engine.create_context(outbound=ab, inbound=ba)
    check(exc, api.TrafficMismatch, wfp.FWP_E_TRAFFIC_MISMATCH, "inbound.mode")
    # Step by step, the engine's own check: an SA of another host pair.
    fin = engine.add_ipsec_filter("inbound", local=A, remote=B)
    fout = engine.add_ipsec_filter("outbound", local=A, remote=B)
    ctx = engine.new_context(local=A, remote=B, outbound_filter=fout)
    engine.set_spi(ctx.id, 0x2002, inbound_filter=fin)
    with pytest.raises(api.TrafficMismatch) as exc:
        engine.add_inbound(ctx.id, sa(0x2002, "203.0.113.7", A))
    check(exc, api.TrafficMismatch, wfp.FWP_E_TRAFFIC_MISMATCH, "sa.src")
    assert assert_state(engine, ctx.id, "spi_assigned")


def assert_state(engine: api.Engine, ctx_id: int, state: str) -> bool:
    return engine.context(ctx_id).state == state


def test_invalid_state(engine: api.Engine) -> None:
    fout = engine.add_ipsec_filter("outbound", local=A, remote=B)
    ctx = engine.new_context(local=A, remote=B, outbound_filter=fout)
    with pytest.raises(api.InvalidState) as exc:
        engine.add_outbound(ctx.id, sa(0x1001, A, B))
    check(exc, api.InvalidState, wfp.FWP_E_INCOMPATIBLE_SA_STATE, "state")


def test_in_use(engine: api.Engine) -> None:
    ctx = engine.create_context(outbound=pair()[0], inbound=pair()[1])
    with pytest.raises(api.InUse) as exc:
        engine.delete_filter(ctx.outbound_filter)
    check(exc, api.InUse, wfp.FWP_E_IN_USE, "filter_id")


def test_transaction_errors(engine: api.Engine) -> None:
    ab, ba = pair()
    with engine.session() as s, s.transaction():
        with pytest.raises(api.TransactionError) as exc:
            s.create_context(outbound=ab, inbound=ba)  # C.3: no SA-context call in a txn
        check(exc, api.TransactionError, wfp.FWP_E_TXN_IN_PROGRESS, "")
    with engine.session() as s, s.transaction(read_only=True):
        with pytest.raises(api.TransactionError) as exc:
            s.add_ipsec_filter("outbound", local=A, remote=B)
        check(exc, api.TransactionError, wfp.FWP_E_INCOMPATIBLE_TXN, "")
    assert_nothing_left(engine)


def test_timeout(engine: api.Engine) -> None:
    holding = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with engine.session() as s, s.transaction():
            holding.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    holding.wait(5)
    try:
        with engine.session(wait_timeout=0.05) as s, pytest.raises(api.Timeout) as exc:
            s.add_ipsec_filter("outbound", local=A, remote=B)
        check(exc, api.Timeout, wfp.FWP_E_TIMEOUT, "")
    finally:
        release.set()
        t.join()


def test_session_errors(engine: api.Engine) -> None:
    ab, ba = pair()
    with engine.session(dynamic=True) as s, pytest.raises(api.SessionError) as exc:
        s.create_context(outbound=ab, inbound=ba)
    check(exc, api.SessionError, wfp.FWP_E_DYNAMIC_SESSION_IN_PROGRESS, "")
    assert_nothing_left(engine)  # the filters it made were dynamic, and its close took them
    s = engine.session()
    s.close()
    with pytest.raises(api.SessionError) as exc:
        s.contexts()
    check(exc, api.SessionError, wfp.ERROR_INVALID_HANDLE, "engineHandle")


def test_not_supported(engine: api.Engine) -> None:
    ab, ba = pair()
    ab["selectors"] = [{"protocol": 6}, {"protocol": 17}]
    with pytest.raises(api.NotSupported) as exc:
        engine.create_context(outbound=ab, inbound=ba)
    check(exc, api.NotSupported, wfp.ERROR_NOT_SUPPORTED, "outbound.selectors")


def test_engine_closed() -> None:
    engine = api.Engine()
    engine.close()
    with pytest.raises(api.EngineClosed) as exc:
        engine.contexts()
    check(exc, api.EngineClosed, wfp.EPT_S_NOT_REGISTERED, "")


def test_api_argument_errors(engine: api.Engine) -> None:
    with pytest.raises(api.InvalidArgument) as exc:
        engine.add_ipsec_filter("sideways", local=A)
    check(exc, api.InvalidArgument, wfp.FWP_E_INVALID_PARAMETER, "direction")
    with pytest.raises(api.InvalidArgument) as exc:
        engine.new_context(local="not an address", remote=B, outbound_filter=1)
    check(exc, api.InvalidArgument, wfp.FWP_E_INVALID_PARAMETER, "local")
    with pytest.raises(api.InvalidArgument) as exc:
        engine.create_context(outbound="esp please", inbound={})
    check(exc, api.InvalidArgument, wfp.FWP_E_INVALID_PARAMETER, "outbound")
    with pytest.raises(api.InvalidArgument) as exc:
        engine.create_context(outbound=pair()[0], inbound={"spi": 5})
    check(exc, api.InvalidArgument, wfp.FWP_E_INVALID_PARAMETER, "inbound.protocol")


def test_error_for_covers_unmapped_statuses() -> None:
    err = api.error_for(wfp.FWP_E_KM_CLIENTS_ONLY, "kernel only")
    assert type(err) is api.WfpError and err.status_name == "FWP_E_KM_CLIENTS_ONLY"
    assert api.status_name(0x12345678) == "0x12345678"


def test_engine_as_a_user_without_rights() -> None:
    with api.Engine(user="LAB\\guest") as engine:
        with pytest.raises(api.AccessDenied):
            engine.contexts()
        engine.grant("LAB\\guest", wfp.FWPM_GENERIC_ALL)
        assert engine.contexts() == []

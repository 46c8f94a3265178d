"""The engine's ipsecsa extensions on their own (the Windows face): add_inbound_sas /
add_outbound_sas return statuses like AddInbound1/AddOutbound1 and follow the same state
machine and SPI rule; last_failure names the field; sa_context_view has state and counters."""

from __future__ import annotations

import os

from ipsecsa import wfp
from tests.wfp.helpers import (
    A4,
    B4,
    add_filter,
    addr_conditions,
    bundle,
    gcm_sa,
    ipsec_filter,
    open_engine,
    traffic,
    udp4,
)


def desc(spi: int, src: str, dst: str, **extra: object) -> dict[str, object]:
    d: dict[str, object] = {"spi": spi, "protocol": "esp", "src": src, "dst": dst,
                            "encryption": {"algorithm": "aes-gcm-12",
                                           "key": os.urandom(20).hex()}}
    d.update(extra)
    return d


def prepared(bfe: wfp.Engine) -> tuple[int, int, int]:
    h = open_engine(bfe)
    fin = add_filter(bfe, h, ipsec_filter("inbound", addr_conditions(A4, B4)))
    fout = add_filter(bfe, h, ipsec_filter("outbound", addr_conditions(A4, B4)))
    status, _, ctx = bfe.IPsecSaContextCreate1(h, traffic(A4, B4, fout), None)
    assert status == 0
    getspi = wfp.IPSEC_GETSPI1(inboundIpsecTraffic=traffic(A4, B4, fin),
                               ipVersion=wfp.FWP_IP_VERSION_V4)
    assert bfe.IPsecSaContextSetSpi0(h, ctx, getspi, 0x2002) == 0
    return h, ctx, fout


def test_described_sas_follow_the_same_rules() -> None:
    bfe = wfp.Engine()
    h, ctx, _ = prepared(bfe)
    # The state machine: outbound before inbound.
    assert bfe.add_outbound_sas(h, ctx, [desc(0x1001, A4, B4)]) == \
        wfp.FWP_E_INCOMPATIBLE_SA_STATE
    assert bfe.last_failure().field == "state"
    # The SPI rule (F.5).
    assert bfe.add_inbound_sas(h, ctx, [desc(0x9999, B4, A4)]) == wfp.FWP_E_INVALID_PARAMETER
    assert bfe.last_failure().field == "descriptions[0].spi"
    # The host pair in the call's direction.
    assert bfe.add_inbound_sas(h, ctx, [desc(0x2002, A4, B4)]) == wfp.FWP_E_TRAFFIC_MISMATCH
    assert bfe.last_failure().field == "descriptions[0].src"
    # Shapes: not a list, too many SAs, AH first.
    assert bfe.add_inbound_sas(h, ctx, desc(0x2002, B4, A4)) == wfp.FWP_E_INVALID_PARAMETER
    assert bfe.add_inbound_sas(h, ctx, [desc(0x2002, B4, A4)] * 3) == \
        wfp.FWP_E_INVALID_TRANSFORM_COMBINATION
    assert bfe.add_inbound_sas(h, ctx, None) == wfp.FWP_E_NULL_POINTER
    assert bfe.add_inbound_sas(0x77, ctx, [desc(0x2002, B4, A4)]) == wfp.ERROR_INVALID_HANDLE
    assert bfe.last_failure().field == "engineHandle"
    # Nothing above changed the context; now it works, and a success clears last_failure.
    assert bfe.add_inbound_sas(h, ctx, [desc(0x2002, B4, A4, replay_window=4096)]) == 0
    assert bfe.last_failure() is None
    assert bfe.add_outbound_sas(h, ctx, [desc(0x1001, A4, B4, esn=True)]) == 0
    status, view = bfe.sa_context_view(h, ctx)
    assert status == 0 and view["state"] == "established"
    assert view["inbound"][0]["replay_window"] == 4096 and view["outbound"][0]["esn"]
    assert view["outbound"][0]["encryption"] == "aes-gcm-12"
    # GetById reports what the Windows structures can say.
    status, got = bfe.IPsecSaContextGetById1(h, ctx)
    sa0 = got.outboundSa.saBundle.saList[0]
    assert (sa0.spi, sa0.saTransformType) == (0x1001, wfp.IPSEC_TRANSFORM_ESP_AUTH_AND_CIPHER)
    # Traffic runs and is counted.
    assert bfe.outbound(udp4(A4, B4, b"x")).packet[9] == 50
    assert bfe.sa_context_view(h, ctx)[1]["outbound"][0]["packets"] == 1
    assert bfe.sa_context_views(h)[1][0]["id"] == ctx
    bfe.close()


def test_bundle_and_described_paths_share_the_spi_table() -> None:
    bfe = wfp.Engine()
    h, ctx, fout = prepared(bfe)
    assert bfe.IPsecSaContextAddInbound1(h, ctx, bundle(gcm_sa(0x2002, os.urandom(20)))) == 0
    # A second context for the same host with the same SetSpi SPI is refused either way.
    status, _, ctx2 = bfe.IPsecSaContextCreate1(h, traffic(A4, B4, fout), None)
    assert status == 0
    status, fin = bfe.FwpmFilterGetById0(h, fout - 1)
    assert status == 0
    getspi = wfp.IPSEC_GETSPI1(inboundIpsecTraffic=traffic(A4, B4, fin.filterId),
                               ipVersion=wfp.FWP_IP_VERSION_V4)
    assert bfe.IPsecSaContextSetSpi0(h, ctx2, getspi, 0x2002) == wfp.FWP_E_ALREADY_EXISTS
    assert bfe.last_failure().field == "inboundSpi"
    bfe.close()
    assert bfe.add_inbound_sas(h, ctx, [desc(0x2002, B4, A4)]) == wfp.EPT_S_NOT_REGISTERED
    assert bfe.last_failure().status == wfp.EPT_S_NOT_REGISTERED

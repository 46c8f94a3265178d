"""Microsoft's manual-keying sample (DOC ``w32: manual-sa-keying``, MicrosoftDocs/win32
``desktop-src/FWP/manual-sa-keying.md``) translated call for call to this API.

The sample's two functions run on both hosts: ``AddInboundSa`` (two transport-layer filters with
the IPsec callouts, IPsecSaContextCreate0 with the outbound filter, IPsecSaContextGetSpi0 with
the inbound filter, IPsecSaContextAddInbound0 with an AH HMAC-SHA1-96 SA) and, once the peers
have exchanged SPIs and keys out of band, ``AddOutboundSa`` (IPsecSaContextAddOutbound0 with the
peer's SPI and key). Cleanup is ``DeleteSaContextAndFilters``: DeleteById first, then the
outbound filter, then the inbound one. The version-0 structures (IPSEC_TRAFFIC0, IPSEC_GETSPI0,
IPSEC_SA_BUNDLE0) are the sample's.

Two translation notes: the sample feeds ``inet_addr()`` results (network order) to filters and
traffic alike, which is only self-consistent (reference F.12); here addresses are host-order
numbers so that real packets match. And ``providerKey`` is NULL: the sample's PROVIDER_KEY is
never registered by the sample itself.
"""

from __future__ import annotations

import os
from typing import Any

from ipsecsa import wfp

from .helpers import A4, B4, ip4, udp4


def DeleteSaContextAndFilters(engine: wfp.Engine, h: int, inFilterId: int, outFilterId: int,
                              saId: int) -> list[int]:
    results = []
    if saId != 0:
        results.append(engine.IPsecSaContextDeleteById0(h, saId))
    if outFilterId != 0:
        results.append(engine.FwpmFilterDeleteById0(h, outFilterId))
    if inFilterId != 0:
        results.append(engine.FwpmFilterDeleteById0(h, inFilterId))
    return results


def AddInboundSa(engine: wfp.Engine, h: int, filterName: str, providerKey: Any, localAddr: int,
                 remoteAddr: int, authKey: wfp.FWP_BYTE_BLOB
                 ) -> tuple[int, int, int, int, int]:
    """Returns (result, inFilterId, outFilterId, saId, spi)."""
    tmpInFilterId = tmpOutFilterId = tmpSaId = 0
    spi = 0
    conds = [wfp.FWPM_FILTER_CONDITION0(), wfp.FWPM_FILTER_CONDITION0()]
    conds[0].fieldKey = wfp.FWPM_CONDITION_IP_LOCAL_ADDRESS
    conds[0].matchType = wfp.FWP_MATCH_EQUAL
    conds[0].conditionValue.type = wfp.FWP_UINT32
    conds[0].conditionValue.uint32 = localAddr
    conds[1].fieldKey = wfp.FWPM_CONDITION_IP_REMOTE_ADDRESS
    conds[1].matchType = wfp.FWP_MATCH_EQUAL
    conds[1].conditionValue.type = wfp.FWP_UINT32
    conds[1].conditionValue.uint32 = remoteAddr

    filter = wfp.FWPM_FILTER0()  # memset(&filter, 0, sizeof(filter))
    filter.displayData.name = filterName
    filter.providerKey = providerKey
    filter.numFilterConditions = 2
    filter.filterCondition = conds
    filter.action.type = wfp.FWP_ACTION_CALLOUT_TERMINATING

    result = 0
    try:
        filter.layerKey = wfp.FWPM_LAYER_INBOUND_TRANSPORT_V4
        filter.action.calloutKey = wfp.FWPM_CALLOUT_IPSEC_INBOUND_TRANSPORT_V4
        result, tmpInFilterId = engine.FwpmFilterAdd0(h, filter, None)
        if result != wfp.ERROR_SUCCESS:
            return result, 0, 0, 0, 0

        filter.layerKey = wfp.FWPM_LAYER_OUTBOUND_TRANSPORT_V4
        filter.action.calloutKey = wfp.FWPM_CALLOUT_IPSEC_OUTBOUND_TRANSPORT_V4
        result, tmpOutFilterId = engine.FwpmFilterAdd0(h, filter, None)
        if result != wfp.ERROR_SUCCESS:
            return result, 0, 0, 0, 0

        outTraffic = wfp.IPSEC_TRAFFIC0()
        outTraffic.ipVersion = wfp.FWP_IP_VERSION_V4
        outTraffic.localV4Address = localAddr
        outTraffic.remoteV4Address = remoteAddr
        outTraffic.trafficType = wfp.IPSEC_TRAFFIC_TYPE_TRANSPORT
        outTraffic.ipsecFilterId = tmpOutFilterId
        result, _inbound_filter_id, tmpSaId = engine.IPsecSaContextCreate0(h, outTraffic)
        if result != wfp.ERROR_SUCCESS:
            return result, 0, 0, 0, 0

        getSpi = wfp.IPSEC_GETSPI0()
        getSpi.inboundIpsecTraffic.ipVersion = wfp.FWP_IP_VERSION_V4
        getSpi.inboundIpsecTraffic.localV4Address = localAddr
        getSpi.inboundIpsecTraffic.remoteV4Address = remoteAddr
        getSpi.inboundIpsecTraffic.trafficType = wfp.IPSEC_TRAFFIC_TYPE_TRANSPORT
        getSpi.inboundIpsecTraffic.ipsecFilterId = tmpInFilterId
        getSpi.ipVersion = wfp.FWP_IP_VERSION_V4
        result, spi = engine.IPsecSaContextGetSpi0(h, tmpSaId, getSpi)
        if result != wfp.ERROR_SUCCESS:
            return result, 0, 0, 0, 0

        info = wfp.IPSEC_SA_AUTH_INFORMATION0()
        info.authTransform.authTransformId = wfp.IPSEC_AUTH_TRANSFORM_ID_HMAC_SHA_1_96
        info.authKey = authKey
        sa = wfp.IPSEC_SA0()
        sa.spi = spi
        sa.saTransformType = wfp.IPSEC_TRANSFORM_AH
        sa.ahInformation = info
        bundle = wfp.IPSEC_SA_BUNDLE0()
        bundle.numSAs = 1
        bundle.saList = [sa]
        bundle.ipVersion = wfp.FWP_IP_VERSION_V4
        result = engine.IPsecSaContextAddInbound0(h, tmpSaId, bundle)
        return result, tmpInFilterId, tmpOutFilterId, tmpSaId, spi
    finally:
        if result != wfp.ERROR_SUCCESS:
            DeleteSaContextAndFilters(engine, h, tmpInFilterId, tmpOutFilterId, tmpSaId)


def AddOutboundSa(engine: wfp.Engine, h: int, saId: int, spi: int,
                  authKey: wfp.FWP_BYTE_BLOB) -> int:
    info = wfp.IPSEC_SA_AUTH_INFORMATION0()
    info.authTransform.authTransformId = wfp.IPSEC_AUTH_TRANSFORM_ID_HMAC_SHA_1_96
    info.authKey = authKey
    sa = wfp.IPSEC_SA0()
    sa.spi = spi
    sa.saTransformType = wfp.IPSEC_TRANSFORM_AH
    sa.ahInformation = info
    bundle = wfp.IPSEC_SA_BUNDLE0()
    bundle.numSAs = 1
    bundle.saList = [sa]
    bundle.ipVersion = wfp.FWP_IP_VERSION_V4
    return engine.IPsecSaContextAddOutbound0(h, saId, bundle)


def test_the_sample_on_two_hosts() -> None:
    host_a, host_b = wfp.Engine(), wfp.Engine()
    _, ha = host_a.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, None, None)
    _, hb = host_b.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, None, None)
    key_a = wfp.FWP_BYTE_BLOB(size=20, data=os.urandom(20))  # A's inbound key
    key_b = wfp.FWP_BYTE_BLOB(size=20, data=os.urandom(20))
    ra, in_a, out_a, sa_a, spi_a = AddInboundSa(host_a, ha, "manual A", None, ip4(A4), ip4(B4),
                                                key_a)
    rb, in_b, out_b, sa_b, spi_b = AddInboundSa(host_b, hb, "manual B", None, ip4(B4), ip4(A4),
                                                key_b)
    assert (ra, rb) == (0, 0)
    # Out of band: each peer's inbound SPI and key become the other's outbound ones.
    assert AddOutboundSa(host_a, ha, sa_a, spi_b, key_b) == 0
    assert AddOutboundSa(host_b, hb, sa_b, spi_a, key_a) == 0

    p = udp4(A4, B4, b"authenticated, not encrypted")
    wire = host_a.outbound(p).packet
    assert wire[9] == 51 and wire[-len(p) + 20:] == p[20:]  # AH, payload in clear
    assert host_b.inbound(wire).packet == p
    q = udp4(B4, A4, b"reply")
    assert host_a.inbound(host_b.outbound(q).packet).packet == q

    assert DeleteSaContextAndFilters(host_a, ha, in_a, out_a, sa_a) == [0, 0, 0]
    assert DeleteSaContextAndFilters(host_b, hb, in_b, out_b, sa_b) == [0, 0, 0]
    assert host_a.outbound(p).packet == p  # no filter left: clear text passes
    assert host_a.FwpmEngineClose0(ha) == 0
    host_a.close()
    host_b.close()


def test_the_samples_cleanup_of_partial_results() -> None:
    """AddInboundSa's CLEANUP path: a failure after the filters were added removes them."""
    engine = wfp.Engine()
    _, h = engine.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, None, None)
    bad_key = wfp.FWP_BYTE_BLOB(size=19, data=bytes(19))  # HMAC-SHA1 takes 20 bytes (F.6)
    result, *_ = AddInboundSa(engine, h, "manual", None, ip4(A4), ip4(B4), bad_key)
    assert result == wfp.FWP_E_INVALID_AUTH_TRANSFORM
    _, eh = engine.FwpmFilterCreateEnumHandle0(h, None)
    assert engine.FwpmFilterEnum0(h, eh, 10) == (0, [], 0)
    _, eh = engine.IPsecSaContextCreateEnumHandle0(h, None)
    assert engine.IPsecSaContextEnum0(h, eh, 10) == (0, [], 0)
    engine.close()

"""Shared builders for the WFP tests: filters, traffic and bundles as a keying module makes them,
and packets built with the packet layer's own helpers (no ipsecsa engine code involved)."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from ipsecsa import wfp

A4, B4 = "192.0.2.1", "198.51.100.2"
A6, B6 = "2001:db8::1", "2001:db8:1::2"


def ip4(text: str) -> int:
    """A host-order IPv4 address, as WFP's UINT32 fields take it (reference F.12)."""
    return int(ipaddress.IPv4Address(text))


def ip6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def open_engine(bfe: wfp.Engine, identity: Any = None, session: Any = None) -> int:
    status, h = bfe.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, identity, session)
    assert status == wfp.ERROR_SUCCESS, hex(status)
    return h


def addr_conditions(local: str, remote: str) -> list[wfp.FWPM_FILTER_CONDITION0]:
    if ":" in local:
        return [
            wfp.FWPM_FILTER_CONDITION0(
                fieldKey=wfp.FWPM_CONDITION_IP_LOCAL_ADDRESS, matchType=wfp.FWP_MATCH_EQUAL,
                conditionValue=wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_BYTE_ARRAY16_TYPE,
                                                        byteArray16=ip6(local))),
            wfp.FWPM_FILTER_CONDITION0(
                fieldKey=wfp.FWPM_CONDITION_IP_REMOTE_ADDRESS, matchType=wfp.FWP_MATCH_EQUAL,
                conditionValue=wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_BYTE_ARRAY16_TYPE,
                                                        byteArray16=ip6(remote))),
        ]
    return [
        wfp.FWPM_FILTER_CONDITION0(
            fieldKey=wfp.FWPM_CONDITION_IP_LOCAL_ADDRESS, matchType=wfp.FWP_MATCH_EQUAL,
            conditionValue=wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_UINT32, uint32=ip4(local))),
        wfp.FWPM_FILTER_CONDITION0(
            fieldKey=wfp.FWPM_CONDITION_IP_REMOTE_ADDRESS, matchType=wfp.FWP_MATCH_EQUAL,
            conditionValue=wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_UINT32, uint32=ip4(remote))),
    ]


def ipsec_filter(direction: str, conditions: list[Any], v6: bool = False,
                 tunnel: bool = False, name: str = "ipsecsa test", **kw: Any) -> wfp.FWPM_FILTER0:
    v = "V6" if v6 else "V4"
    kind = "TUNNEL" if tunnel else "TRANSPORT"
    layer = getattr(wfp, f"FWPM_LAYER_{direction.upper()}_TRANSPORT_{v}")
    callout = getattr(wfp, f"FWPM_CALLOUT_IPSEC_{direction.upper()}_{kind}_{v}")
    return wfp.FWPM_FILTER0(
        displayData=wfp.FWPM_DISPLAY_DATA0(name=name), layerKey=layer,
        filterCondition=conditions,
        action=wfp.FWPM_ACTION0(type=wfp.FWP_ACTION_CALLOUT_TERMINATING, calloutKey=callout),
        **kw)


def add_filter(bfe: wfp.Engine, h: int, flt: wfp.FWPM_FILTER0) -> int:
    status, fid = bfe.FwpmFilterAdd0(h, flt, None)
    assert status == wfp.ERROR_SUCCESS, hex(status)
    return fid


def traffic(local: str, remote: str, filter_id: int, tunnel: bool = False,
            **kw: Any) -> wfp.IPSEC_TRAFFIC1:
    if ":" in local:
        return wfp.IPSEC_TRAFFIC1(ipVersion=wfp.FWP_IP_VERSION_V6, localV6Address=ip6(local),
                                  remoteV6Address=ip6(remote),
                                  trafficType=wfp.IPSEC_TRAFFIC_TYPE_TUNNEL if tunnel
                                  else wfp.IPSEC_TRAFFIC_TYPE_TRANSPORT,
                                  ipsecFilterId=filter_id, **kw)
    return wfp.IPSEC_TRAFFIC1(ipVersion=wfp.FWP_IP_VERSION_V4, localV4Address=ip4(local),
                              remoteV4Address=ip4(remote),
                              trafficType=wfp.IPSEC_TRAFFIC_TYPE_TUNNEL if tunnel
                              else wfp.IPSEC_TRAFFIC_TYPE_TRANSPORT,
                              ipsecFilterId=filter_id, **kw)


def gcm_sa(spi: int, key: bytes) -> wfp.IPSEC_SA0:
    """ESP AES-128-GCM (16-byte ICV): key blob = 16-byte key ‖ 4-byte salt (F.6)."""
    blob = wfp.FWP_BYTE_BLOB(size=len(key), data=key)
    info = wfp.IPSEC_SA_AUTH_AND_CIPHER_INFORMATION0(
        saCipherInformation=wfp.IPSEC_SA_CIPHER_INFORMATION0(
            cipherTransform=wfp.IPSEC_CIPHER_TRANSFORM0(
                cipherTransformId=wfp.IPSEC_CIPHER_TRANSFORM_ID_GCM_AES_128),
            cipherKey=blob),
        saAuthInformation=wfp.IPSEC_SA_AUTH_INFORMATION0(
            authTransform=wfp.IPSEC_AUTH_TRANSFORM0(
                authTransformId=wfp.IPSEC_AUTH_TRANSFORM_ID_GCM_AES_128),
            authKey=wfp.FWP_BYTE_BLOB()))
    return wfp.IPSEC_SA0(spi=spi, saTransformType=wfp.IPSEC_TRANSFORM_ESP_AUTH_AND_CIPHER,
                         espAuthAndCipherInformation=info)


def cbc_sha1_sa(spi: int, ekey: bytes, akey: bytes, cipher: Any = None) -> wfp.IPSEC_SA0:
    info = wfp.IPSEC_SA_AUTH_AND_CIPHER_INFORMATION0(
        saCipherInformation=wfp.IPSEC_SA_CIPHER_INFORMATION0(
            cipherTransform=wfp.IPSEC_CIPHER_TRANSFORM0(
                cipherTransformId=cipher or wfp.IPSEC_CIPHER_TRANSFORM_ID_AES_128),
            cipherKey=wfp.FWP_BYTE_BLOB(size=len(ekey), data=ekey)),
        saAuthInformation=wfp.IPSEC_SA_AUTH_INFORMATION0(
            authTransform=wfp.IPSEC_AUTH_TRANSFORM0(
                authTransformId=wfp.IPSEC_AUTH_TRANSFORM_ID_HMAC_SHA_1_96),
            authKey=wfp.FWP_BYTE_BLOB(size=len(akey), data=akey)))
    return wfp.IPSEC_SA0(spi=spi, saTransformType=wfp.IPSEC_TRANSFORM_ESP_AUTH_AND_CIPHER,
                         espAuthAndCipherInformation=info)


def ah_sa(spi: int, akey: bytes, auth_id: Any = None) -> wfp.IPSEC_SA0:
    return wfp.IPSEC_SA0(spi=spi, saTransformType=wfp.IPSEC_TRANSFORM_AH,
                         ahInformation=wfp.IPSEC_SA_AUTH_INFORMATION0(
                             authTransform=wfp.IPSEC_AUTH_TRANSFORM0(
                                 authTransformId=auth_id
                                 or wfp.IPSEC_AUTH_TRANSFORM_ID_HMAC_SHA_1_96),
                             authKey=wfp.FWP_BYTE_BLOB(size=len(akey), data=akey)))


def bundle(*sas: wfp.IPSEC_SA0, v6: bool = False, **kw: Any) -> wfp.IPSEC_SA_BUNDLE1:
    return wfp.IPSEC_SA_BUNDLE1(saList=list(sas), ipVersion=wfp.FWP_IP_VERSION_V6 if v6
                                else wfp.FWP_IP_VERSION_V4, **kw)


def udp4(src: str, dst: str, payload: bytes, sport: int = 5000, dport: int = 6000,
         ttl: int = 64) -> bytes:
    """An IPv4/UDP packet with correct checksums (header checksum by hand, RFC 791/768)."""
    udp_len = 8 + len(payload)
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    pseudo = s + d + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + payload
    csum = _csum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0x1234, 0, ttl, 17, 0, s, d)
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    return hdr + udp


def udp6(src: str, dst: str, payload: bytes, sport: int = 5000, dport: int = 6000) -> bytes:
    udp_len = 8 + len(payload)
    s, d = ip6(src), ip6(dst)
    pseudo = s + d + struct.pack("!IxxxB", udp_len, 17)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + payload
    csum = _csum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    return struct.pack("!IHBB16s16s", 0x60000000, udp_len, 17, 64, s, d) + udp


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# ---------------------------------------------------------------- filters and conditions (tests
# of sessions, transactions, filters and access)
ALL_ACTIONS = 0xFFFFFFFF  # FWPM_FILTER_ENUM_TEMPLATE0.actionMask: "ignore the action" (C.7.1)


def cond(field: Any, match: Any, value: Any) -> wfp.FWPM_FILTER_CONDITION0:
    return wfp.FWPM_FILTER_CONDITION0(fieldKey=field, matchType=match, conditionValue=value)


def v_u8(v: int) -> wfp.FWP_CONDITION_VALUE0:
    return wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_UINT8, uint8=v)


def v_u16(v: int) -> wfp.FWP_CONDITION_VALUE0:
    return wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_UINT16, uint16=v)


def v_u32(v: int) -> wfp.FWP_CONDITION_VALUE0:
    return wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_UINT32, uint32=v)


def v_ip4(text: str) -> wfp.FWP_CONDITION_VALUE0:
    return v_u32(ip4(text))


def v_ip6(text: str) -> wfp.FWP_CONDITION_VALUE0:
    return wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_BYTE_ARRAY16_TYPE, byteArray16=ip6(text))


def v_mask4(addr: str, mask: int) -> wfp.FWP_CONDITION_VALUE0:
    return wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_V4_ADDR_MASK,
                                    v4AddrMask=wfp.FWP_V4_ADDR_AND_MASK(addr=ip4(addr), mask=mask))


def v_mask6(addr: str, plen: int) -> wfp.FWP_CONDITION_VALUE0:
    return wfp.FWP_CONDITION_VALUE0(
        type=wfp.FWP_V6_ADDR_MASK,
        v6AddrMask=wfp.FWP_V6_ADDR_AND_MASK(addr=ip6(addr), prefixLength=plen))


def v_range(low: wfp.FWP_VALUE0, high: wfp.FWP_VALUE0) -> wfp.FWP_CONDITION_VALUE0:
    return wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_RANGE_TYPE,
                                    rangeValue=wfp.FWP_RANGE0(valueLow=low, valueHigh=high))


def val(kind: Any, **kw: Any) -> wfp.FWP_VALUE0:
    """An FWP_VALUE0 (range bounds, weights): ``val(wfp.FWP_UINT16, uint16=80)``."""
    return wfp.FWP_VALUE0(type=kind, **kw)


def plain_filter(direction: str, action: Any, conditions: list[Any] | None = None,
                 v6: bool = False, name: str = "ipsecsa test", **kw: Any) -> wfp.FWPM_FILTER0:
    """A BLOCK or PERMIT filter at the inbound/outbound transport layer."""
    layer = getattr(wfp, f"FWPM_LAYER_{direction.upper()}_TRANSPORT_{'V6' if v6 else 'V4'}")
    return wfp.FWPM_FILTER0(displayData=wfp.FWPM_DISPLAY_DATA0(name=name), layerKey=layer,
                            filterCondition=list(conditions or []),
                            action=wfp.FWPM_ACTION0(type=action), **kw)


def all_filters(bfe: wfp.Engine, h: int) -> list[wfp.FWPM_FILTER0]:
    """Every filter, boot-time ones included, by id: the 'nothing changed' probe."""
    tpl = wfp.FWPM_FILTER_ENUM_TEMPLATE0(flags=wfp.FWP_FILTER_ENUM_FLAG_INCLUDE_BOOTTIME,
                                         actionMask=ALL_ACTIONS)
    status, eh = bfe.FwpmFilterCreateEnumHandle0(h, tpl)
    assert status == wfp.ERROR_SUCCESS, hex(status)
    status, entries, n = bfe.FwpmFilterEnum0(h, eh, 100000)
    assert status == wfp.ERROR_SUCCESS, hex(status)
    assert n == len(entries)
    assert bfe.FwpmFilterDestroyEnumHandle0(h, eh) == wfp.ERROR_SUCCESS
    return sorted(entries, key=lambda f: f.filterId)


def all_contexts(bfe: wfp.Engine, h: int) -> list[Any]:
    status, eh = bfe.IPsecSaContextCreateEnumHandle0(h, None)
    assert status == wfp.ERROR_SUCCESS, hex(status)
    status, entries, n = bfe.IPsecSaContextEnum1(h, eh, 100000)
    assert status == wfp.ERROR_SUCCESS, hex(status)
    assert n == len(entries)
    assert bfe.IPsecSaContextDestroyEnumHandle0(h, eh) == wfp.ERROR_SUCCESS
    return entries


def ipsec_pair(bfe: wfp.Engine, h: int, local: str = A4, remote: str = B4) -> tuple[int, int]:
    """The manual-keying filter pair (C.1 step 1): (inbound filter id, outbound filter id)."""
    fin = add_filter(bfe, h, ipsec_filter("inbound", addr_conditions(local, remote),
                                          v6=":" in local))
    fout = add_filter(bfe, h, ipsec_filter("outbound", addr_conditions(local, remote),
                                           v6=":" in local))
    return fin, fout


def create_context(bfe: wfp.Engine, h: int, fout: int, local: str = A4,
                   remote: str = B4) -> int:
    status, _, ctx_id = bfe.IPsecSaContextCreate1(h, traffic(local, remote, fout), None)
    assert status == wfp.ERROR_SUCCESS, hex(status)
    return ctx_id


def icmp4(src: str, dst: str, icmp_type: int, code: int, payload: bytes = b"ping") -> bytes:
    """An IPv4/ICMP packet with correct checksums."""
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    body = struct.pack("!BBHHH", icmp_type, code, 0, 1, 1) + payload
    body = body[:2] + struct.pack("!H", _csum(body)) + body[4:]
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0x4321, 0, 64, 1, 0, s, d)
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    return hdr + body


def ipv4_packet(src: str, dst: str, protocol: int, payload: bytes) -> bytes:
    """An IPv4 packet of any protocol (header checksum by hand), e.g. GRE without ports."""
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0x5678, 0, 64, protocol, 0,
                      s, d)
    return hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:] + payload


def icmp6(src: str, dst: str, icmp_type: int, code: int, payload: bytes = b"ping") -> bytes:
    """An IPv6/ICMPv6 packet with its pseudo-header checksum (RFC 4443)."""
    s, d = ip6(src), ip6(dst)
    body = struct.pack("!BBHHH", icmp_type, code, 0, 1, 1) + payload
    pseudo = s + d + struct.pack("!IxxxB", len(body), 58)
    body = body[:2] + struct.pack("!H", _csum(pseudo + body)) + body[4:]
    return struct.pack("!IHBB16s16s", 0x60000000, len(body), 58, 64, s, d) + body


def assert_memory_flat(run: Any, rounds: int = 30, limit: int = 64 * 1024) -> None:
    """``run()`` ``rounds`` times more after a warm-up must not grow Python's traced memory by
    ``limit`` bytes or more: a C extension that leaks a reference per call fails this."""
    import tracemalloc

    run()
    tracemalloc.start()
    try:
        run()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(rounds):
            run()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert grown < limit, f"{grown} bytes more after {rounds} runs"


def run_without_pure_python_flag(code: str) -> str:
    """Run ``code`` in a fresh interpreter (the environment without ``IPSECSA_PURE_PYTHON``,
    so that only what ``code`` blocks is off) and return its standard output; a non-zero
    exit fails the test with its standard error."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "IPSECSA_PURE_PYTHON"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()

"""Child process of test_crash.py: works on a durable engine until it is killed with SIGKILL.

It reports on stdout, one line per fact, flushed *after* the engine acknowledged it:
``sent SPI SEQ`` for every ESP packet the engine emitted, ``made CID``, ``deleted CID``,
``expired CID``, and ``deleting CID`` / ``expiring CID`` just *before* those calls (a kill can
land after the call committed and before its line is written). The parent kills it at a random moment and checks the store against what was
reported (see test_crash.py)."""

from __future__ import annotations

import ipaddress
import os
import random
import struct
import sys

from ipsecsa import wfp

A = "192.0.2.1"


def v4(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def remote_of(n: int) -> str:
    return str(ipaddress.IPv4Address("10.0.0.0") + n)


def udp(dst: str) -> bytes:
    payload = b"crash test"
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 1, 0, 64, 17, 0,
                      ipaddress.IPv4Address(A).packed, ipaddress.IPv4Address(dst).packed)
    s = sum(struct.unpack("!10H", hdr))
    s = ~((s & 0xFFFF) + (s >> 16)) & 0xFFFF
    return hdr[:10] + struct.pack("!H", s) + hdr[12:] + struct.pack(
        "!HHHH", 1000, 2000, 8 + len(payload), 0) + payload


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def make(bfe: wfp.Engine, h: int, n: int, rnd: random.Random) -> int | None:
    remote = remote_of(n)
    conds = [wfp.FWPM_FILTER_CONDITION0(
        fieldKey=k, matchType=wfp.FWP_MATCH_EQUAL,
        conditionValue=wfp.FWP_CONDITION_VALUE0(type=wfp.FWP_UINT32, uint32=v4(a)))
        for k, a in ((wfp.FWPM_CONDITION_IP_LOCAL_ADDRESS, A),
                     (wfp.FWPM_CONDITION_IP_REMOTE_ADDRESS, remote))]
    ids = []
    for inbound in (True, False):
        d = "INBOUND" if inbound else "OUTBOUND"
        st, fid = bfe.FwpmFilterAdd0(h, wfp.FWPM_FILTER0(
            displayData=wfp.FWPM_DISPLAY_DATA0(name=f"crash {n}"),
            layerKey=getattr(wfp, f"FWPM_LAYER_{d}_TRANSPORT_V4"), filterCondition=conds,
            action=wfp.FWPM_ACTION0(type=wfp.FWP_ACTION_CALLOUT_TERMINATING,
                                    calloutKey=getattr(wfp, f"FWPM_CALLOUT_IPSEC_{d}_TRANSPORT_V4"))),
            None)
        if st:
            return None
        ids.append(fid)
    t = wfp.IPSEC_TRAFFIC1(ipVersion=0, localV4Address=v4(A), remoteV4Address=v4(remote),
                           ipsecFilterId=ids[1])
    st, _, cid = bfe.IPsecSaContextCreate1(h, t, None)
    gs = wfp.IPSEC_GETSPI1(inboundIpsecTraffic=wfp.IPSEC_TRAFFIC1(
        ipVersion=0, localV4Address=v4(A), remoteV4Address=v4(remote), ipsecFilterId=ids[0]))
    st, spi = bfe.IPsecSaContextGetSpi1(h, cid, gs)

    def bundle(spi: int) -> wfp.IPSEC_SA_BUNDLE1:
        key = os.urandom(20)
        info = wfp.IPSEC_SA_AUTH_AND_CIPHER_INFORMATION0(
            saCipherInformation=wfp.IPSEC_SA_CIPHER_INFORMATION0(
                cipherTransform=wfp.IPSEC_CIPHER_TRANSFORM0(
                    cipherTransformId=wfp.IPSEC_CIPHER_TRANSFORM_ID_GCM_AES_128),
                cipherKey=wfp.FWP_BYTE_BLOB(data=key)),
            saAuthInformation=wfp.IPSEC_SA_AUTH_INFORMATION0(authTransform=wfp.IPSEC_AUTH_TRANSFORM0(
                authTransformId=wfp.IPSEC_AUTH_TRANSFORM_ID_GCM_AES_128)))
        return wfp.IPSEC_SA_BUNDLE1(saList=[wfp.IPSEC_SA0(
            spi=spi, saTransformType=wfp.IPSEC_TRANSFORM_ESP_AUTH_AND_CIPHER,
            espAuthAndCipherInformation=info)], ipVersion=0)

    if bfe.IPsecSaContextAddInbound1(h, cid, bundle(spi)):
        return None
    if bfe.IPsecSaContextAddOutbound1(h, cid, bundle(0xD0000000 + n)):
        return None
    return cid


def main() -> int:
    db, seed = sys.argv[1], int(sys.argv[2])
    rnd = random.Random(seed)
    if seed % 2:
        # Half the runs apply the journal to the tables every few writes and start it over
        # often, so that kills also land inside applies and restarts (the defaults make both
        # rare in a run this short).
        from ipsecsa.store import sqlite as store

        store.APPLY_OPS = 5
        store.JOURNAL_RESTART_BYTES = 30000
    bfe = wfp.Engine(database=db)
    _, h = bfe.FwpmEngineOpen0(None, wfp.RPC_C_AUTHN_WINNT, None, None)
    say("ready")
    n = rnd.randrange(1, 1 << 20)
    while True:
        live = {cid: c for cid, c in bfe._contexts.items()}
        established = [cid for cid, c in live.items() if c.outbound_bundle is not None]
        r = rnd.random()
        if established and r < 0.6:
            cid = rnd.choice(established)
            remote = ipaddress.IPv4Address(live[cid].remote)
            for _ in range(20):
                res = bfe.outbound(udp(str(remote)))
                if res.packet is None or res.packet[9] != 50:
                    break
                spi, seq = struct.unpack_from("!II", res.packet, 20)
                say(f"sent {spi} {seq}")
        elif r < 0.8 and len(live) < 12:
            n += 1
            cid = make(bfe, h, n, rnd)
            if cid is not None:
                say(f"made {cid}")
        elif live and r < 0.93:
            cid = rnd.choice(list(live))
            say(f"deleting {cid}")  # before the call: a kill may land after its commit
            if bfe.IPsecSaContextDeleteById0(h, cid) == 0:
                say(f"deleted {cid}")
        elif established:
            cid = rnd.choice(established)
            say(f"expiring {cid}")
            if bfe.IPsecSaContextExpire0(h, cid) == 0:
                say(f"expired {cid}")


if __name__ == "__main__":
    raise SystemExit(main())

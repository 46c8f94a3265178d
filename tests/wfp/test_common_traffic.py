"""``Engine._traffic``'s one-pass reading of the common IPSEC_TRAFFIC1 (``_common_traffic``)
against the full checks it shortcuts (``Engine._traffic_checked``, F.10's order), on random
traffics, valid and not: every field from a palette of valid values, IntEnums, bools, negative
and too wide integers, None, strings, bytearrays and byte strings of the wrong length, fields
deleted, extra attributes, and the version-0 structure. The outcome must be the same: the same
validated traffic (its private copy equal to the caller's and not the same object), or the same
status with the same detail and field, or the same exception type.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from ipsecsa import wfp
from ipsecsa.wfp import constants as C
from ipsecsa.wfp.engine import _common_traffic
from ipsecsa.wfp.status import Fail

_FIELDS = ["ipVersion", "localV4Address", "localV6Address", "remoteV4Address",
           "remoteV6Address", "trafficType", "ipsecFilterId", "tunnelPolicyId", "remotePort",
           "localPort", "ipProtocol", "localIfLuid", "realIfProfileId"]


def _int(rng: random.Random, bits: int) -> Any:
    return rng.choice([0, 0, 1, 6, rng.getrandbits(bits), (1 << bits) - 1, 1 << bits, -1, True,
                       False, None, "1", C.FWP_IP_VERSION_V6, C.IPSEC_TRAFFIC_TYPE_TUNNEL,
                       C.FWP_UINT8])


def _traffic(rng: random.Random) -> Any:
    cls = wfp.IPSEC_TRAFFIC1 if rng.random() < 0.9 else wfp.IPSEC_TRAFFIC0
    t = cls(ipVersion=rng.choice([C.FWP_IP_VERSION_V4, C.FWP_IP_VERSION_V6, 0, 1]),
            trafficType=rng.choice([C.IPSEC_TRAFFIC_TYPE_TRANSPORT, C.IPSEC_TRAFFIC_TYPE_TUNNEL,
                                    0, 1]),
            localV4Address=rng.getrandbits(32) | 1, remoteV4Address=rng.getrandbits(32) | 1,
            localV6Address=rng.randbytes(16), remoteV6Address=rng.randbytes(16),
            ipsecFilterId=rng.choice([0, 0x10000 + rng.getrandbits(8)]),
            tunnelPolicyId=rng.choice([0, 0, 0x10000 + rng.getrandbits(8)]))
    if cls is wfp.IPSEC_TRAFFIC1 and rng.random() < 0.5:
        t.remotePort, t.localPort, t.ipProtocol = (rng.choice([0, 500, 4500]),
                                                   rng.choice([0, 500]), rng.choice([0, 6, 17]))
    for _ in range(rng.choice([0, 0, 0, 1, 2])):  # something unusual
        name = rng.choice(_FIELDS)
        what = rng.random()
        if what < 0.15 and name in vars(t):
            delattr(t, name)
        elif what < 0.3:
            setattr(t, name, rng.choice([bytes(16), bytearray(rng.randbytes(16)),
                                         rng.randbytes(15), b"", None, 0]))
        elif what < 0.35:
            t.__dict__["extra"] = [1]
        else:
            bits = {"remotePort": 16, "localPort": 16, "ipProtocol": 8, "localIfLuid": 64,
                    "ipsecFilterId": 64, "tunnelPolicyId": 64}.get(name, 32)
            setattr(t, name, _int(rng, bits))
    return t


def _outcome(fn: Any, t: Any) -> Any:
    try:
        return ("ok", fn(t, True, "outbound"))
    except Fail as exc:
        return ("fail", exc.status, exc.detail, exc.field)
    except Exception as exc:  # noqa: BLE001 - the type is what is compared
        return ("raised", type(exc))


@pytest.mark.parametrize("seed", range(8))
def test_the_common_traffic_is_what_the_full_checks_give(seed: int) -> None:
    bfe = wfp.Engine()
    try:
        rng = random.Random(f"traffic/{seed}")
        fast = 0
        for _ in range(500):
            t = _traffic(rng)
            got, want = _outcome(bfe._traffic, t), _outcome(bfe._traffic_checked, t)
            assert got == want, t
            if got[0] == "ok":
                assert got[1].stored is not t and got[1].stored == want[1].stored
                assert type(got[1].stored) is wfp.IPSEC_TRAFFIC1
            fast += _common_traffic(t) is not None
        assert fast > 100  # the shortcut was taken, and not only on trivial input
    finally:
        bfe.close()

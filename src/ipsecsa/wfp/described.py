"""SA descriptions (``sa-format.md``) as an SA context's bundle: an ipsecsa extension.

Windows' transform ids cannot say ChaCha20-Poly1305, AES-GCM with an 8- or 12-byte ICV, CCM,
CTR, HMAC-SHA-384/512, ESN, a replay window or TFC padding. The engine's ``add_inbound_sas`` /
``add_outbound_sas`` take the SAs as descriptions instead and install them through the same
path as ``IPsecSaContextAddInbound1``/``AddOutbound1`` (same state machine, same SPI rule). This
module holds the checks that are particular to descriptions; every one names the field at fault
(``descriptions[0].encryption.key``) in the :class:`Fail` it raises.

**ipsecsa's choices** (none of this is Windows):

* A bundle is one SA, or ESP then AH, as for IPSEC_SA_BUNDLE (F.5).
* ``direction`` may be left out (it is the call's); a different one is refused.
* ``src``/``dst`` must be the context's host pair in the call's direction (outbound: local to
  remote), ``mode`` the context's (the AH of a tunnel-mode ESP+AH bundle may say either: it
  covers the packet ESP built, so it runs in transport mode, as in :func:`.sabuild.describe`).
* ``encapsulation`` must be the UDP ports GetSpi/SetSpi asked for, seen in the SA's direction;
  left out, it is filled in from the context.
* The hard ``seconds`` lifetime is timed by the engine's clock like ``lifetimeSeconds`` (reaching
  it behaves like Expire); hard ``bytes``/``packets`` are the data path's limits, like
  ``lifetimeKilobytes``/``lifetimePackets``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence
from typing import Any

from ipsecsa.config import parse_sa
from ipsecsa.config.model import SaConfig, UdpEncapsulation
from ipsecsa.errors import ConfigError
from ipsecsa.wfp import constants as C
from ipsecsa.wfp import types as T
from ipsecsa.wfp.status import Fail

_TRANSFORM = {"esp": C.IPSEC_TRANSFORM_ESP_AUTH_AND_CIPHER, "ah": C.IPSEC_TRANSFORM_AH}


def parse_descriptions(descriptions: Any, direction: str) -> tuple[Any, ...]:
    """The validated configurations (``SaConfig``) of a bundle of descriptions: the checks that
    need no context. An element may be an ``SaConfig`` already (validated when it was made)."""
    if descriptions is None:
        raise Fail(C.FWP_E_NULL_POINTER, "descriptions", "descriptions")
    if isinstance(descriptions, dict) or not isinstance(descriptions, Sequence) \
            or isinstance(descriptions, (str, bytes)):
        raise Fail(C.FWP_E_INVALID_PARAMETER, "descriptions must be a list of SA descriptions",
                   "descriptions")
    if len(descriptions) not in (1, 2):
        raise Fail(C.FWP_E_INVALID_TRANSFORM_COMBINATION,
                   f"{len(descriptions)} SAs: a bundle is 1 or 2 (ESP then AH)", "descriptions")
    configs = []
    for i, obj in enumerate(descriptions):
        where = f"descriptions[{i}]"
        try:
            # A validated SaConfig (the Pythonic API parses the first SA of a bundle for its
            # addresses before it calls here) is taken as it is: parsing it again could only
            # repeat the same checks.
            cfg = obj if type(obj) is SaConfig else parse_sa(obj)
        except ConfigError as exc:
            raise Fail(C.FWP_E_INVALID_PARAMETER, exc.reason,
                       f"{where}.{exc.field}" if exc.field else where) from exc
        if cfg.direction not in (None, direction):
            raise Fail(C.FWP_E_INVALID_PARAMETER, f"a {cfg.direction} SA given to "
                                                  f"add_{direction}_sas", f"{where}.direction")
        configs.append(cfg)
    if len(configs) == 2 and (configs[0].protocol, configs[1].protocol) != ("esp", "ah"):
        raise Fail(C.FWP_E_INVALID_TRANSFORM_COMBINATION, "two SAs must be ESP then AH",
                   "descriptions[1].protocol")
    return tuple(configs)


def fit_to_context(configs: tuple[Any, ...], direction: str, *, tunnel: bool, local: bytes,
                   remote: bytes, spi: int | None, udp_encap: tuple[int, int] | None
                   ) -> tuple[Any, ...]:
    """The configurations checked against the context (host pair, mode, SPI, encapsulation) and
    completed (direction, encapsulation, the AH's mode)."""
    here = ipaddress.ip_address(local)
    there = ipaddress.ip_address(remote)
    want_src, want_dst = (here, there) if direction == "outbound" else (there, here)
    mode = "tunnel" if tunnel else "transport"
    out = []
    for i, cfg in enumerate(configs):
        where = f"descriptions[{i}]"
        for name, have, want in (("src", cfg.src, want_src), ("dst", cfg.dst, want_dst)):
            if have != want:
                raise Fail(C.FWP_E_TRAFFIC_MISMATCH, f"{name} is not the context's "
                                                     f"{direction} {name} {want}",
                           f"{where}.{name}")
        changes: dict[str, Any] = {"direction": direction}
        if cfg.mode != mode:
            if not (tunnel and i == 1 and cfg.protocol == "ah"):
                raise Fail(C.FWP_E_TRAFFIC_MISMATCH, f"a {cfg.mode} SA for a {mode} context",
                           f"{where}.mode")
        elif tunnel and i == 1:
            changes["mode"] = "transport"  # AH over the packet ESP built (sabuild.describe)
        if direction == "inbound" and cfg.spi != spi:
            raise Fail(C.FWP_E_INVALID_PARAMETER, "the inbound SA's SPI is not the one "
                                                  "GetSpi/SetSpi gave (F.5)", f"{where}.spi")
        if cfg.protocol == "esp":
            encap = _encapsulation(cfg, direction, udp_encap, where)
            if encap is not None:
                changes["encapsulation"] = encap
        try:
            if "mode" in changes:  # many rules read the mode: the whole validation again
                out.append(dataclasses.replace(cfg, **changes))
            else:
                out.append(cfg.completed(direction=direction,
                                         encapsulation=changes.get("encapsulation")))
        except ConfigError as exc:  # a completed description the format refuses
            raise Fail(C.FWP_E_INVALID_PARAMETER, exc.reason, f"{where}.{exc.field}") from exc
    return tuple(out)


def _encapsulation(cfg: Any, direction: str, udp_encap: tuple[int, int] | None,
                   where: str) -> Any:
    have = cfg.encapsulation
    if udp_encap is None:
        if have is not None:
            raise Fail(C.FWP_E_TRAFFIC_MISMATCH, "UDP encapsulation that GetSpi/SetSpi did not "
                                                 "ask for", f"{where}.encapsulation")
        return None
    local_port, remote_port = udp_encap
    sport, dport = (local_port, remote_port) if direction == "outbound" \
        else (remote_port, local_port)
    if have is None:
        return UdpEncapsulation(sport=sport, dport=dport)
    if (have.sport, have.dport) != (sport, dport):
        raise Fail(C.FWP_E_TRAFFIC_MISMATCH, f"UDP ports {have.sport}->{have.dport}, the "
                                             f"context's are {sport}->{dport}",
                   f"{where}.encapsulation")
    return None


def limits(configs: tuple[Any, ...]) -> tuple[float, bool]:
    """(hard seconds the engine times, 0 for none; whether the SAs have byte/packet limits)."""
    seconds = [c.hard.seconds for c in configs if c.hard.seconds]
    limited = any(c.hard.bytes or c.hard.packets for c in configs)
    return (min(seconds) if seconds else 0.0), limited


def reported_bundle(configs: tuple[Any, ...], version: int) -> Any:
    """The IPSEC_SA_BUNDLE1 GetById and the enumerations report for described SAs: SPIs, the
    transform type and the lifetime. The cipher and auth information stay empty: Windows'
    transform ids cannot name most of what descriptions carry (the engine's
    ``sa_context_view`` has the algorithms by name)."""
    seconds, _ = limits(configs)
    hard = configs[0].hard
    return T.IPSEC_SA_BUNDLE1(
        saList=[T.IPSEC_SA0(spi=c.spi, saTransformType=_TRANSFORM[c.protocol]) for c in configs],
        numSAs=len(configs),
        lifetime=T.IPSEC_SA_LIFETIME0(
            lifetimeSeconds=min(int(seconds), 0xFFFFFFFF),
            lifetimeKilobytes=min((hard.bytes or 0) // 1024, 0xFFFFFFFF),
            lifetimePackets=min(hard.packets or 0, 0xFFFFFFFF)),
        ipVersion=C.FWP_IP_VERSION_V4 if version == 4 else C.FWP_IP_VERSION_V6)

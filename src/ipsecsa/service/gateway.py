"""``ipsecsa serve --tun NAME --local IP``: the service's engine carrying live traffic.

The gateway (:class:`ipsecsa.gateway.Gateway`) is attached to the service's engine itself, not
to a copy of its SAs: each packet from the TUN goes through the engine's outbound path (its
filters decide what is protected and by which context) and each ESP datagram through its inbound
path (see :mod:`ipsecsa.gateway.enginecore`). So a context created through the API carries
traffic from the next packet on, and an expired or deleted one stops at once, with no
synchronisation to get wrong.

The gateway runs in threads of its own beside the HTTP server; the TUN is created and the socket
bound before the service accepts requests, and both are closed (the TUN removed) when the
service stops.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ipsecsa.errors import IpsecsaError
from ipsecsa.service.logs import log

if TYPE_CHECKING:
    from ipsecsa.api import Engine

#: Seconds the shutdown waits for the gateway's threads.
STOP_SECONDS = 5.0


class GatewaySetupError(IpsecsaError):
    """The TUN or the socket of ``serve --tun`` could not be set up (the message says why)."""


@contextmanager
def attached_gateway(engine: Engine, tun: str, local: Any, port: int,
                     **settings: Any) -> Iterator[object]:
    """Run a gateway over ``engine`` while the block runs; the TUN is gone afterwards.
    ``settings`` are :class:`ipsecsa.gateway.Gateway`'s other keywords (peer, transport,
    keepalive, mtu, offload, threads), as ``ipsecsa gateway`` takes them."""
    from ipsecsa.gateway import Gateway
    from ipsecsa.gateway.transport import TransportError
    from ipsecsa.gateway.tun import TunError

    try:
        gw = Gateway(engine, tun=tun, local=local, port=port, **settings)
    except ValueError as exc:
        raise GatewaySetupError(f"--local {local}: {exc}") from None
    try:
        gw.open()
    except (TunError, TransportError, OSError) as exc:
        gw.close()
        raise GatewaySetupError(f"--tun {tun}: {exc.strerror or exc}") from None
    thread = threading.Thread(target=gw.run, name="ipsecsa-gateway", daemon=True)
    thread.start()
    log("gateway_started", tun=tun, local=str(local), port=port, tun_mtu=gw.tun_mtu,
        transport=settings.get("transport", "udp"), threads=settings.get("threads", 3))
    try:
        yield gw
    finally:
        gw.stop()
        thread.join(STOP_SECONDS)
        stats = gw.stats()["gateway"]
        gw.close()
        log("gateway_stopped", tun=tun, tun_rx=stats["tun_rx"], tun_tx=stats["tun_tx"],
            net_rx=stats["net_rx"], net_tx=stats["net_tx"], peer_moved=stats["peer_moved"])


__all__ = ["GatewaySetupError", "attached_gateway"]

"""A userspace IPsec gateway: IP packets from a TUN device protected into ESP for a peer, ESP from
the peer unprotected into the TUN.

* :class:`GatewayCore` — the sans-IO packet logic over an SA database (tests drive two back to
  back).
* :class:`Gateway` — the core with a TUN, a UDP (or raw ESP) socket and an epoll loop.
* ``ipsecsa gateway`` (:mod:`ipsecsa.gateway.command`) — the command line.
"""

from ipsecsa.gateway.core import GatewayCore, GatewayCounters, Output
from ipsecsa.gateway.loop import Gateway
from ipsecsa.gateway.safile import InstalledSas, check_for_gateway, load_for_gateway

__all__ = ["Gateway", "GatewayCore", "GatewayCounters", "InstalledSas", "Output",
           "check_for_gateway", "load_for_gateway"]

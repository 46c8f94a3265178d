"""The gateway's counters as text (SIGUSR1, exit) — the JSON form is ``Gateway.stats()`` as is."""

from __future__ import annotations


def format_stats(stats: dict) -> str:
    """A few readable lines: the gateway's counters, drops before any SA, then one line per SA."""
    g = stats["gateway"]
    lines = [
        (f"gateway {g.get('tun', '?')} (MTU {g.get('tun_mtu', '?')}, "
         f"path MTU {g['path_mtu']}) {g['transport']} {g['local']}:{g['port']}"),
        ("  tun rx {tun_rx} tx {tun_tx} | net rx {net_rx} tx {net_tx} | keepalive rx "
        "{keepalive_rx} tx {keepalive_tx} | ike rx {ike_rx} | icmp tx {icmp_tx} | errors: send "
        "{send_errors} tun {tun_errors}").format(**g),
    ]
    if stats["drops"]:
        lines.append("  dropped before an SA: " + ", ".join(
            f"{k} {v}" for k, v in stats["drops"].items()))
    for sa in stats["sas"]:
        drops = ", ".join(f"{k} {v}" for k, v in sa["drops"].items()) or "none"
        lines.append(f"  SA {sa['spi']} {sa['direction']:8} {sa['src']} -> {sa['dst']} "
                     f"{sa['state']}{'' if sa['installed'] else ' (removed)'}: "
                     f"{sa['packets']} packets, {sa['bytes']} bytes, seq {sa['seq']}, "
                     f"drops: {drops}")
    return "\n".join(lines) + "\n"


__all__ = ["format_stats"]

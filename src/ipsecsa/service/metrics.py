"""Prometheus metrics of the service, with the official client library (``prometheus_client``).

Request counts and latencies are observed as requests finish. The engine's state is read at
scrape time by a collector (no second copy of any counter): per SA its packets, bytes and drops
by reason, labelled by context id, direction, SPI and protocol; contexts by state. SPIs are
labels, keys never are.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from ipsecsa import api

STATES = ("created", "spi_assigned", "inbound", "established", "expiring")


class EngineCollector(Collector):
    """SA counters and context states, read from the engine (owner session) per scrape."""

    def __init__(self, engine: api.Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Any]:
        labels = ["context", "direction", "spi", "protocol"]
        packets = CounterMetricFamily("ipsecsa_sa_packets", "Packets through an SA", labels=labels)
        octets = CounterMetricFamily("ipsecsa_sa_bytes", "Bytes through an SA", labels=labels)
        drops = CounterMetricFamily("ipsecsa_sa_drops", "Packets dropped on an SA, by reason",
                                    labels=[*labels, "reason"])
        states = GaugeMetricFamily("ipsecsa_contexts", "SA contexts by state", labels=["state"])
        try:
            contexts = self._engine.contexts()
        except api.WfpError:
            contexts = []  # closing: nothing to report
        count = dict.fromkeys(STATES, 0)
        for ctx in contexts:
            count[ctx.state] = count.get(ctx.state, 0) + 1
            for direction, sas in (("inbound", ctx.inbound), ("outbound", ctx.outbound)):
                for sa in sas:
                    values = [str(ctx.id), direction, f"0x{sa.spi:08x}", sa.protocol]
                    packets.add_metric(values, sa.packets)
                    octets.add_metric(values, sa.bytes)
                    for reason, n in sorted(sa.drops.items()):
                        drops.add_metric([*values, reason], n)
        for state, n in count.items():
            states.add_metric([state], n)
        yield from (packets, octets, drops, states)


class ServiceMetrics:
    """The service's registry: its own, so tests and embedders never share global state."""

    def __init__(self, engine: api.Engine) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("ipsecsa_http_requests", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("ipsecsa_http_request_seconds", "HTTP request latency",
                                 ["method", "route"], registry=self.registry,
                                 buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25,
                                          .5, 1, 2.5, 5))
        self.registry.register(EngineCollector(engine))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

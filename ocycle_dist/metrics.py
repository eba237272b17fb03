"""Prometheus metrics of emitters (optional extra: ``pip install 'ocycle-dist[metrics]'``).

>>> from prometheus_client import start_http_server  # doctest: +SKIP
>>> register(spl, model, archive); start_http_server(9108)  # doctest: +SKIP

The collector reads each emitter's ``stats()`` at scrape time: nothing is done per chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .emit import BufferEmit

COUNTERS = ("written", "skipped", "emitted", "done", "failed", "dropped", "expired")
GAUGES = ("buffered", "in_flight", "spooled_bytes", "latency_p50", "latency_p99", "callback_backlog", "callback_p99")


class EmitterCollector:
    """A ``prometheus_client`` collector of ``ocycle_*`` metrics labelled by stream."""

    def __init__(self, emitters: tuple[BufferEmit, ...]) -> None:
        self.emitters = emitters

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snapshots = [(e.stream, e.stats().as_dict()) for e in self.emitters]
        for name in COUNTERS:
            unit = "chunks" if name in ("emitted", "done", "failed", "dropped", "expired") else "elements"
            family = CounterMetricFamily(f"ocycle_{name}_{unit}", f"{name} {unit}, per stream", labels=["stream"])
            for stream, stats in snapshots:
                family.add_metric([stream], stats[name])
            yield family
        for name in GAUGES:
            gauge = GaugeMetricFamily(f"ocycle_{name}", f"{name.replace('_', ' ')}, per stream", labels=["stream"])
            for stream, stats in snapshots:
                gauge.add_metric([stream], stats[name])
            yield gauge


def register(*emitters: BufferEmit, registry: Any = None) -> EmitterCollector:
    """Expose the emitters' counters as Prometheus metrics (in ``registry``, default the global one)."""
    try:
        from prometheus_client import REGISTRY
    except ImportError:
        raise ImportError("metrics need prometheus-client: pip install 'ocycle-dist[metrics]'") from None
    collector = EmitterCollector(emitters)
    (registry or REGISTRY).register(collector)
    return collector

"""Prometheus metrics of emitters (optional extra: ``pip install 'ocycle-dist[metrics]'``).

>>> stop = serve(spl, model, archive, port=9108)  # doctest: +SKIP
>>> stop()  # doctest: +SKIP

or, into the process's own registry: ``register(spl, model, archive)``. ``ocycle-dist stream`` and ``demo``
serve them with ``--metrics-port``. The collector reads each emitter's ``stats()`` at scrape time: nothing is
done per chunk. A worker's metrics: :mod:`ocycle_dist.remote.worker_metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..emit import BufferEmit
from ..errors import ConfigError

COUNTERS = (
    "written",
    "skipped",
    "emitted",
    "done",
    "failed",
    "dropped",
    "expired",
    "t0_overlaps",
    "gaps",
    "clock_steps",
)
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
            unit = "writes" if name in ("t0_overlaps", "gaps", "clock_steps") else unit
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


def serve(*emitters: BufferEmit, port: int, host: str = "127.0.0.1") -> Callable[[], None]:
    """Serve the emitters' metrics at ``http://host:port/metrics`` (a registry of their own) from a thread;
    returns the function that stops serving. Raises ImportError naming the extra without prometheus-client,
    OSError when the port is taken."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError:
        raise ImportError("metrics need prometheus-client: pip install 'ocycle-dist[metrics]'") from None
    registry = CollectorRegistry()
    register(*emitters, registry=registry)
    server, thread = start_http_server(port, addr=host, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop


def serve_address(emitters: Sequence[BufferEmit], address: tuple[str, int] | None) -> Callable[[], None]:
    """:func:`serve` on ``address`` (``(host, port)``; None: nothing served), for the commands (``--metrics-port``):
    returns the function that stops. Raises ConfigError when the port cannot be served."""
    if address is None:
        return lambda: None
    host, port = address
    try:
        return serve(*emitters, port=port, host=host)
    except (ImportError, OSError) as exc:
        raise ConfigError("metrics_port", port, f"a port this process can serve metrics on ({exc})") from None

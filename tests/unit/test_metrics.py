"""Counters as a Python API and as Prometheus metrics; emit-to-result latency."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import ocycle_dist as ocycle
from ocycle_dist.app.metrics import register


def test_prometheus_exposes_each_streams_counters() -> None:
    seen: list[Any] = []
    a = ocycle.BufferEmit(lambda v, t0: seen.append(v), 4, clip=True, stream="spl")
    b = ocycle.BufferEmit(lambda v, t0: 1 / 0, 2, clip=True, stream="model", on_error=seen.append)
    registry = CollectorRegistry()
    register(a, b, registry=registry)
    a.write(b"abcdefghij", t0=1.0)
    b.write(b"abcd", t0=1.0)
    text = generate_latest(registry).decode()
    assert 'ocycle_done_chunks_total{stream="spl"} 2.0' in text
    assert 'ocycle_failed_chunks_total{stream="model"} 2.0' in text
    assert 'ocycle_written_elements_total{stream="spl"} 10.0' in text
    assert 'ocycle_buffered{stream="spl"} 2.0' in text
    assert 'ocycle_in_flight{stream="model"} 0.0' in text
    assert 'ocycle_t0_overlaps_writes_total{stream="spl"} 0.0' in text


def test_latency_from_emit_to_result_is_measured() -> None:
    release = threading.Event()
    finished = threading.Event()

    def slow(value: bytes, t0: float) -> bytes:
        release.wait(10)
        return value

    b = ocycle.BufferEmit(slow, 2, clip=True, mode="thread", npool=1, on_done=lambda r: finished.set())
    assert b.stats().latency_p50 == 0.0
    b.write(b"ab")
    assert not finished.is_set()
    threading.Timer(0.05, release.set).start()  # the chunk is held at least this long
    assert finished.wait(10)
    b.close()
    stats = b.stats()
    assert stats.latency_p50 >= 0.05 and stats.latency_p99 >= stats.latency_p50


def test_metrics_without_prometheus_client_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_prometheus(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("prometheus_client"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_prometheus)
    with pytest.raises(ImportError, match=r"ocycle-dist\[metrics\]"):
        register(ocycle.BufferEmit(lambda v, t0: None, 2))


def test_serve_answers_a_scrape_and_stops() -> None:
    import socket
    import urllib.request

    from ocycle_dist.app.metrics import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    a = ocycle.BufferEmit(lambda v, t0: v, 2, clip=True, stream="served")
    a.write(b"abcd")
    stop = serve(a, port=port)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        stop()
    assert 'ocycle_done_chunks_total{stream="served"} 2.0' in text
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_a_metrics_port_that_cannot_be_served_is_a_config_error_naming_it() -> None:
    import socket

    from ocycle_dist.app.metrics import serve_address
    from ocycle_dist.errors import ConfigError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"metrics_port.*{port}"):
            serve_address([ocycle.BufferEmit(lambda v, t0: v, 2)], ("127.0.0.1", port))
    assert serve_address([], None)() is None

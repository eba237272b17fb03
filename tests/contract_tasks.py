"""The contract suite's callbacks as tasks of the workers app (loaded by the test workers with -I)."""

from __future__ import annotations

from typing import Any

from workers import app


@app.task(name="contract.reverse")
def reverse(value: bytes, t0: float) -> bytes:
    return value[::-1]


@app.task(name="contract.echo_t0")
def echo_t0(value: bytes, t0: float) -> tuple[bytes, float]:
    return value, t0


@app.task(name="contract.echo_meta")
def echo_meta(value: bytes, t0: float, meta: Any) -> tuple[bytes, float, Any]:
    return value, t0, meta


@app.task(name="contract.fail_on_b")
def fail_on_b(value: bytes, t0: float) -> bytes:
    if value.startswith(b"b"):
        raise ValueError(f"chunk {value!r} starts with b")
    return value

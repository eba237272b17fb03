"""Unit tests of the distributed path's own logic, on fakeredis: no redis-server, no celery worker.

``embedded_broker()`` serves fakeredis over TCP on a loopback port, so the executor's own clients (the
publisher's, the listener's) talk to it as to a Redis. A worker's reply is simulated by RPUSHing
``wire.dumps({"id": task_id, "ok": True, "result": ...})`` to ``ocycle:reply:<stream>``, the task id
taken from the message the producer LPUSHed.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ocycle_dist as ocycle
from ocycle_dist.errors import ConfigError, EncodeError
from ocycle_dist.remote import wire


@pytest.fixture
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any use of pickle fail loudly."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle was used")

    for name in ("dumps", "loads", "dump", "load"):
        monkeypatch.setattr(pickle, name, refuse)


SCALARS = [b"", bytes(range(256)), "", "text \u00e9\u20ac", 0, -1, 2**63 - 1, -(2**63), 1.5, -0.0, None, True, False]


@pytest.mark.parametrize("value", SCALARS, ids=repr)
def test_wire_round_trips_scalars_with_their_type(no_pickle: None, value: Any) -> None:
    back = wire.loads(wire.dumps(value))
    assert back == value and type(back) is type(value)


def test_wire_round_trips_nested_values_bytes_staying_bytes(no_pickle: None) -> None:
    value = {"a": [b"\x00\xff", "x", [1, [2.5, None, {"deep": b"bin"}]]], 7: {"k": []}, "claim": wire.Claim("k:1")}
    back = wire.loads(wire.dumps(value))
    assert back == value
    assert type(back["a"][0]) is bytes and type(back["a"][1]) is str
    assert wire.loads(wire.dumps((1, b"t"))) == [1, b"t"]  # tuples come back as lists (msgpack arrays)


ARRAYS = [
    np.arange(24, dtype=np.int16).reshape(4, 3, 2),
    np.linspace(-1, 1, 17, dtype=np.float32),
    np.array([1.5, -2.25], dtype=">f8"),  # big-endian survives as such
    np.array([True, False, True]),
    np.array([1 + 2j, 3 - 4j], dtype=np.complex64),
    np.zeros((0, 3), dtype=np.uint8),
    np.array(42, dtype=np.int64),  # 0-d
    np.arange(20, dtype=np.int32)[::3],  # not contiguous
    np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
    np.array([b"ab", b"c"], dtype="S2"),
    np.array(["\u00e9t\u00e9", "x"], dtype="<U3"),
]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_wire_round_trips_numpy_arrays_exactly(no_pickle: None, array: np.ndarray) -> None:
    back = wire.loads(wire.dumps({"chunk": array, "t0": 1.0}))["chunk"]
    assert isinstance(back, np.ndarray)
    assert back.dtype == array.dtype and back.dtype.str == array.dtype.str
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert wire.loads(wire.dumps(np.float32(0.5))) == 0.5  # numpy scalars become plain numbers


@pytest.mark.parametrize(
    "value",
    [
        np.array([1, "a", None], dtype=object),
        {"nested": [np.array([{}], dtype=object)]},
        object(),
        Path("/tmp"),
        1 + 2j,
        2**64,
        np.zeros(2, dtype=[("left", "<i2"), ("right", "<i2")]),
        np.ma.masked_array([1.0, 2.0], mask=[False, True]),
        np.zeros(2, dtype=np.dtype("<f4", metadata={"unit": "Pa"})),
        [np.zeros(2, dtype=[("x", "<f8")])],  # a list item, as a ListEmit chunk holds
    ],
    ids=[
        "object-array",
        "nested-object-array",
        "object",
        "path",
        "complex",
        "int-too-big",
        "structured",
        "masked",
        "dtype-metadata",
        "structured-item",
    ],
)
def test_wire_refuses_what_it_cannot_encode_without_pickle(no_pickle: None, value: Any) -> None:
    with pytest.raises(EncodeError):
        wire.dumps(value)


def test_wire_never_unpickles(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> Any:
            return (Path.touch, (marker,))

    with pytest.raises(Exception):  # noqa: B017  (msgpack's own error: the bytes are not msgpack)
        wire.loads(pickle.dumps(Exploit()))
    assert not marker.exists()


def test_numpy_dtypes_the_wire_carries_by_their_dtype_string_round_trip() -> None:
    for dtype in ("<M8[ns]", "<m8[s]", "|V4", ">i4", "<f2", "<c16", "|b1"):
        array = np.zeros(3, dtype=dtype)
        back = wire.loads(wire.dumps(array))
        assert back.dtype == array.dtype and back.dtype.str == dtype, dtype


STRUCTURED = np.dtype([("left", "<i2"), ("right", "<i2")])


def test_a_structured_dtype_is_refused_at_write_in_celery_mode(make: Any) -> None:
    emitter, _ = make(new=ocycle.NumpyIO)
    with pytest.raises(ocycle.FrameError, match="cannot be sent to a remote task: a structured dtype would lose"):
        emitter.write(np.zeros((4,), dtype=STRUCTURED))
    stats = emitter.stats()
    assert (stats.written, stats.emitted) == (0, 0)
    emitter.write(np.arange(4, dtype=np.int16))  # the stream goes on, with a dtype the wire carries
    assert emitter.stats().emitted == 1


def test_a_declared_structured_dtype_is_a_config_error_in_celery_mode(broker: str) -> None:
    with pytest.raises(ConfigError, match="a dtype the wire carries faithfully") as excinfo:
        ocycle.NumpyEmit("tests.echo", 4, mode="celery", broker=broker, dtype=STRUCTURED)
    assert excinfo.value.param == "dtype"
    local = ocycle.NumpyEmit(lambda v, t0: v, 4, dtype=STRUCTURED, mode="thread")
    with pytest.raises(ConfigError, match="a dtype the wire carries faithfully"):
        local.open(mode="celery", reopen=True)
    local.close()


def test_a_tap_checks_frames_for_its_remote_emitters(make: Any) -> None:
    remote, _ = make(new=ocycle.NumpyIO)
    seen: list[Any] = []
    local = ocycle.NumpyEmit(lambda v, t0: seen.append(v), 4)
    tap = ocycle.Tap(local, remote)
    with pytest.raises(ocycle.FrameError, match="structured dtype"):
        tap.write(np.zeros((4,), dtype=STRUCTURED))
    assert local.stats().written == 0 and remote.stats().written == 0
    with pytest.raises(ocycle.FrameError, match="masked array"):
        tap.write(np.ma.masked_array(np.zeros(4), mask=[0, 1, 0, 0]))

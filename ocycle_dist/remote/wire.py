"""The wire format: msgpack with bytes kept binary and numpy arrays as (dtype, shape, raw bytes).

No pickle, ever. Registered with kombu as :data:`CONTENT_TYPE` under the name :data:`SERIALIZER`,
for the producer and the workers alike.
"""

from __future__ import annotations

from typing import Any

import msgpack

from ..errors import EncodeError
from ..kinds import unsendable_dtype

SERIALIZER = "ocycle"
CONTENT_TYPE = "application/x-ocycle-msgpack"
_NDARRAY = 1
_CLAIM = 2


class Claim:
    """A chunk left in Redis under ``key`` (a claim check); the message carries only this."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Claim) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"Claim({self.key!r})"


def _default(obj: Any) -> Any:
    cls = type(obj)
    module = cls.__module__
    if module == "numpy" or module.startswith("numpy."):  # numpy.ma's masked arrays too
        import numpy as np

        if isinstance(obj, np.ndarray):
            if obj.dtype.hasobject:
                raise EncodeError("numpy arrays of dtype object cannot be sent (no pickle on the wire)")
            if problem := unsendable_dtype(obj.dtype):
                raise EncodeError(f"a numpy array of dtype {obj.dtype} cannot be sent faithfully: {problem}")
            if isinstance(obj, np.ma.MaskedArray):
                raise EncodeError("a numpy masked array cannot be sent: its mask would be lost")
            arr = np.ascontiguousarray(obj)
            meta = [arr.dtype.str, list(obj.shape)]  # ascontiguousarray makes a 0-d array 1-d
            return msgpack.ExtType(_NDARRAY, msgpack.packb(meta) + arr.tobytes())
        if isinstance(obj, np.generic):
            return obj.item()
    if isinstance(obj, Claim):
        return msgpack.ExtType(_CLAIM, obj.key.encode())
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise EncodeError(f"a value of type {cls.__module__}.{cls.__qualname__} cannot be encoded: {obj!r:.80}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _NDARRAY:
        import numpy as np

        unpacker = msgpack.Unpacker()
        unpacker.feed(data)
        dtype, shape = unpacker.unpack()
        return np.frombuffer(data, dtype=np.dtype(dtype), offset=unpacker.tell()).reshape(shape)
    if code == _CLAIM:
        return Claim(data.decode())
    return msgpack.ExtType(code, data)


def dumps(value: Any) -> bytes:
    """Encode ``value``: None, bool, int, float, str, bytes, lists, tuples, dicts, numpy arrays."""
    try:
        return msgpack.packb(value, default=_default, use_bin_type=True, datetime=False)  # type: ignore[no-any-return]
    except EncodeError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"value cannot be encoded: {exc}") from exc


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Decode what :func:`dumps` made. Arrays come back read-only, sharing the message's memory."""
    if isinstance(data, str):  # kombu hands text to decoders of some transports
        data = data.encode("latin-1")
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)


def register() -> None:
    """Register the serializer with kombu (idempotent). Producer and workers both call it."""
    from kombu.serialization import register as kombu_register

    kombu_register(SERIALIZER, dumps, loads, content_type=CONTENT_TYPE, content_encoding="binary")

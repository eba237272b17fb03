"""The wire format: msgpack with bytes kept binary and numpy arrays as (dtype, shape, raw bytes).

No pickle, ever. Registered with kombu as :data:`CONTENT_TYPE` under the name :data:`SERIALIZER`,
for the producer and the workers alike.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from ..errors import EncodeError
from ..kinds import unsendable_dtype

SERIALIZER = "ocycle"
CONTENT_TYPE = "application/x-ocycle-msgpack"
# Decoding limits, checked before anything is allocated: anyone who can write to Redis can hand us bytes.
MAX_BYTES = 64 * 1024 * 1024 + 64 * 1024  # a message or reply (max_chunk_bytes and slack; set_limits() changes)
MAX_CONTAINERS = 100_000  # arrays and maps in one message: 16 MB of empty arrays would be ~1 GB of lists
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


def _ndarray_parts(obj: Any) -> tuple[Any, bytes]:
    """A top-level array's contiguous data and its wire header (dtype and shape); EncodeError when unsendable."""
    import numpy as np

    if obj.dtype.hasobject:
        raise EncodeError("numpy arrays of dtype object cannot be sent (no pickle on the wire)")
    if problem := unsendable_dtype(obj.dtype):
        raise EncodeError(f"a numpy array of dtype {obj.dtype} cannot be sent faithfully: {problem}")
    arr = np.ascontiguousarray(obj)
    return arr, msgpack.packb([arr.dtype.str, list(obj.shape)])


def _ext_header(code: int, size: int) -> bytes:
    """msgpack's header of an ext value of ``size`` bytes."""
    fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}.get(size)
    if fixed is not None:
        return struct.pack(">Bb", fixed, code)
    if size < 1 << 8:
        return struct.pack(">BBb", 0xC7, size, code)
    if size < 1 << 16:
        return struct.pack(">BHb", 0xC8, size, code)
    return struct.pack(">BIb", 0xC9, size, code)


def _is_plain(value: Any, name: str) -> bool:
    cls = type(value)
    return cls.__name__ == name and cls.__module__ == "numpy"


def encoded_size(value: Any) -> int | None:
    """``len(dumps(value))`` without encoding, for a chunk that is ``bytes`` or a plain numpy array (None for
    anything else: only encoding tells). Cheap: what is checked before a chunk's encoding is left to another
    thread (:meth:`.executor.CeleryExecutor.submit`).

    Raises:
        EncodeError: an array :func:`dumps` would refuse (object or unsendable dtype).
    """
    if type(value) is bytes:
        n = len(value)
        return n + (2 if n < 1 << 8 else 3 if n < 1 << 16 else 5)
    if _is_plain(value, "ndarray"):
        if value.dtype.hasobject or unsendable_dtype(value.dtype):
            _ndarray_parts(value)  # raises the same error dumps would
        size = len(msgpack.packb([value.dtype.str, list(value.shape)])) + value.nbytes
        return len(_ext_header(_NDARRAY, size)) + size
    return None


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _NDARRAY:
        import numpy as np

        unpacker = msgpack.Unpacker(max_buffer_size=len(data), max_array_len=64, max_str_len=256)
        unpacker.feed(data)
        dtype, shape = unpacker.unpack()
        offset = unpacker.tell()
        if not isinstance(dtype, str) or not isinstance(shape, list) or len(shape) > 32:
            raise EncodeError("a numpy array on the wire has a malformed header")
        kind = np.dtype(dtype)
        if kind.hasobject or any(not isinstance(n, int) or n < 0 for n in shape):
            raise EncodeError(f"a numpy array on the wire has dtype {dtype!r} and shape {shape!r}: refused")
        count = 1
        for n in shape:
            count *= n
        if count * kind.itemsize != len(data) - offset:
            raise EncodeError("a numpy array on the wire does not match its dtype and shape")
        return np.frombuffer(data, dtype=kind, offset=offset).reshape(shape)
    if code == _CLAIM:
        return Claim(data.decode())
    return msgpack.ExtType(code, data)


def dumps(value: Any) -> bytes:
    """Encode ``value``: None, bool, int, float, str, bytes, lists, tuples, dicts, numpy arrays.

    A plain numpy array on its own (a chunk) is written with one copy of its data, not three."""
    if _is_plain(value, "ndarray"):
        arr, header = _ndarray_parts(value)
        data = arr.reshape(-1).view("u1").data if arr.nbytes else b""  # the bytes in place (any dtype)
        return b"".join((_ext_header(_NDARRAY, len(header) + arr.nbytes), header, data))
    try:
        return msgpack.packb(value, default=_default, use_bin_type=True, datetime=False)  # type: ignore[no-any-return]
    except EncodeError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"value cannot be encoded: {exc}") from exc


def set_limits(max_bytes: int | None = None, max_containers: int | None = None) -> None:
    """Change the decoding limits of this process (a worker sets ``max_bytes`` from ``max_chunk_bytes``)."""
    global MAX_BYTES, MAX_CONTAINERS
    if max_bytes is not None:
        MAX_BYTES = int(max_bytes)
    if max_containers is not None:
        MAX_CONTAINERS = int(max_containers)


def loads(data: bytes | bytearray | memoryview | str, *, max_bytes: int | None = None) -> Any:
    """Decode what :func:`dumps` made. Arrays come back read-only, sharing the message's memory.

    Raises:
        EncodeError: over ``max_bytes`` (default :data:`MAX_BYTES`), more than :data:`MAX_CONTAINERS` arrays
            and maps, or not a valid message: refused before the memory it would take is allocated.
    """
    if isinstance(data, str):  # kombu hands text to decoders of some transports
        data = data.encode("latin-1")
    limit = MAX_BYTES if max_bytes is None else max_bytes
    if len(data) > limit:
        raise EncodeError(f"a message of {len(data)} bytes is over the limit of {limit} bytes: refused unread")
    containers = 0

    def count(value: Any) -> Any:
        nonlocal containers
        containers += 1
        if containers > MAX_CONTAINERS:
            raise EncodeError(f"a message with more than {MAX_CONTAINERS} arrays and maps: refused")
        return value

    try:
        return msgpack.unpackb(
            data, ext_hook=_ext_hook, raw=False, strict_map_key=False, list_hook=count, object_hook=count
        )
    except EncodeError:
        raise
    except Exception as exc:  # msgpack's own errors, a bad dtype...
        raise EncodeError(f"not a valid message: {type(exc).__name__}: {str(exc)[:200]}") from None


def register() -> None:
    """Register the serializer with kombu (idempotent). Producer and workers both call it."""
    from kombu.serialization import register as kombu_register

    kombu_register(SERIALIZER, dumps, loads, content_type=CONTENT_TYPE, content_encoding="binary")

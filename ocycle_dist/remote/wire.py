"""The wire format: msgpack with bytes kept binary and numpy arrays as (dtype, shape, raw bytes).

No pickle, ever. Registered with kombu as :data:`CONTENT_TYPE` under the name :data:`SERIALIZER`,
for the producer and the workers alike.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from typing import Any

import msgpack

from ..errors import EncodeError
from ..kinds import unsendable_dtype
from ..pieces import Pieces, joined

SERIALIZER = "ocycle"
CONTENT_TYPE = "application/x-ocycle-msgpack"
# Decoding limits, checked before anything is allocated: anyone who can write to Redis can hand us bytes.
MAX_BYTES = 64 * 1024 * 1024 + 64 * 1024  # a message or reply (max_chunk_bytes and slack; set_limits() changes)
MAX_CONTAINERS = 100_000  # arrays and maps in one message: 16 MB of empty arrays would be ~1 GB of lists
_NDARRAY = 1
_CLAIM = 2  # a claim whose value is stored encoded (msgpack)
_CLAIM_RAW = 3  # a claim whose value is stored as its raw bytes; the claim says what they are
_CLAIM_SEALED = 4  # a claim that also carries the digest of its value (a sealed message's: see digest())


class Claim:
    """A chunk left in Redis under ``key`` (a claim check); the message carries only this.

    ``form`` says how the value is stored: None, encoded by :func:`dumps`; ``["bytes"]``, the bytes
    themselves; ``["ndarray", dtype string, shape]``, an array's data (C order). A raw value goes to Redis
    without being copied into an encoding (:func:`raw_form`); :func:`claimed` turns what was fetched back
    into the value, checking it against the form, and against ``digest`` (the value's :func:`digest`) when
    the claim has one: a sealed message's does, so that what is under the key cannot be swapped.
    """

    __slots__ = ("digest", "form", "key")

    def __init__(self, key: str, form: list[Any] | None = None, digest: bytes | None = None) -> None:
        self.key = key
        self.form = form
        self.digest = digest

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Claim) and (other.key, other.form, other.digest) == (self.key, self.form, self.digest)

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"Claim({self.key!r})" if self.form is None else f"Claim({self.key!r}, {self.form!r})"


def raw_form(value: Any) -> tuple[list[Any], Any] | None:
    """For a chunk stored raw under a claim: its form (see :class:`Claim`) and its bytes in place (no copy),
    for ``bytes`` and plain numpy arrays (:class:`.Pieces` of them are joined first); None for anything else.

    Raises:
        EncodeError: an array :func:`dumps` would refuse.
    """
    value = joined(value)
    if type(value) is bytes:
        return ["bytes"], value
    if _is_plain(value, "ndarray"):
        arr, _ = _ndarray_parts(value)
        data = arr.reshape(-1).view("u1").data if arr.nbytes else b""
        return ["ndarray", arr.dtype.str, list(value.shape)], data
    return None


def claimed(claim: Claim, raw: bytes) -> Any:
    """The value a claim stands for, from the bytes fetched under its key.

    Raises:
        EncodeError: over :data:`MAX_BYTES`, or the bytes do not match the claim's form.
    """
    value = _claimed(claim, raw)
    if claim.digest is not None and digest(value) != claim.digest:
        raise EncodeError(f"the chunk under {claim.key[:80]} is not the one its message was sealed with: refused")
    return value


def _claimed(claim: Claim, raw: bytes) -> Any:
    if claim.form is None:
        return loads(raw)
    if len(raw) > MAX_BYTES:
        raise EncodeError(f"a claimed chunk of {len(raw)} bytes is over the limit of {MAX_BYTES} bytes: refused")
    form = claim.form
    if form == ["bytes"]:
        return bytes(raw)
    if len(form) == 3 and form[0] == "ndarray" and isinstance(form[1], str) and isinstance(form[2], list):
        return _array(form[1], form[2], raw, 0)
    raise EncodeError(f"a claim check of unknown form {str(form)[:80]}: refused")


def digest(value: Any) -> bytes:
    """The SHA-256 of ``dumps(value)``, without building it for ``bytes`` and plain numpy arrays: what a sealed
    message binds a chunk by (:func:`.protocol.message_seal`). A value decoded by :func:`loads` has the digest of
    the encoding it came from, so producer and worker compute the same one.

    Raises:
        EncodeError: a value :func:`dumps` would refuse.
    """
    value = joined(value)
    if type(value) is bytes:
        h = hashlib.sha256(_bin_header(len(value)))
        h.update(value)
        return h.digest()
    if _is_plain(value, "ndarray"):
        arr, header = _ndarray_parts(value)
        h = hashlib.sha256(_ext_header(_NDARRAY, len(header) + arr.nbytes))
        h.update(header)
        if arr.nbytes:
            h.update(arr.reshape(-1).view("u1").data)
        return h.digest()
    return hashlib.sha256(dumps(value)).digest()


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
        if obj.digest is not None:
            return msgpack.ExtType(_CLAIM_SEALED, msgpack.packb([obj.key, obj.form, obj.digest], use_bin_type=True))
        if obj.form is None:
            return msgpack.ExtType(_CLAIM, obj.key.encode())
        return msgpack.ExtType(_CLAIM_RAW, msgpack.packb([obj.key, obj.form]))
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
    """``len(dumps(value))`` without encoding, for a chunk that is ``bytes`` or a plain numpy array, or
    :class:`.Pieces` of them, not joined (None for anything else: only encoding tells). Cheap: what is checked
    before a chunk's encoding is left to another thread (:meth:`.executor.CeleryExecutor.submit`).

    Raises:
        EncodeError: an array :func:`dumps` would refuse (object or unsendable dtype).
    """
    if type(value) is Pieces:
        parts = value.parts
        if all(type(part) is bytes for part in parts):
            return _bin_size(sum(len(part) for part in parts))
        first = parts[0]
        if value.kind.name != "numpy" or not _is_plain(first, "ndarray") or first.ndim == 0:
            return None
        return _array_size(first.dtype, (sum(len(part) for part in parts), *first.shape[1:]))
    if type(value) is bytes:
        return _bin_size(len(value))
    if _is_plain(value, "ndarray"):
        return _array_size(value.dtype, value.shape)
    return None


def _bin_header(n: int) -> bytes:
    """msgpack's header of a bin value of ``n`` bytes."""
    if n < 1 << 8:
        return struct.pack(">BB", 0xC4, n)
    return struct.pack(">BH", 0xC5, n) if n < 1 << 16 else struct.pack(">BI", 0xC6, n)


def _bin_size(n: int) -> int:
    return n + (2 if n < 1 << 8 else 3 if n < 1 << 16 else 5)


def _array_size(dtype: Any, shape: tuple[int, ...]) -> int:
    """The encoded size of an array of ``dtype`` and ``shape``; EncodeError for a dtype dumps refuses."""
    if dtype.hasobject:
        raise EncodeError("numpy arrays of dtype object cannot be sent (no pickle on the wire)")
    if problem := unsendable_dtype(dtype):
        raise EncodeError(f"a numpy array of dtype {dtype} cannot be sent faithfully: {problem}")
    return _sized(dtype.str, dtype.itemsize, shape)


@functools.lru_cache(maxsize=256)
def _sized(dtype: str, itemsize: int, shape: tuple[int, ...]) -> int:
    """:func:`_array_size` of a dtype the wire carries (a stream's chunks have a few shapes: cached)."""
    count = 1
    for n in shape:
        count *= n
    size = len(msgpack.packb([dtype, list(shape)])) + count * itemsize
    return len(_ext_header(_NDARRAY, size)) + size


def _array(dtype: Any, shape: Any, data: bytes, offset: int) -> Any:
    """An array of ``dtype`` and ``shape`` over ``data[offset:]``, read-only, no copy; EncodeError unless they
    match exactly."""
    import numpy as np

    if not isinstance(dtype, str) or not isinstance(shape, list) or len(shape) > 32:
        raise EncodeError("a numpy array on the wire has a malformed header")
    try:
        kind = np.dtype(dtype)
    except (TypeError, ValueError):
        raise EncodeError(f"a numpy array on the wire has an unknown dtype {dtype[:40]!r}") from None
    if kind.hasobject or any(not isinstance(n, int) or n < 0 for n in shape):
        raise EncodeError(f"a numpy array on the wire has dtype {dtype!r} and shape {shape!r}: refused")
    count = 1
    for n in shape:
        count *= n
    if count * kind.itemsize != len(data) - offset:
        raise EncodeError("a numpy array on the wire does not match its dtype and shape")
    return np.frombuffer(data, dtype=kind, offset=offset).reshape(shape)


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _NDARRAY:
        unpacker = msgpack.Unpacker(max_buffer_size=len(data), max_array_len=64, max_str_len=256)
        unpacker.feed(data)
        dtype, shape = unpacker.unpack()
        return _array(dtype, shape, data, unpacker.tell())
    if code == _CLAIM:
        return Claim(data.decode())
    if code == _CLAIM_RAW:
        unpacker = msgpack.Unpacker(max_buffer_size=len(data), max_array_len=64, max_str_len=1024)
        unpacker.feed(data)
        key, form = unpacker.unpack()
        if not isinstance(key, str) or not isinstance(form, list):
            raise EncodeError("a claim check on the wire is malformed")
        return Claim(key, form)
    if code == _CLAIM_SEALED:
        unpacker = msgpack.Unpacker(max_buffer_size=len(data), max_array_len=64, max_str_len=1024, max_bin_len=64)
        unpacker.feed(data)
        key, form, sealed = unpacker.unpack()
        if not isinstance(key, str) or not isinstance(form, (list, type(None))) or not isinstance(sealed, bytes):
            raise EncodeError("a claim check on the wire is malformed")
        return Claim(key, form, sealed)
    return msgpack.ExtType(code, data)


def dumps(value: Any) -> bytes:
    """Encode ``value``: None, bool, int, float, str, bytes, lists, tuples, dicts, numpy arrays.

    A plain numpy array on its own (a chunk) is written with one copy of its data, not three; :class:`.Pieces`
    are joined first."""
    value = joined(value)
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

"""What a stream is made of: bytes, text, lists or numpy arrays.

A *kind* checks and freezes each frame written (so that a caller reusing its buffer cannot change data
already written), measures it in elements and joins pieces of frames (cut by slicing) into a chunk; it also
says whether a stream of it is filled (each frame copied into its chunk as it is written) or keeps its frames
(each element copied once, when its chunk is built): see :mod:`ocycle_dist.windows`.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from itertools import chain
from typing import Any

from .bufferio import ListIO, NumpyIO
from .errors import ConfigError, FrameError

FILL_MAX_BYTES = 256 * 1024  # bytes streams with chunks up to this many bytes are filled (see BytesKind.fills)


class Kind:
    """Base of the four kinds. ``fast_type`` is the exact type accepted without any check."""

    name = ""
    fast_type: type | None = None
    fill_type: type | None = None  # the exact frame type a Filler copies without a check (see fills())
    new_rows: Callable[[int], Any] | None = None  # arrays: a new chunk of that many elements, for a Filler
    buffer_factory: Callable[[], Any] = io.BytesIO
    wire = False  # frames go to a remote task: see for_wire()

    def fills(self, clip: bool, size: int) -> bool:
        """Whether a stream of windows back to back (chunks of ``size`` elements) is cut by copying each frame into
        its chunk (:class:`~ocycle_dist.hotpath.Filler`); else its frames are kept until their chunk is taken."""
        return False

    def accept(self, data: Any) -> tuple[Any, int]:
        """Check ``data`` and return it frozen, with its length in elements."""
        raise NotImplementedError

    def join(self, pieces: list[Any]) -> Any:
        """One chunk from the pieces, in order."""
        raise NotImplementedError

    def compatible(self, other: Kind) -> bool:
        """Whether frames accepted by ``other`` fit this kind too (for a shared tap)."""
        return type(self) is type(other)

    def adopt(self, frozen: Any) -> None:
        """Check a frame frozen by another, compatible kind (a Tap's) as :meth:`accept` would, and learn what the
        first frame teaches (a numpy stream's dtype and shape), without copying it.

        Raises:
            FrameError: the frame does not fit this stream.
        """

    def same_as(self, other: Kind) -> bool:
        """Whether every frame ``other`` accepts fits this kind as it is now (:meth:`adopt` has nothing to do)."""
        return True

    def for_wire(self) -> None:
        """From now on accept only frames the wire carries faithfully (remote modes; see NumpyKind).

        Raises:
            ConfigError: what the stream already holds (a declared or adopted dtype) cannot be sent.
        """
        self.wire = True

    def _reject(self, data: Any, what: str) -> FrameError:
        return FrameError(f"data of type {type(data).__name__} cannot be written to a {self.name} stream: {what}")


class BytesKind(Kind):
    """Bytes. Accepts any contiguous bytes-like object (bytes, bytearray, memoryview, array)."""

    name = "bytes"
    fast_type = bytes
    fill_type = bytes

    def fills(self, clip: bool, size: int) -> bool:
        # A larger chunk keeps its frames: bytes frames are kept as they are (no copy), and a large chunk's fresh
        # memory costs page faults as it fills; an executor that joins later (the celery mode) joins them on its
        # own thread, so the writer never copies a large frame.
        return size <= FILL_MAX_BYTES

    def accept(self, data: Any) -> tuple[bytes, int]:
        if isinstance(data, str):
            raise self._reject(data, "expected bytes-like; encode the text first (data.encode())")
        try:
            frozen = bytes(memoryview(data).cast("B"))
        except TypeError:
            raise self._reject(data, "expected bytes, bytearray or memoryview") from None
        return frozen, len(frozen)

    def join(self, pieces: list[Any]) -> bytes:
        return b"".join(pieces)


class TextKind(Kind):
    """Text (``new=io.StringIO``)."""

    name = "text"
    fast_type = str
    buffer_factory = io.StringIO

    def accept(self, data: Any) -> tuple[str, int]:
        if not isinstance(data, str):
            raise self._reject(data, "expected str")
        return str(data), len(data)

    def join(self, pieces: list[Any]) -> str:
        return "".join(pieces)


class ListKind(Kind):
    """Lists of arbitrary items (``ListEmit``)."""

    name = "list"
    buffer_factory = ListIO

    def accept(self, data: Any) -> tuple[list[Any], int]:
        if isinstance(data, (str, bytes, bytearray, dict, set)) or not hasattr(data, "__len__"):
            raise self._reject(data, "expected a list or tuple of items")
        frozen = list(data)
        return frozen, len(frozen)

    def join(self, pieces: list[Any]) -> list[Any]:
        return pieces[0][:] if len(pieces) == 1 else list(chain.from_iterable(pieces))


class NumpyKind(Kind):
    """Numpy arrays whose first axis is time (``NumpyEmit``).

    The dtype and trailing shape are fixed by the ``dtype``/``shape`` given, else by the first frame.
    Masked arrays are refused (joining frames would drop the mask), and so are object arrays (no pickle).
    For a remote mode (:meth:`for_wire`) so are the dtypes the wire cannot carry faithfully
    (:func:`unsendable_dtype`: structured dtypes would lose their field names).
    """

    name = "numpy"
    buffer_factory = NumpyIO

    def __init__(self, dtype: Any = None, shape: tuple[int, ...] | None = None) -> None:
        import numpy as np

        self._np = np
        self._masked = np.ma.MaskedArray
        self.dtype = _dtype(np, dtype) if dtype is not None else None
        self.shape = _shape(shape) if shape is not None else None
        self.fill_type = np.ndarray
        self.new_rows = self._new_rows

    def fills(self, clip: bool, size: int) -> bool:
        return clip  # an unclipped chunk's length is known only at its last write; frames are copied anyway

    def _new_rows(self, rows: int) -> Any:
        """A new C-contiguous array of ``rows`` elements of the stream's dtype and shape (to fill a chunk in)."""
        return self._np.empty((rows, *(self.shape or ())), dtype=self.dtype)

    def for_wire(self) -> None:
        if self.dtype is not None and (problem := unsendable_dtype(self.dtype)):
            raise ConfigError("dtype", self.dtype, f"a dtype the wire carries faithfully ({problem})")
        self.wire = True

    def adopt(self, frozen: Any) -> None:
        self._check(frozen)

    def same_as(self, other: Kind) -> bool:
        return (
            isinstance(other, NumpyKind)
            and other.dtype is not None
            and (self.dtype, self.shape) == (other.dtype, other.shape)
        )

    def accept(self, data: Any) -> tuple[Any, int]:
        self._check(data)
        return data.copy(), len(data)

    def _check(self, data: Any) -> None:
        """Refuse what does not fit the stream; the first frame fixes the dtype and shape not declared."""
        if type(data) is self._np.ndarray and data.dtype is self.dtype and data.shape[1:] == self.shape and data.ndim:
            return  # a plain array of the stream's own dtype object (numpy's are shared) and shape: it fits
        np = self._np
        if not isinstance(data, np.ndarray):
            raise self._reject(data, "expected a numpy.ndarray whose first axis is time")
        if data.dtype.hasobject:
            raise FrameError(f"data has dtype {data.dtype}: object arrays cannot be streamed (no pickle)")
        if data.ndim == 0:
            raise FrameError("data is a 0-d array: the first axis must be time")
        if isinstance(data, self._masked):
            raise FrameError(
                "data is a numpy masked array: its mask would be lost (chunks are plain arrays); write"
                " data.filled(value), or the data and the mask as two streams"
            )
        dtype = data.dtype if self.dtype is None else self.dtype  # the first frame fixes what was not declared
        shape = data.shape[1:] if self.shape is None else self.shape
        if data.dtype != dtype or data.shape[1:] != shape:
            raise FrameError(
                f"data has dtype {data.dtype} and frame shape {data.shape[1:]}, "
                f"this stream holds dtype {dtype} and frame shape {shape}"
            )
        if self.dtype is None or self.shape is None:
            if self.wire and (problem := unsendable_dtype(dtype)):
                raise FrameError(f"data has dtype {dtype}, which cannot be sent to a remote task: {problem}")
            self.dtype, self.shape = dtype, shape

    def join(self, pieces: list[Any]) -> Any:
        # dtype given: concatenate alone would turn a big-endian stream's chunks native-endian
        return self._np.concatenate(pieces, axis=0, dtype=pieces[0].dtype)

    def compatible(self, other: Kind) -> bool:
        if not isinstance(other, NumpyKind):
            return False
        return other.dtype is None or self.dtype is None or (self.dtype, self.shape) == (other.dtype, other.shape)


def unsendable_dtype(dtype: Any) -> str | None:
    """Why arrays of ``dtype`` cannot go on the wire faithfully (msgpack: dtype string, shape, raw bytes), or None.

    The wire names a dtype by ``dtype.str``: the byte order, kind and size (``'<f4'``, ``'>i2'``, ``'<M8[ns]'``,
    ``'|S2'``, ``'<U3'``) travel; field names, and metadata, do not.
    """
    if dtype.hasobject:
        return "object arrays hold Python objects (no pickle on the wire)"
    if dtype.names is not None:
        return "a structured dtype would lose its field names (send one stream per field)"
    if dtype.metadata:
        return "its metadata would be lost"
    return None


def _dtype(np: Any, dtype: Any) -> Any:
    """``dtype`` as a numpy dtype; ConfigError naming ``dtype`` when numpy does not know it."""
    try:
        result = np.dtype(dtype)
    except (TypeError, ValueError):
        raise ConfigError("dtype", dtype, "a numpy dtype such as 'float32' or numpy.int16") from None
    if result.hasobject:
        raise ConfigError("dtype", dtype, "a dtype without Python objects (object arrays cannot be streamed)")
    return result


def _shape(shape: Any) -> tuple[int, ...]:
    """``shape`` (of one element) as a tuple; ConfigError naming ``shape`` unless it is a sequence of sizes."""
    expected = "a tuple of sizes >= 0, the shape of one element: () for one value per row, (2,) for stereo"
    if not isinstance(shape, (tuple, list)):
        raise ConfigError("shape", shape, expected)
    if any(isinstance(d, bool) or not hasattr(d, "__index__") or d.__index__() < 0 for d in shape):
        raise ConfigError("shape", shape, expected)
    return tuple(d.__index__() for d in shape)


def kind_for(new: Callable[[], Any] | None, *, dtype: Any = None, shape: Any = None) -> Kind:
    """The kind of stream a buffer factory ``new`` makes (bytes when None).

    Raises:
        ConfigError: ``dtype`` or ``shape`` is invalid, or given for a stream that is not of numpy arrays.
    """
    kind = _kind_for(new, dtype, shape)
    if not isinstance(kind, NumpyKind):
        for name, value in (("dtype", dtype), ("shape", shape)):
            if value is not None:
                raise ConfigError(name, value, f"None for a {kind.name} stream ({name} is for numpy streams)")
    return kind


def _kind_for(new: Callable[[], Any] | None, dtype: Any, shape: Any) -> Kind:
    if new is None or new is io.BytesIO:
        return BytesKind()
    if new is io.StringIO:
        return TextKind()
    if new is ListIO:
        return ListKind()
    if new is NumpyIO:
        return NumpyKind(dtype, shape)
    try:  # a custom factory: judge by what its buffers hold
        buffer = new()
        sample = buffer.getvalue()
        if not callable(getattr(buffer, "write", None)):
            raise TypeError("its buffers have no write()")
    except Exception as exc:
        raise ConfigError(
            "new",
            new,
            "a buffer factory whose buffers have write() and getvalue(), such as io.BytesIO, io.StringIO, ListIO"
            f" or NumpyIO ({type(exc).__name__}: {exc})",
        ) from None
    for kind in (BytesKind(), TextKind(), ListKind()):
        if isinstance(sample, kind.fast_type or list):
            return kind
    return NumpyKind(dtype, shape)

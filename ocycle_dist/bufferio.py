"""File-like buffers for lists and numpy arrays, as in ocycle 0.1.0.

They are what ``asbuffer=True`` hands a callback of a list or numpy stream (``io.BytesIO`` and
``io.StringIO`` serve bytes and text), and they can be used on their own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class BufferFactory:
    """The ``new`` class attribute of the emitters (as in ocycle 0.1.0): the buffer factory of the stream.

    Read on the class, it is the class's default (``io.BytesIO`` for ``BufferEmit``); read on an emitter, the
    factory that emitter uses (``BufferEmit(..., new=io.StringIO).new is io.StringIO``).
    """

    def __init__(self, default: Callable[[], Any]) -> None:
        self.default = default

    def __get__(self, obj: Any, cls: Any = None) -> Callable[[], Any]:
        if obj is None:
            return self.default
        return obj.__dict__.get("_new_buffer", self.default)  # type: ignore[no-any-return]


class _SeqIO:
    """Shared cursor logic of :class:`ListIO` and :class:`NumpyIO`."""

    buffer: Any
    _i: int = 0

    def tell(self) -> int:
        """The cursor position, in elements."""
        return self._i

    def seek(self, i: int | None = None) -> int:
        """Move the cursor to element ``i``."""
        if i is not None:
            self._i = int(i)
        return self._i

    def size(self) -> int:
        """The number of elements held."""
        return len(self.buffer)

    def __len__(self) -> int:
        return len(self.buffer)

    def read(self, size: int | None = None) -> Any:
        """Read ``size`` elements (all that are left when None) from the cursor on."""
        j = len(self.buffer) if size is None or size < 0 else min(self._i + size, len(self.buffer))
        out = self.buffer[self._i : j]
        self._i = max(j, self._i)
        return out

    def truncate(self, i: int | None = None) -> int:
        """Cut the buffer to ``i`` elements (the cursor position when None)."""
        i = self._i if i is None else int(i)
        self.buffer = self.buffer[:i]
        return i


class ListIO(_SeqIO):
    """A list with the interface of ``io.BytesIO``."""

    def __init__(self, initial: Any = ()) -> None:
        self.buffer: list[Any] = list(initial)

    def getvalue(self, copy: bool = True) -> list[Any]:
        """The whole content; by reference when ``copy=False``."""
        return list(self.buffer) if copy else self.buffer

    def write(self, items: Any) -> int:
        """Write ``items`` at the cursor, overwriting, and move the cursor past them."""
        items = list(items)
        i = self._i
        if i > len(self.buffer):
            self.buffer.extend([None] * (i - len(self.buffer)))
        self.buffer[i : i + len(items)] = items
        self._i = i + len(items)
        return len(items)


class NumpyIO(_SeqIO):
    """A numpy array with the interface of ``io.BytesIO``; the first axis is time.

    The storage grows by doubling, so a sequence of writes costs linear time. ``len_lookback`` and
    ``padding`` are accepted for ocycle 0.1.0's signature (its storage heuristic); they change nothing here.
    The first write into an empty buffer sets its dtype and trailing shape (ocycle kept float64).
    """

    def __init__(self, shape: Any = (0,), len_lookback: int = 50, padding: float = 0.5, *, dtype: Any = None) -> None:
        import numpy as np

        self._np = np
        self._data = np.zeros(shape, dtype=dtype if dtype is not None else float)
        self._n = len(self._data)
        self.len_lookback, self.padding = len_lookback, padding

    def readjust(self) -> None:
        """ocycle 0.1.0 resized its storage here; the storage here grows by doubling on write: nothing to do."""

    @property
    def buffer(self) -> Any:
        return self._data[: self._n]

    @buffer.setter
    def buffer(self, value: Any) -> None:
        self._data = self._np.asarray(value)
        self._n = len(self._data)

    def getvalue(self, copy: bool = True) -> Any:
        """The whole content; a view when ``copy=False``."""
        return self.buffer.copy() if copy else self.buffer

    def write(self, data: Any) -> int:
        """Write ``data`` (first axis is time) at the cursor and move the cursor past it."""
        np = self._np
        data = np.asarray(data)
        if self._n == 0 and (self._data.shape[1:] != data.shape[1:] or self._data.dtype != data.dtype):
            self._data = np.zeros((max(len(data), 1), *data.shape[1:]), dtype=data.dtype)
        elif self._data.shape[1:] != data.shape[1:]:
            raise ValueError(f"data has trailing shape {data.shape[1:]}, this buffer holds {self._data.shape[1:]}")
        j = self._i + len(data)
        if j > len(self._data):
            grown = np.zeros((max(j, 2 * len(self._data)), *self._data.shape[1:]), dtype=self._data.dtype)
            grown[: self._n] = self._data[: self._n]
            self._data = grown
        self._data[self._i : j] = data
        self._i = j
        self._n = max(self._n, j)
        return len(data)

    def truncate(self, i: int | None = None) -> int:
        """Cut the buffer to ``i`` elements (the cursor position when None)."""
        i = self._i if i is None else int(i)
        self._n = min(self._n, i)
        return i

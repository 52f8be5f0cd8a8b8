"""The framing on the socket between a server and its store's writer process.

A frame is a head (the pickle's length, how many out-of-band buffers follow it, and a tag),
each buffer's length, the pickle (protocol 5), then the buffers. The tag is a request's id, so
that a request that does not unpickle can still be answered.
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass
from typing import Any

_HEAD = struct.Struct("!QIQ")  # the pickle's length, the number of buffers, the tag
_LENGTH = struct.Struct("!Q")  # each buffer's


def frame(item: Any, tag: int = 0) -> list[Any]:
    """A frame's parts: head, pickle and the pickle's out-of-band buffers (a raw message goes
    as one, so that it is sent from where it is instead of being copied into the pickle)."""
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(item, 5, buffer_callback=buffers.append)
    views = [buffer.raw() for buffer in buffers]
    head = _HEAD.pack(len(data), len(views), tag)
    return [head + b"".join(_LENGTH.pack(v.nbytes) for v in views), data, *views]


@dataclass(frozen=True)
class BrokenFrame:
    """In place of an item that did not unpickle (say, an operation defined in a module the
    writer cannot import): its tag and why."""

    tag: int
    reason: str


class Frames:
    """Splits a byte stream back into the items framed in it."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        buffer = self._buffer
        buffer += data
        items, start = [], 0
        while (item := self._next(start)) is not None:
            items.append(item[0])
            start = item[1]
        del buffer[:start]
        return items

    def _next(self, start: int) -> tuple[Any, int] | None:
        """The item framed at `start` and where the next begins, or None if it is incomplete."""
        buffer = self._buffer
        if len(buffer) - start < _HEAD.size:
            return None
        size, count, tag = _HEAD.unpack_from(buffer, start)
        at = start + _HEAD.size
        if len(buffer) < at + count * _LENGTH.size:
            return None
        sizes = [_LENGTH.unpack_from(buffer, at + n * _LENGTH.size)[0] for n in range(count)]
        at += count * _LENGTH.size
        if len(buffer) < at + size + sum(sizes):
            return None
        with memoryview(buffer) as view:
            data = view[at : at + size]
            at += size
            buffers = []
            for length in sizes:
                buffers.append(bytes(view[at : at + length]))
                at += length
            try:
                item = pickle.loads(data, buffers=buffers)
            except Exception as error:
                item = BrokenFrame(tag, f"{type(error).__name__}: {error}")
            finally:
                data.release()  # else the buffer stays exported and can never grow again
        return item, at

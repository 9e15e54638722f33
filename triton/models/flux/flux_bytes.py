"""BYTES inputs of the flux stub decoded with their sizes checked first. Shipped next to model.py.

The Python backend stub (Triton 2.51) decodes every BYTES input when it loads a request, before
`execute` sees it, by calling `triton_python_backend_utils.deserialize_bytes_tensor`, which copies
each element into a new bytes object: a 10 MB prompt was copied (and its pages touched) only to be
refused for its length. `install` replaces that function in this stub process (the stub looks it up
at every tensor it loads) by one that reads each element's 4-byte length first and keeps only the
length of an element longer than the limit (an `Oversized`, which `len()` measures), so a prompt
too long is refused without being copied. flux's only BYTES input is `prompt`, so the limit is the
prompt limit; no network this model calls answers BYTES.
"""

import ctypes
import ctypes.util
import struct

import numpy as np
import triton_python_backend_utils as pb_utils

_LENGTH = struct.Struct("<I")
_libc = ctypes.util.find_library("c")
_malloc_trim = getattr(ctypes.CDLL(_libc), "malloc_trim", None) if _libc else None
# Whether an oversized element was decoded since the last `release_memory`.
_oversized_seen = False


class Oversized:
    """An element longer than the limit, left in the request's shared memory: only its length."""

    __slots__ = ("length",)

    def __init__(self, length):
        self.length = length

    def __len__(self):
        return self.length


def decode(encoded, limit):
    """Elements of a serialized BYTES tensor (each a 4-byte little-endian length, then its bytes)
    as a 1-D object array, in order: bytes, or Oversized beyond `limit` bytes."""
    global _oversized_seen
    view = memoryview(encoded).cast("B")
    items = []
    offset = 0
    while offset < len(view):
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if length > limit:
            items.append(Oversized(length))
            _oversized_seen = True
        else:
            items.append(bytes(view[offset : offset + length]))
        offset += length
    array = np.empty(len(items), dtype=np.object_)
    for i, item in enumerate(items):  # element by element: numpy must not look inside the items
        array[i] = item
    return array


def install(limit):
    """Makes the stub decode BYTES inputs with `decode` and this `limit`."""
    pb_utils.deserialize_bytes_tensor = lambda encoded: decode(encoded, limit)


def release_memory():
    """Gives the heap pages of an oversized input back to the system. The stub copies each BYTES
    input into a temporary array before decoding it, freed before `execute` runs; glibc keeps a
    freed buffer of that size on its heap (its mmap threshold rises after the first), so without
    this every flux stub that once met a 10 MB prompt kept about 10 MB more."""
    global _oversized_seen
    if _oversized_seen and _malloc_trim is not None:
        _malloc_trim(0)
    _oversized_seen = False


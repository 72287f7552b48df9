"""An ``.npz`` holding one array, written block by block: a whole file after every block, and never the
whole array in memory.

numpy reads an ``.npz`` as a zip archive of ``NAME.npy`` members (stored, not compressed: ``np.savez``).
This writes one member: its npy header says the shape so far (padded to a fixed length, so it is rewritten
in place), the array's bytes follow, and after each block the zip records that describe the member (its
size and CRC-32 in the local header, the central directory after the data) are written again. Sizes are
zip64, so the file may grow past 4 GiB. The CRC-32 of the member is combined from the header's and the
data's without reading the data again (:func:`crc32_combine`, zlib's method), so a block costs its own
bytes and a few hundred more, however long the file.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

__all__ = ["NpzWriter", "crc32_combine"]

NPY_HEADER = 256  # bytes: the npy header, padded (a multiple of 64, room for any shape)


def _gf2_times(matrix: list[int], vector: int) -> int:
    out, i = 0, 0
    while vector:
        if vector & 1:
            out ^= matrix[i]
        vector >>= 1
        i += 1
    return out


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, row) for row in matrix]


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of ``a + b`` from ``crc1 = crc32(a)``, ``crc2 = crc32(b)`` and ``len2 = len(b)``: zlib's
    ``crc32_combine`` (which Python's zlib does not expose), appending ``len2`` zero bytes to ``crc1`` by
    squaring the operator of one zero bit.

    >>> a, b = b"block-causal ", b"video"
    >>> crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
    True
    """
    if len2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]  # the operator of one zero bit
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four
    while True:
        even = _gf2_square(odd)  # the first pass: one zero byte
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _gf2_square(even)
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


class NpzWriter:
    """``path`` as an ``.npz`` whose array ``name`` (``(n, *row_shape)``, ``dtype``) grows by rows.

    >>> import tempfile
    >>> path = tempfile.mkdtemp() + "/l.npz"
    >>> w = NpzWriter(path, "latents", (2, 3))
    >>> w.append(np.ones((4, 2, 3), np.float32)); w.append(np.zeros((1, 2, 3), np.float32)); w.close()
    >>> x = np.load(path)["latents"]
    >>> x.shape, float(x.sum())
    ((5, 2, 3), 24.0)
    """

    def __init__(self, path: str | Path, name: str, row_shape: tuple[int, ...], dtype: type = np.float32) -> None:
        self.path, self.row_shape, self.dtype = Path(path), tuple(row_shape), np.dtype(dtype)
        self.member = f"{name}.npy".encode()
        self.rows = 0
        self._data_crc, self._data_len = 0, 0
        self._f: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115  # held open across blocks
        self._start = 30 + len(self.member) + 20  # the local header, its name, its zip64 extra
        self._write_records()

    def append(self, rows: np.ndarray) -> None:
        """Append ``rows`` (``(k, *row_shape)``), then make the file whole again."""
        if self._f is None:
            raise ValueError(f"{self.path} is closed")
        if tuple(rows.shape[1:]) != self.row_shape:
            raise ValueError(f"rows of shape {tuple(rows.shape[1:])} appended to an array of rows {self.row_shape}")
        data = np.ascontiguousarray(rows, dtype=self.dtype).tobytes()
        self._f.seek(self._start + NPY_HEADER + self._data_len)
        self._f.write(data)
        self._data_crc = zlib.crc32(data, self._data_crc)
        self._data_len += len(data)
        self.rows += len(rows)
        self._write_records()

    def close(self) -> None:
        """Close the file (idempotent): it is whole already."""
        if self._f is not None:
            self._f.close()
            self._f = None

    def _npy_header(self) -> bytes:
        header = {"descr": self.dtype.str, "fortran_order": False, "shape": (self.rows, *self.row_shape)}
        text = repr(header).encode("latin1")
        pad = NPY_HEADER - 10 - len(text) - 1
        if pad < 0:
            raise ValueError(f"the npy header of shape {header['shape']} does not fit in {NPY_HEADER} bytes")
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", NPY_HEADER - 10) + text + b" " * pad + b"\n"

    def _write_records(self) -> None:
        """The member's header and the zip records after the data, for what is written so far."""
        assert self._f is not None
        npy = self._npy_header()
        size = NPY_HEADER + self._data_len
        crc = crc32_combine(zlib.crc32(npy), self._data_crc, self._data_len)
        zip64 = struct.pack("<HHQQ", 1, 16, size, size)
        local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                            len(self.member), len(zip64)) + self.member + zip64
        central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0x21, crc, 0xFFFFFFFF,
                              0xFFFFFFFF, len(self.member), len(zip64), 0, 0, 0, 0, 0) + self.member + zip64
        where = self._start + size  # the central directory follows the data
        end64 = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, 1, 1, len(central), where)
        locator = struct.pack("<IIQI", 0x07064B50, 0, where + len(central), 1)
        end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), 0xFFFFFFFF, 0)
        self._f.seek(where)
        self._f.write(central + end64 + locator + end)
        self._f.truncate()
        self._f.seek(0)
        self._f.write(local + npy)
        self._f.flush()

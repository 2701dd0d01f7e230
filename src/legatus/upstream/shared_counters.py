"""Counters shared by the worker processes of one instance: one slot per worker, summed.

Theory of operation. A ``CounterTable`` is a block of signed 64-bit slots that every process
of the instance maps: ``rows`` counters (what is counted), each with one slot per worker (who
counted it). A worker only ever writes its own slots, with plain stores: a worker runs one
thread, so the read-modify-write of its own slot never races. A reader sums the row. No lock
and no system call on either side; what a sum can miss is written down in
docs/circuit-breakers.md.

Tables are made by the main process. One made before the workers are forked is an anonymous
shared mapping (``CounterTable.anonymous``): every worker, a replacement too, is forked from
the main process and so finds it already mapped, and nothing is left behind in /dev/shm
whatever way the instance ends. A table made after the workers (a cluster added later) is
named (``create``) and attached by name (``attach``); its maker unlinks the name once the
workers have attached, and at shutdown at the latest.

Layout: a 64-byte header (magic, rows, workers), then one block per worker holding its
``rows`` slots, padded to a cache line, so two workers never write the same line.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from collections.abc import Iterable

_HEADER = struct.Struct("<8sII")
_MAGIC = b"LGTSCTR1"
_HEADER_SIZE = 64
_LINE = 64
_SLOT = 8
SHM_DIR = "/dev/shm"


def _stride(rows: int) -> int:
    """Slots per worker block: ``rows`` rounded up to whole cache lines."""
    per_line = _LINE // _SLOT
    return -(-rows // per_line) * per_line


def table_size(rows: int, workers: int) -> int:
    return _HEADER_SIZE + workers * _stride(rows) * _SLOT


class CounterTable:
    """``rows`` x ``workers`` shared 64-bit counters (see module doc)."""

    __slots__ = ("_buffer", "_slots", "_stride", "name", "rows", "workers")

    def __init__(self, buffer: mmap.mmap, name: str | None = None) -> None:
        magic, rows, workers = _HEADER.unpack_from(buffer, 0)
        if magic != _MAGIC or len(buffer) < table_size(rows, workers):
            raise ValueError(f"shared memory {name or '(anonymous)'} is not a counter table")
        self._buffer = buffer
        self.name = name
        self.rows = rows
        self.workers = workers
        self._stride = _stride(rows)
        end = table_size(rows, workers)
        self._slots = memoryview(buffer)[_HEADER_SIZE:end].cast("q")

    # Making and attaching ----------------------------------------------------------------

    @classmethod
    def anonymous(cls, *, rows: int, workers: int) -> CounterTable:
        """A table that processes forked after this call share (MAP_SHARED | MAP_ANONYMOUS)."""
        _check_shape(rows, workers)
        buffer = mmap.mmap(-1, table_size(rows, workers))
        _HEADER.pack_into(buffer, 0, _MAGIC, rows, workers)
        return cls(buffer)

    @classmethod
    def create(cls, name: str, *, rows: int, workers: int) -> CounterTable:
        """A new named table under /dev/shm (fails if the name exists)."""
        _check_shape(rows, workers)
        size = table_size(rows, workers)
        fd = os.open(_path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            buffer = mmap.mmap(fd, size)
        except OSError:
            os.unlink(_path(name))
            raise
        finally:
            os.close(fd)
        _HEADER.pack_into(buffer, 0, _MAGIC, rows, workers)
        return cls(buffer, name)

    @classmethod
    def attach(cls, name: str) -> CounterTable:
        """Map the table another process of the instance made with ``create``."""
        fd = os.open(_path(name), os.O_RDWR)
        try:
            buffer = mmap.mmap(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        return cls(buffer, name)

    def unlink(self) -> None:
        """Remove the name (the mapping stays valid for every process that has it)."""
        if self.name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(_path(self.name))

    # Slots -------------------------------------------------------------------------------

    def row(self, row: int) -> memoryview:
        """The ``workers`` slots of one counter (a view: reads see every writer)."""
        self._check_row(row)
        return self._slots[row :: self._stride]

    def slot(self, row: int, worker: int) -> memoryview:
        """A one-slot view of ``worker``'s slot of ``row``: what that worker writes."""
        self._check_row(row)
        if not 0 <= worker < self.workers:
            raise IndexError(f"worker {worker} out of range (table of {self.workers} workers)")
        index = worker * self._stride + row
        return self._slots[index : index + 1]

    def total(self, row: int) -> int:
        return sum(self._slots[row :: self._stride])

    def zero_worker(self, worker: int, rows: Iterable[int] | None = None) -> None:
        """Forget what a worker counted in ``rows`` (all by default): it exited, and what it
        held went with it. Only for a worker that can no longer write."""
        start = worker * self._stride
        slots = self._slots
        for row in range(self.rows) if rows is None else rows:
            self._check_row(row)
            slots[start + row] = 0

    def _check_row(self, row: int) -> None:
        if not 0 <= row < self.rows:
            raise IndexError(f"row {row} out of range (table of {self.rows} rows)")


def _check_shape(rows: int, workers: int) -> None:
    if rows < 1 or workers < 1:
        raise ValueError(f"a counter table needs rows and workers (got {rows} x {workers})")


def _path(name: str) -> str:
    if not name or "/" in name:
        raise ValueError(f"invalid shared memory name {name!r}")
    return os.path.join(SHM_DIR, name)


def remove_stale_tables(prefix: str = "legatus.") -> None:
    """Unlink the tables of instances that are gone: named ``<prefix><pid>.``, whose maker
    (that pid) no longer runs (a main process killed before it could unlink them)."""
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return
    for name in names:
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix) :].split(".", 1)[0]
        if not pid.isdigit() or os.path.exists(f"/proc/{pid}"):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(SHM_DIR, name))

"""Access-log files: one buffered writer per path per process, written by a background thread.

Envoy's AccessLogManager: every access logger writing to the same path shares one file;
lines are buffered and handed to the writer when the buffer passes 64 KiB or every flush
interval (``--file-flush-interval-msec``, 10 s by default), and on shutdown. ``reopen_all``
(SIGUSR1, ``POST /reopen_logs``) makes each file reopen its path before its next write, so
``logrotate`` can rename the file first; as in Envoy, what is still buffered then goes to
the new file.

Theory of operation. The loop only formats and appends to an in-memory buffer; the write(2)
calls happen on one writer thread per manager (so per worker process), as on Envoy's flush
thread, so a slow disk or a stalled pipe (``/dev/stdout`` read by a stuck collector) never
blocks the worker. The loop hands the thread whole buffers in order, together with the
reopen and close requests (``_Writer``); the thread owns the file descriptors from then on.
Each hand-off is whole lines, so several worker processes appending to the same
``O_APPEND`` file never interleave inside a line. ``/dev/stdout`` and ``/dev/stderr`` are
file descriptors 1 and 2 (opening those paths fails when the descriptor is a socket) and
are never closed or reopened.

Memory is bounded: a file whose unwritten bytes (buffered plus handed over) would pass
``max_pending_bytes`` (16 MiB) drops the line, and the drops are logged once per flush
interval. Envoy has no cap (its buffer grows without bound) and no stat for this, so none
is made up here.

Stats are Envoy's ``filesystem.*`` server stats. The loop updates the ones it owns
(``write_buffered``, ``write_total_buffered``, ``flushed_by_timer``); the thread counts
``write_completed``, ``write_failed`` and ``reopen_failed`` privately and the loop adds them
to the store (after each batch through ``call_soon_threadsafe``, and at every flush), so the
store is only ever touched from the loop.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import threading

log = logging.getLogger("legatus.access_log")

MIN_FLUSH_SIZE = 64 * 1024  # Envoy's min_flush_size: hand over at once past this many bytes
MAX_PENDING_BYTES = 16 * 1024 * 1024
_STANDARD = {"/dev/stdout": 1, "/dev/stderr": 2}
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
_WRITE, _REOPEN, _CLOSE = range(3)


def open_error(path: str, error: OSError) -> str:
    """Envoy's start-up error for a log file it cannot open."""
    return f"unable to open file '{path}': {error.strerror or os.strerror(error.errno or 0)}"


def check_openable(path: str) -> None:
    """Raise OSError if ``path`` could not be opened for appending (without creating it).

    Validate mode opens no file, but must fail like Envoy when the directory is missing.
    """
    if path in _STANDARD:
        return
    if os.path.exists(path):
        if os.path.isdir(path):
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        if not os.access(path, os.W_OK):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        return
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        code = errno.ENOTDIR if os.path.exists(directory) else errno.ENOENT
        raise OSError(code, os.strerror(code))
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))


class _FileStats:
    """Envoy's ``filesystem.*`` server stats (shared by every file, as in Envoy)."""

    __slots__ = (
        "flushed_by_timer",
        "reopen_failed",
        "write_buffered",
        "write_completed",
        "write_failed",
        "write_total_buffered",
    )

    def __init__(self, store) -> None:
        self.write_buffered = store.counter("filesystem.write_buffered")
        self.write_completed = store.counter("filesystem.write_completed")
        self.write_failed = store.counter("filesystem.write_failed")
        self.flushed_by_timer = store.counter("filesystem.flushed_by_timer")
        self.reopen_failed = store.counter("filesystem.reopen_failed")
        self.write_total_buffered = store.gauge("filesystem.write_total_buffered")


class AccessLogFile:
    """One path's buffer (loop side). Get it from ``AccessLogManager.open``."""

    __slots__ = (
        "_buffer",
        "_closed",
        "_dropped",
        "_max_pending",
        "_size",
        "_stats",
        "_writer",
        "fd",
        "inflight",
        "path",
    )

    def __init__(self, path: str, stats: _FileStats | None, writer: _Writer, max_pending: int):
        self.path = path
        self._stats = stats
        self._writer = writer
        self._max_pending = max_pending
        self._buffer: list[bytes] = []
        self._size = 0
        self._dropped = 0
        self._closed = False
        self.inflight = 0  # bytes handed to the writer and not written yet (writer's lock)
        self.fd: int | None = _STANDARD.get(path)  # the writer's once the file is open
        if self.fd is None:
            self.fd = os.open(path, _OPEN_FLAGS, 0o666)

    @property
    def buffered_bytes(self) -> int:
        """Bytes buffered on the loop, not yet handed to the writer."""
        return self._size

    @property
    def pending_bytes(self) -> int:
        """Bytes not written yet: buffered plus handed over."""
        return self._size + self.inflight

    def write(self, line: str) -> None:
        """Buffer one formatted entry; hand the buffer over at once past 64 KiB."""
        if not line or self._closed:
            return
        data = line.encode("utf-8", "surrogateescape")
        if self._size + self.inflight + len(data) > self._max_pending:
            self._dropped += 1
            return
        self._buffer.append(data)
        self._size += len(data)
        if self._stats is not None:
            self._stats.write_buffered.inc()
            self._stats.write_total_buffered.add(len(data))
        if self._size > MIN_FLUSH_SIZE:
            self.flush()

    def reopen(self) -> None:
        """Reopen the path before the next write (Envoy's order: reopen, then write)."""
        if self.path not in _STANDARD and not self._closed:
            self._writer.submit(_REOPEN, self, b"")

    def flush(self) -> None:
        """Hand the buffered lines to the writer."""
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        if self._stats is not None:
            self._stats.write_total_buffered.sub(self._size)
        self._size = 0
        self._writer.submit(_WRITE, self, data)

    def close(self) -> None:
        """Hand over what is buffered, then the close; later writes are dropped."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._writer.submit(_CLOSE, self, b"")

    def take_dropped(self) -> int:
        dropped, self._dropped = self._dropped, 0
        return dropped


class _Writer:
    """The writer thread of one manager: writes, reopens and closes, in submission order.

    Started on the first submission (never in a process that only validates). ``stop``
    lets it finish everything submitted, then joins it.
    """

    def __init__(self, on_batch) -> None:
        self._on_batch = on_batch  # called on the thread after each batch
        self._cond = threading.Condition()
        self._tasks: collections.deque[tuple[int, AccessLogFile, bytes]] = collections.deque()
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._results = [0, 0, 0]  # write_completed, write_failed, reopen_failed

    def submit(self, op: int, file: AccessLogFile, data: bytes) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="access-log-writer", daemon=True
                )
                self._thread.start()
            file.inflight += len(data)
            self._tasks.append((op, file, data))
            self._cond.notify()

    def take_results(self) -> tuple[int, int, int]:
        with self._cond:
            results = tuple(self._results)
            self._results = [0, 0, 0]
        return results  # type: ignore[return-value]

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until everything submitted so far is done (tests, tools, shutdown)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._tasks and not self._busy, timeout)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._tasks and not self._stopping:
                    self._cond.wait()
                if not self._tasks:
                    return
                tasks = list(self._tasks)
                self._tasks.clear()
                self._busy = True
            results = [0, 0, 0]
            for op, file, data in _coalesce(tasks):
                if op == _WRITE:
                    _write(file, data, results)
                elif op == _REOPEN:
                    _reopen(file, results)
                elif file.fd is not None and file.path not in _STANDARD:
                    os.close(file.fd)
                    file.fd = None
            with self._cond:
                for _op, file, data in tasks:
                    file.inflight -= len(data)
                for i, count in enumerate(results):
                    self._results[i] += count
                self._busy = False
                self._cond.notify_all()
            try:
                self._on_batch()
            except Exception:  # the loop is gone (shutdown): results are taken at stop
                log.debug("access log writer could not wake the loop", exc_info=True)


def _coalesce(tasks):
    """Join consecutive writes to the same file into one write(2)."""
    out: list[tuple[int, AccessLogFile, bytes]] = []
    for task in tasks:
        if out and task[0] == _WRITE and out[-1][0] == _WRITE and out[-1][1] is task[1]:
            out[-1] = (_WRITE, task[1], out[-1][2] + task[2])
        else:
            out.append(task)
    return out


def _write(file: AccessLogFile, data: bytes, results: list[int]) -> None:
    if file.fd is None:
        return  # the path could not be reopened: lines are lost, as in Envoy
    view = memoryview(data)
    try:
        while view:
            written = os.write(file.fd, view)
            view = view[written:]
    except OSError as e:
        results[1] += 1
        log.error("access log %s: write failed: %s", file.path, e.strerror)
        return
    results[0] += 1


def _reopen(file: AccessLogFile, results: list[int]) -> None:
    try:
        fd = os.open(file.path, _OPEN_FLAGS, 0o666)
    except OSError as e:
        results[2] += 1
        log.error("access log %s: reopen failed: %s", file.path, e.strerror)
        fd = None
    if file.fd is not None:
        os.close(file.fd)
    file.fd = fd


class AccessLogManager:
    """The files of one process, their writer thread, and the timer that flushes them.

    ``loop`` may be None (tests, tools): then nothing flushes on a timer; callers flush
    and ``wait_written``. ``store`` (optional) receives Envoy's ``filesystem.*`` stats.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None,
        flush_interval_s: float,
        *,
        store=None,
        max_pending_bytes: int = MAX_PENDING_BYTES,
    ) -> None:
        self._loop = loop
        self._interval = flush_interval_s
        self._max_pending = max_pending_bytes
        self._files: dict[str, AccessLogFile] = {}
        self._stats = _FileStats(store) if store is not None else None
        self._writer = _Writer(self._wake_loop)
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def open(self, path: str) -> AccessLogFile:
        """The shared file for ``path``, opened (created) on first use. Raises OSError."""
        file = self._files.get(path)
        if file is None:
            file = AccessLogFile(path, self._stats, self._writer, self._max_pending)
            self._files[path] = file
            self._arm()
        return file

    def flush_all(self) -> None:
        """Hand every buffer to the writer (it writes them soon, off the loop)."""
        self._apply_results()
        for file in self._files.values():
            file.flush()

    def wait_written(self, timeout: float | None = None) -> bool:
        """Block until the writer has written everything handed over so far."""
        done = self._writer.wait_idle(timeout)
        self._apply_results()
        return done

    def reopen_all(self) -> None:
        """SIGUSR1 / ``/reopen_logs``: every file reopens its path, then writes its buffer."""
        for file in self._files.values():
            file.reopen()
            file.flush()

    def close_all(self) -> None:
        """Shutdown: write everything buffered, close every file, stop the writer.

        Blocks until the writer is done: the process is exiting and Envoy, too, flushes
        its access logs before it exits. The manager is unusable afterwards.
        """
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for file in self._files.values():
            file.close()
        self._writer.stop()
        self._apply_results()
        self._report_drops()
        self._files.clear()

    def _wake_loop(self) -> None:
        """On the writer thread: have the loop take the writer's stats."""
        loop = self._loop
        if loop is not None and self._stats is not None and not self._closed:
            loop.call_soon_threadsafe(self._apply_results)

    def _apply_results(self) -> None:
        completed, failed, reopen_failed = self._writer.take_results()
        stats = self._stats
        if stats is None:
            return
        if completed:
            stats.write_completed.add(completed)
        if failed:
            stats.write_failed.add(failed)
        if reopen_failed:
            stats.reopen_failed.add(reopen_failed)

    def _report_drops(self) -> None:
        for file in self._files.values():
            dropped = file.take_dropped()
            if dropped:
                log.error(
                    "access log %s: %d lines dropped, the writer is more than %d bytes behind",
                    file.path,
                    dropped,
                    self._max_pending,
                )

    def _arm(self) -> None:
        if self._loop is None or self._timer is not None or self._closed:
            return
        self._timer = self._loop.call_later(max(self._interval, 0.001), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed:
            return
        self._apply_results()
        for file in self._files.values():
            if file.buffered_bytes and self._stats is not None:
                self._stats.flushed_by_timer.inc()
            file.flush()
        self._report_drops()
        self._arm()

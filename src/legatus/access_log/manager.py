"""Access-log files: one buffered writer per path per process, flushed on a timer.

Envoy's AccessLogManager: every access logger writing to the same path shares one file;
lines are buffered and written when the buffer passes 64 KiB or every flush interval
(``--file-flush-interval-msec``, 10 s by default), and on shutdown. ``reopen_all``
(SIGUSR1, ``POST /reopen_logs``) makes each file reopen its path at the next flush, so
``logrotate`` can rename the file first; as in Envoy, what is still buffered then goes to
the new file.

Writes are plain ``os.write`` calls on an ``O_APPEND`` descriptor, made on the loop at
flush time: to a local file they take microseconds, but to a slow pipe (``/dev/stdout``
read by a stalled collector) they can block the worker. Each flush writes whole lines, so
several worker processes appending to the same file never interleave inside a line.
``/dev/stdout`` and ``/dev/stderr`` write to file descriptors 1 and 2 directly (opening
those paths fails when the descriptor is a socket) and are never closed or reopened.

A worker's loop owns its manager; nothing here is thread-safe.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os

log = logging.getLogger("legatus.access_log")

MIN_FLUSH_SIZE = 64 * 1024  # Envoy's min_flush_size: flush at once past this many bytes
_STANDARD = {"/dev/stdout": 1, "/dev/stderr": 2}
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)


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
    """One path's buffered writer. Get it from ``AccessLogManager.open``."""

    __slots__ = ("_buffer", "_closed", "_fd", "_reopen", "_size", "_stats", "path")

    def __init__(self, path: str, stats: _FileStats | None) -> None:
        self.path = path
        self._stats = stats
        self._buffer: list[bytes] = []
        self._size = 0
        self._reopen = False
        self._closed = False
        self._fd: int | None = _STANDARD.get(path)
        if self._fd is None:
            self._fd = os.open(path, _OPEN_FLAGS, 0o666)

    @property
    def buffered_bytes(self) -> int:
        return self._size

    def write(self, line: str) -> None:
        """Buffer one formatted entry; flush at once when the buffer passes 64 KiB."""
        if not line or self._closed:
            return
        data = line.encode("utf-8", "surrogateescape")
        self._buffer.append(data)
        self._size += len(data)
        if self._stats is not None:
            self._stats.write_buffered.inc()
            self._stats.write_total_buffered.add(len(data))
        if self._size > MIN_FLUSH_SIZE:
            self.flush()

    def reopen(self) -> None:
        """Reopen the path at the next flush (Envoy's order: reopen, then write)."""
        if self.path not in _STANDARD:
            self._reopen = True

    def flush(self) -> None:
        if self._reopen:
            self._reopen = False
            self._do_reopen()
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        if self._stats is not None:
            self._stats.write_total_buffered.sub(self._size)
        self._size = 0
        if self._fd is None:
            return  # the path could not be reopened: lines are lost, as in Envoy
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as e:
            if self._stats is not None:
                self._stats.write_failed.inc()
            log.error("access log %s: write failed: %s", self.path, e.strerror)
            return
        if self._stats is not None:
            self._stats.write_completed.inc()

    def close(self) -> None:
        """Flush and close; later writes are dropped (shutdown, or a replaced manager)."""
        self.flush()
        self._closed = True
        if self._fd is not None and self.path not in _STANDARD:
            os.close(self._fd)
        self._fd = None

    def _do_reopen(self) -> None:
        try:
            fd = os.open(self.path, _OPEN_FLAGS, 0o666)
        except OSError as e:
            if self._stats is not None:
                self._stats.reopen_failed.inc()
            log.error("access log %s: reopen failed: %s", self.path, e.strerror)
            fd = None
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd


class AccessLogManager:
    """The files of one process, and the timer that flushes them.

    ``loop`` may be None (tests, tools): then nothing flushes on a timer and callers
    flush explicitly. ``store`` (optional) receives Envoy's ``filesystem.*`` stats.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop | None, flush_interval_s: float, *, store=None
    ) -> None:
        self._loop = loop
        self._interval = flush_interval_s
        self._files: dict[str, AccessLogFile] = {}
        self._stats = _FileStats(store) if store is not None else None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def open(self, path: str) -> AccessLogFile:
        """The shared file for ``path``, opened (created) on first use. Raises OSError."""
        file = self._files.get(path)
        if file is None:
            file = AccessLogFile(path, self._stats)
            self._files[path] = file
            self._arm()
        return file

    def flush_all(self) -> None:
        for file in self._files.values():
            file.flush()

    def reopen_all(self) -> None:
        """SIGUSR1 / ``/reopen_logs``: every file reopens its path at its next flush.

        The flush is scheduled now rather than at the next tick so that a rotated file
        stops receiving lines promptly.
        """
        for file in self._files.values():
            file.reopen()
        if self._loop is not None and not self._closed:
            self._loop.call_soon(self.flush_all)
        else:
            self.flush_all()

    def close_all(self) -> None:
        """Flush and close every file (shutdown). The manager is unusable afterwards."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for file in self._files.values():
            file.close()
        self._files.clear()

    def _arm(self) -> None:
        if self._loop is None or self._timer is not None or self._closed:
            return
        self._timer = self._loop.call_later(max(self._interval, 0.001), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed:
            return
        for file in self._files.values():
            if file.buffered_bytes and self._stats is not None:
                self._stats.flushed_by_timer.inc()
            file.flush()
        self._arm()

"""AccessLogManager: shared files, buffering, the flush timer, 64 KiB, reopen, shutdown,
and the writer thread that keeps write(2) off the loop."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from legatus.access_log.manager import (
    MIN_FLUSH_SIZE,
    AccessLogManager,
    check_openable,
    open_error,
)
from legatus.stats.store import Store


def read(path) -> str:
    with open(path) as f:
        return f.read()


def test_one_file_per_path_and_nothing_written_before_a_flush(tmp_path):
    manager = AccessLogManager(None, 10.0)
    path = str(tmp_path / "a.log")
    first, second = manager.open(path), manager.open(path)
    assert first is second
    first.write("one\n")
    second.write("two\n")
    assert read(path) == ""  # created at open, written at flush
    manager.flush_all()
    assert manager.wait_written(5)
    assert read(path) == "one\ntwo\n"
    manager.close_all()


async def test_flush_interval_writes_buffered_lines(tmp_path):
    store = Store()
    manager = AccessLogManager(asyncio.get_running_loop(), 0.05, store=store)
    path = str(tmp_path / "a.log")
    manager.open(path).write("line\n")
    assert read(path) == ""
    await asyncio.sleep(0.15)
    assert read(path) == "line\n"
    manager.open(path).write("again\n")
    await asyncio.sleep(0.15)
    assert read(path) == "line\nagain\n"
    assert store.value("filesystem.flushed_by_timer") == 2
    assert store.value("filesystem.write_buffered") == 2
    assert store.value("filesystem.write_completed") == 2
    assert store.value("filesystem.write_total_buffered") == 0
    manager.close_all()


async def test_buffer_past_64k_is_written_at_once(tmp_path):
    manager = AccessLogManager(asyncio.get_running_loop(), 3600.0)
    path = str(tmp_path / "a.log")
    file = manager.open(path)
    line = "x" * 1023 + "\n"
    for _ in range(MIN_FLUSH_SIZE // len(line)):
        file.write(line)
    manager.wait_written(5)
    assert read(path) == ""  # exactly 64 KiB buffered: not past the threshold yet
    file.write(line)
    assert file.buffered_bytes == 0  # handed to the writer at once
    assert manager.wait_written(5)
    assert len(read(path)) == MIN_FLUSH_SIZE + len(line)
    manager.close_all()


async def test_reopen_after_rename_writes_to_a_new_file(tmp_path):
    manager = AccessLogManager(asyncio.get_running_loop(), 3600.0)
    path = str(tmp_path / "a.log")
    file = manager.open(path)
    file.write("before\n")
    manager.flush_all()
    manager.wait_written(5)
    os.rename(path, path + ".1")
    file.write("buffered at rotation\n")
    manager.reopen_all()
    file.write("after\n")
    manager.close_all()
    assert read(path + ".1") == "before\n"
    # Envoy's order: reopen, then write what was buffered.
    assert read(path) == "buffered at rotation\nafter\n"


async def test_reopen_failure_counts_and_drops_lines(tmp_path):
    store = Store()
    manager = AccessLogManager(asyncio.get_running_loop(), 3600.0, store=store)
    directory = tmp_path / "logs"
    directory.mkdir()
    path = str(directory / "a.log")
    file = manager.open(path)
    os.rename(path, str(tmp_path / "moved.log"))
    directory.rmdir()
    file.write("lost\n")
    manager.reopen_all()
    assert manager.wait_written(5)
    assert store.value("filesystem.reopen_failed") == 1
    manager.close_all()
    assert read(tmp_path / "moved.log") == ""


def test_close_all_flushes_and_closes(tmp_path):
    manager = AccessLogManager(None, 10.0)
    path = str(tmp_path / "a.log")
    file = manager.open(path)
    file.write("last words\n")
    manager.close_all()
    assert read(path) == "last words\n"
    file.write("dropped\n")
    assert file.buffered_bytes == 0


def test_appends_to_an_existing_file(tmp_path):
    path = tmp_path / "a.log"
    path.write_text("old\n")
    manager = AccessLogManager(None, 10.0)
    manager.open(str(path)).write("new\n")
    manager.close_all()
    assert read(path) == "old\nnew\n"


def test_dev_stdout_and_stderr_are_the_process_descriptors(capfd):
    manager = AccessLogManager(None, 10.0)
    manager.open("/dev/stdout").write("to stdout\n")
    manager.open("/dev/stderr").write("to stderr\n")
    manager.reopen_all()
    manager.close_all()
    out, err = capfd.readouterr()
    assert out == "to stdout\n"
    assert err == "to stderr\n"
    os.write(1, b"")  # still open after close_all


def test_undecodable_bytes_are_written_back_as_bytes(tmp_path):
    manager = AccessLogManager(None, 10.0)
    path = tmp_path / "a.log"
    manager.open(str(path)).write(b"h\xc3\xa9 \xff\n".decode("utf-8", "surrogateescape"))
    manager.close_all()
    assert path.read_bytes() == b"h\xc3\xa9 \xff\n"


def test_open_errors_use_envoys_text(tmp_path):
    manager = AccessLogManager(None, 10.0)
    missing = str(tmp_path / "nope" / "a.log")
    with pytest.raises(OSError) as e:
        manager.open(missing)
    assert open_error(missing, e.value) == (  # real Envoy
        f"unable to open file '{missing}': No such file or directory"
    )


def test_check_openable_matches_open_without_creating(tmp_path):
    check_openable(str(tmp_path / "new.log"))
    assert not (tmp_path / "new.log").exists()
    check_openable("/dev/stdout")
    with pytest.raises(OSError) as e:
        check_openable(str(tmp_path / "nope" / "a.log"))
    assert e.value.strerror == "No such file or directory"
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError) as e:
        check_openable(str(tmp_path / "file" / "a.log"))
    assert e.value.strerror == "Not a directory"
    with pytest.raises(OSError) as e:
        check_openable(str(tmp_path))
    assert e.value.strerror == "Is a directory"


# The writer thread -------------------------------------------------------------------


def _drain(fd: int, want: int, timeout: float = 10.0) -> bytes:
    """Read ``want`` bytes from a non-blocking pipe, waiting for the writer."""
    out = bytearray()
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            time.sleep(0.005)
            continue
        out += chunk
    return bytes(out)


async def test_a_stalled_reader_blocks_the_writer_thread_not_the_loop(tmp_path):
    """Writes to a full pipe wait on the writer thread while the loop keeps serving."""
    fifo = str(tmp_path / "pipe")
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        store = Store()
        manager = AccessLogManager(asyncio.get_running_loop(), 3600.0, store=store)
        file = manager.open(fifo)
        line = "y" * 1023 + "\n"
        total = 512 * len(line)  # 512 KiB: far past what the pipe holds (64 KiB)
        started = time.monotonic()
        for _ in range(512):
            file.write(line)
        manager.flush_all()
        assert time.monotonic() - started < 1.0  # nothing waited for the reader
        ticks = 0
        for _ in range(5):  # the loop runs while the writer is stuck in write(2)
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 5
        assert file.pending_bytes > 0
        data = await asyncio.to_thread(_drain, reader, total)
        assert data == line.encode() * 512
        assert manager.wait_written(5)
        assert store.value("filesystem.write_total_buffered") == 0
        assert store.value("filesystem.write_buffered") == 512
        manager.close_all()
    finally:
        os.close(reader)


async def test_lines_past_the_pending_cap_are_dropped_and_logged(tmp_path, caplog):
    fifo = str(tmp_path / "pipe")
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        store = Store()
        cap = 256 * 1024
        manager = AccessLogManager(
            asyncio.get_running_loop(), 3600.0, store=store, max_pending_bytes=cap
        )
        file = manager.open(fifo)
        line = "z" * 1023 + "\n"
        for _ in range(1024):  # 1 MiB offered while the reader sleeps
            file.write(line)
        assert file.pending_bytes <= cap
        kept = store.value("filesystem.write_buffered")
        assert 0 < kept < 1024  # the rest were dropped, and not counted as buffered
        manager.flush_all()
        data = await asyncio.to_thread(_drain, reader, kept * len(line))
        assert data == line.encode() * kept  # whole lines only
        manager.close_all()
        assert "lines dropped" in caplog.text
    finally:
        os.close(reader)


async def test_stats_of_the_writer_reach_the_store_without_a_flush(tmp_path):
    store = Store()
    manager = AccessLogManager(asyncio.get_running_loop(), 3600.0, store=store)
    path = str(tmp_path / "a.log")
    manager.open(path).write("x" * (MIN_FLUSH_SIZE + 1) + "\n")
    for _ in range(200):  # the writer wakes the loop with its results
        await asyncio.sleep(0.01)
        if store.value("filesystem.write_completed"):
            break
    assert store.value("filesystem.write_completed") == 1
    manager.close_all()


def _writers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "access-log-writer"}


def test_close_all_writes_everything_handed_over_and_buffered(tmp_path):
    before = _writers()
    manager = AccessLogManager(None, 10.0)
    paths = [str(tmp_path / f"{i}.log") for i in range(3)]
    for i, path in enumerate(paths):
        file = manager.open(path)
        for j in range(1000):
            file.write(f"{i} {j}\n")
        if i == 0:
            file.flush()  # handed over, perhaps not written yet
    manager.close_all()
    for i, path in enumerate(paths):
        assert read(path) == "".join(f"{i} {j}\n" for j in range(1000))
    assert _writers() <= before  # the writer thread has exited


def test_no_thread_until_something_is_written(tmp_path):
    before = _writers()
    manager = AccessLogManager(None, 10.0)
    manager.open(str(tmp_path / "a.log"))
    manager.flush_all()
    assert _writers() <= before
    manager.close_all()

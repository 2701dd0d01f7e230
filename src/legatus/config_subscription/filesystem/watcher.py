"""Noticing that a config file changed: by polling ``stat``, not by inotify.

Envoy watches with inotify and reacts to one event only: a file moved onto the path
(``IN_MOVED_TO``), or, with ``watched_directory``, anything moved into that directory.
legatus reloads in more cases (an in-place edit, a symlink swapped anywhere on the path,
a Kubernetes ConfigMap's ``..data`` swap) and finds them all the same way: at each tick it
takes a fingerprint and compares it with the one taken when the file was last read.

Why polling rather than a ctypes binding to inotify:

- inotify reports events on the inodes it watches. Catching a symlink swap of a directory
  somewhere on the path would need a watch per path component, re-established after each
  swap; polling gets it from ``realpath`` for free.
- inotify sees nothing on network and some FUSE filesystems (NFS, SMB, many container
  volume drivers) when another host writes; ``stat`` does.
- inotify is Linux only, its watches are a per-user kernel limit
  (``fs.inotify.max_user_watches``) shared with every other process, and its queue can
  overflow; polling has no such state to lose.
- The cost is small and bounded: one ``realpath`` and one ``stat`` per tick (plus a directory
  listing with ``watched_directory``), a few microseconds, and a reload latency of one to two
  intervals (0.25 s by default), which is fine for configuration.

The fingerprint of the file is its resolved path (every symlink on the way, so a swapped
link or ``..data`` directory shows), and its device, inode, size, mtime and ctime in
nanoseconds. ctime catches tools that restore mtime (``cp -p``, ``rsync -t``). Timestamps
are only as fine as the filesystem keeps them (a second on some): a rewrite of the same size
in the same tick of that clock leaves ``stat`` unchanged. So for ``racy_window`` seconds
after each read, while such a rewrite could still be invisible, the watcher also hashes the
content at every tick (git's "racy timestamp" rule); after that window any write moves the
ctime past the one it recorded.

With ``watched_directory``, the fingerprint also covers the directory's entries (name,
inode, times, symlink target), so a file moved into it, or the ``..data`` link renamed over,
shows as a change even when the watched file itself is untouched.

Debounce: a change is reported only once the fingerprint has stayed the same for
``debounce`` seconds, so a burst of writes gives one reload and a half-written file is
usually not read. A missing file is not a change to load: the last config stays until the
file is back.

The watcher has no clock and no timer of its own: its owner calls ``poll(now)`` on a timer
and ``read(now)`` to load, with ``now`` from the event loop's monotonic clock.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_DEBOUNCE", "DEFAULT_POLL_INTERVAL", "DEFAULT_RACY_WINDOW", "FileWatcher"]

DEFAULT_POLL_INTERVAL = 0.25
DEFAULT_DEBOUNCE = 0.1
DEFAULT_RACY_WINDOW = 2.5  # more than the coarsest common timestamp (FAT's two seconds)

StatFunction = Callable[[str], Any]  # os.stat's shape: returns an object with st_* fields


@dataclass(frozen=True, slots=True)
class _Fingerprint:
    file: tuple | None  # None: the file cannot be stat'ed
    directory: tuple | None
    digest: bytes | None  # the content's hash, when known


class FileWatcher:
    """Tells when the file at ``path`` (or ``watched_directory``) changed (see module doc)."""

    __slots__ = (
        "_debounce",
        "_directory",
        "_loaded",
        "_path",
        "_racy",
        "_racy_until",
        "_racy_window",
        "_seen",
        "_seen_at",
        "_stat",
    )

    def __init__(
        self,
        path: str,
        *,
        watched_directory: str | None = None,
        debounce: float = DEFAULT_DEBOUNCE,
        racy_window: float = DEFAULT_RACY_WINDOW,
        stat: StatFunction = os.stat,
    ) -> None:
        if debounce < 0 or racy_window < 0:
            raise ValueError("debounce and racy_window must not be negative")
        self._path = path
        self._directory = watched_directory
        self._debounce = debounce
        self._stat = stat
        self._racy_window = racy_window
        self._racy = False  # the bytes must be looked at: set by read()
        self._racy_until = 0.0
        self._loaded = _Fingerprint(None, None, None)
        self._seen = self._loaded
        self._seen_at = 0.0

    def read(self, now: float) -> bytes:
        """The file's content, which becomes the baseline later polls compare with.

        The fingerprint is taken before the read, so a write racing with the read shows as a
        change at the next poll (at worst one reload too many, never one missed). Raises
        OSError (the baseline is still taken: the next change is reported).
        """
        file = self._file_fingerprint()
        directory = self._directory_fingerprint()
        self._racy = True
        self._racy_until = now + self._racy_window
        try:
            with open(self._path, "rb") as f:
                content = f.read()
        except OSError:
            self._loaded = self._seen = _Fingerprint(file, directory, None)
            self._seen_at = now
            raise
        self._loaded = self._seen = _Fingerprint(file, directory, _digest(content))
        self._seen_at = now
        return content

    def poll(self, now: float) -> bool:
        """Whether the file changed since the last ``read`` and has settled: read it again."""
        loaded = self._loaded
        racy = self._racy
        if racy and now >= self._racy_until:
            # The first poll at or after the window's end is the last to hash: a write after
            # it moves the ctime past the recorded one, whatever the timestamps' resolution.
            self._racy = False
        file = self._file_fingerprint()
        directory = self._directory_fingerprint()
        if file is not None and file == loaded.file:
            # Unchanged as far as stat can tell: within the racy window (or while a content
            # change seen there settles), look at the bytes.
            look = racy or self._seen.digest != loaded.digest
            digest = self._hash() if look else loaded.digest
        else:
            digest = None
        observed = _Fingerprint(file, directory, digest)
        if observed != self._seen:
            self._seen = observed
            self._seen_at = now
        if observed == loaded or file is None:
            return False
        return now - self._seen_at >= self._debounce

    # Fingerprints ----------------------------------------------------------------------

    def _file_fingerprint(self) -> tuple | None:
        try:
            real = os.path.realpath(self._path)
            st = self._stat(real)
        except (OSError, ValueError):
            return None
        return (real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _directory_fingerprint(self) -> tuple | None:
        if self._directory is None:
            return None
        entries = []
        try:
            with os.scandir(self._directory) as it:
                for entry in it:
                    st = entry.stat(follow_symlinks=False)
                    target = os.readlink(entry.path) if entry.is_symlink() else None
                    entries.append((entry.name, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, target))
            st = os.stat(self._directory)
        except OSError:
            return None
        entries.sort()
        return (st.st_dev, st.st_ino, tuple(entries))

    def _hash(self) -> bytes | None:
        try:
            with open(self._path, "rb") as f:
                return _digest(f.read())
        except OSError:
            return None


def _digest(content: bytes) -> bytes:
    return hashlib.blake2b(content, digest_size=16).digest()

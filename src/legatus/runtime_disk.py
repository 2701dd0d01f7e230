"""Disk runtime layers: a directory tree read into runtime keys, and noticing that it changed.

Reading follows Envoy 1.40's DiskLayer, as the real Envoy showed it:

- Each regular file under the layer's directory is one key, its path below the directory
  with ``/`` read as ``.`` (``a/b/c`` is ``a.b.c``; a file named ``x.y`` is ``x.y``).
  Symlinks are followed, to files and to directories; hidden files and directories are keys
  like any other; FIFOs, sockets and devices are skipped. A dangling symlink fails the read.
- Directories nest at most 16 deep, counting the layer's own directory as the first: deeper
  fails the read (``Walk recursion depth exceeded 16``), which also ends symlink loops.
- A directory or file whose real path is under ``/dev``, ``/sys`` or ``/proc`` (other than
  ``/dev/fd/...``), or that has no real path, fails the read (``Invalid path: <path>``).
- A file's value: its text split into lines at ``\\n`` (empty lines dropped), lines that start
  with ``#`` dropped (comments), every other line kept with its ``\\n``, except the last line
  and any line equal to it (Envoy compares them by value), which lose their trailing
  whitespace and get no ``\\n``. So ``"  hello  \\n"`` is ``"  hello"`` and
  ``"# note\\nvalue\\n# end\\n"`` is ``"value\\n"``.
- That text is read as YAML, as a ``/runtime_modify`` value is (``{numerator: 5}`` is a
  fraction, ``0x64`` is 100); text that is not YAML fails the read.
- The same key twice (a file ``a.b`` beside a directory ``a`` holding ``b``): the first in
  name order wins (Envoy keeps the first in directory order, which the filesystem chooses).

``read_disk_layer`` returns None when the layer's directory does not exist (Envoy then leaves
the layer out) and raises DiskLayerError when the read fails; what a failure does to the
layer is the loader's choice (``legatus.runtime_loader``).

Noticing changes. Envoy watches the parent of each ``symlink_root`` with inotify and reloads
when something is moved onto the root's name (the atomic symlink swap). legatus polls
instead: ``root_stamp`` is the identity (device and inode) of the root itself, so a swapped
link shows as a new stamp; ``tree_stamp`` is the identity, size and times of every directory
and file the read would visit, so an edit in place shows too, which Envoy does not see.
Polling with ``os.stat`` because the standard library has no inotify binding and a new
dependency for one is not worth it: a runtime tree is small (a few hundred files at most) and
stat-ing it a few times a second costs little. ``ChangeDetector`` turns successive stamps
into reload decisions, without I/O.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from legatus.runtime_values import Entry, InvalidEntry, yaml_entry

__all__ = [
    "MAX_WALK_DEPTH",
    "ChangeDetector",
    "DiskLayerError",
    "file_value",
    "read_disk_layer",
    "root_stamp",
    "tree_stamp",
    "watch_error",
]

MAX_WALK_DEPTH = 16
_ILLEGAL_PREFIXES = ("/dev", "/sys", "/proc")
_TRAILING_WHITESPACE = " \t\f\v\n\r"


class DiskLayerError(Exception):
    """A disk layer's tree could not be read (Envoy's text, naming the path)."""


def read_disk_layer(path: str) -> dict[str, Entry] | None:
    """The keys of the tree at ``path``; None when ``path`` is not a directory."""
    if not os.path.isdir(path):
        return None
    out: dict[str, Entry] = {}
    _walk(path, "", 1, out)
    return out


def _walk(path: str, prefix: str, depth: int, out: dict[str, Entry]) -> None:
    if depth > MAX_WALK_DEPTH:
        raise DiskLayerError(f"Walk recursion depth exceeded {MAX_WALK_DEPTH}")
    _check_legal(path)
    try:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise DiskLayerError(f"unable to read directory {path}: {e.strerror}") from None
    for entry in entries:
        key = f"{prefix}.{entry.name}" if prefix else entry.name
        full = f"{path}/{entry.name}"
        if entry.is_dir():  # follows symlinks
            _walk(full, key, depth + 1, out)
        elif _is_file(entry, full) and key not in out:
            out[key] = _read_entry(full)


def _is_file(entry: os.DirEntry, full: str) -> bool:
    """A regular file (through links), or a dangling link: Envoy reads both (the link fails)."""
    return entry.is_file() or (entry.is_symlink() and not os.path.exists(full))


def _read_entry(path: str) -> Entry:
    _check_legal(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        raise DiskLayerError(f"unable to read file: {path}") from None
    try:
        return yaml_entry(file_value(data.decode("utf-8", errors="replace")))
    except InvalidEntry as e:
        raise DiskLayerError(f"{path}: {e}") from None


def _check_legal(path: str) -> None:
    """Envoy's Filesystem::illegalPath: no real path, or one under /dev, /sys or /proc."""
    if path.startswith("/dev/fd/"):
        return
    try:
        real = os.path.realpath(path, strict=True)
    except OSError:
        raise DiskLayerError(f"Invalid path: {path}") from None
    if real.startswith(_ILLEGAL_PREFIXES):
        raise DiskLayerError(f"Invalid path: {path}")


def file_value(text: str) -> str:
    """A file's text as the runtime value Envoy makes of it (comments out, last line trimmed)."""
    lines = [line for line in text.split("\n") if line]
    if not lines:
        return ""
    last = lines[-1]
    parts = []
    for line in lines:
        if line.startswith("#"):
            continue
        if line == last:
            parts.append(line.rstrip(_TRAILING_WHITESPACE))
        else:
            parts.append(line + "\n")
    return "".join(parts)


def watch_error(symlink_root: str) -> str | None:
    """Why Envoy could not watch ``symlink_root`` (its parent directory is missing), or None."""
    parent = symlink_root[: symlink_root.rfind("/")] or "/"
    try:
        os.stat(parent)
    except OSError as e:
        return f"unable to add filesystem watch for file {symlink_root}: {e.strerror}"
    return None


# Stamps -------------------------------------------------------------------------------------


def root_stamp(symlink_root: str) -> tuple[int, int] | None:
    """The root itself (not what it points to): a swapped link is a new inode."""
    try:
        st = os.lstat(symlink_root)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def tree_stamp(paths: Iterable[str]) -> tuple:
    """What the reads of these trees would find, as stat sees it (equal stamps: same tree)."""
    out: list[tuple] = []
    for path in paths:
        _stamp(path, path, 1, out)
    return tuple(out)


def _stamp(path: str, name: str, depth: int, out: list[tuple]) -> None:
    try:
        st = os.stat(path)
    except OSError as e:
        out.append((name, "error", e.errno))
        return
    out.append((name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    if depth > MAX_WALK_DEPTH + 1 or not os.path.isdir(path):
        return
    try:
        with os.scandir(path) as it:
            names = sorted(entry.name for entry in it)
    except OSError as e:
        out.append((name, "unreadable", e.errno))
        return
    for child in names:
        _stamp(f"{path}/{child}", f"{name}/{child}", depth + 1, out)


class ChangeDetector:
    """When to reload the disk layers, from the stamps of successive polls.

    A swapped symlink root reloads at once (the swap is atomic), once per disk layer under
    that root, as Envoy's one watch per disk layer does. Any other change to the trees
    reloads once the trees have stayed the same for a whole poll interval, so that a file
    still being written is not read half way (debounced).
    """

    def __init__(
        self,
        layers_per_root: Mapping[str, int],
        roots: Mapping[str, object],
        tree: tuple,
    ) -> None:
        self._layers_per_root = dict(layers_per_root)
        self._roots: dict[str, object] = {}
        self._loaded: tuple = ()  # the trees as of the last read
        self._pending: tuple | None = None  # a changed tree seen by the last poll
        self.read(roots, tree)

    def read(self, roots: Mapping[str, object], tree: tuple) -> None:
        """The layers are being read as of these stamps (taken before the read, so that a
        change during the read shows at the next poll)."""
        self._roots, self._loaded, self._pending = dict(roots), tree, None

    def poll(self, roots: Mapping[str, object], tree: tuple) -> int:
        """How many loads to do now."""
        swapped = [root for root, stamp in roots.items() if self._roots.get(root) != stamp]
        self._roots = dict(roots)
        if swapped:
            self._loaded, self._pending = tree, None
            return sum(self._layers_per_root.get(root, 0) for root in swapped)
        if tree == self._loaded:
            self._pending = None
            return 0
        if tree == self._pending:
            self._loaded, self._pending = tree, None
            return 1
        self._pending = tree
        return 0

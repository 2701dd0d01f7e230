"""The files a secret from an SDS file names, and when to read them again: Envoy's SDS key
rotation, which reloads a certificate or a CA bundle from its paths without a new SDS update.

What Envoy 1.40 does (SdsApi), and legatus with it:

- Which files: a ``TlsCertificate``'s ``certificate_chain`` and ``private_key``, a
  ``CertificateValidationContext``'s ``trusted_ca`` and ``crl``, when they are filenames.
  They are read into inline bytes when the secret arrives (``resolve``). ``password`` and
  ``pkcs12`` are not: they are read when a TLS context is built, and never watched.
- When: with the secret's ``watched_directory``, when an entry is moved into that directory
  (a Kubernetes secret volume swaps its ``..data`` link so); without it, when a file is moved
  into the directory of one of the files (Envoy watches that directory once per file, so
  one move is seen once per file in it). A rewrite in place is no trigger.
- How: the files are read until two reads in a row agree (five retries at most), so that a
  certificate and its key are read together. If that is what is in use, nothing happens;
  else the secret's users rebuild their TLS contexts. One that fails (a key that does not
  fit) keeps the secret in use and counts ``sds.<name>.key_rotation_failed``, once per watch
  that fired; the next trigger tries again. No ``update_*`` stat moves: those count the SDS
  subscription's updates.

legatus polls instead of watching with inotify (``config_subscription/filesystem/watcher.py``
says why), which shows as:

- with ``watched_directory``: a change of the directory's entries (names, inodes, symlink
  targets) is the trigger: a move into it, as in Envoy, but also a file created in it or
  removed from it, which Envoy does not react to; a file rewritten in place is not one.
- without: a change of one of the files (rewritten in place, renamed over, a symlink
  swapped on its path) is the trigger, which is more than Envoy sees. A failed attempt counts
  once per file watched in the directories where a file changed, as Envoy's watches would.
"""

from __future__ import annotations

import hashlib
import logging
import os

from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from legatus.config.errors import ConfigError
from legatus.config_subscription.filesystem.watcher import DEFAULT_DEBOUNCE, FileWatcher

log = logging.getLogger("legatus.config")

MAX_RETRIES = 5  # reads of the files that may disagree before Envoy gives up on agreement

# The file DataSources of each kind of secret that are resolved and watched.
_WATCHED = {
    "tls_certificate": ("certificate_chain", "private_key"),
    "validation_context": ("trusted_ca", "crl"),
}


def _sources(secret: secret_pb2.Secret) -> list:
    kind = secret.WhichOneof("type")
    if kind not in _WATCHED:
        return []
    message = getattr(secret, kind)
    return [getattr(message, field) for field in _WATCHED[kind] if message.HasField(field)]


def watched_filenames(secret: secret_pb2.Secret) -> list[str]:
    """The files of ``secret`` Envoy resolves and watches, once per DataSource."""
    return [s.filename for s in _sources(secret) if s.WhichOneof("specifier") == "filename"]


def watched_directory(secret: secret_pb2.Secret) -> str | None:
    kind = secret.WhichOneof("type")
    if kind not in _WATCHED:
        return None
    message = getattr(secret, kind)
    return message.watched_directory.path if message.HasField("watched_directory") else None


class DirectoryEntries:
    """Tells when entries of a directory changed (see the module doc): its entries' names,
    inodes and symlink targets, reported once they have been still for ``debounce``."""

    __slots__ = ("_debounce", "_loaded", "_path", "_seen", "_seen_at")

    def __init__(self, path: str, now: float, *, debounce: float = DEFAULT_DEBOUNCE) -> None:
        self._path = path
        self._debounce = debounce
        entries = self._entries()
        if entries is None:  # Envoy cannot add its inotify watch
            raise ConfigError(
                "", f"unable to add filesystem watch for file {path}/: No such file or directory"
            )
        self._loaded = self._seen = entries
        self._seen_at = now

    def poll(self, now: float) -> bool:
        """Whether the entries changed and settled since the last report (or creation)."""
        entries = self._entries()
        if entries != self._seen:
            self._seen, self._seen_at = entries, now
        if entries is None or entries == self._loaded or now - self._seen_at < self._debounce:
            return False
        self._loaded = entries
        return True

    def _entries(self) -> tuple | None:
        try:
            with os.scandir(self._path) as it:
                found = []
                for entry in it:
                    target = os.readlink(entry.path) if entry.is_symlink() else None
                    found.append((entry.name, entry.inode(), target))
        except OSError:
            return None
        return tuple(sorted(found))


class SecretFiles:
    """The watched files of one secret and their trigger (see the module doc)."""

    __slots__ = ("_directory", "_watchers", "paths")

    def __init__(self, secret: secret_pb2.Secret, now: float) -> None:
        self.paths = watched_filenames(secret)  # one per watch, as Envoy's
        directory = watched_directory(secret)
        self._directory = DirectoryEntries(directory, now) if directory else None
        self._watchers: dict[str, FileWatcher] = (
            {} if directory else {path: FileWatcher(path) for path in self.paths}
        )

    def read(self, now: float) -> dict[str, bytes]:
        """The files' contents, read until two reads agree. Raises ConfigError when one
        cannot be read."""
        contents = self._read_once(now)
        for _ in range(MAX_RETRIES):
            again = self._read_once(None)
            if again == contents:
                return contents
            contents = again
        log.warning(
            "Unable to atomically refresh secrets due to > %d non-atomic rotations observed",
            MAX_RETRIES,
        )
        return contents

    def _read_once(self, now: float | None) -> dict[str, bytes]:
        """One read of every file; with ``now``, through the watchers, whose baseline it
        becomes."""
        out: dict[str, bytes] = {}
        for path in self.paths:
            if path in out:
                continue
            try:
                watcher = self._watchers.get(path) if now is not None else None
                if watcher is not None:
                    out[path] = watcher.read(now)
                else:
                    with open(path, "rb") as f:
                        out[path] = f.read()
            except OSError as e:
                raise ConfigError("", f"Invalid path: {path} ({e.strerror})") from None
        return out

    def poll(self, now: float) -> int:
        """How many of Envoy's watches fired since the last read (0: none)."""
        if self._directory is not None:
            return 1 if self._directory.poll(now) else 0
        changed = {os.path.dirname(p) for p, w in self._watchers.items() if w.poll(now)}
        return sum(1 for p in self.paths if os.path.dirname(p) in changed)


def digest(contents: dict[str, bytes]) -> bytes:
    """What a set of file contents is compared by."""
    h = hashlib.blake2b(digest_size=16)
    for path in sorted(contents):
        h.update(path.encode() + b"\0" + contents[path] + b"\0")
    return h.digest()


def resolve(secret: secret_pb2.Secret, contents: dict[str, bytes]) -> secret_pb2.Secret:
    """A copy of ``secret`` with its watched file DataSources replaced by their bytes."""
    out = secret_pb2.Secret()
    out.CopyFrom(secret)
    for source in _sources(out):
        if source.WhichOneof("specifier") == "filename":
            source.inline_bytes = contents[source.filename]
    return out


__all__ = ["DirectoryEntries", "SecretFiles", "digest", "resolve", "watched_filenames"]

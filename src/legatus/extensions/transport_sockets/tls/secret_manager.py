"""SDS secrets: the bootstrap's static ``secrets`` and secrets read from files.

Envoy's SecretManagerImpl, for the config sources legatus has: a TLS context names a
secret (``tls_certificate_sds_secret_configs``, ``validation_context_sds_secret_config``,
``combined_validation_context``), with no ``sds_config`` for a static secret of the
bootstrap, or with ``sds_config.path_config_source`` (or the deprecated ``path``) for one
read from a file that holds a DiscoveryResponse of ``Secret`` resources. SDS over gRPC
(``api_config_source``, ``ads``) is refused at config time.

A file secret is watched, and so are the files its DataSources name (a certificate, a key,
a CA bundle): a rewrite in place, a rename over, or a symlink swapped anywhere on the path
(Kubernetes' ``..data``) reloads it (config_subscription/filesystem/watcher.py). As in
Envoy, the DataSources are read into inline bytes when the secret is loaded, so what is
checked is what is used. A load that fails (the file half written, the secret missing, a key
that does not match) keeps the previous secret and counts ``sds.<name>.update_rejected``
(``update_failure`` when the file cannot be read or parsed).

Each process has its own manager: every worker reloads its own SSL contexts, and the main
process keeps one for ``/certs`` and counts the ``sds.<name>.*`` stats (workers do not, so
that the instance counts each update once).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import xxhash
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from legatus.config.errors import ConfigError, join_path
from legatus.config_subscription.filesystem.watcher import DEFAULT_POLL_INTERVAL, FileWatcher
from legatus.stats.store import StatSet, counter, gauge, histogram

log = logging.getLogger("legatus.config")

Secret = secret_pb2.Secret
SECRET_TYPE = "envoy.extensions.transport_sockets.tls.v3.Secret"


class SdsStats(StatSet):
    """``sds.<secret name>.*``, as Envoy's SdsApi counts a file subscription."""

    update_attempt = counter()
    update_success = counter()
    update_failure = counter()
    update_rejected = counter()
    init_fetch_timeout = counter()
    key_rotation_failed = counter()
    version = gauge()
    update_time = gauge()
    update_duration = histogram()

    def __init__(self, scope) -> None:
        super().__init__(scope)
        object.__setattr__(self, "version_text", scope.text_readout("version_text"))


class SecretProvider:
    """One named secret: ``secret`` is its current ``Secret`` proto (DataSources inline);
    ``add_callback(cb)`` is told after each accepted change (and returns its remover)."""

    __slots__ = ("_callbacks", "name", "secret", "source")

    def __init__(self, name: str, secret: Secret, source: str) -> None:
        self.name = name
        self.secret = secret
        self.source = source  # "static" or the file's path, for messages
        self._callbacks: list[weakref.WeakMethod] = []

    def add_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (a bound method, held weakly: a listener that is gone stops
        being told) after each accepted change."""
        self._callbacks.append(weakref.WeakMethod(callback))  # type: ignore[arg-type]

    def _changed(self, secret: Secret) -> None:
        self.secret = secret
        alive = []
        for ref in self._callbacks:
            callback = ref()
            if callback is None:
                continue
            alive.append(ref)
            try:
                callback()
            except Exception:  # a user of the secret must not stop the others
                log.exception("secret '%s': an update callback failed", self.name)
        self._callbacks = alive


class FileSecretProvider(SecretProvider):
    __slots__ = ("_checker", "_file", "_inputs", "_stats", "_version", "_watched_directory")

    def __init__(self, name: str, path: str, watched_directory: str | None, stats) -> None:
        super().__init__(name, Secret(), path)
        self._watched_directory = watched_directory
        self._file = FileWatcher(path, watched_directory=watched_directory)
        self._inputs: dict[str, FileWatcher] = {}  # the files the secret's DataSources name
        self._stats = stats
        self._checker: Callable[[Secret], None] | None = None
        self._version = ""  # the accepted file's version_info

    def load(self, now: float, *, initial: bool) -> None:
        """Read the file (and the files it names); on success the secret changes. Raises
        ConfigError at the first load, counts and keeps the last secret later."""
        stats = self._stats
        started = time.monotonic()
        if stats is not None:
            stats.update_attempt.inc()
        try:
            content = self._file.read(now)
            secret, version = self._parse(content)
        except (OSError, ConfigError) as e:
            if stats is not None:
                stats.update_failure.inc()
            if initial:
                raise ConfigError("", _message(e)) from None
            log.warning("SDS secret '%s' from %s: %s", self.name, self.source, _message(e))
            return
        inputs: dict[str, FileWatcher] = {}
        try:
            inline = _inline(secret, inputs, now)
            if self._checker is not None:
                self._checker(inline)
        except (OSError, ConfigError) as e:
            self._inputs = inputs or self._inputs  # watch them: the next write retries
            if stats is not None:
                stats.update_rejected.inc()
            if initial:
                raise ConfigError("", _message(e)) from None
            log.warning("SDS secret '%s' from %s rejected: %s", self.name, self.source,
                        _message(e))  # fmt: skip
            return
        self._inputs = inputs
        self._version = version
        if stats is not None:
            self._count_success(stats)
            stats.update_duration.record((time.monotonic() - started) * 1000)
        if initial:
            self.secret = inline
        else:
            log.info("SDS secret '%s' updated from %s", self.name, self.source)
            self._changed(inline)

    def _count_success(self, stats: SdsStats) -> None:
        stats.update_success.inc()
        stats.version.set(xxhash.xxh64_intdigest(self._version.encode()))
        stats.version_text.set(self._version)
        stats.update_time.set(int(time.time() * 1000))

    def count_initial_load(self, stats: SdsStats) -> None:
        """The load made before there was a stats store (the main process compiles its
        listeners before it runs): counted now, as Envoy counts its first fetch."""
        self._stats = stats
        stats.update_attempt.inc()
        self._count_success(stats)

    def poll(self, now: float) -> None:
        if self._file.poll(now) or any(w.poll(now) for w in self._inputs.values()):
            self.load(now, initial=False)

    def _parse(self, content: bytes) -> tuple[Secret, str]:
        from legatus.config_subscription.filesystem.document import load_response
        from legatus.config_subscription.rest.response import WARN_UNKNOWN_FIELDS

        response = load_response(self.source, content, WARN_UNKNOWN_FIELDS)
        for resource in response.resources:
            if resource.type_url.rsplit("/", 1)[-1] != SECRET_TYPE:
                continue
            secret = Secret()
            resource.Unpack(secret)
            if secret.name == self.name:
                return secret, response.version_info
        raise ConfigError("", f"Missing SDS resources for {self.name} in {self.source}")


def _message(error: Exception) -> str:
    return error.message if isinstance(error, ConfigError) else str(error)


def _inline(secret: Secret, watchers: dict[str, FileWatcher], now: float) -> Secret:
    """A copy of ``secret`` with every filename DataSource read into inline bytes, each
    file given a watcher in ``watchers``."""
    out = Secret()
    out.CopyFrom(secret)
    sources = []
    if out.HasField("tls_certificate"):
        cert = out.tls_certificate
        sources += [cert.certificate_chain, cert.private_key, cert.password]
    if out.HasField("validation_context"):
        sources += [out.validation_context.trusted_ca, out.validation_context.crl]
    for source in sources:
        if source.WhichOneof("specifier") != "filename":
            continue
        path = source.filename
        watcher = watchers.get(path)
        if watcher is None:
            watcher = watchers[path] = FileWatcher(path)
        try:
            data = watcher.read(now)
        except OSError as e:
            raise ConfigError("", f"Invalid path: {path} ({e.strerror})") from None
        source.inline_bytes = data
    return out


class SecretManager:
    """A process's secrets (see module doc). ``count_stats``: keep ``sds.*`` (the main
    process); workers reload without counting."""

    def __init__(self, static_secrets: Sequence[Secret] = (), *, count_stats: bool = True):
        self._static: dict[str, SecretProvider] = {}
        for secret in static_secrets:
            if secret.name in self._static:
                raise ConfigError(
                    "static_resources.secrets",
                    f"Duplicate static TlsCertificate secret name {secret.name}",
                )
            # Kept as configured (filenames and all), as Envoy keeps a static secret.
            self._static[secret.name] = SecretProvider(secret.name, secret, "static")
        self._files: dict[tuple[str, str], FileSecretProvider] = {}
        self._count_stats = count_stats
        self._store: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def provider(self, sds_secret_config, path: str, kind: str) -> SecretProvider:
        """The provider of an ``SdsSecretConfig`` at ``path`` whose secret must hold
        ``kind`` (``tls_certificate`` or ``validation_context``)."""
        name = sds_secret_config.name
        if not sds_secret_config.HasField("sds_config"):
            provider = self._static.get(name)
            if provider is None or not provider.secret.HasField(kind):
                what = {"tls_certificate": "Unknown static secret",
                        "validation_context": "Unknown static certificate validation "
                                              "context"}[kind]  # fmt: skip
                raise ConfigError(join_path(path, "name"), f"{what}: {name}")
            return provider
        source = sds_secret_config.sds_config
        spath = join_path(path, "sds_config")
        which = source.WhichOneof("config_source_specifier")
        if which == "path_config_source":
            file_path = source.path_config_source.path
            watched = source.path_config_source.watched_directory.path or None
        elif which == "path":
            file_path, watched = source.path, None
        else:
            raise ConfigError(
                join_path(spath, which or "config_source_specifier"),
                "SDS from a gRPC or ADS config source is not supported by legatus yet: use a "
                "path_config_source or a static secret",
            )
        key = (name, file_path)
        provider = self._files.get(key)
        if provider is None:
            stats = None
            if self._count_stats and self._store is not None:
                stats = SdsStats(self._store.scope(f"sds.{name}."))
            provider = FileSecretProvider(name, file_path, watched, stats)
            try:
                provider.load(self._now(), initial=True)
            except ConfigError as e:
                raise ConfigError(join_path(spath, "path_config_source"), e.message) from None
            self._files[key] = provider
            self._schedule()
        if not provider.secret.HasField(kind):
            raise ConfigError(
                join_path(path, "name"), f"SDS secret {name} in {file_path} has no {kind}"
            )
        return provider

    def start(self, loop: asyncio.AbstractEventLoop, store: Any = None) -> None:
        """Begin watching the files (and, in the main process, counting into ``store``)."""
        self._loop = loop
        if store is not None and self._count_stats:
            self._store = store
            for (name, _), provider in self._files.items():
                if provider._stats is None:
                    provider.count_initial_load(SdsStats(store.scope(f"sds.{name}.")))
        self._schedule()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop = None

    def providers(self) -> list[SecretProvider]:
        return [*self._static.values(), *self._files.values()]

    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else time.monotonic()

    def _schedule(self) -> None:
        if self._loop is not None and self._timer is None and self._files:
            self._timer = self._loop.call_later(DEFAULT_POLL_INTERVAL, self._poll)

    def _poll(self) -> None:
        self._timer = None
        now = self._now()
        for provider in list(self._files.values()):
            try:
                provider.poll(now)
            except Exception:  # never into the loop: the secret stays as it was
                log.exception("SDS secret '%s': reload failed", provider.name)
        self._schedule()


def set_checker(provider: SecretProvider, checker: Callable[[Secret], None]) -> None:
    """Have ``provider`` (a file one) try ``checker`` on a new secret before accepting it:
    a ConfigError from it rejects the update (a key that does not fit its certificate)."""
    if isinstance(provider, FileSecretProvider):
        previous = provider._checker

        def both(secret: Secret) -> None:
            if previous is not None:
                previous(secret)
            checker(secret)

        provider._checker = both


__all__ = ["SecretManager", "SecretProvider", "set_checker"]

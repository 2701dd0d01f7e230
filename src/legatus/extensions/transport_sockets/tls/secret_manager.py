"""SDS secrets: the bootstrap's static ``secrets``, secrets read from files, and secrets
over xDS.

Envoy's SecretManagerImpl: a TLS context names a secret
(``tls_certificate_sds_secret_configs``, ``validation_context_sds_secret_config``,
``combined_validation_context``), with no ``sds_config`` for a static secret of the
bootstrap, with ``sds_config.path_config_source`` (or the deprecated ``path``) for one
read from a file that holds a DiscoveryResponse of ``Secret`` resources, or with ``ads`` /
a gRPC ``api_config_source`` for one over xDS (``sds_api.py``: the main process subscribes,
workers take the values it sends).

A file secret is watched (config_subscription/filesystem/watcher.py): a rewrite in place, a
rename over, a symlink swapped anywhere on the path is an SDS update, counted in
``sds.<name>.update_*``. The same secret again changes nothing but the version, as in
Envoy. An update that fails (the file half written, the secret missing, a key that does not
match) keeps the previous secret and counts ``update_rejected`` (``update_failure`` when the
file cannot be read or parsed).

As in Envoy, the certificate, key and CA files the secret names are read into inline bytes
when it is loaded, so what is checked is what is used, and reloaded from their paths when
they change, the SDS file untouched (key rotation, with ``watched_directory``: see
``secret_files``).

Static secrets are kept as configured and never reloaded, as Envoy keeps them (a
``watched_directory`` in one changes nothing).

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
from envoy.config.core.v3 import config_source_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.config_subscription.filesystem.watcher import DEFAULT_POLL_INTERVAL, FileWatcher
from legatus.extensions.transport_sockets.tls.secret_files import SecretFiles, digest, resolve
from legatus.stats.store import StatSet, counter, gauge, histogram

log = logging.getLogger("legatus.config")

Secret = secret_pb2.Secret
SECRET_TYPE = "envoy.extensions.transport_sockets.tls.v3.Secret"


Checker = Callable[["SecretProvider", Secret], None]


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
    """One named secret: ``secret`` is its ``Secret`` proto (DataSources inline) as last
    applied; ``add_callback(cb)`` is told after each accepted change."""

    __slots__ = ("_callbacks", "name", "secret", "source")
    dynamic = False  # a secret from SDS, which updates (else a static one)

    @property
    def current(self) -> Secret:
        """The value a TLS context is built from (see FileSecretProvider)."""
        return self.secret

    def promote(self) -> None:
        """A context was rebuilt with ``current``: it is the value applied."""

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


class DynamicSecretProvider(SecretProvider):
    """A secret that SDS updates (from a file or over xDS). Each context using it registers
    a check (``set_checker``): a new value is taken only when every context can be rebuilt
    with it. ``current`` is Envoy's value of the secret: after its files failed to reload
    (see ``secret_files``) it holds what they held, though no context took it, so that the
    next rebuild of a context fails as Envoy's does; ``secret`` stays the value the
    contexts have."""

    __slots__ = ("_checks", "_current")
    dynamic = True

    def __init__(self, name: str, secret: Secret, source: str) -> None:
        super().__init__(name, secret, source)
        # Each context using the secret: (a check of a new value, what to do once taken).
        self._checks: dict[tuple, tuple[Checker, Callable[[], None]]] = {}
        self._current: Secret | None = None

    @property
    def ready(self) -> bool:
        """Whether the secret has a value (one over xDS may not have arrived yet)."""
        return True

    @property
    def current(self) -> Secret:
        return self._current if self._current is not None else self.secret

    def promote(self) -> None:
        self.secret = self.current

    def _check(self, secret: Secret) -> None:
        """Raise ConfigError when a context using this secret cannot take ``secret``."""
        for check, _ in self._checks.values():
            check(self, secret)

    def _accept(self, secret: Secret) -> None:
        self._current = secret
        for _, promote in self._checks.values():
            promote()
        self._changed(secret)


class FileSecretProvider(DynamicSecretProvider):
    """A secret from an SDS file (see the module doc)."""

    __slots__ = ("_accepted", "_file", "_files", "_raw", "_stats", "_version")

    def __init__(self, name: str, path: str, watched_directory: str | None, stats) -> None:
        super().__init__(name, Secret(), path)
        self._file = FileWatcher(path, watched_directory=watched_directory)
        self._raw: Secret | None = None  # the accepted secret as the SDS file has it
        self._files: SecretFiles | None = None  # the files it names (key rotation)
        self._accepted = b""  # the digest of those files' contents in use
        self._stats = stats
        self._version = ""  # the accepted file's version_info

    @property
    def version_info(self) -> str:
        """The version_info of the SDS file last accepted (for /config_dump)."""
        return self._version

    def load(self, now: float, *, initial: bool) -> None:
        """Read the file (and the files it names); on success the secret changes. Raises
        ConfigError at the first load, counts and keeps the last secret later."""
        stats = self._stats
        started = time.monotonic()
        if stats is not None:
            stats.update_attempt.inc()
        try:
            content = self._file.read(now)
            raw, version = self._parse(content)
        except (OSError, ConfigError) as e:
            if stats is not None:
                stats.update_failure.inc()
            if initial:
                raise ConfigError("", _message(e)) from None
            log.warning("SDS secret '%s' from %s: %s", self.name, self.source, _message(e))
            return
        if not initial and raw == self._raw:  # the same secret: only the version moves
            self._version = version
            if stats is not None:
                self._count_success(stats)
                stats.update_duration.record((time.monotonic() - started) * 1000)
            return
        try:
            files = SecretFiles(raw, now)
            contents = files.read(now)
            inline = resolve(raw, contents)
            self._check(inline)
        except (OSError, ConfigError) as e:
            if stats is not None:
                stats.update_rejected.inc()
            if initial:
                raise ConfigError("", _message(e)) from None
            log.warning("SDS secret '%s' from %s rejected: %s", self.name, self.source,
                        _message(e))  # fmt: skip
            return
        self._raw, self._files, self._accepted = raw, files, digest(contents)
        self._version = version
        if stats is not None:
            self._count_success(stats)
            stats.update_duration.record((time.monotonic() - started) * 1000)
        if initial:
            self.secret = self._current = inline
        else:
            log.info("SDS secret '%s' updated from %s", self.name, self.source)
            self._accept(inline)

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
        if self._file.poll(now):
            self.load(now, initial=False)
            return
        files = self._files
        if files is not None:
            fired = files.poll(now)
            if fired:
                self._rotate(now, files, fired)

    def _rotate(self, now: float, files: SecretFiles, fired: int) -> None:
        """Reload the secret's files (Envoy's SdsApi::onWatchUpdate; see secret_files)."""
        try:
            contents = files.read(now)
            new = digest(contents)
            if new == self._accepted:
                return
            inline = resolve(self._raw, contents)
        except ConfigError as e:  # a file cannot be read: nothing changes
            self._rotation_failed(e, fired)
            return
        try:
            self._check(inline)
        except ConfigError as e:
            self._current = inline  # Envoy keeps the value its contexts refused
            self._rotation_failed(e, fired)
            return
        self._accepted = new
        log.info("SDS secret '%s' reloaded from its files", self.name)
        self._accept(inline)

    def _rotation_failed(self, error: ConfigError, fired: int) -> None:
        log.warning("Failed to reload certificates: %s", _message(error))
        if self._stats is not None:
            self._stats.key_rotation_failed.add(fired)

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
        # Secrets over xDS (sds_api.py), by (name, source); in a worker, the values the main
        # process sent, also for a provider not made yet.
        self._xds: dict[tuple[str, bytes], Any] = {}
        self._xds_values: dict[tuple[str, bytes], Secret] = {}
        self._subscribe: Callable[[Any], None] | None = None  # the main process's
        self._check_xds_source: Callable[[Any, str], None] | None = None
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
        _check_source(source, spath)
        which = source.WhichOneof("config_source_specifier")
        if which == "path_config_source":
            file_path = source.path_config_source.path
            watched = source.path_config_source.watched_directory.path or None
        elif which == "path":
            file_path, watched = source.path, None
        else:
            return self._xds_provider(name, source, spath)
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

    def _xds_provider(self, name: str, source, path: str):
        from legatus.extensions.transport_sockets.tls.sds_api import XdsSecretProvider, source_key

        if self._check_xds_source is not None:
            self._check_xds_source(source, path)
        key = source_key(name, source)
        provider = self._xds.get(key)
        if provider is None:
            provider = self._xds[key] = XdsSecretProvider(name, source, key)
            value = self._xds_values.get(key)
            if value is not None:
                provider.set(value, initial=True)
            if self._subscribe is not None:
                self._subscribe(provider)
        return provider

    def check_xds_sources(self, check: Callable[[Any, str], None]) -> None:
        """Check each gRPC/ADS ``sds_config`` with ``check(source, path)`` (the main
        process's ConfigSource checks, which know the bootstrap)."""
        self._check_xds_source = check

    def subscribe_xds(self, subscribe: Callable[[Any], None]) -> None:
        """The main process: ``subscribe(provider)`` each secret over xDS named from now on
        (by LDS listeners and CDS clusters); those named so far are subscribed when their
        listener or cluster initializes (``xds_providers``)."""
        self._subscribe = subscribe

    def xds_providers(self) -> list[Any]:
        return list(self._xds.values())

    def xds_values(self) -> dict[tuple[str, bytes], bytes]:
        """The secrets over xDS that have a value, serialized (for a worker started now)."""
        return {key: p.secret.SerializeToString() for key, p in self._xds.items() if p.ready}

    def apply_xds(self, key: tuple[str, bytes], raw: bytes) -> None:
        """A worker: the main process accepted a value of the secret ``key``."""
        secret = Secret.FromString(raw)
        self._xds_values[key] = secret
        provider = self._xds.get(key)
        if provider is not None:
            provider.set(secret)

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
        return [*self._static.values(), *self._files.values(), *self._xds.values()]

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


# A file source's initial_fetch_timeout changes nothing: the file is read at once (Envoy's
# filesystem subscription also reads it when it starts).
_SOURCE_FIELDS = ("path", "path_config_source", "api_config_source", "ads", "self",
                  "initial_fetch_timeout", "resource_api_version")  # fmt: skip


def _check_source(source, path: str) -> None:
    check_supported(source, _SOURCE_FIELDS, path, "ConfigSource")
    if source.resource_api_version not in (config_source_pb2.AUTO, config_source_pb2.V3):
        raise ConfigError(
            join_path(path, "resource_api_version"),
            "only the V3 resource API version is supported (AUTO is V3)",
        )
    if source.HasField("path_config_source"):
        check_supported(source.path_config_source, ("path", "watched_directory"),
                        join_path(path, "path_config_source"), "PathConfigSource")  # fmt: skip


def set_checker(
    provider: SecretProvider, key: tuple, check: Checker, promote: Callable[[], None]
) -> None:
    """Have ``provider`` (a file one) ``check(provider, secret)`` a new value before taking
    it, for the context ``key``: a ConfigError rejects it (a key that does not fit its
    certificate). ``promote`` is called once a new value is taken."""
    if isinstance(provider, DynamicSecretProvider):
        provider._checks[key] = (check, promote)


__all__ = ["SecretManager", "SecretProvider", "set_checker"]

"""xDS from a file: Envoy's ``FilesystemSubscriptionImpl`` (``path_config_source``, or the
deprecated ``path``), reloaded on more kinds of change than Envoy notices.

The file holds one ``DiscoveryResponse`` (YAML, JSON or proto, see ``document``). Each load
is a state-of-the-world update of all its resources of the subscription's type, with the
response's ``version_info``; a named subscription gets only the resources it names (Envoy
hands over the whole file). The first load happens inside ``start``, as in Envoy; later ones
when the ``FileWatcher`` reports a settled change (see ``watcher`` for what counts: the file
renamed over, edited in place, a symlink swapped anywhere on its path, and with
``watched_directory`` anything changing in that directory, such as a ConfigMap's ``..data``).

Outcomes, counted as Envoy counts them:

- accepted: ``update_success`` and the version stats.
- the file cannot be read or parsed (missing, half written, not YAML, a bad field value):
  ``update_failure`` and ``on_config_update_failed(CONNECTION_FAILURE, error)``, as Envoy
  does.
- a resource of another type or that cannot be decoded (or breaks its proto's
  constraints), an unknown field under ``--reject-unknown-dynamic-fields``, or the owner
  raises: ``update_rejected`` and ``on_config_update_failed(UPDATE_REJECTED, error)``, as
  Envoy does.

Either way the owner keeps its last good config, the next change of the file is loaded
again, and ``last_failure`` keeps the error (text and time) for ``/config_dump`` until an
update is accepted. A file that disappears is not an update: nothing happens until it is back.

A path that does not exist when the subscription is built is a ConfigError, as in Envoy
(which rejects such a bootstrap or cluster).
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections.abc import Collection

from envoy.config.core.v3 import config_source_pb2

from legatus.config.errors import ConfigError
from legatus.config.subscription import (
    ConfigUpdate,
    DecodedResource,
    SubscriptionCallbacks,
    UpdateFailureReason,
)
from legatus.config_subscription.filesystem.document import load_response
from legatus.config_subscription.filesystem.watcher import (
    DEFAULT_DEBOUNCE,
    DEFAULT_POLL_INTERVAL,
    FileWatcher,
)
from legatus.config_subscription.rest.response import (
    WARN_UNKNOWN_FIELDS,
    UnknownFieldError,
    UnknownFieldPolicy,
    UpdateFailureState,
    decode_resources,
    select_named,
)
from legatus.config_subscription.stats import SubscriptionStats

__all__ = ["FilesystemSubscription"]

log = logging.getLogger("legatus.config")


class FilesystemSubscription:
    """A ``Subscription`` read from a file (see module doc)."""

    __slots__ = (
        "_callbacks",
        "_closed",
        "_current",
        "_loop",
        "_names",
        "_path",
        "_poll_interval",
        "_stats",
        "_timer",
        "_unknown_fields",
        "_watcher",
        "last_failure",
        "type_url",
    )

    def __init__(
        self,
        type_url: str,
        *,
        path: str,
        callbacks: SubscriptionCallbacks,
        stats: SubscriptionStats,
        watched_directory: str | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        debounce: float = DEFAULT_DEBOUNCE,
        unknown_fields: UnknownFieldPolicy = WARN_UNKNOWN_FIELDS,
    ) -> None:
        """Raises ConfigError, with Envoy's text, when ``path`` or ``watched_directory``
        does not exist."""
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        if not path:
            raise ConfigError("path", "the path of a path config source must not be empty")
        if not os.path.exists(path):
            raise ConfigError(
                "", f"paths must refer to an existing path in the system: '{path}' does not exist"
            )
        if watched_directory is not None:
            _check_directory(watched_directory)
        self.type_url = type_url
        self._path = path
        self._callbacks = callbacks
        self._stats = stats
        self._poll_interval = poll_interval
        self._unknown_fields = unknown_fields
        self._watcher = FileWatcher(path, watched_directory=watched_directory, debounce=debounce)
        self._names: frozenset[str] = frozenset()
        self._current: tuple[str, tuple[DecodedResource, ...]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.last_failure: UpdateFailureState | None = None

    @classmethod
    def from_config_source(
        cls,
        type_url: str,
        config_source: config_source_pb2.ConfigSource,
        *,
        callbacks: SubscriptionCallbacks,
        stats: SubscriptionStats,
        **options,
    ) -> FilesystemSubscription:
        """From ``path_config_source`` (with its ``watched_directory``) or the deprecated
        ``path``; ``options`` are the constructor's keywords."""
        if config_source.HasField("path_config_source"):
            source = config_source.path_config_source
            directory = (
                source.watched_directory.path if source.HasField("watched_directory") else None
            )
            return cls(type_url, path=source.path, callbacks=callbacks, stats=stats,
                       watched_directory=directory, **options)  # fmt: skip
        if config_source.path:
            return cls(type_url, path=config_source.path, callbacks=callbacks, stats=stats,
                       **options)  # fmt: skip
        raise ConfigError("", "the config source has neither path_config_source nor path")

    # Subscription ----------------------------------------------------------------------

    def start(self, resource_names: Collection[str]) -> None:
        """Load the file now (the owner is called back before this returns), then watch it.
        Must be called inside the running event loop."""
        if self._loop is not None or self._closed:
            raise RuntimeError("a subscription is started once")
        self._loop = asyncio.get_running_loop()
        self._names = frozenset(resource_names)
        self._load()
        if not self._closed:  # the owner may close from its callback
            self._schedule()

    def update_resource_interest(self, resource_names: Collection[str]) -> None:
        """Deliver the file's resources again, filtered by the new names (soon, not inside
        this call)."""
        names = frozenset(resource_names)
        if names == self._names:
            return
        self._names = names
        if self._loop is not None and not self._closed:
            self._loop.call_soon(self._redeliver)

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # Loading ---------------------------------------------------------------------------

    def _schedule(self) -> None:
        assert self._loop is not None
        self._timer = self._loop.call_later(self._poll_interval, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._closed:
            return
        assert self._loop is not None
        try:
            if self._watcher.poll(self._loop.time()):
                self._load()
        finally:
            if not self._closed:
                self._schedule()

    def _load(self) -> None:
        assert self._loop is not None
        started = time.monotonic()
        self._stats.stats.update_attempt.inc()
        self._current = None
        try:
            content = self._watcher.read(self._loop.time())
        except OSError as e:
            self._failed(ConfigError("", f"unable to read file {self._path}: {e.strerror}"))
            return
        try:
            response = load_response(self._path, content, self._unknown_fields)
        except UnknownFieldError as e:
            self._rejected(str(e), "", e)
            return
        except ConfigError as e:
            self._failed(e)
            return
        try:
            resources = decode_resources(response, self.type_url)
        except ValueError as e:
            self._rejected(f"in {self._path}, {e}", response.version_info, e)
            return
        self._current = (response.version_info, resources)
        self._deliver(started)

    def _redeliver(self) -> None:
        if self._closed or self._current is None:
            return
        self._stats.stats.update_attempt.inc()
        self._deliver(time.monotonic())

    def _deliver(self, started: float) -> None:
        assert self._current is not None
        version_info, resources = self._current
        update = ConfigUpdate(
            type_url=self.type_url,
            added=select_named(resources, self._names),
            removed=(),
            version_info=version_info,
            state_of_the_world=True,
        )
        try:
            self._callbacks.on_config_update(update)
        except Exception as e:  # ConfigError or ValueError; anything else is the owner's bug
            if not isinstance(e, ConfigError | ValueError):
                log.error("config from %s rejected by an unexpected error", self._path, exc_info=e)
            self._rejected(str(e) or type(e).__name__, version_info, e)
            return
        self.last_failure = None
        self._stats.accepted(version_info, started)

    # Failures --------------------------------------------------------------------------

    def _failed(self, error: ConfigError) -> None:
        log.warning("Filesystem config update failure: %s", error)
        self._stats.stats.update_failure.inc()
        self.last_failure = UpdateFailureState(details=str(error), last_update_attempt=time.time())
        self._callbacks.on_config_update_failed(UpdateFailureReason.CONNECTION_FAILURE, error)

    def _rejected(self, details: str, version_info: str, error: Exception) -> None:
        log.warning("Filesystem config update rejected: %s", details)
        self._stats.rejected()
        self.last_failure = UpdateFailureState(
            details=details, last_update_attempt=time.time(), version_info=version_info
        )
        self._callbacks.on_config_update_failed(UpdateFailureReason.UPDATE_REJECTED, error)


def _check_directory(directory: str) -> None:
    try:
        mode = os.stat(directory).st_mode
    except OSError as e:
        raise ConfigError(
            "", f"unable to add filesystem watch for file {directory}/: {e.strerror}"
        ) from None
    if not stat.S_ISDIR(mode):
        raise ConfigError(
            "", f"unable to add filesystem watch for file {directory}/: Not a directory"
        )

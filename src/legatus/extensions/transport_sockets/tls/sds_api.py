"""SDS over xDS: a secret named by an ``SdsSecretConfig`` whose ``sds_config`` is ``ads``
(or ``self``) or a gRPC ``api_config_source`` (Envoy's SdsApi for those sources).

Theory of operation. The main process owns the subscription (DESIGN §2): one per secret
name and config source, made by the main process's ``SecretManager`` when a listener or a
cluster first names the secret. An update is checked there (``SdsApi.on_config_update``):
exactly one secret of the name subscribed to, files it names refused, and every TLS context
that uses it rebuilt with it (a key that does not match its certificate, a PEM that does
not parse); a refusal raises, which NACKs the response with the error, and the old value
keeps serving. An accepted value is published to every worker (``control.UpdateSecret``),
whose ``SecretManager`` hands it to the ``XdsSecretProvider`` of the same key: the worker's
socket factories rebuild their SSL contexts, and new connections use the new secret.

Until its first value arrives a provider is not ``ready``: a listener or a cluster that
uses it warms (Envoy's init manager waits for the SDS init target), until the secret
arrives or the source's ``initial_fetch_timeout`` passes; what is still not ready then
serves without a TLS context, as Envoy's does (see ``socket_factory``).

Stats: the subscription's ``sds.<name>.*`` (update_attempt, update_success,
update_rejected...), counted once, by the main process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from legatus.config.errors import ConfigError
from legatus.config.subscription import ConfigUpdate, UpdateFailureReason
from legatus.config_subscription.records import ResourceRecords
from legatus.extensions.transport_sockets.tls.secret_manager import DynamicSecretProvider
from legatus.stats.store import StatSet, counter

__all__ = ["SdsApi", "SdsApiStats", "XdsSecretProvider", "source_key"]

log = logging.getLogger("legatus.config")

Secret = secret_pb2.Secret

# The DataSource fields of a secret that may name a file: a secret over xDS is taken inline.
_FILE_FIELDS = (
    ("tls_certificate", ("certificate_chain", "private_key", "password", "pkcs12")),
    ("validation_context", ("trusted_ca", "crl")),
)


def source_key(name: str, sds_config) -> tuple[str, bytes]:
    """Which provider a ``SdsSecretConfig`` names: the same name from the same source is
    one secret (one subscription), as in Envoy's SecretManager."""
    return name, sds_config.SerializeToString(deterministic=True)


class SdsApiStats(StatSet):
    """What Envoy's SdsApi counts beside its subscription's stats, under ``sds.<name>.``
    (a secret over xDS names no files to rotate: it stays 0)."""

    key_rotation_failed = counter()


class XdsSecretProvider(DynamicSecretProvider):
    """A secret over xDS. In the main process ``subscription`` fetches it; in a worker its
    value comes from the main process (``set``)."""

    __slots__ = ("_ready", "key", "sds_config", "subscription", "version", "waiters")

    def __init__(self, name: str, sds_config, key: tuple[str, bytes]) -> None:
        super().__init__(name, Secret(), "SDS")
        self.key = key
        self.sds_config = sds_config
        self.subscription: Any = None
        self.version = ""
        self._ready = False
        # Futures done at the first value or when the first fetch gives up (warming).
        self.waiters: list[Any] = []

    @property
    def ready(self) -> bool:
        return self._ready

    def set(self, secret: Secret, *, initial: bool = False) -> None:
        """Take ``secret`` (already checked): contexts using it are rebuilt with it."""
        if not self._ready:
            self._ready = True
            self.secret = self._current = secret
            if not initial:
                self._changed(secret)  # a context made while it was not ready builds now
            return
        self._accept(secret)

    def refused(self, secret: Secret) -> None:
        """A context refused ``secret``: it is the secret's value, the contexts keep theirs
        (see FileSecretProvider's failed reload, which Envoy treats the same way)."""
        if self._ready:
            self._current = secret

    def check(self, secret: Secret) -> None:
        """Raise ConfigError when a context using this secret cannot be rebuilt with it."""
        self._check(secret)

    def initialized(self) -> None:
        """The first fetch is over (a value, or it gave up): warming stops waiting."""
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()


class SdsApi:
    """One xDS secret's subscription callbacks, in the main process (see the module doc).
    ``publish(provider)`` sends an accepted value to the workers."""

    def __init__(
        self,
        provider: XdsSecretProvider,
        *,
        records: ResourceRecords,
        publish: Callable[[XdsSecretProvider], None],
    ) -> None:
        self.provider = provider
        self.records = records
        self.publish = publish

    def on_config_update(self, update: ConfigUpdate) -> None:
        provider = self.provider
        name = provider.name
        added = update.added
        if not added:
            if update.state_of_the_world or not update.removed:
                raise ConfigError("", f"Missing SDS resources for {name} in onConfigUpdate()")
            # A delta removal: the secret in use stays, as in Envoy.
            log.debug("SDS secret '%s' removed by the control plane; kept", name)
            return
        if len(added) != 1:
            raise ConfigError("", f"Unexpected SDS secrets length: {len(added)}")
        resource = added[0]
        secret = resource.resource
        version = resource.version or update.version_info
        if secret.name != name:
            raise ConfigError("", f"Unexpected SDS secret (expecting {name}): {secret.name}")
        _refuse_files(secret)
        if provider.ready and secret == provider.current:
            provider.version = version  # the same secret: nothing is rebuilt, as Envoy
            return
        # Envoy takes the secret before its TLS contexts are rebuilt: one they refuse is
        # the secret's value from then on (/config_dump shows it, the same one again is
        # not an update), though the contexts keep the one they have.
        self._record(secret, version)
        try:
            provider.check(secret)
        except ConfigError:
            provider.refused(secret)
            raise
        log.info("SDS secret '%s' updated (version %s)", name, version)
        provider.version = version
        provider.set(secret)
        self.publish(provider)
        provider.initialized()

    def on_config_update_failed(self, reason: UpdateFailureReason, error) -> None:
        if reason is not UpdateFailureReason.UPDATE_REJECTED:
            self.provider.initialized()  # a timed-out first fetch stops the warming

    def _record(self, secret: Secret, version: str) -> None:
        self.records.accept(secret.name, secret, version)


def _refuse_files(secret: Secret) -> None:
    for kind, fields in _FILE_FIELDS:
        if not secret.HasField(kind):
            continue
        message = getattr(secret, kind)
        for field in fields:
            if (
                message.HasField(field)
                and getattr(message, field).WhichOneof("specifier") == "filename"
            ):
                raise ConfigError(
                    f"{kind}.{field}.filename",
                    "a secret over xDS naming a file is not supported by legatus: send the "
                    "data inline (inline_bytes / inline_string)",
                )
        if kind == "tls_certificate" and message.HasField("watched_directory"):
            raise ConfigError(
                "tls_certificate.watched_directory",
                "watched_directory in a secret over xDS is not supported by legatus",
            )

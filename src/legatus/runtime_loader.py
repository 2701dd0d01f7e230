"""The main process's runtime: disk layers read and watched, updates counted and sent on.

Theory of operation. The main process owns every change to the runtime; workers only take
the result. ``RuntimeLoader.load`` is Envoy's loadNewSnapshot: it reads every disk layer
again, makes one new snapshot, counts it in ``runtime.*`` and hands the non-static layers,
whole, to ``on_change`` (the server sends them to every worker). Envoy loads a new snapshot
twice at start-up, on every ``/runtime_modify``, on every RTDS update and whenever a disk
layer's symlink root is swapped (once per disk layer under that root); so does this loader.
It also reloads when a file under a disk layer is changed in place, once the change has
settled (Envoy does not notice those); see ``legatus.runtime_disk`` for how changes are
noticed and why by polling.

A disk layer that fails to read (a file that is not YAML, a dangling link, too deep a tree)
counts ``runtime.load_error`` and keeps the values of its last good read, where Envoy drops
the layer from the snapshot until a good read: with in-place edits noticed, a tree caught
half written must not empty the layer. A layer whose directory does not exist is absent, as
in Envoy.

RTDS: ``rtds_layers()`` lists what to subscribe to; ``RtdsLayerCallbacks`` is one layer's
owner side of a subscription (Envoy's RtdsSubscription: exactly one resource, the one
subscribed to, its ``layer`` flattened; its removal empties the layer).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from google.protobuf import struct_pb2

from legatus.config.errors import ConfigError
from legatus.config.subscription import ConfigUpdate, UpdateFailureReason
from legatus.runtime import RtdsLayerConfig, Runtime, Snapshot, compile_runtime
from legatus.runtime_disk import (
    ChangeDetector,
    DiskLayerError,
    read_disk_layer,
    root_stamp,
    tree_stamp,
    watch_error,
)
from legatus.runtime_values import Entry
from legatus.stats.store import StatSet, counter, gauge

__all__ = [
    "DISK_POLL_INTERVAL_S",
    "RtdsLayerCallbacks",
    "RuntimeLoader",
    "RuntimeStats",
    "open_runtime",
]

log = logging.getLogger("legatus.runtime")
DISK_POLL_INTERVAL_S = 0.25

LayersCallback = Callable[[dict[int, dict[str, Entry] | None]], None]


class RuntimeStats(StatSet):
    """Envoy's ``runtime.*`` (ALL_RUNTIME_STATS). legatus has no deprecated features to count,
    so those two stay unused, as in Envoy without them."""

    load_error = counter()
    load_success = counter()
    override_dir_exists = counter()
    override_dir_not_exists = counter()
    deprecated_feature_use = counter()
    admin_overrides_active = gauge()
    deprecated_feature_seen_since_process_start = gauge()
    num_keys = gauge()
    num_layers = gauge()

    def loaded(self, snapshot: Snapshot, *, errors: int = 0, disk_layers: int = 0) -> None:
        """Count one new snapshot, as Envoy's LoaderImpl::createNewSnapshot does.

        ``errors``: disk layers that failed to read; ``disk_layers``: those read. Envoy counts
        ``override_dir_exists`` only when more than one disk layer was read.
        """
        self.num_layers.set(len(snapshot.layers))
        (self.load_error if errors else self.load_success).inc()
        (self.override_dir_exists if disk_layers > 1 else self.override_dir_not_exists).inc()
        self.num_keys.set(len(snapshot.values))

    def admin_layer_changed(self, runtime: Runtime) -> None:
        """After /runtime_modify: whether any admin override is left (Envoy's AdminLayer)."""
        self.admin_overrides_active.set(1 if runtime.admin_overrides() else 0)


def open_runtime(bootstrap, path: str = "layered_runtime") -> Runtime:
    """The main process's runtime: compiled, and each disk layer's symlink root checked to be
    watchable (its parent directory exists), as Envoy's loader checks at start-up and in
    validate mode. Nothing is read yet (``RuntimeLoader.load``)."""
    runtime = compile_runtime(bootstrap, path)
    for disk in runtime.disk_layers():
        error = watch_error(disk.symlink_root)
        if error is not None:
            raise ConfigError(f"{path}.layers[{disk.index}].disk_layer.symlink_root", error)
    return runtime


class RuntimeLoader:
    """Owns a Runtime in the main process: every change goes through here."""

    def __init__(
        self,
        runtime: Runtime,
        stats: RuntimeStats,
        *,
        on_change: LayersCallback | None = None,
        poll_interval: float = DISK_POLL_INTERVAL_S,
    ) -> None:
        self.runtime = runtime
        self.stats = stats
        self._on_change = on_change
        self._poll_interval = poll_interval
        self._watcher: asyncio.Task | None = None
        disks = runtime.disk_layers()
        self._per_root: dict[str, int] = {}
        for disk in disks:
            self._per_root[disk.symlink_root] = self._per_root.get(disk.symlink_root, 0) + 1
        self._paths = sorted({disk.path for disk in disks})
        self._detector: ChangeDetector | None = None

    def load(self) -> None:
        """Read every disk layer, make a new snapshot, count it, tell ``on_change``."""
        if self._paths:  # what this read sees, for the watch to compare with
            stamps = self._stamps()
            self._detector_for(stamps).read(*stamps)
        layers: dict[int, dict[str, Entry] | None] = {}
        errors = read = 0
        for disk in self.runtime.disk_layers():
            try:
                values = read_disk_layer(disk.path)
            except DiskLayerError as e:
                errors += 1
                log.warning(
                    "error loading runtime values for layer %s from disk: %s (keeping its "
                    "last good values)",
                    disk.name,
                    e,
                )
                continue
            read += values is not None
            layers[disk.index] = values
        self.runtime.replace_layers(layers)
        self.stats.loaded(self.runtime.snapshot(), errors=errors, disk_layers=read)
        if self._on_change is not None:
            self._on_change(self.runtime.dynamic_layers())

    def merge_values(self, values: Mapping[str, str]) -> None:
        """``/runtime_modify``; RuntimeModifyError (nothing changed, nothing counted) as Envoy."""
        self.runtime.merge_values(values)
        self.stats.admin_layer_changed(self.runtime)
        self.load()

    def set_rtds_layer(self, name: str, layer: struct_pb2.Struct) -> None:
        """An RTDS layer's new values; ConfigError (nothing changed) rejects the update."""
        self.runtime.set_rtds_layer(name, layer)
        self.load()

    # Watching the disk layers ------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin watching the disk layers (nothing to do without any)."""
        if self.runtime.disk_layers() and self._watcher is None:
            self._watcher = loop.create_task(self._watch())

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            stamps = self._stamps()
            for _ in range(self._detector_for(stamps).poll(*stamps)):
                self.load()

    def _stamps(self) -> tuple[dict[str, object], tuple]:
        return {root: root_stamp(root) for root in self._per_root}, tree_stamp(self._paths)

    def _detector_for(self, stamps: tuple[dict[str, object], tuple]) -> ChangeDetector:
        if self._detector is None:
            self._detector = ChangeDetector(self._per_root, *stamps)
        return self._detector


class RtdsLayerCallbacks:
    """One RTDS layer's SubscriptionCallbacks (Envoy's RtdsSubscription).

    An update holds exactly one resource, the ``envoy.service.runtime.v3.Runtime`` named by
    the layer's ``rtds_layer.name``; its ``layer`` becomes the layer's values (a new snapshot,
    counted, sent to the workers). Its removal (delta xDS) empties the layer. Anything else is
    rejected with Envoy's text. ``on_ready`` is called once, after the first update or the
    first failure, as Envoy's init target for the layer becomes ready.
    """

    def __init__(
        self,
        loader: RuntimeLoader,
        config: RtdsLayerConfig,
        *,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self._loader = loader
        self.config = config
        self._on_ready = on_ready

    def on_config_update(self, update: ConfigUpdate) -> None:
        added, removed = list(update.added), list(update.removed)
        if len(added) + len(removed) != 1:
            self._ready()
            raise ConfigError(
                "",
                "Unexpected RTDS resource length, number of added recources "
                f"{len(added)}, number of removed recources {len(removed)}",
            )
        expected = self.config.resource_name
        if added:
            resource = added[0].resource
            if resource.name != expected:
                raise ConfigError(
                    "", f"Unexpected RTDS runtime (expecting {expected}): {resource.name}"
                )
            self._loader.set_rtds_layer(self.config.name, resource.layer)
        else:
            if removed[0] != expected:
                raise ConfigError(
                    "",
                    f"Unexpected removal of unknown RTDS runtime layer {removed[0]}, "
                    f"expected {expected}",
                )
            self._loader.set_rtds_layer(self.config.name, struct_pb2.Struct())
        self._ready()

    def on_config_update_failed(self, reason: UpdateFailureReason, error: Exception | None) -> None:
        self._ready()

    def _ready(self) -> None:
        if self._on_ready is not None:
            callback, self._on_ready = self._on_ready, None
            callback()

"""Envoy's runtime: the bootstrap's ``layered_runtime``, read through immutable snapshots.

Theory of operation. ``compile_runtime`` turns ``envoy.config.bootstrap.v3.LayeredRuntime``
into a ``Runtime`` (Envoy's Runtime::Loader, less its I/O). Its layers are read in order and a
later layer overrides an earlier one key by key; the result is a ``Snapshot``, replaced (never
changed) whenever a layer changes, so readers never see half an update. Features that consult
the runtime keep the ``Runtime`` and ask it at request time (``feature_enabled``), as Envoy's
do. What a value reads as is ``legatus.runtime_values``.

Layers, as Envoy 1.40 builds them:

- ``static_layer``: a Struct flattened into dotted keys (``{a: {b: 1}}`` is ``a.b``). A
  nested object that is empty or has a ``numerator`` or ``denominator`` key is one value
  (a FractionalPercent), not a level. A list or a null is refused (``Invalid runtime entry
  value for <key>``).
- ``disk_layer``: a directory tree, ``symlink_root/subdirectory`` (then ``/<node.cluster>``
  with ``append_service_cluster``), read by ``legatus.runtime_disk``. Here it is a slot the
  reader fills: absent from the snapshot (and from ``/runtime``'s layers) until read and
  whenever its directory does not exist, as in Envoy. A ``symlink_root`` without a ``/`` is
  refused (``invalid file path``: Envoy watches the root's parent directory).
- ``admin_layer``: values set by ``POST /runtime_modify?key=value``, each read as YAML (``5``
  a number, ``true``/``yes``/``on`` booleans, ``{numerator: 5, denominator: TEN_THOUSAND}`` a
  fraction, anything else a string). An empty value removes the key. At most one.
- ``rtds_layer``: the ``layer`` Struct of an ``envoy.service.runtime.v3.Runtime`` resource,
  flattened as a static layer, empty until the first update (``set_rtds_layer``). Refused at
  the config check while no subscription can feed it (``RTDS_SUPPORTED``).

A bootstrap without ``layered_runtime`` gets a runtime with no layers (``/runtime_modify``
then answers ``No admin layer specified``); a ``layered_runtime`` with no layers gets one
admin layer named ``""``. Both are Envoy's defaults.

Who changes what: static layers never change. In the main process the runtime loader
(``legatus.runtime_loader``) reads the disk layers and applies ``/runtime_modify`` and RTDS
updates; each worker compiles the same bootstrap and takes the main process's non-static
layers whole (``dynamic_layers`` there, ``replace_layers`` here), so a worker started late, or
a message applied twice, ends in the same state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from envoy.config.core.v3 import config_source_pb2
from google.protobuf import struct_pb2

from legatus.config.errors import ConfigError
from legatus.runtime_values import EMPTY, Entry, InvalidEntry, struct_entries, yaml_entry

__all__ = [
    "RTDS_SUPPORTED",
    "DiskLayerConfig",
    "Entry",
    "Layer",
    "RtdsLayerConfig",
    "Runtime",
    "RuntimeModifyError",
    "Snapshot",
    "compile_runtime",
]

# RTDS layers work (``Runtime.set_rtds_layer``, ``Runtime.rtds_layers``), but nothing
# subscribes to their resources yet: a bootstrap with an ``rtds_layer`` is refused until the
# main process builds one subscription per layer. Set to True when it does.
RTDS_SUPPORTED = True


class RuntimeModifyError(Exception):
    """A ``/runtime_modify`` request Envoy refuses (503 with this text)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Layer:
    name: str
    values: Mapping[str, Entry] = field(default_factory=lambda: EMPTY)


@dataclass(frozen=True, slots=True, kw_only=True)
class DiskLayerConfig:
    """A ``disk_layer``: where its tree is, and the symlink whose swap reloads it."""

    index: int  # the layer's position in layered_runtime.layers
    name: str
    symlink_root: str
    path: str  # symlink_root/subdirectory, then /<service cluster> with append_service_cluster


@dataclass(frozen=True, slots=True, kw_only=True)
class RtdsLayerConfig:
    """An ``rtds_layer``: what the main process subscribes to for it."""

    index: int
    name: str  # the layer's name: the key of Runtime.set_rtds_layer
    resource_name: str  # RtdsLayer.name: the envoy.service.runtime.v3.Runtime resource
    rtds_config: config_source_pb2.ConfigSource


class Snapshot:
    """The layers at one moment and their merged values; never changes once built.

    The getters follow Envoy's Snapshot: an empty key is never found, and a value that does
    not read as the asked type gives the default.
    """

    __slots__ = ("layers", "values")

    def __init__(self, layers: tuple[Layer, ...]) -> None:
        values: dict[str, Entry] = {}
        for layer in layers:
            values.update(layer.values)
        self.layers = layers
        self.values: Mapping[str, Entry] = MappingProxyType(values)

    def get(self, key: str) -> Entry | None:
        return self.values.get(key) if key else None

    def get_integer(self, key: str, default: int) -> int:
        entry = self.get(key)
        return default if entry is None or entry.uint is None else entry.uint

    def get_double(self, key: str, default: float) -> float:
        entry = self.get(key)
        return default if entry is None or entry.double is None else entry.double

    def get_boolean(self, key: str, default: bool) -> bool:
        entry = self.get(key)
        return default if entry is None or entry.boolean is None else entry.boolean

    def get_string(self, key: str) -> str | None:
        entry = self.get(key)
        return None if entry is None else entry.raw

    def feature_enabled(
        self, key: str, default_numerator: int, default_denominator: int, random_value: int
    ) -> bool:
        """Envoy's featureEnabled(key, FractionalPercent default, random_value).

        A fraction value replaces the default; an integer value is a percentage (above 100:
        always on); anything else leaves the default.
        """
        numerator, denominator = default_numerator, default_denominator
        entry = self.get(key)
        if entry is not None:
            if entry.fraction is not None:
                numerator, denominator = entry.fraction
            elif entry.uint is not None:
                if entry.uint > 100:
                    return True
                numerator, denominator = entry.uint, 100
        return random_value % denominator < numerator


class Runtime:
    """Envoy's runtime loader without the I/O: the layers, and the current snapshot of them.

    Static layers are fixed; the admin, disk and RTDS layers are replaced whole, each change
    making a new snapshot. A disk layer is ``None`` (absent from the snapshot) until read.
    Getters read the current snapshot.
    """

    __slots__ = ("_admin_index", "_disk", "_layers", "_rtds", "_snapshot")

    def __init__(
        self,
        layers: Sequence[Layer] = (),
        *,
        admin_index: int | None = None,
        disk_layers: Sequence[DiskLayerConfig] = (),
        rtds_layers: Sequence[RtdsLayerConfig] = (),
    ) -> None:
        special = [i for i in (admin_index,) if i is not None]
        special += [d.index for d in disk_layers] + [r.index for r in rtds_layers]
        for i in special:
            if not 0 <= i < len(layers):
                raise ValueError(f"layer index {i} out of range")
        if len(set(special)) != len(special):
            raise ValueError("a layer can be only one of admin, disk and RTDS")
        self._admin_index = admin_index
        self._disk = tuple(disk_layers)
        self._rtds = tuple(rtds_layers)
        absent = {d.index for d in self._disk}
        self._layers: tuple[Layer | None, ...] = tuple(
            None if i in absent else layer for i, layer in enumerate(layers)
        )
        self._snapshot = _snapshot(self._layers)

    @property
    def has_admin_layer(self) -> bool:
        return self._admin_index is not None

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def get_integer(self, key: str, default: int) -> int:
        return self._snapshot.get_integer(key, default)

    def get_double(self, key: str, default: float) -> float:
        return self._snapshot.get_double(key, default)

    def get_boolean(self, key: str, default: bool) -> bool:
        return self._snapshot.get_boolean(key, default)

    def get_string(self, key: str) -> str | None:
        return self._snapshot.get_string(key)

    def feature_enabled(
        self, key: str, default_numerator: int, default_denominator: int, random_value: int
    ) -> bool:
        return self._snapshot.feature_enabled(
            key, default_numerator, default_denominator, random_value
        )

    # The admin layer --------------------------------------------------------------------

    def admin_overrides(self) -> dict[str, str]:
        """The admin layer as set through ``/runtime_modify``: key -> the text given."""
        if self._admin_index is None:
            return {}
        return {key: entry.raw for key, entry in self._layers[self._admin_index].values.items()}

    def merge_values(self, values: Mapping[str, str]) -> None:
        """``/runtime_modify``: set each key of the admin layer (an empty value removes it).

        All or nothing: a value that does not parse changes no key. Raises
        RuntimeModifyError with Envoy's text when there is no admin layer.
        """
        if self._admin_index is None:
            raise RuntimeModifyError("No admin layer specified")
        entries = dict(self._layers[self._admin_index].values)
        for key, value in values.items():
            entries.pop(key, None)
            if value:
                try:
                    entries[key] = yaml_entry(value)
                except InvalidEntry as e:
                    raise RuntimeModifyError(str(e)) from None
        self.replace_layers({self._admin_index: entries})

    # Disk and RTDS layers ---------------------------------------------------------------

    def disk_layers(self) -> tuple[DiskLayerConfig, ...]:
        return self._disk

    def rtds_layers(self) -> tuple[RtdsLayerConfig, ...]:
        """The RTDS layers, for the main process to subscribe to each one's resource."""
        return self._rtds

    def set_rtds_layer(self, name: str, layer: struct_pb2.Struct) -> None:
        """Make the RTDS layer called ``name`` the flattened ``layer`` (a Runtime resource's).

        ConfigError with Envoy's text (``Invalid runtime entry value for <key>``) when a value
        is a list or a null: the update is then rejected and the layer keeps its values.
        KeyError when no RTDS layer has that name.
        """
        config = next((r for r in self._rtds if r.name == name), None)
        if config is None:
            raise KeyError(f"no RTDS layer named {name!r}")
        try:
            entries = struct_entries(layer)
        except InvalidEntry as e:
            raise ConfigError("", str(e)) from None
        self.replace_layers({config.index: entries})

    # Whole layers, as the main process sends them to workers ----------------------------

    def dynamic_layers(self) -> dict[int, dict[str, Entry] | None]:
        """Every non-static layer by index: its values, or None for a disk layer not read."""
        indices = [d.index for d in self._disk] + [r.index for r in self._rtds]
        if self._admin_index is not None:
            indices.append(self._admin_index)
        out: dict[int, dict[str, Entry] | None] = {}
        for i in sorted(indices):
            layer = self._layers[i]
            out[i] = None if layer is None else dict(layer.values)
        return out

    def replace_layers(self, layers: Mapping[int, Mapping[str, Entry] | None]) -> None:
        """Replace whole non-static layers by index, in one new snapshot (None: a disk layer
        whose directory does not exist). ValueError for a static layer or an unknown index."""
        disk = {d.index: d.name for d in self._disk}
        names = disk | {r.index: r.name for r in self._rtds}
        if self._admin_index is not None:
            names[self._admin_index] = self._layer_name(self._admin_index)
        new = list(self._layers)
        for i, values in layers.items():
            if i not in names:
                raise ValueError(f"layer {i} is not an admin, disk or RTDS layer")
            if values is None:
                if i not in disk:
                    raise ValueError(f"only a disk layer can be absent (layer {i})")
                new[i] = None
            else:
                new[i] = Layer(name=names[i], values=MappingProxyType(dict(values)))
        self._layers = tuple(new)
        self._snapshot = _snapshot(self._layers)

    def _layer_name(self, index: int) -> str:
        layer = self._layers[index]
        return "" if layer is None else layer.name


def _snapshot(layers: tuple[Layer | None, ...]) -> Snapshot:
    return Snapshot(tuple(layer for layer in layers if layer is not None))


def compile_runtime(
    bootstrap, path: str = "layered_runtime", *, rtds_supported: bool = RTDS_SUPPORTED
) -> Runtime:
    """The runtime of a bootstrap; ConfigError names the offending layer.

    Checks run in Envoy's order: layer names and kinds first, then the static layers' values.
    Nothing is read from disk here (``legatus.runtime_loader`` does that in the main process).
    """
    if not bootstrap.HasField("layered_runtime"):
        return Runtime()
    protos = list(bootstrap.layered_runtime.layers)
    if not protos:
        return Runtime([Layer(name="")], admin_index=0)
    names: set[str] = set()
    admin_index = None
    disk: list[DiskLayerConfig] = []
    rtds: list[RtdsLayerConfig] = []
    for i, proto in enumerate(protos):
        layer_path = f"{path}.layers[{i}]"
        if proto.name in names:
            raise ConfigError(f"{layer_path}.name", f"Duplicate layer name: {proto.name}")
        names.add(proto.name)
        which = proto.WhichOneof("layer_specifier")
        if which == "admin_layer":
            if admin_index is not None:
                raise ConfigError(
                    f"{layer_path}.admin_layer",
                    "Too many admin layers specified in LayeredRuntime, "
                    "at most one may be specified",
                )
            admin_index = i
        elif which == "disk_layer":
            disk.append(_disk_layer(i, proto, bootstrap.node.cluster, layer_path))
        elif which == "rtds_layer":
            if not rtds_supported:
                raise ConfigError(
                    f"{layer_path}.rtds_layer",
                    "field 'rtds_layer' of RuntimeLayer is not supported by legatus yet: RTDS "
                    "needs dynamic configuration (an xDS subscription), which legatus does "
                    "not have yet",
                )
            rtds.append(
                RtdsLayerConfig(
                    index=i,
                    name=proto.name,
                    resource_name=proto.rtds_layer.name,
                    rtds_config=_copy(proto.rtds_layer.rtds_config),
                )
            )
        elif which != "static_layer":
            raise ConfigError(layer_path, "layer specifier not set")
    layers = []
    for i, proto in enumerate(protos):
        if proto.WhichOneof("layer_specifier") != "static_layer":
            layers.append(Layer(name=proto.name))
            continue
        try:
            values = struct_entries(proto.static_layer)
        except InvalidEntry as e:
            raise ConfigError(f"{path}.layers[{i}].static_layer", str(e)) from None
        layers.append(Layer(name=proto.name, values=MappingProxyType(values)))
    return Runtime(layers, admin_index=admin_index, disk_layers=disk, rtds_layers=rtds)


def _copy(source: config_source_pb2.ConfigSource) -> config_source_pb2.ConfigSource:
    out = config_source_pb2.ConfigSource()
    out.CopyFrom(source)
    return out


def _disk_layer(index: int, proto, service_cluster: str, layer_path: str) -> DiskLayerConfig:
    spec = proto.disk_layer
    if "/" not in spec.symlink_root:  # Envoy watches the root's parent directory
        raise ConfigError(
            f"{layer_path}.disk_layer.symlink_root", f"invalid file path {spec.symlink_root}"
        )
    path = f"{spec.symlink_root}/{spec.subdirectory}"
    if spec.append_service_cluster:
        path += f"/{service_cluster}"
    return DiskLayerConfig(index=index, name=proto.name, symlink_root=spec.symlink_root, path=path)

"""Loading the bootstrap: ``-c`` file plus ``--config-yaml``, as Envoy loads it.

The file is YAML (``.yaml``/``.yml``), JSON (``.json``), binary proto (``.pb``)
or text proto (``.pb_text``). ``--config-yaml`` is parsed on its own and merged
on top with proto ``MergeFrom`` semantics (scalars replaced, messages merged,
repeated fields appended), which is what Envoy does. The command-line node
flags then override ``node``. Structural errors and protoc-gen-validate rule
violations are raised as ConfigError with the field path.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass

import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from legatus.config.errors import ConfigError
from legatus.config.proto_json import parse, type_name
from legatus.config.supported import check_supported
from legatus.config.validate import validate_message
from legatus.registry import Registry
from legatus.server.options import Options

log = logging.getLogger("legatus.config")
Bootstrap = bootstrap_pb2.Bootstrap


@dataclass(frozen=True, slots=True)
class LoadedBootstrap:
    bootstrap: Bootstrap
    unknown_static_fields: int  # server.static_unknown_fields


def load(options: Options, registry: Registry | None = None) -> LoadedBootstrap:
    if not options.config_path and not options.config_yaml:
        raise ConfigError(
            "",
            "At least one of --config-path or --config-yaml or "
            "Options::configProto() should be non-empty",
        )
    unknown = 0
    bootstrap = Bootstrap()
    if options.config_path:
        part, n = _load_file(options.config_path, options.allow_unknown_static_fields, registry)
        bootstrap.MergeFrom(part)
        unknown += n
    if options.config_yaml:
        document = _yaml(options.config_yaml, "--config-yaml")
        part, n = _parse_document(document, options.allow_unknown_static_fields, registry)
        bootstrap.MergeFrom(part)
        unknown += n
    _apply_node_flags(bootstrap, options)
    errors = validate_message(bootstrap)
    if errors:
        raise errors[0]
    check_static_resources(bootstrap)
    check_supported_fields(bootstrap)
    return LoadedBootstrap(bootstrap=bootstrap, unknown_static_fields=unknown)


def _load_file(path: str, allow_unknown: bool, registry: Registry | None) -> tuple[Bootstrap, int]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError("", f"unable to read file: {path}: {e.strerror}") from None
    if path.endswith(".pb"):
        message = Bootstrap()
        try:
            message.ParseFromString(raw)
        except DecodeError as e:
            raise ConfigError("", f"Unable to parse file {path} as a binary proto: {e}") from None
        return message, 0
    text = raw.decode("utf-8", errors="replace")
    if path.endswith(".pb_text"):
        message = Bootstrap()
        try:
            text_format.Parse(text, message, allow_unknown_field=allow_unknown)
        except text_format.ParseError as e:
            raise ConfigError("", f"Unable to parse file {path} as a text proto: {e}") from None
        return message, 0
    if path.endswith(".json"):
        try:
            document = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError("", f"Unable to parse JSON as proto ({e}): {path}") from None
    elif path.endswith((".yaml", ".yml")):
        if not text.strip():
            raise ConfigError("", f"Unable to convert YAML as JSON: {path} is empty")
        document = _yaml(text, path)
    else:
        raise ConfigError(
            "",
            f"Unsupported config file extension for {path}: expected .yaml, "
            ".yml, .json, .pb or .pb_text",
        )
    return _parse_document(document, allow_unknown, registry)


def load_yaml(text: str):
    """A YAML document as Envoy reads one (``as_envoy_yaml``); raises yaml.YAMLError."""
    return as_envoy_yaml(yaml.load(text, Loader=_Loader))  # a SafeLoader subclass


def _yaml(text: str, where: str):
    try:
        document = load_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError("", f"Unable to parse YAML in {where}: {e}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError("", f"{where}: the bootstrap must be a YAML/JSON object")
    return document


class _YamlFloat(float):
    """A float that remembers how the YAML wrote it (``3.0``, ``0.50``, ``1.0e+20``)."""

    __slots__ = ("text",)


class _Loader(yaml.SafeLoader):
    pass


def _construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    number = _YamlFloat(loader.construct_yaml_float(node))
    number.text = node.value
    return number


_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)
_INT32 = range(-(2**31), 2**31)


def as_envoy_yaml(value):
    """A YAML document as Envoy's YAML loader hands it to its JSON parser: a float becomes
    its text as written (``2.50``, ``.5``), and so does an integer beyond int32; the rest
    stays. A numeric field parses such a string as the number, so this shows only where a
    value is kept as it is: a ``Struct`` or ``Value`` (metadata, runtime static layers,
    typed structs) holds ``"2.50"``, not ``2.5`` (checked against Envoy 1.40 with route
    metadata written back by ``%METADATA(ROUTE:...)%``, and with ``/runtime``). JSON
    documents keep their numbers, as in Envoy."""
    if isinstance(value, _YamlFloat):
        return value.text
    if isinstance(value, int) and not isinstance(value, bool) and value not in _INT32:
        return str(value)
    if isinstance(value, dict):
        return {key: as_envoy_yaml(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [as_envoy_yaml(inner) for inner in value]
    return value


def _parse_document(
    document: dict, allow_unknown: bool, registry: Registry | None
) -> tuple[Bootstrap, int]:
    try:
        return parse(document, Bootstrap), 0
    except ConfigError as strict_error:
        if registry is not None:
            _raise_if_inside_unsupported_extension(document, strict_error, registry)
        if not allow_unknown or "unknown field" not in strict_error.message:
            raise
        log.warning(
            "Unknown static field(s) ignored (--allow-unknown-static-fields): %s", strict_error
        )
        return parse(document, Bootstrap, ignore_unknown_fields=True), 1


_SEGMENT = re.compile(r'\.?([A-Za-z_0-9]+)|\[(\d+)\]|\["([^"]*)"\]')


def _raise_if_inside_unsupported_extension(document: dict, error: ConfigError,
                                           registry: Registry) -> None:  # fmt: skip
    """A parse error inside the config of an extension legatus lacks names the extension.

    Telling an operator about a bad field deep inside, say, an HTTP connection
    manager is no help when legatus cannot run the connection manager at all.
    """
    node: object = document
    path = ""
    for m in _SEGMENT.finditer(error.path):
        name, index, key = m.groups()
        if name is not None:
            path = f"{path}.{name}" if path else name
            node = node.get(name) if isinstance(node, dict) else None
        elif index is not None:
            path += f"[{index}]"
            i = int(index)
            node = node[i] if isinstance(node, list) and i < len(node) else None
        else:
            path += f'["{key}"]'
            node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return
        url = node.get("@type") if isinstance(node, dict) else None
        if isinstance(url, str) and path != error.path and not registry.knows_type(type_name(url)):
            raise ConfigError(path, f"unsupported extension {url}: legatus does not implement it "
                              f"(and its config did not parse: {error})") from None  # fmt: skip


def _apply_node_flags(bootstrap: Bootstrap, options: Options) -> None:
    if options.service_cluster:
        bootstrap.node.cluster = options.service_cluster
    if options.service_node:
        bootstrap.node.id = options.service_node
    if options.service_zone:
        bootstrap.node.locality.zone = options.service_zone


_SUPPORTED_BOOTSTRAP = frozenset({
    "node", "static_resources", "admin", "stats_config", "stats_flush_interval",
    "stats_server_version_override", "layered_runtime", "dynamic_resources",
})  # fmt: skip
_SUPPORTED_STATIC = frozenset({"listeners", "clusters", "secrets"})
_SUPPORTED_ADMIN = frozenset({"address", "profile_path", "access_log", "access_log_path"})
_SUPPORTED_STATS_CONFIG = frozenset({"stats_tags", "use_all_default_tags"})


def check_supported_fields(bootstrap: Bootstrap) -> None:
    """Refuse top-level bootstrap features legatus does not act on yet, by path."""
    check_supported(bootstrap, _SUPPORTED_BOOTSTRAP, "", "Bootstrap")
    check_supported(bootstrap.static_resources, _SUPPORTED_STATIC, "static_resources",
                    "Bootstrap.StaticResources")  # fmt: skip
    check_supported(bootstrap.admin, _SUPPORTED_ADMIN, "admin", "Admin")
    check_supported(bootstrap.stats_config, _SUPPORTED_STATS_CONFIG, "stats_config",
                    "StatsConfig")  # fmt: skip


def check_static_resources(bootstrap: Bootstrap) -> None:
    """The checks Envoy makes beyond PGV when it adds static listeners and clusters."""
    seen: dict[str, int] = {}
    for i, cluster in enumerate(bootstrap.static_resources.clusters):
        if cluster.name in seen:
            raise ConfigError(
                f"static_resources.clusters[{i}].name",
                f"cluster manager: duplicate cluster '{cluster.name}'",
            )
        seen[cluster.name] = i
    names: set[str] = set()
    for i, listener in enumerate(bootstrap.static_resources.listeners):
        path = f"static_resources.listeners[{i}]"
        if listener.name and listener.name in names:
            raise ConfigError(
                f"{path}.name",
                f"error adding listener named '{listener.name}': "
                "listener with the same name already exists",
            )
        names.add(listener.name)
        if not (
            listener.HasField("address")
            or listener.HasField("api_listener")
            or listener.HasField("internal_listener")
        ):
            raise ConfigError(f"{path}.address", "error adding listener: address is necessary")

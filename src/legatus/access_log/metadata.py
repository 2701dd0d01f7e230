"""``%DYNAMIC_METADATA(NAMESPACE:KEY:...):Z%``: the stream's dynamic metadata, and
``%METADATA(TYPE:NAMESPACE:KEY:...):Z%`` (Envoy's built-in metadata formatter) for the types
``DYNAMIC`` (the same), ``ROUTE`` and ``VIRTUAL_HOST`` (the ``metadata`` of the route the
stream took and of its virtual host; unset without a route), ``CLUSTER`` (the upstream
cluster's, once the router or tcp_proxy picked it; also ``%CLUSTER_METADATA(...)%``) and
``UPSTREAM_HOST`` (the lb_endpoint's, of the try's host; also ``%UPSTREAM_METADATA(...)%``)
and ``LISTENER`` (the listener's that accepted the connection).

``info.dynamic_metadata`` maps a filter namespace to a Struct-like dict (str, number,
bool, None, list, dict values), as filters set it. The operator looks the namespace up,
then walks the keys through nested objects (Envoy's Config::Metadata::metadataValue):

- no namespace, a missing key, a key under a value that is not an object, or an empty key
  (``ns::k``, ``ns:``) is unset: ``-`` (JSON ``null``);
- a string is written as it is; a null is unset in text and ``null`` in JSON;
- anything else is written as JSON (objects with sorted keys, numbers as Struct doubles:
  ``1e+06``), see json_text.py.

``:Z`` truncates the text; in a JSON format it truncates a string value only (an object,
list, number or boolean keeps its type, whole). Checked against Envoy 1.40 with the
set_metadata filter.
"""

from __future__ import annotations

from legatus.access_log.json_text import json_value
from legatus.access_log.providers import Provider, Syntax
from legatus.config.errors import ConfigError

_MISSING = object()


def _lookup(metadata, namespace: str, path: tuple[str, ...]):
    """The value at ``namespace`` / ``path``, or _MISSING."""
    if not metadata:
        return _MISSING
    value = metadata.get(namespace, _MISSING)
    if value is _MISSING:
        return _MISSING
    for key in path:
        if not isinstance(value, dict):
            return _MISSING
        value = value.get(key, _MISSING)
        if value is _MISSING:
            return _MISSING
    return value


def _dynamic(info):
    return info.dynamic_metadata


def _route(info):
    route = info.route
    return None if route is None else route.route.metadata


def _virtual_host(info):
    route = info.route
    return None if route is None else route.virtual_host.metadata


def _cluster(info):
    config = info.upstream_cluster_config
    metadata = None if config is None else config.metadata
    return None if metadata is None else metadata.value


def _upstream_host(info):
    config = info.upstream_host_config
    metadata = None if config is None else config.metadata
    return None if metadata is None else metadata.value


def _listener(info):
    metadata = info.listener_metadata
    return None if metadata is None else metadata.value


# %METADATA(TYPE:...)%: where each type's metadata is found.
_SOURCES = {
    "DYNAMIC": _dynamic,
    "ROUTE": _route,
    "VIRTUAL_HOST": _virtual_host,
    "CLUSTER": _cluster,
    "UPSTREAM_HOST": _upstream_host,
    "LISTENER": _listener,
}


def _metadata(sub: str, max_length: int | None, path: str) -> Provider:
    """``%METADATA(TYPE:NAMESPACE:KEY...)%``, Envoy's built-in metadata formatter."""
    kind, _, rest = sub.partition(":")
    source = _SOURCES.get(kind)
    if source is None:
        raise ConfigError(path, f"{kind} is not supported type of metadata")  # Envoy's words
    return _metadata_provider(source, rest, max_length)


def _dynamic_metadata(sub: str, max_length: int | None, _path: str) -> Provider:
    return _metadata_provider(_dynamic, sub, max_length)


def _cluster_metadata(sub: str, max_length: int | None, _path: str) -> Provider:
    return _metadata_provider(_cluster, sub, max_length)


def _upstream_metadata(sub: str, max_length: int | None, _path: str) -> Provider:
    return _metadata_provider(_upstream_host, sub, max_length)


def _metadata_provider(source, sub: str, max_length: int | None) -> Provider:
    namespace, *keys = sub.split(":")
    path = tuple(keys)

    def text(info, _req, _resp, _trl):
        value = _lookup(source(info), namespace, path)
        if value is _MISSING or value is None:
            return None
        out = value if value.__class__ is str else json_value(value)
        return out if max_length is None else out[:max_length]

    def typed(info, _req, _resp, _trl):
        value = _lookup(source(info), namespace, path)
        if value is _MISSING or value is None:
            return None
        if value.__class__ is str:
            return value if max_length is None else value[:max_length]
        if value is True or value is False:
            return value
        if isinstance(value, (int, float)):
            return float(value)  # a Struct number: written as a double
        return RawJson(json_value(value))

    return Provider(text, typed)


class RawJson(str):
    """A typed value that is already JSON text (an object or list), written as it is."""

    __slots__ = ()


METADATA_OPERATORS = {
    "DYNAMIC_METADATA": (Syntax.PARAMS_REQUIRED | Syntax.LENGTH_ALLOWED, _dynamic_metadata),
    "METADATA": (Syntax.PARAMS_OPTIONAL | Syntax.LENGTH_ALLOWED, _metadata),
    "CLUSTER_METADATA": (Syntax.PARAMS_REQUIRED | Syntax.LENGTH_ALLOWED, _cluster_metadata),
    "UPSTREAM_METADATA": (Syntax.PARAMS_REQUIRED | Syntax.LENGTH_ALLOWED, _upstream_metadata),
}

"""``/config_dump``: ``envoy.admin.v3.ConfigDump`` of what the process runs.

The dump lists, in Envoy's order: the bootstrap (node filled in as /server_info
shows it), clusters, endpoints (only with ``?include_eds``), listeners, scoped
routes and routes (the route configs inlined in HTTP connection managers; both
only once some listener has an HCM, as in Envoy) and secrets. Static
resources print as configured (``port_value: 0`` stays 0, as in Envoy);
``last_updated`` is the time the process started, legatus having loaded them
then.

Query parameters, as Envoy 1.40 answers them:
- ``resource=<repeated field>``: the elements of that field of every dump,
  each as its own Any (``...ClustersConfigDump.StaticCluster``); no dump with
  that field -> 404 ``<resource> not found in config dump``;
- ``mask=a.b,c``: a FieldMask applied to each dump, whose paths stop at Any
  fields; dumps it does not fit are left out, and if it fits none -> 400;
  with ``resource`` it applies to each element and its paths continue into
  Any fields (``resource=static_clusters&mask=cluster.name``);
- ``name_regex=``: only resources whose name matches (the bootstrap always).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from envoy.admin.v3 import config_dump_pb2, config_dump_shared_pb2
from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2, message_factory, symbol_database, timestamp_pb2
from google.protobuf.message import Message

from legatus.server.admin.clusters import socket_address
from legatus.server.admin.context import ClusterInfo
from legatus.server.admin.response import AdminResponse, Query, json_body, proto_json, text
from legatus.server.admin.server_info import node

shared = config_dump_shared_pb2
_HCM_TYPE = hcm_pb2.HttpConnectionManager.DESCRIPTOR.full_name
_Tree = dict[str, "_Tree | None"]
# Envoy 1.40 answers an unknown ?resource= with these headers, nosniff twice.
_NOT_FOUND_HEADERS = (
    ("x-content-type-options", "nosniff"),
    ("content-type", "text/plain"),
    ("cache-control", "no-cache, max-age=0"),
    ("x-content-type-options", "nosniff"),
)


class MaskError(ValueError):
    """A FieldMask path that names no field of the message it is applied to."""


def handle_config_dump(context: Any, query: Query) -> AdminResponse:
    matcher: Callable[[str], bool] = _everything
    regex = query.get("name_regex")
    if regex:
        try:
            compiled = re.compile(regex)
        except re.error as exc:
            message = f"Error while parsing name_regex from {regex}: {exc}"
            return text(f"INVALID_ARGUMENT: {message}", 400)
        matcher = lambda name: compiled.search(name) is not None  # noqa: E731
    dumps = config_dump(context, include_eds="include_eds" in query, matcher=matcher)
    mask = query.get("mask") or ""
    tree = _mask_tree(mask) if mask else None
    resource = query.get("resource")
    out = config_dump_pb2.ConfigDump()
    if resource:
        elements, error = _resource_elements(dumps, resource)
        if error is not None:
            return error
        for element in elements:
            if tree is not None:
                try:
                    element = trim(element, tree, through_any=True)
                except MaskError:
                    paths = "".join(f'paths: "{p}"\n' for p in mask.split(","))
                    return text(f"FieldMask {paths} could not be successfully used.", 400)
            out.configs.add().Pack(element)
        return json_body(proto_json(out))
    for dump in dumps:
        if tree is not None:
            try:
                dump = trim(dump, tree)
            except MaskError:
                continue
        out.configs.add().Pack(dump)
    if tree is not None and not out.configs:
        return text(f"FieldMask {mask} could not be successfully applied to any configs.", 400)
    return json_body(proto_json(out))


def _everything(name: str) -> bool:
    return True


def _resource_elements(
    dumps: list[Message], resource: str
) -> tuple[list[Message], AdminResponse | None]:
    found = False
    elements: list[Message] = []
    for dump in dumps:
        field = dump.DESCRIPTOR.fields_by_name.get(resource)
        if field is None:
            continue
        if not field.is_repeated:
            return [], text(
                f"{resource} is not a repeated field. Use ?mask={resource} to get only this field",
                400,
            )
        found = True
        elements.extend(getattr(dump, resource))
    if not found:
        return [], AdminResponse(
            status=404,
            headers=_NOT_FOUND_HEADERS,
            body=f"{resource} not found in config dump".encode(),
        )
    return elements, None


def config_dump(
    context: Any, *, include_eds: bool = False, matcher: Callable[[str], bool] = _everything
) -> list[Message]:
    """The dumps, unpacked, in Envoy's order."""
    loaded = timestamp_pb2.Timestamp()
    loaded.FromMilliseconds(int(context.start_time * 1000))
    bootstrap = config_dump_pb2.BootstrapConfigDump(last_updated=loaded)
    if context.bootstrap is not None:
        bootstrap.bootstrap.CopyFrom(context.bootstrap)
    bootstrap.bootstrap.node.CopyFrom(node(context))

    clusters = shared.ClustersConfigDump()
    endpoints = shared.EndpointsConfigDump()
    for cluster in context.clusters():
        if not matcher(cluster.name) or cluster.config is None:
            continue
        if cluster.added_via_api:
            item = clusters.dynamic_active_clusters.add(last_updated=loaded)
        else:
            item = clusters.static_clusters.add(last_updated=loaded)
        item.cluster.Pack(cluster.config)
        if include_eds:
            endpoints.static_endpoint_configs.add().endpoint_config.Pack(load_assignment(cluster))

    listeners = shared.ListenersConfigDump()
    routes = shared.RoutesConfigDump()
    has_hcm = False  # Envoy dumps (scoped) routes only once an HCM exists
    static_names = set()
    if context.bootstrap is not None:
        static_names = {item.name for item in context.bootstrap.static_resources.listeners}
    for listener in context.listeners():
        config = listener.config
        if config is None:
            continue
        if listener.name in static_names:
            config = next(
                item
                for item in context.bootstrap.static_resources.listeners
                if item.name == listener.name
            )
        route_configs = inline_route_configs(config)
        has_hcm = has_hcm or route_configs is not None
        for route_config in route_configs or ():
            if matcher(route_config.name):
                routes.static_route_configs.add(last_updated=loaded).route_config.Pack(route_config)
        if not matcher(listener.name):
            continue
        if listener.name in static_names:
            listeners.static_listeners.add(last_updated=loaded).listener.Pack(config)
        else:
            dynamic = listeners.dynamic_listeners.add(name=listener.name)
            dynamic.active_state.last_updated.CopyFrom(loaded)
            dynamic.active_state.listener.Pack(config)

    dumps: list[Message] = [bootstrap, clusters]
    if include_eds:
        dumps.append(endpoints)
    dumps.append(listeners)
    if has_hcm:
        dumps += [shared.ScopedRoutesConfigDump(), routes]
    dumps.append(config_dump_pb2.SecretsConfigDump())
    return dumps


def inline_route_configs(listener: Any) -> list[route_pb2.RouteConfiguration] | None:
    """The ``route_config`` of every HTTP connection manager in a listener's filter chains;
    None if the listener has no HTTP connection manager at all."""
    out: list[route_pb2.RouteConfiguration] | None = None
    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    for chain in chains:
        for f in chain.filters:
            if f.typed_config.type_url.rpartition("/")[2] != _HCM_TYPE:
                continue
            out = [] if out is None else out
            hcm = hcm_pb2.HttpConnectionManager()
            if f.typed_config.Unpack(hcm) and hcm.HasField("route_config"):
                out.append(hcm.route_config)
    return out


def load_assignment(cluster: ClusterInfo) -> endpoint_pb2.ClusterLoadAssignment:
    """The hosts of a cluster as Envoy rebuilds them for ``?include_eds``."""
    config = cluster.config
    name = cluster.name
    if config.HasField("eds_cluster_config") and config.eds_cluster_config.service_name:
        name = config.eds_cluster_config.service_name
    out = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    out.policy.overprovisioning_factor.value = 140
    groups: dict[tuple[int, str, str, str], endpoint_components_pb2.LocalityLbEndpoints] = {}
    for host in cluster.hosts:
        key = (host.priority, host.region, host.zone, host.sub_zone)
        group = groups.get(key)
        if group is None:
            group = groups[key] = out.endpoints.add(priority=host.priority)
            group.locality.CopyFrom(
                base_pb2.Locality(region=host.region, zone=host.zone, sub_zone=host.sub_zone)
            )
            group.load_balancing_weight.value = 0
        lb = group.lb_endpoints.add()
        lb.endpoint.address.CopyFrom(socket_address(host.address))
        lb.endpoint.hostname = host.hostname
        lb.endpoint.health_check_config.SetInParent()
        unhealthy = any(f.startswith("/failed") for f in host.health_flags)
        lb.health_status = health_check_pb2.UNHEALTHY if unhealthy else health_check_pb2.HEALTHY
        lb.load_balancing_weight.value = host.weight
    return out


# FieldMask ----------------------------------------------------------------------------


def _mask_tree(mask: str) -> _Tree:
    tree: _Tree = {}
    for path in mask.split(","):
        node_: _Tree = tree
        parts = path.strip().split(".")
        for i, part in enumerate(parts):
            if i == len(parts) - 1:
                node_[part] = None  # the whole field
            else:
                child = node_.get(part, {})
                if child is None:  # a shorter path already keeps all of it
                    break
                node_[part] = child
                node_ = child
    return tree


def trim(message: Message, tree: _Tree, *, through_any: bool = False) -> Message:
    """A copy of ``message`` with only the fields in ``tree``.

    ``through_any`` lets paths continue into an Any's content, as Envoy does for
    the elements of ``?resource=`` (``cluster.name`` on a StaticCluster) but not
    for whole dumps. Raises MaskError if a path names a field that is not there.
    """
    if through_any and isinstance(message, any_pb2.Any):
        inner = _unpack(message)
        packed = any_pb2.Any()
        packed.Pack(trim(inner, tree, through_any=True))
        return packed
    out = type(message)()
    fields = message.DESCRIPTOR.fields_by_name
    for name, sub in tree.items():
        field = fields.get(name)
        if field is None:
            raise MaskError(name)
        if sub is None:
            if field.is_repeated:
                getattr(out, name).extend(getattr(message, name))
            elif field.has_presence and not message.HasField(name):
                pass
            elif field.message_type is None:
                setattr(out, name, getattr(message, name))
            else:
                getattr(out, name).CopyFrom(getattr(message, name))
            continue
        if field.message_type is None or field.message_type.GetOptions().map_entry:
            raise MaskError(name)
        if field.is_repeated:
            for item in getattr(message, name):
                getattr(out, name).add().CopyFrom(trim(item, sub, through_any=through_any))
        elif message.HasField(name):
            getattr(out, name).CopyFrom(trim(getattr(message, name), sub, through_any=through_any))
    return out


def _unpack(packed: any_pb2.Any) -> Message:
    type_name = packed.type_url.rpartition("/")[2]
    try:
        descriptor = symbol_database.Default().pool.FindMessageTypeByName(type_name)
    except KeyError:
        raise MaskError(type_name) from None
    inner = message_factory.GetMessageClass(descriptor)()
    packed.Unpack(inner)
    return inner

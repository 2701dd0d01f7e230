"""``/config_dump``: ``envoy.admin.v3.ConfigDump`` of what the process runs.

The dump lists, in Envoy's order: the bootstrap (node filled in as /server_info
shows it), clusters, endpoints (only with ``?include_eds``), listeners, scoped
routes and routes (both only once some listener has an HCM, as in Envoy) and
secrets. Static resources print as configured (``port_value: 0`` stays 0, as in
Envoy); their ``last_updated`` is the time the process started, legatus having
loaded them then.

What came over xDS is dumped from what its owners recorded (CDS, LDS, RDS; see
config_subscription/records.py), as Envoy 1.40 shows it: each resource with the
version of the update that last changed it and when (an update that changes
nothing changes neither), each dump's ``version_info`` that of the last update
that changed something. ``error_state`` is filled for listeners only: Envoy 1.40
leaves it out for clusters and routes. EDS shows in ``dynamic_endpoint_configs``
as each CDS cluster's hosts, rebuilt like the static ones (no version, no time),
and RTDS not at all (its layers are in /runtime), both as in Envoy.

Query parameters, as Envoy 1.40 answers them:
- ``resource=<repeated field>``: the elements of that field of every dump,
  each as its own Any (``...ClustersConfigDump.StaticCluster``); no dump with
  that field -> 404 ``<resource> not found in config dump``;
- ``mask=a.b,c``: a FieldMask applied to each dump, whose paths stop at Any
  fields; dumps it does not fit are left out, and if it fits none -> 400;
  with ``resource`` it applies to each element, and a path whose first field is
  an Any continues into its content (``resource=static_clusters&mask=cluster.name``);
- ``name_regex=``: only resources whose whole name matches (the bootstrap, and
  the refusals of listeners, always).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from envoy.admin.v3 import config_dump_pb2, config_dump_shared_pb2
from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import any_pb2, message_factory, symbol_database, timestamp_pb2
from google.protobuf.message import Message

from legatus.config_subscription.records import Accepted, Rejected
from legatus.extensions.filters.network.http_connection_manager import listener_hcms
from legatus.server.admin.clusters import socket_address
from legatus.server.admin.context import ClusterInfo
from legatus.server.admin.response import AdminResponse, Query, json_body, proto_json, text
from legatus.server.admin.server_info import node

shared = config_dump_shared_pb2
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
        matcher = lambda name: compiled.fullmatch(name) is not None  # noqa: E731
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
                    element = trim_element(element, tree)
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
    loaded = _timestamp(context.start_time)
    bootstrap = config_dump_pb2.BootstrapConfigDump(last_updated=loaded)
    if context.bootstrap is not None:
        bootstrap.bootstrap.CopyFrom(context.bootstrap)
    bootstrap.bootstrap.node.CopyFrom(node(context))
    dynamic = getattr(context, "dynamic", None)  # DynamicConfig; None without xDS
    dumps: list[Message] = [bootstrap, clusters_dump(context, loaded, matcher)]
    if include_eds:
        dumps.append(endpoints_dump(context, matcher))
    listeners, route_sources = listeners_dump(context, loaded, matcher)
    dumps.append(listeners)
    routes = routes_dump(route_sources, dynamic, loaded, matcher)
    if routes is not None:  # Envoy dumps (scoped) routes only once an HCM exists
        dumps += [shared.ScopedRoutesConfigDump(), routes]
    from legatus.server.admin.secrets_dump import secrets_dump

    dumps.append(secrets_dump(context, loaded, matcher))
    return dumps


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromMilliseconds(int(seconds * 1000))
    return out


# Clusters and endpoints ---------------------------------------------------------------


def clusters_dump(
    context: Any, loaded: timestamp_pb2.Timestamp, matcher: Callable[[str], bool]
) -> shared.ClustersConfigDump:
    """Static clusters, then the CDS clusters active and warming, each list by name (as
    Envoy's cluster map orders them). A CDS cluster carries the version of the update that
    last changed it and when; ``version_info`` is that of the last CDS update that changed
    something. A refused cluster has no ``error_state``: Envoy 1.40 does not fill it."""
    dynamic = getattr(context, "dynamic", None)
    cds = dynamic.cds if dynamic is not None else None
    cm = getattr(context, "cluster_manager", None)
    warming = dict(cm.warming) if cm is not None else {}
    out = shared.ClustersConfigDump(version_info=cds.records.version_info if cds else "")
    for cluster in sorted(context.clusters(), key=lambda c: c.name):
        if not matcher(cluster.name) or cluster.config is None:
            continue
        if not cluster.added_via_api:
            out.static_clusters.add(last_updated=loaded).cluster.Pack(cluster.config)
            continue
        pending = warming.get(cluster.name)
        if pending is not None and pending.proto == cluster.config:
            continue  # swapped in, but still in its first health-check round: warming
        item = out.dynamic_active_clusters.add(last_updated=loaded)
        _fill_record(item, _active_record(dynamic, cluster.name, cluster.config))
        item.cluster.Pack(cluster.config)
    for name in sorted(warming):
        if not matcher(name):
            continue
        config = warming[name].proto
        item = out.dynamic_warming_clusters.add(last_updated=loaded)
        record = cds.records.accepted.get(name) if cds is not None else None
        _fill_record(item, record if record is not None and record.resource == config else None)
        item.cluster.Pack(config)
    return out


def _active_record(dynamic: Any, name: str, config: Message) -> Accepted | None:
    """The CDS record of the active cluster ``name``: the one taken when it became active,
    or the newest if that is the very config (it became active since)."""
    if dynamic is None:
        return None
    for record in (
        dynamic.active_cluster_records.get(name),
        dynamic.cds.records.accepted.get(name) if dynamic.cds is not None else None,
    ):
        if record is not None and record.resource == config:
            return record
    return None


def _fill_record(item: Message, record: Accepted | None) -> None:
    if record is not None:
        item.version_info = record.version
        item.last_updated.CopyFrom(_timestamp(record.last_updated))


def endpoints_dump(context: Any, matcher: Callable[[str], bool]) -> shared.EndpointsConfigDump:
    """``?include_eds``: each active cluster's hosts as a ClusterLoadAssignment, rebuilt as
    Envoy rebuilds them (not the EDS resource: no version, no time), under
    ``dynamic_endpoint_configs`` for a cluster from CDS."""
    out = shared.EndpointsConfigDump()
    for cluster in sorted(context.clusters(), key=lambda c: c.name):
        if not matcher(cluster.name) or cluster.config is None:
            continue
        kind = (
            out.dynamic_endpoint_configs if cluster.added_via_api else out.static_endpoint_configs
        )
        kind.add().endpoint_config.Pack(load_assignment(cluster))
    return out


# Listeners and routes -----------------------------------------------------------------


def listeners_dump(
    context: Any, loaded: timestamp_pb2.Timestamp, matcher: Callable[[str], bool]
) -> tuple[shared.ListenersConfigDump, list[Message]]:
    """The listeners, and every listener whose HTTP connection managers own route
    configurations (static, and LDS's active and warming ones), for ``routes_dump``.

    LDS listeners are listed as Envoy does: one entry per name with its active, warming and
    draining states (active first, in the order they came); then the refusals of the last
    LDS update, twice as Envoy lists them: by listener name (in that listener's entry, or an
    entry of its own, with the time of the attempt), and once more each on its own, without
    name or time. ``name_regex`` leaves the refusals in, as Envoy does."""
    static_configs = {}
    if context.bootstrap is not None:
        static_configs = {item.name: item for item in context.bootstrap.static_resources.listeners}
    dynamic = getattr(context, "dynamic", None)
    lds = dynamic.lds if dynamic is not None else None
    out = shared.ListenersConfigDump(version_info=lds.version_info if lds is not None else "")
    sources: list[Message] = []
    for listener in context.listeners():
        config = static_configs.get(listener.name)
        if config is None:
            continue  # from LDS: below
        sources.append(config)
        if matcher(listener.name):
            out.static_listeners.add(last_updated=loaded).listener.Pack(config)
    if lds is None:
        return out, sources
    entries: dict[str, shared.ListenersConfigDump.DynamicListener] = {}

    def entry(name: str) -> shared.ListenersConfigDump.DynamicListener:
        if name not in entries:
            entries[name] = out.dynamic_listeners.add(name=name)
        return entries[name]

    states = (
        ("active_state", list(lds.listeners.values())),
        ("warming_state", list(lds.warming.values())),
        ("draining_state", list(lds.draining_listeners)),
    )
    for state, listeners in states:
        for listener in listeners:
            proto = listener.config.proto
            if state != "draining_state":
                sources.append(proto)
            if not matcher(proto.name):
                continue
            dumped = getattr(entry(proto.name), state)
            dumped.version_info = listener.version
            dumped.listener.Pack(proto)
            dumped.last_updated.CopyFrom(_timestamp(listener.last_updated))
    for name, rejected in lds.records.rejected.items():
        _fill_failure(entry(name).error_state, rejected, attempt=True)
    for rejected in lds.update_failures:
        _fill_failure(out.dynamic_listeners.add().error_state, rejected, attempt=False)
    return out, sources


def _fill_failure(state: shared.UpdateFailureState, rejected: Rejected, *, attempt: bool) -> None:
    if rejected.resource is not None:
        state.failed_configuration.Pack(rejected.resource)
    if attempt:
        state.last_update_attempt.CopyFrom(_timestamp(rejected.last_update_attempt))
    state.details = rejected.details


def routes_dump(
    listeners: list[Message],
    dynamic: Any,
    loaded: timestamp_pb2.Timestamp,
    matcher: Callable[[str], bool],
) -> shared.RoutesConfigDump | None:
    """The route configurations inlined in the listeners' HTTP connection managers, then
    those from RDS by name, each with the version of the update that last changed it (an
    update with the same configuration changes neither, as in Envoy; a refused one shows no
    ``error_state``, as in Envoy 1.40). None while no listener has an HCM."""
    records = dynamic.route_records if dynamic is not None else None
    has_hcm = bool(records is not None and records.accepted)
    out = shared.RoutesConfigDump()
    for listener in listeners:
        route_configs = inline_route_configs(listener)
        has_hcm = has_hcm or route_configs is not None
        for route_config in route_configs or ():
            if matcher(route_config.name):
                out.static_route_configs.add(last_updated=loaded).route_config.Pack(route_config)
    if not has_hcm:
        return None
    for name in sorted(records.accepted if records is not None else ()):
        if not matcher(name):
            continue
        record = records.accepted[name]
        item = out.dynamic_route_configs.add()
        _fill_record(item, record)
        item.route_config.Pack(record.resource)
    return out


def inline_route_configs(listener: Any) -> list[route_pb2.RouteConfiguration] | None:
    """The ``route_config`` of every HTTP connection manager in a listener's filter chains;
    None if the listener has no HTTP connection manager at all."""
    hcms = list(listener_hcms(listener))
    if not hcms:
        return None
    return [hcm.route_config for hcm in hcms if hcm.HasField("route_config")]


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
        hc = lb.endpoint.health_check_config
        hc.SetInParent()
        target = host.health_check
        if target is not None:
            hc.port_value = target.port
            hc.hostname = target.hostname
            hc.disable_active_health_check = target.disabled
            if target.address is not None:
                hc.address.CopyFrom(socket_address(target.address))
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


def trim_element(element: Message, tree: _Tree) -> Message:
    """``trim`` for one element of ``?resource=``: a path whose first field is an Any goes
    on into the Any's content (``cluster.name`` on a DynamicCluster), one level only, as in
    Envoy (``active_state.listener.name`` on a DynamicListener is refused), and must: Envoy
    refuses the Any alone (``cluster``)."""
    fields = element.DESCRIPTOR.fields_by_name
    outer: _Tree = {}
    inner: _Tree = {}
    for name, sub in tree.items():
        field = fields.get(name)
        if field is not None and _is_any(field):
            if sub is None:
                raise MaskError(name)
            outer[name], inner[name] = None, sub
        else:
            outer[name] = sub
    out = trim(element, outer)
    for name, sub in inner.items():
        if element.HasField(name):
            getattr(out, name).Pack(trim(_unpack(getattr(element, name)), sub))
    return out


def _is_any(field: Any) -> bool:
    message = field.message_type
    is_any = message is not None and message.full_name == any_pb2.Any.DESCRIPTOR.full_name
    return is_any and not field.is_repeated


def trim(message: Message, tree: _Tree) -> Message:
    """A copy of ``message`` with only the fields in ``tree``; paths stop at Any fields and
    at repeated fields. Raises MaskError if a path names a field that is not there, or goes
    on past one that has no fields (as protobuf's FieldMask checks them)."""
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
        if field.message_type is None or field.is_repeated:
            raise MaskError(name)  # a FieldMask path goes on through singular messages only
        if message.HasField(name):
            getattr(out, name).CopyFrom(trim(getattr(message, name), sub))
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

"""Incremental (delta) xDS, one resource type: what its next DeltaDiscoveryRequest says.

Sans-I/O, like ``sotw_state``. Delta requests speak in differences:

- ``resource_names_subscribe`` / ``resource_names_unsubscribe``: the names whose interest
  changed since the previous request. A name dropped and taken again before a request goes
  out is subscribed again (the owner may have forgotten it, so the server must resend it).
- The first request on a stream says everything afresh: every name of interest, and in
  ``initial_resource_versions`` the version of every resource held, so a reconnecting
  client is not sent what it already has. A wildcard with no names is the legacy empty
  request; with names it is an explicit ``*``.
- ``response_nonce`` only on a request that answers a response (ACK, or NACK with
  ``error_detail``): the mux keeps those answers (``pausable_ack_queue``) and hands one to
  ``next_request``; a spontaneous change of interest carries none. A request that answers a
  response also says whatever changed in the interest meanwhile.
- Resource versions are kept for the names of interest (all resources under a wildcard)
  from accepted responses; ``removed_resources`` forgets them.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.service.discovery.v3 import discovery_pb2

from legatus.config_subscription.grpc.pausable_ack_queue import UpdateAck
from legatus.config_subscription.grpc.protocol import WILDCARD

__all__ = ["DeltaState"]


class DeltaState:
    __slots__ = (
        "_on_stream",
        "_subscribe",
        "_unsubscribe",
        "names",
        "type_url",
        "versions",
        "wildcard",
    )

    def __init__(self, type_url: str) -> None:
        self.type_url = type_url
        self.names: frozenset[str] = frozenset()
        self.wildcard = False
        self.versions: dict[str, str] = {}  # resources held: name -> version
        self._on_stream = False  # a request of this type went out on the current stream
        self._subscribe: set[str] = set()
        self._unsubscribe: set[str] = set()

    def _requested(self) -> frozenset[str]:
        return self.names | {WILDCARD} if self.wildcard else self.names

    @property
    def interested(self) -> bool:
        return self.wildcard or bool(self.names)

    def set_interest(self, names: Iterable[str], wildcard: bool) -> None:
        old = self._requested()
        self.names = frozenset(names)
        self.wildcard = wildcard
        new = self._requested()
        for name in new - old:
            self._unsubscribe.discard(name)
            self._subscribe.add(name)
        for name in old - new:
            self._subscribe.discard(name)
            self._unsubscribe.add(name)
        if not wildcard:
            # Under a wildcard a dropped name may still come with it: the server says which.
            self.versions = {n: v for n, v in self.versions.items() if n in self.names}

    def stream_started(self) -> None:
        self._on_stream = False
        self._subscribe.clear()
        self._unsubscribe.clear()

    def wants_request(self) -> bool:
        """Whether the interest has something to say without a response to answer."""
        if not self._on_stream:
            return self.interested
        return bool(self._subscribe or self._unsubscribe)

    def is_heartbeat(self, name: str, version: str) -> bool:
        """A bodiless resource at the version already held: nothing changed."""
        return name in self.versions and self.versions[name] == version

    def accepted(self, added: Iterable[tuple[str, str]], removed: Iterable[str]) -> None:
        """A response taken: ``added`` are (name, version) pairs of its resources."""
        for name, version in added:
            if self.wildcard or name in self.names:
                self.versions[name] = version
        for name in removed:
            self.versions.pop(name, None)

    def next_request(self, ack: UpdateAck | None = None) -> discovery_pb2.DeltaDiscoveryRequest:
        """The next request: the answer ``ack`` (if any) and the changes of interest."""
        if ack is None and not self.wants_request():
            raise RuntimeError(f"no {self.type_url} request is due")
        request = discovery_pb2.DeltaDiscoveryRequest(type_url=self.type_url)
        if not self._on_stream:
            self._on_stream = True
            requested = self._requested()
            if requested != {WILDCARD}:
                request.resource_names_subscribe.extend(sorted(requested))
            for name, version in self.versions.items():
                request.initial_resource_versions[name] = version
        else:
            request.resource_names_subscribe.extend(sorted(self._subscribe))
            request.resource_names_unsubscribe.extend(sorted(self._unsubscribe))
        self._subscribe.clear()
        self._unsubscribe.clear()
        if ack is not None:
            request.response_nonce = ack.nonce
            if ack.error_detail is not None:
                request.error_detail.CopyFrom(ack.error_detail)
        return request

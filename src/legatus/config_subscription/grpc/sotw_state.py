"""State-of-the-world xDS, one resource type: what its next DiscoveryRequest says.

Sans-I/O: the mux tells the state what happened (a new stream, the interest changed, a
response was accepted or rejected) and asks it for the next request.

- ``version_info`` is the last *accepted* version: an ACK carries the response's version, a
  NACK the previous one (plus ``error_detail``). It survives reconnection, so the first
  request on a new stream tells the server what the client already has.
- ``response_nonce`` is the nonce of the last response of the type, ACKed or NACKed alike;
  nonces are valid on one stream only, so a new stream starts without one.
- ``resource_names``: the union of the subscriptions' names. A wildcard subscription with no
  names is the legacy empty list; once names were sent on the stream an empty list would
  mean "nothing", so a wildcard then travels as an explicit ``*`` (xDS protocol, "How the
  client specifies what resources to return").
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.service.discovery.v3 import discovery_pb2

from legatus.config_subscription.grpc.protocol import WILDCARD, error_detail

__all__ = ["SotwState"]


class SotwState:
    __slots__ = (
        "_error_detail",
        "_named_on_stream",
        "names",
        "nonce",
        "type_url",
        "version_info",
        "wildcard",
    )

    def __init__(self, type_url: str) -> None:
        self.type_url = type_url
        self.names: frozenset[str] = frozenset()
        self.wildcard = False
        self.version_info = ""
        self.nonce = ""
        self._error_detail = None
        self._named_on_stream = False

    @property
    def interested(self) -> bool:
        """Whether a new stream must ask for this type at all."""
        return self.wildcard or bool(self.names)

    def set_interest(self, names: Iterable[str], wildcard: bool) -> None:
        self.names = frozenset(names)
        self.wildcard = wildcard

    def stream_started(self) -> None:
        self.nonce = ""
        self._error_detail = None
        self._named_on_stream = False

    def accepted(self, version_info: str, nonce: str) -> None:
        """ACK: the next request carries this version and nonce."""
        self.version_info = version_info
        self.nonce = nonce
        self._error_detail = None

    def rejected(self, nonce: str, message: str) -> None:
        """NACK: the next request keeps the accepted version and says why."""
        self.nonce = nonce
        self._error_detail = error_detail(message)

    def seen(self, nonce: str) -> None:
        """A response answered with neither ACK nor NACK (no subscription wanted it)."""
        self.nonce = nonce
        self._error_detail = None

    def next_request(self) -> discovery_pb2.DiscoveryRequest:
        names = sorted(self.names)
        if self.wildcard and (names or self._named_on_stream):
            names.insert(0, WILDCARD)
        if names:
            self._named_on_stream = True
        request = discovery_pb2.DiscoveryRequest(
            type_url=self.type_url,
            version_info=self.version_info,
            resource_names=names,
            response_nonce=self.nonce,
        )
        if self._error_detail is not None:
            request.error_detail.CopyFrom(self._error_detail)
            self._error_detail = None
        return request

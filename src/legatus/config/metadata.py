"""``envoy.config.core.v3.Metadata`` compiled once (Envoy's Config::Metadata): the
``filter_metadata`` Structs as plain dicts, namespace -> Struct-like value (str, float,
bool, None, list, dict), which the ``%METADATA(...)%`` operators walk.

``FrozenMetadata`` holds the same for a cluster or a host. ``typed_filter_metadata`` is
accepted and kept out of these dicts: Envoy's formatters read
``filter_metadata`` only, and no extension of legatus reads the typed entries yet.
"""

from __future__ import annotations

import json
import types
from collections.abc import Mapping

from google.protobuf import json_format

from legatus.config.supported import check_supported

EMPTY: Mapping = types.MappingProxyType({})


def compile_metadata(proto, path: str) -> Mapping:
    check_supported(proto, ("filter_metadata", "typed_filter_metadata"), path, "Metadata")
    if not proto.filter_metadata:
        return EMPTY
    return types.MappingProxyType(
        {ns: json_format.MessageToDict(struct) for ns, struct in proto.filter_metadata.items()}
    )


class FrozenMetadata:
    """The same dicts for values that must hash, compare and pickle (a cluster's or a host's
    metadata travels to the workers inside their configs): kept as canonical JSON text,
    decoded once on first use."""

    __slots__ = ("_value", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._value = None

    @classmethod
    def from_proto(cls, proto, path: str) -> FrozenMetadata | None:
        """None for metadata without ``filter_metadata``."""
        value = compile_metadata(proto, path)
        if not value:
            return None
        return cls(json.dumps(dict(value), sort_keys=True, separators=(",", ":")))

    @property
    def value(self) -> Mapping:
        value = self._value
        if value is None:
            value = self._value = json.loads(self.text)
        return value

    def __eq__(self, other) -> bool:
        return isinstance(other, FrozenMetadata) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __getstate__(self):
        return self.text

    def __setstate__(self, text) -> None:
        self.text = text
        self._value = None

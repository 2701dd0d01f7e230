"""``envoy.config.core.v3.Metadata`` compiled once (Envoy's Config::Metadata): the
``filter_metadata`` Structs as plain dicts, namespace -> Struct-like value (str, float,
bool, None, list, dict), which the ``%METADATA(...)%`` operators walk.

``typed_filter_metadata`` is accepted and kept out of these dicts: Envoy's formatters read
``filter_metadata`` only, and no extension of legatus reads the typed entries yet.
"""

from __future__ import annotations

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

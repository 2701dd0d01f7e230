"""A DiscoveryResponse from the bytes of a file, read as Envoy reads it (``loadFromFile``).

The extension decides the format, case-insensitively: ``.pb`` binary proto, ``.pb_text``
text proto, ``.yaml``/``.yml`` YAML, anything else JSON. YAML and JSON documents go through
``proto_json.parse`` (errors name the field) with Envoy's tolerance of unknown fields in
dynamic configuration (``response.UnknownFieldPolicy``). Every failure is a ConfigError whose
text names the file.
"""

from __future__ import annotations

import json

import yaml
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from legatus.config.bootstrap import load_yaml
from legatus.config.errors import ConfigError
from legatus.config_subscription.rest.response import UnknownFieldPolicy, parse_response

__all__ = ["load_response"]


def load_response(
    path: str, content: bytes, policy: UnknownFieldPolicy
) -> discovery_pb2.DiscoveryResponse:
    lower = path.lower()
    if lower.endswith(".pb"):
        response = discovery_pb2.DiscoveryResponse()
        try:
            response.ParseFromString(content)
        except DecodeError as e:
            raise ConfigError("", f"Unable to parse file {path} as a binary proto: {e}") from None
        return response
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError("", f"in {path}, the file is not UTF-8: {e}") from None
    if lower.endswith(".pb_text"):
        response = discovery_pb2.DiscoveryResponse()
        try:
            text_format.Parse(text, response)
        except text_format.ParseError as e:
            raise ConfigError("", f"Unable to parse file {path} as a text proto: {e}") from None
        return response
    if lower.endswith((".yaml", ".yml")):
        try:
            document = load_yaml(text)  # as Envoy reads YAML (floats kept as written)
        except yaml.YAMLError as e:
            raise ConfigError("", f"in {path}, unable to parse YAML: {e}") from None
        if document is None:
            raise ConfigError("", f"in {path}, Unable to convert YAML as JSON: the file is empty")
    else:
        try:
            document = json.loads(text)
        except ValueError as e:
            raise ConfigError("", f"in {path}, unable to parse JSON: {e}") from None
    try:
        return parse_response(document, policy)
    except ConfigError as e:
        raise type(e)("", f"in {path}, {e}") from None  # an UnknownFieldError stays one

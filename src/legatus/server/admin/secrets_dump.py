"""``/config_dump``'s ``SecretsConfigDump``, as Envoy 1.40 fills it.

- ``static_secrets``: the bootstrap's secrets, as configured, with the time the bootstrap
  was loaded.
- ``dynamic_active_secrets``: each SDS secret that has a value (from a file or over xDS),
  with the version and time of the update that last changed it. As in Envoy, a secret over
  xDS that a TLS context refused (a key that does not match its certificate) shows the
  refused value and its version: Envoy takes the secret before its contexts refuse it.
- ``dynamic_warming_secrets``: each secret over xDS still waiting for its first value, by
  name, with Envoy's version ``uninitialized``.

Fields the API marks sensitive (a certificate's ``private_key``, ``password``, ``pkcs12``)
are redacted as Envoy redacts them: every string or bytes inside becomes ``[redacted]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from envoy.admin.v3 import config_dump_pb2
from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from udpa.annotations import sensitive_pb2

__all__ = ["redact", "secrets_dump"]

REDACTED = "[redacted]"


def secrets_dump(
    context: Any, loaded: timestamp_pb2.Timestamp, matcher: Callable[[str], bool]
) -> config_dump_pb2.SecretsConfigDump:
    out = config_dump_pb2.SecretsConfigDump()
    manager = getattr(context, "secret_manager", None)
    if manager is None:
        return out
    dynamic = getattr(context, "dynamic", None)
    records = getattr(dynamic, "secret_records", None)
    for provider in manager.providers():
        if not matcher(provider.name):
            continue
        if not provider.dynamic:
            item = out.static_secrets.add(name=provider.name, last_updated=loaded)
            item.secret.Pack(redact(provider.secret))
            continue
        if not getattr(provider, "ready", True):
            item = out.dynamic_warming_secrets.add(name=provider.name)
            item.version_info = "uninitialized"  # Envoy's text for a secret not yet fetched
            item.secret.Pack(type(provider.secret)(name=provider.name))
            continue
        record = records.accepted.get(provider.name) if records is not None else None
        item = out.dynamic_active_secrets.add(name=provider.name)
        if record is not None and getattr(provider, "key", None) is not None:
            item.version_info = record.version
            item.last_updated.FromMilliseconds(int(record.last_updated * 1000))
            item.secret.Pack(redact(record.resource))
        else:
            item.version_info = getattr(provider, "version_info", "")  # a file's
            item.last_updated.CopyFrom(loaded)
            item.secret.Pack(redact(provider.current))
    return out


def redact(message: Message) -> Message:
    """A copy of ``message`` with its sensitive fields redacted (see the module doc)."""
    out = type(message)()
    out.CopyFrom(message)
    _redact(out, sensitive=False)
    return out


def _redact(message: Message, *, sensitive: bool) -> None:
    for field, value in message.ListFields():
        inner = sensitive or field.GetOptions().Extensions[sensitive_pb2.sensitive]
        repeated = field.is_repeated
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                continue
            for item in value if repeated else (value,):
                _redact(item, sensitive=inner)
        elif inner and field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
            text = REDACTED if field.type == FieldDescriptor.TYPE_STRING else REDACTED.encode()
            if repeated:
                value[:] = [text] * len(value)
            else:
                setattr(message, field.name, text)

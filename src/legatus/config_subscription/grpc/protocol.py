"""What the SotW and delta states share: the wildcard name and the NACK's status.

A NACK carries a ``google.rpc.Status`` in ``error_detail``. Envoy sets its code to INTERNAL
(13) and its message to the rejection's text, cut at 4096 bytes with ``...(truncated)``
appended, since gRPC carries the message in trailers of limited size and a control plane
may log or echo it.
"""

from __future__ import annotations

from google.rpc import code_pb2, status_pb2

__all__ = ["MAX_ERROR_DETAIL_BYTES", "WILDCARD", "error_detail"]

WILDCARD = "*"
MAX_ERROR_DETAIL_BYTES = 4096


def error_detail(message: str) -> status_pb2.Status:
    """The ``error_detail`` of a NACK whose reason is ``message``."""
    raw = message.encode()
    if len(raw) > MAX_ERROR_DETAIL_BYTES:
        message = raw[:MAX_ERROR_DETAIL_BYTES].decode(errors="ignore") + "...(truncated)"
    return status_pb2.Status(code=code_pb2.INTERNAL, message=message)

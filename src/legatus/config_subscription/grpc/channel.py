"""Channels for the mux: a new one per stream attempt, so the mux's back-off rules.

grpcio reconnects on its own, with its own back-off (1 s, growing to 2 min), and shares
subchannels between channels to the same target. A control plane that restarts would then
be retried on grpcio's schedule, not Envoy's. ``channel_factory`` makes channels with a
subchannel pool of their own; the mux closes each one when its stream ends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc

__all__ = ["channel_factory"]


def channel_factory(
    target: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    authority: str = "",
    options: Sequence[tuple[str, Any]] = (),
) -> Callable[[], grpc.aio.Channel]:
    """A factory of fresh channels to ``target`` (``host:port`` or a gRPC target URI)."""
    opts = [("grpc.use_local_subchannel_pool", 1), *options]
    if authority:
        opts.append(("grpc.default_authority", authority))

    def make() -> grpc.aio.Channel:
        if credentials is None:
            return grpc.aio.insecure_channel(target, options=opts)
        return grpc.aio.secure_channel(target, credentials, options=opts)

    return make

"""A gRPC upstream (grpcio, in threads) with every RPC kind, for tests through the proxy.

Service ``legatus.test.Echo``, messages as raw bytes (no schema: grpcio passes bytes through
when no serializer is given):

- ``Unary``: answers the request itself;
- ``ServerStream``: the request is a count N (ASCII); answers N messages ``b"0"`` .. ``b"N-1"``;
- ``ClientStream``: answers the concatenation of the requests;
- ``Bidi``: answers each request as it arrives;
- ``Sleep``: the request is seconds (ASCII); sleeps that long (or until the call is cancelled)
  then answers ``b"slept"`` — for deadlines and cancellation;
- ``Fail``: the request is ``<code>:<message>``; aborts with that status code and message.

Each call's invocation metadata is kept in ``metadata`` (a list of dicts, in call order), and
``cancelled`` counts calls that ended by cancellation (the client's or a deadline).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc

SERVICE = "legatus.test.Echo"


class GrpcUpstream:
    def __init__(self, *, max_workers: int = 16) -> None:
        self.metadata: list[dict[str, str]] = []
        self.cancelled = 0
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self._unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self._server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self._client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self._bidi),
            "Sleep": grpc.unary_unary_rpc_method_handler(self._sleep),
            "Fail": grpc.unary_unary_rpc_method_handler(self._fail),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def close(self) -> None:
        self.server.stop(grace=None)

    def _seen(self, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.metadata.append({k: v for k, v in context.invocation_metadata()})

    def _on_cancel(self, context: grpc.ServicerContext) -> None:
        def cancelled() -> None:
            if not context.is_active():
                with self._lock:
                    self.cancelled += 1

        context.add_callback(cancelled)

    def _unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._seen(context)
        return request

    def _server_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._seen(context)
        for i in range(int(request or b"0")):
            yield str(i).encode()

    def _client_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        self._seen(context)
        return b"".join(requests)

    def _bidi(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        self._seen(context)
        yield from requests

    def _sleep(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._seen(context)
        self._on_cancel(context)
        deadline = time.monotonic() + float(request or b"0")
        while time.monotonic() < deadline and context.is_active():
            time.sleep(0.01)
        return b"slept"

    def _fail(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._seen(context)
        code, _, message = request.decode().partition(":")
        status = next(s for s in grpc.StatusCode if s.value[0] == int(code))
        context.abort(status, message)
        raise AssertionError("unreachable")  # abort raises


class EchoClient:
    """Callables for each RPC of the Echo service over ``channel``."""

    def __init__(self, channel: grpc.Channel) -> None:
        path = f"/{SERVICE}/"
        self.unary = channel.unary_unary(path + "Unary")
        self.server_stream = channel.unary_stream(path + "ServerStream")
        self.client_stream = channel.stream_unary(path + "ClientStream")
        self.bidi = channel.stream_stream(path + "Bidi")
        self.sleep = channel.unary_unary(path + "Sleep")
        self.fail = channel.unary_unary(path + "Fail")

"""gRPC end to end: a grpcio client, a running legatus (HTTP/2 downstream, codec_type AUTO), a
grpcio server behind an HTTP/2 cluster (tests/support/grpc_upstream.py).

Every RPC kind; deadlines (the server gives up with the client: its ``grpc-timeout`` got
through, which test_http2_upstream.py checks on the header itself); cancellation (the
client's RST_STREAM becomes one upstream); trailers-only errors; large messages under flow
control; many calls multiplexed on one upstream connection.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from tests.support.grpc_upstream import EchoClient, GrpcUpstream
from tests.support.http_upstream import http_proxy_config
from tests.support.process import start_proxy, wait_for

HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


@pytest.fixture(scope="module")
def grpc_proxy(tmp_path_factory):
    upstream = GrpcUpstream(max_workers=64)
    config = http_proxy_config(upstream.port, hcm={"codec_type": "AUTO"})
    config["static_resources"]["clusters"][0]["typed_extension_protocol_options"] = {HPO: {
        "@type": f"type.googleapis.com/{HPO}",
        "explicit_http_config": {"http2_protocol_options": {}}}}  # fmt: skip
    proxy = start_proxy(config, tmp_path_factory.mktemp("grpc"), args=["--concurrency", "1"])
    channel = grpc.insecure_channel(f"127.0.0.1:{proxy.listener_port('http')}")
    try:
        yield proxy, upstream, EchoClient(channel)
    finally:
        channel.close()
        proxy.stop()
        upstream.close()


def test_unary(grpc_proxy):
    proxy, upstream, client = grpc_proxy
    assert client.unary(b"hello", timeout=5) == b"hello"
    seen = upstream.metadata[-1]
    assert seen["x-forwarded-proto"] == "http" and len(seen["x-request-id"]) == 36
    stats = proxy.stats()
    assert stats["cluster.backend.upstream_cx_http2_total"] >= 1
    assert stats["http.ingress.downstream_cx_http2_total"] >= 1


def test_server_streaming(grpc_proxy):
    _, _, client = grpc_proxy
    assert list(client.server_stream(b"100", timeout=5)) == [str(i).encode() for i in range(100)]


def test_client_streaming(grpc_proxy):
    _, _, client = grpc_proxy
    parts = [b"%d," % i for i in range(50)]
    assert client.client_stream(iter(parts), timeout=5) == b"".join(parts)


def test_bidi_streaming_is_interactive(grpc_proxy):
    """Each answer comes back before the next message is sent: nothing is buffered whole."""
    _, _, client = grpc_proxy
    outgoing: queue.Queue = queue.Queue()

    def requests():
        while (item := outgoing.get()) is not None:
            yield item

    outgoing.put(b"m0")
    answers = []
    for i, answer in enumerate(client.bidi(requests(), timeout=5)):
        answers.append(answer)
        outgoing.put(b"m%d" % (i + 1) if i < 9 else None)
    assert answers == [b"m%d" % i for i in range(10)]


def test_deadline(grpc_proxy):
    _, upstream, client = grpc_proxy
    cancelled = upstream.cancelled
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        client.sleep(b"5", timeout=0.3)
    assert e.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 2
    wait_for(lambda: upstream.cancelled > cancelled, what="the server giving up the call")


def test_cancellation_reaches_the_server(grpc_proxy):
    proxy, upstream, client = grpc_proxy
    cancelled = upstream.cancelled
    resets = proxy.stats()["cluster.backend.upstream_rq_tx_reset"]
    calls = len(upstream.metadata)
    future = client.sleep.future(b"5", timeout=10)
    wait_for(lambda: len(upstream.metadata) > calls, what="the call reaching the server")
    future.cancel()
    wait_for(lambda: upstream.cancelled > cancelled, what="the server seeing the cancel")
    wait_for(lambda: proxy.stats()["cluster.backend.upstream_rq_tx_reset"] == resets + 1,
             what="the upstream stream reset")  # fmt: skip


@pytest.mark.parametrize(
    ("code", "status"),
    [(5, grpc.StatusCode.NOT_FOUND), (14, grpc.StatusCode.UNAVAILABLE),
     (3, grpc.StatusCode.INVALID_ARGUMENT)],
)  # fmt: skip
def test_trailers_only_errors(grpc_proxy, code, status):
    _, _, client = grpc_proxy
    with pytest.raises(grpc.RpcError) as e:
        client.fail(b"%d:it failed, 100%% sure" % code, timeout=5)
    assert e.value.code() is status
    assert e.value.details() == "it failed, 100% sure"


def test_large_messages(grpc_proxy):
    _, _, client = grpc_proxy
    message = bytes(range(256)) * 12_000  # 3 MB, beyond the default 64 KiB windows
    assert client.unary(message, timeout=10) == message
    assert (
        client.client_stream(iter([message[:1_000_000]] * 3), timeout=10) == message[:1_000_000] * 3
    )


def test_concurrent_calls_share_one_upstream_connection(grpc_proxy):
    proxy, _, client = grpc_proxy
    before = proxy.stats()["cluster.backend.upstream_cx_total"]
    barrier = threading.Barrier(32)

    def call(i: int) -> bytes:
        barrier.wait()
        return client.unary(b"call %d" % i, timeout=10)

    with ThreadPoolExecutor(32) as pool:
        assert list(pool.map(call, range(32))) == [b"call %d" % i for i in range(32)]
    assert proxy.stats()["cluster.backend.upstream_cx_total"] == max(before, 1)

"""HttpSubscription against a small asyncio HTTP/1.1 control plane on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import random
import socket

import pytest
from envoy.config.core.v3 import base_pb2, config_source_pb2

from legatus.config.errors import ConfigError
from legatus.config.subscription import UpdateFailureReason
from legatus.config_subscription import decode
from legatus.config_subscription.rest import HttpSubscription, rest_path, rest_settings
from legatus.config_subscription.stats import SubscriptionStats
from legatus.stats.store import Store
from tests.support.xds_server import RecordingOwner

NODE = base_pb2.Node(id="node-1", cluster="test-cluster")
CLUSTER_TYPE = decode.CLUSTER


def clusters(version: str, *names: str, nonce: str = "") -> dict:
    resources = [{"@type": CLUSTER_TYPE, "name": n, "connect_timeout": "1s"} for n in names]
    response = {"version_info": version, "resources": resources, "type_url": CLUSTER_TYPE}
    if nonce:
        response["nonce"] = nonce
    return response


class ControlPlane:
    """Answers each POST with the next scripted reply; records what it was sent.

    A reply is a dict (sent as a 200 JSON body), an int (a status with no body), bytes (a
    200 with that raw body), ("close", raw) to write a raw HTTP response and close, or "hang"
    (no answer). When the script runs out, the last reply repeats.
    """

    def __init__(self, script: list) -> None:
        self.script = list(script)
        self.requests: list[dict] = []  # {"path", "headers", "body"}
        self.connections = 0
        self.received = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._stopping = asyncio.Event()
        self._handlers: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._handlers)

    async def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin1").split("\r\n")
                method, path, _ = lines[0].split(" ")
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                assert method == "POST"
                self.requests.append({"path": path, "headers": headers, "body": json.loads(body)})
                self.received.set()
                reply = self.script.pop(0) if len(self.script) > 1 else self.script[0]
                if reply == "hang":
                    await self._stopping.wait()
                    return
                if isinstance(reply, tuple):  # ("close", a whole raw HTTP response)
                    writer.write(reply[1])
                    await writer.drain()
                    return
                if isinstance(reply, int):
                    status, payload = reply, b""
                elif isinstance(reply, bytes):
                    status, payload = 200, reply
                else:
                    status, payload = 200, json.dumps(reply).encode()
                framing = "" if status == 304 else f"content-length: {len(payload)}\r\n"
                writer.write(f"HTTP/1.1 {status} X\r\n{framing}\r\n".encode() + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def wait_requests(self, count: int, timeout: float = 3.0) -> list[dict]:
        async with asyncio.timeout(timeout):
            while len(self.requests) < count:
                self.received.clear()
                await self.received.wait()
        return self.requests


class Harness:
    def __init__(self) -> None:
        self.store = Store()
        self.owner = RecordingOwner()
        self.stats = SubscriptionStats(self.store.scope("cluster_manager.cds."))
        self.subscriptions: list[HttpSubscription] = []

    def subscribe(self, address, **options) -> HttpSubscription:
        options.setdefault("refresh_delay", 0.01)
        options.setdefault("request_timeout", 1.0)
        sub = HttpSubscription(
            CLUSTER_TYPE,
            host_port_factory=address,
            cluster_name="xds_cluster",
            node=NODE,
            callbacks=self.owner,
            stats=self.stats,
            rng=random.Random(1),
            **options,
        )
        self.subscriptions.append(sub)
        return sub

    def stat(self, name: str):
        return self.store.value(f"cluster_manager.cds.{name}")


@pytest.fixture
async def servers():
    started: list[ControlPlane] = []

    async def make(script: list, port: int = 0) -> ControlPlane:
        server = ControlPlane(script)
        await server.start(port)
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()


@pytest.fixture
async def h(servers):
    """The subscriptions are closed before the servers stop (``servers`` is set up first)."""
    harness = Harness()
    yield harness
    for sub in harness.subscriptions:
        sub.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_ack_nack_sequence_as_the_server_sees_it(h, servers):
    server = await servers(
        [
            clusters("v1", "a", nonce="n1"),
            clusters("v2", "a", "b", nonce="n2"),  # the owner rejects v2
            304,
            clusters("v3", "c", nonce="n3"),
            304,
        ]
    )

    def reject_v2(update):
        if update.version_info == "v2":
            raise ConfigError("", "cluster b: rejected")

    h.owner.on_update = reject_v2
    h.subscribe(server.address).start(["b", "a"])
    requests = await server.wait_requests(5)
    bodies = [r["body"] for r in requests]

    first = bodies[0]
    assert first["type_url"] == CLUSTER_TYPE
    assert first["resource_names"] == ["a", "b"]  # sorted
    assert first["node"] == {"id": "node-1", "cluster": "test-cluster"}
    assert "version_info" not in first and "response_nonce" not in first
    # ACK of v1
    assert (bodies[1]["version_info"], bodies[1]["response_nonce"]) == ("v1", "n1")
    assert "error_detail" not in bodies[1]
    # NACK of v2: the accepted version stays, the nonce and the reason are the rejected one's
    assert (bodies[2]["version_info"], bodies[2]["response_nonce"]) == ("v1", "n2")
    assert bodies[2]["error_detail"] == {"code": 13, "message": "cluster b: rejected"}
    # after a 304: same state, the NACK is not repeated
    assert (bodies[3]["version_info"], bodies[3]["response_nonce"]) == ("v1", "n2")
    assert "error_detail" not in bodies[3]
    # ACK of v3
    assert (bodies[4]["version_info"], bodies[4]["response_nonce"]) == ("v3", "n3")

    assert [u.version_info for u in h.owner.updates] == ["v1", "v3"]
    assert [r.name for r in h.owner.updates[-1].added] == ["c"]
    assert h.owner.updates[0].state_of_the_world
    assert h.stat("update_success") == 2
    assert h.stat("update_rejected") == 1
    assert h.stat("update_failure") == 0
    assert h.stat("update_attempt") >= 5
    assert h.stat("version_text") == "v3"
    [(reason, error)] = h.owner.failures  # told of the rejection, as Envoy tells it
    assert reason is UpdateFailureReason.UPDATE_REJECTED and str(error) == "cluster b: rejected"


async def test_nack_survives_an_unanswered_request(h, servers):
    server = await servers(
        [clusters("v1", "a", nonce="n1"), clusters("v2", "a", nonce="n2"), "hang", 304]
    )

    def reject_v2(update):
        if update.version_info == "v2":
            raise ConfigError("", "no v2")

    h.owner.on_update = reject_v2
    sub = h.subscribe(server.address, request_timeout=0.1)
    sub.start([])
    bodies = [r["body"] for r in await server.wait_requests(5)]
    assert bodies[2]["error_detail"]["message"] == "no v2"  # unanswered (timed out)
    assert bodies[3]["error_detail"]["message"] == "no v2"  # said again, answered 304
    assert "error_detail" not in bodies[4]
    assert h.stat("update_failure") == 1
    # The timeout is no config error: the rejection stays on record.
    assert sub.last_failure.details == "no v2"
    assert sub.last_failure.version_info == "v2"


async def test_requests_look_like_envoys(h, servers):
    server = await servers([304])
    h.subscribe(server.address, request_timeout=0.75).start([])
    [request, *_] = await server.wait_requests(2)
    assert request["path"] == "/v3/discovery:clusters"
    headers = request["headers"]
    assert headers["host"] == "xds_cluster"
    assert headers["content-type"] == "application/json"
    assert headers["x-envoy-internal"] == "true"
    assert headers["x-envoy-expected-rq-timeout-ms"] == "750"
    assert "resource_names" not in request["body"]  # the wildcard
    assert server.connections == 1  # kept alive across polls


async def test_chunked_answer_with_connection_close(h, servers):
    payload = json.dumps(clusters("v1", "a")).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (payload[:10], payload[10:]))
    raw = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        + chunked
        + b"0\r\n\r\n"
    )
    server = await servers([("close", raw), 304])
    h.subscribe(server.address).start([])
    await server.wait_requests(3)
    assert [u.version_info for u in h.owner.updates] == ["v1"]
    assert server.connections == 2  # a new connection after the close, then kept
    assert h.stat("update_failure") == 0


async def test_not_modified_changes_nothing(h, servers):
    server = await servers([clusters("v1", "a"), 304])
    h.subscribe(server.address).start([])
    await server.wait_requests(4)
    assert [u.version_info for u in h.owner.updates] == ["v1"]
    assert h.stat("update_success") == 1
    assert h.stat("update_failure") == 0
    assert server.requests[-1]["body"]["version_info"] == "v1"


async def test_timeout_counts_a_failure_and_the_next_poll_recovers(h, servers):
    server = await servers(["hang", clusters("v1", "a"), 304])
    sub = h.subscribe(server.address, request_timeout=0.1)
    sub.start([])
    await server.wait_requests(2)
    await asyncio.sleep(0.05)
    assert h.stat("update_failure") == 1
    assert h.owner.failures == []  # Envoy does not tell the owner about connection failures
    assert server.connections == 2  # the timed out connection was dropped
    assert [u.version_info for u in h.owner.updates] == ["v1"]
    assert sub.last_failure is None


async def test_server_down_then_up(h, servers):
    port = free_port()

    async def address():
        return "127.0.0.1", port

    sub = h.subscribe(address, initial_fetch_timeout=0.1)
    sub.start([])
    await asyncio.sleep(0.2)
    assert h.stat("update_failure") >= 2
    assert sub.last_failure is None  # no config was rejected
    assert h.owner.failures == [(UpdateFailureReason.FETCH_TIMEDOUT, None)]
    assert h.stat("init_fetch_timeout") == 1

    server = await servers([clusters("v1", "a"), 304], port=port)
    await server.wait_requests(1)
    await asyncio.sleep(0.05)
    assert [u.version_info for u in h.owner.updates] == ["v1"]
    assert len(h.owner.failures) == 1


async def test_first_answer_disarms_the_initial_fetch_timeout(h, servers):
    server = await servers([clusters("v1", "a")])
    h.subscribe(server.address, initial_fetch_timeout=0.1).start([])
    await server.wait_requests(1)
    await asyncio.sleep(0.2)
    assert h.owner.failures == []
    assert h.stat("init_fetch_timeout") == 0


async def test_error_status_is_a_connection_failure(h, servers):
    server = await servers([500, clusters("v1", "a"), 304])
    sub = h.subscribe(server.address)
    sub.start([])
    await server.wait_requests(2)
    await asyncio.sleep(0.05)
    assert h.stat("update_failure") == 1
    assert h.owner.failures == []
    assert [u.version_info for u in h.owner.updates] == ["v1"]


async def test_bad_json_is_rejected_and_nacked(h, servers):
    server = await servers([clusters("v1", "a", nonce="n1"), b"{not json", 304])
    sub = h.subscribe(server.address)
    sub.start([])
    bodies = [r["body"] for r in await server.wait_requests(3)]
    assert h.stat("update_rejected") == 1
    assert "Unable to parse JSON as proto" in bodies[2]["error_detail"]["message"]
    assert bodies[2]["version_info"] == "v1"
    assert "Unable to parse JSON" in sub.last_failure.details
    assert [u.version_info for u in h.owner.updates] == ["v1"]


async def test_resource_of_another_type_is_rejected(h, servers):
    listener = {"@type": decode.LISTENER, "name": "l"}
    server = await servers([{"version_info": "v1", "resources": [listener]}, 304])
    sub = h.subscribe(server.address)
    sub.start([])
    bodies = [r["body"] for r in await server.wait_requests(2)]
    assert h.stat("update_rejected") == 1
    assert decode.LISTENER in bodies[1]["error_detail"]["message"]
    assert sub.last_failure.version_info == "v1"
    assert h.owner.updates == []


async def test_interest_change_goes_out_with_the_next_poll(h, servers):
    server = await servers([304])
    sub = h.subscribe(server.address)
    sub.start(["a"])
    await server.wait_requests(1)
    sub.update_resource_interest(["c", "b"])
    count = len(server.requests)
    await server.wait_requests(count + 2)
    assert server.requests[-1]["body"]["resource_names"] == ["b", "c"]


async def test_close_stops_polling(h, servers):
    server = await servers([304])
    sub = h.subscribe(server.address)
    sub.start([])
    await server.wait_requests(2)
    sub.close()
    await asyncio.sleep(0.02)
    count = len(server.requests)
    await asyncio.sleep(0.1)
    assert len(server.requests) == count


def test_rest_paths_come_from_the_service_definitions():
    assert rest_path(decode.CLUSTER) == "/v3/discovery:clusters"
    assert rest_path(decode.LISTENER) == "/v3/discovery:listeners"
    assert rest_path(decode.ENDPOINT) == "/v3/discovery:endpoints"
    assert rest_path(decode.ROUTE) == "/v3/discovery:routes"
    assert rest_path(decode.SECRET) == "/v3/discovery:secrets"
    assert rest_path(decode.RUNTIME) == "/v3/discovery:runtime"
    with pytest.raises(ConfigError, match="cannot be fetched over REST"):
        rest_path("type.googleapis.com/envoy.config.route.v3.VirtualHost")


def _rest_source(**api) -> config_source_pb2.ConfigSource:
    source = config_source_pb2.ConfigSource()
    source.api_config_source.api_type = config_source_pb2.ApiConfigSource.REST
    source.api_config_source.cluster_names.extend(api.pop("cluster_names", ["xds"]))
    for key, seconds in api.items():
        getattr(source.api_config_source, key).FromMilliseconds(int(seconds * 1000))
    return source


def test_rest_settings_defaults_and_values():
    settings = rest_settings(_rest_source(refresh_delay=0.5))
    assert settings.cluster_name == "xds"
    assert settings.refresh_delay == 0.5
    assert settings.request_timeout == 1.0
    assert settings.initial_fetch_timeout == 15.0
    source = _rest_source(refresh_delay=2, request_timeout=3)
    source.initial_fetch_timeout.FromMilliseconds(0)
    settings = rest_settings(source)
    assert (settings.request_timeout, settings.initial_fetch_timeout) == (3.0, 0.0)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (_rest_source(), "refresh_delay is required for REST API configuration sources"),
        (_rest_source(refresh_delay=0), "refresh_delay must be at least 1ms"),
        (
            _rest_source(refresh_delay=1, cluster_names=["a", "b"]),
            "must have a singleton cluster name specified",
        ),
        (
            _rest_source(refresh_delay=1, cluster_names=[]),
            "must have either a gRPC service or a cluster name defined",
        ),
    ],
)
def test_rest_settings_rejects_what_envoy_rejects(source, message):
    with pytest.raises(ConfigError, match=message):
        rest_settings(source)


def test_rest_settings_refuses_grpc_services():
    source = _rest_source(refresh_delay=1)
    source.api_config_source.grpc_services.add().envoy_grpc.cluster_name = "xds"
    with pytest.raises(ConfigError, match="must not have a gRPC service specified"):
        rest_settings(source)

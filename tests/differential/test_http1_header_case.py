"""HTTP/1 header case (``Http1ProtocolOptions.header_key_format``) and the other
Http1ProtocolOptions fields legatus honours, Envoy against legatus.

Each listener (an HCM with one key format) routes ``/<cluster>/...`` to each cluster (one key
format or option each, on each of the cluster's ways to say it), so one matrix shows which
side's setting governs what: the upstream records the request header lines as sent, the
client the response's. The findings, on Envoy 1.40:

- ``proper_case_words`` is the writing connection's: the HCM's shapes responses, the
  cluster's requests. Letters after a character that is neither a letter nor a digit are
  upper-cased (``X-123abc``, ``X-Lower_Under``); names that arrived mixed-case were
  lower-cased on the way in (``X-Mixed-Case``).
- ``preserve_case`` is recorded by the codec that decodes a head and travels with it: the
  HCM's setting governs the request (whatever the cluster says), the cluster's the response
  (whatever the HCM says); a head with a recorded case wins over the writing connection's
  proper_case. A name that arrived in two spellings goes out in the first one. Headers Envoy
  adds go out lower-case, or proper-cased with ``formatter_type_on_envoy_headers:
  PROPER_CASE``; ``forward_reason_phrase`` passes the upstream's reason phrase on (both are
  the cluster's for responses, the HCM's for requests).
- Local replies carry no recorded case, nor does a mirrored request (a copy); trailers are
  written lower-case in every mode.
- ``send_fully_qualified_url`` on a cluster sends absolute-form targets with the request's
  scheme; on an HCM it changes nothing. ``allow_chunked_length`` on a cluster drops the
  Content-Length of a chunked response. ``use_balsa_parser`` changes nothing (Envoy 1.40
  parses with Balsa either way).
"""

from __future__ import annotations

import time

from tests.differential.http_scenario import (  # noqa: F401 (fixtures)
    Cluster,
    Listener,
    Reply,
    http_pair_fixture,
    http_pair_processes_fixture,
    route,
    scenario,
)

HPO_NAME = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HPO = f"type.googleapis.com/{HPO_NAME}"
PRESERVE_CASE = (
    "type.googleapis.com/envoy.extensions.http.header_formatters.preserve_case.v3."
    "PreserveCaseFormatterConfig"
)
PROPER = {"header_key_format": {"proper_case_words": {}}}


def preserve(**config) -> dict:
    return {"header_key_format": {"stateful_formatter": {
        "name": "envoy.http.stateful_header_formatters.preserve_case",
        "typed_config": {"@type": PRESERVE_CASE, **config}}}}  # fmt: skip


PRESERVE = preserve()
PRESERVE_ALL = preserve(forward_reason_phrase=True, formatter_type_on_envoy_headers="PROPER_CASE")


def explicit(http1: dict) -> dict:
    """A cluster's HTTP/1 options in typed_extension_protocol_options."""
    return {"typed_extension_protocol_options": {HPO_NAME: {
        "@type": HPO, "explicit_http_config": {"http_protocol_options": http1}}}}  # fmt: skip


def downstream(http1: dict) -> dict:
    """... in use_downstream_protocol_config."""
    config = {"http_protocol_options": http1}
    return {"typed_extension_protocol_options": {
        HPO_NAME: {"@type": HPO, "use_downstream_protocol_config": config}}}  # fmt: skip


CLUSTERS = {
    "hc_plain": {},
    "hc_proper": explicit(PROPER),
    "hc_preserve": explicit(PRESERVE),
    "hc_preserve_all": explicit(PRESERVE_ALL),
    "hc_preserve_legacy": {"http_protocol_options": preserve(forward_reason_phrase=True)},
    "hc_preserve_downstream": downstream(PRESERVE_ALL),
    "hc_trailers": explicit({"enable_trailers": True, **PROPER}),
    "hc_chunked_length": explicit({"allow_chunked_length": True}),
    "hc_fq": explicit({"send_fully_qualified_url": True}),
    "hc_mirror": {},
    "hc_mirror_shadow": {},
}
MIRROR = {"cluster": "hc_mirror", "request_mirror_policies": [{"cluster": "hc_mirror_shadow"}]}
ROUTES = [
    route("/mirror", {"route": MIRROR}),
    *(route(f"/{name}/", {"route": {"cluster": name}}) for name in CLUSTERS),
    route("/local", {"direct_response": {"status": 503, "body": {"inline_string": "no"}}}),
]


# The HCM's http_protocol_options of each kind of listener.
HCM_KINDS = {
    "plain": None,
    "proper": PROPER,
    "preserve": PRESERVE,
    "preserve_all": PRESERVE_ALL,
    "trailers": {"enable_trailers": True, **PROPER},
    "options": {"send_fully_qualified_url": True, "use_balsa_parser": False},
}


def _listener(test: str, kind: str) -> Listener:
    """A listener of ``kind`` for one test (its stats are the test's own)."""
    http1 = HCM_KINDS[kind]
    hcm = {} if http1 is None else {"http_protocol_options": http1}
    return Listener(name=f"{test}_{kind}", routes=ROUTES, hcm=hcm)


MATRIX_KINDS = ("plain", "proper", "preserve", "preserve_all")
MATRIX_CLUSTERS = ("hc_plain", "hc_proper", "hc_preserve", "hc_preserve_all")
OPTION_CLUSTERS = ("hc_preserve_legacy", "hc_preserve_downstream")


def _cluster(name: str) -> Cluster:
    return Cluster(name=name, extra=CLUSTERS[name])


# 413: Python's reason phrase ("Request Entity Too Large", what the upstream sends) is not
# Envoy's ("Payload Too Large").
REPLY = Reply(status=413, headers=(
    ("X-MiXed-Case", "a"), ("x-lower_under", "b"), ("X-UP-Dup", "1"), ("x-up-dup", "2"),
    ("Content-Type", "text/plain"),
))  # fmt: skip
SCRIPTS = {
    **{f"/{name}/reply": REPLY for name in CLUSTERS},
    **{f"/{name}/chunked": Reply(headers=(("X-Chunked", "yes"),), chunks=(b"ab", b"cd"))
       for name in CLUSTERS},
    "/hc_trailers/": Reply(chunks=(b"ab",), trailers=(("X-Trailer-One", "t"),)),
    "/hc_chunked_length/": Reply(headers=(("content-length", "4"),), chunks=(b"ab", b"cd")),
    "/hc_plain/both": Reply(headers=(("content-length", "4"),), chunks=(b"ab", b"cd")),
}  # fmt: skip
# A request's names in several spellings (HOST too), and one twice in two spellings.
REQUEST_HEADERS = [
    ("HOST", "example.com"), ("X-MiXed-Case", "a"), ("x-lower_under", "b"), ("X-123ABC", "c"),
    ("abc1def.ghi", "d"), ("x-dup", "1"), ("X-DUP", "2"),
]  # fmt: skip


def _exchange(side, listener: str, cluster: str) -> dict:
    """A GET answered 413 with mixed-case names, and a chunked POST answered chunked (the
    framing headers are Envoy's own on both sides)."""
    get = side.request(listener, "GET", f"/{cluster}/reply", REQUEST_HEADERS, host=None)
    post = side.request(
        listener, "POST", f"/{cluster}/chunked", REQUEST_HEADERS, b"hi", host=None, chunked=True
    )
    return {"get": get.view(), "post": post.view()}


def _seen(out, path: str) -> list[str]:
    """The header lines Envoy's upstream got for the request to ``path``."""
    return next(u["headers"] for u in out.envoy.upstream if f" {path} " in u["request"])


def _response(out, kind: str, cluster: str, which: str = "get") -> dict:
    """What Envoy's client got through the listener of ``kind``."""
    return out.envoy.result[kind][cluster][which]


@scenario(*(_listener("hc_matrix", k) for k in MATRIX_KINDS),
          *(_cluster(c) for c in MATRIX_CLUSTERS))  # fmt: skip
def test_which_side_governs_the_case_of_requests_and_responses(http_pair):
    def traffic(side):
        return {kind: {cluster: _exchange(side, f"hc_matrix_{kind}", cluster)
                       for cluster in MATRIX_CLUSTERS}
                for kind in MATRIX_KINDS}  # fmt: skip

    out = http_pair.run(traffic)
    # proper_case_words on the cluster: the requests it writes (the framing header too).
    assert _seen(out, "/hc_proper/chunked")[:8] == [
        "Host: example.com", "X-Mixed-Case: a", "X-Lower_Under: b", "X-123abc: c",
        "Abc1def.Ghi: d", "X-Dup: 1", "X-Dup: 2", "X-Forwarded-Proto: http",
    ]  # fmt: skip
    assert _seen(out, "/hc_proper/chunked")[-1] == "Transfer-Encoding: chunked"
    # ... and on the HCM: the responses it writes.
    assert _response(out, "proper", "hc_plain")["headers"][:3] == [
        "X-Mixed-Case: a", "X-Lower_Under: b", "X-Up-Dup: 1"
    ]  # fmt: skip
    # preserve_case on the cluster: the response keeps its case, whatever the HCM's format;
    # a name that arrived in two spellings goes out in the first.
    got = _response(out, "proper", "hc_preserve")
    assert got["headers"][:5] == [
        "X-MiXed-Case: a", "x-lower_under: b", "X-UP-Dup: 1", "X-UP-Dup: 2",
        "Content-Type: text/plain",
    ]  # fmt: skip
    assert got["status"] == "HTTP/1.1 413 Payload Too Large"
    # forward_reason_phrase and PROPER_CASE for Envoy's own headers, on the cluster.
    got = _response(out, "plain", "hc_preserve_all")
    assert got["status"] == "HTTP/1.1 413 Request Entity Too Large"
    assert "X-Envoy-Upstream-Service-Time: <ms>" in got["headers"]
    # ... on the HCM, neither reaches the response.
    got = _response(out, "preserve_all", "hc_plain")
    assert got["status"] == "HTTP/1.1 413 Payload Too Large"
    assert "x-envoy-upstream-service-time: <ms>" in got["headers"]
    out.assert_same()


@scenario(_listener("hc_request", "preserve"), _listener("hc_request", "preserve_all"),
          _cluster("hc_plain"), _cluster("hc_proper"))  # fmt: skip
def test_preserve_case_on_the_listener_shapes_the_request(http_pair):
    def traffic(side):
        return [
            _exchange(side, f"hc_request_{kind}", cluster)
            for kind in ("preserve", "preserve_all")
            for cluster in ("hc_plain", "hc_proper")
        ]

    out = http_pair.run(traffic, full_stats=True)
    preserved = [
        "HOST: example.com", "X-MiXed-Case: a", "x-lower_under: b", "X-123ABC: c",
        "abc1def.ghi: d", "x-dup: 1", "x-dup: 2",
    ]  # fmt: skip
    headers = out.envoy.upstream[0]["headers"]
    assert headers[:7] == preserved
    assert headers[7:] == [
        "x-forwarded-proto: http", "x-request-id: <uuid4>", "x-envoy-expected-rq-timeout-ms: 15000"
    ]  # fmt: skip
    # The cluster's proper_case_words gives way to the recorded case (the POST's framing
    # header, which Envoy adds, too).
    assert out.envoy.upstream[3]["headers"][:7] == preserved
    assert out.envoy.upstream[3]["headers"][-1] == "transfer-encoding: chunked"
    # PROPER_CASE for the headers Envoy adds (on the listener: the request's).
    assert out.envoy.upstream[4]["headers"][7:] == [
        "X-Forwarded-Proto: http", "X-Request-Id: <uuid4>", "X-Envoy-Expected-Rq-Timeout-Ms: 15000"
    ]  # fmt: skip
    # ... but a name the request arrived with keeps its spelling: the client's lower-case
    # transfer-encoding for the framing header Envoy writes.
    assert out.envoy.upstream[5]["headers"][-1] == "transfer-encoding: chunked"
    out.assert_same()


@scenario(_listener("hc_paths", "plain"), _listener("hc_paths", "proper"),
          *(_cluster(c) for c in OPTION_CLUSTERS))  # fmt: skip
def test_preserve_case_through_each_cluster_option_path(http_pair):
    """The deprecated Cluster.http_protocol_options and use_downstream_protocol_config."""

    def traffic(side):
        return {kind: {cluster: _exchange(side, f"hc_paths_{kind}", cluster)
                       for cluster in OPTION_CLUSTERS}
                for kind in ("plain", "proper")}  # fmt: skip

    out = http_pair.run(traffic)
    got = _response(out, "proper", "hc_preserve_legacy")
    assert got["status"] == "HTTP/1.1 413 Request Entity Too Large"
    assert got["headers"][0] == "X-MiXed-Case: a"
    assert "x-envoy-upstream-service-time: <ms>" in got["headers"]
    got = _response(out, "plain", "hc_preserve_downstream", "post")
    assert got["headers"][0] == "X-Chunked: yes"
    assert got["headers"][-1] == "transfer-encoding: chunked"  # (as the upstream spelled it)
    out.assert_same()


@scenario(*(_listener("hc_local", k) for k in MATRIX_KINDS), _cluster("hc_plain"))
def test_local_replies_carry_no_recorded_case(http_pair):
    def traffic(side):
        return {kind: side.request(f"hc_local_{kind}", "GET", "/local").view()
                for kind in MATRIX_KINDS}  # fmt: skip

    out = http_pair.run(traffic)
    assert out.envoy.result["proper"]["headers"][0] == "Content-Length: 2"
    assert out.envoy.result["preserve_all"]["headers"][0] == "content-length: 2"
    out.assert_same()


@scenario(_listener("hc", "trailers"), _cluster("hc_trailers"))
def test_trailers_stay_lower_case(http_pair):
    request = (
        b"POST /hc_trailers/t HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n2\r\nhi\r\n0\r\nX-Req-Trailer: r\r\n\r\n"
    )

    def traffic(side):
        with side.connect("hc_trailers") as client:
            client.methods.append("POST")
            client.send(request)
            return client.response().view()

    out = http_pair.run(traffic)
    assert out.envoy.result["trailers"] == ["x-trailer-one: t"]
    assert out.envoy.upstream[0]["trailers"] == ["x-req-trailer: r"]
    assert out.envoy.upstream[0]["headers"][0] == "Host: example.com"
    out.assert_same()


@scenario(_listener("hc_fq", "plain"), _listener("hc_fq", "options"), _cluster("hc_fq"),
          _cluster("hc_plain"))  # fmt: skip
def test_send_fully_qualified_url(http_pair):
    """On a cluster: absolute-form targets, with the request's own scheme (https from an
    absolute-form request over plaintext); on an HCM: nothing changes."""

    def traffic(side):
        out = []
        for target in ("/hc_fq/a?x=1", "http://other.com/hc_fq/b", "https://other.com/hc_fq/c"):
            out.append(side.request("hc_fq_plain", "GET", target, host="Example.com:8080"))
        out.append(side.request("hc_fq_options", "GET", "/hc_plain/d", host="Example.com:8080"))
        return [r.view() for r in out]

    out = http_pair.run(traffic)
    assert [u["request"] for u in out.envoy.upstream] == [
        "GET http://Example.com:8080/hc_fq/a?x=1 HTTP/1.1",
        "GET http://other.com/hc_fq/b HTTP/1.1",
        "GET https://other.com/hc_fq/c HTTP/1.1",
        "GET /hc_plain/d HTTP/1.1",
    ]
    out.assert_same()


@scenario(_listener("hc_cl", "plain"), _cluster("hc_chunked_length"), _cluster("hc_plain"))
def test_allow_chunked_length_on_the_cluster(http_pair):
    """A response with Content-Length and chunked Transfer-Encoding: the Content-Length goes
    (the body is re-chunked), where a cluster without the option answers 502."""

    def traffic(side):
        return [side.request("hc_cl_plain", "GET", path).view()
                for path in ("/hc_chunked_length/x", "/hc_plain/both")]  # fmt: skip

    out = http_pair.run(traffic)
    allowed, refused = out.envoy.result
    assert allowed["status"] == "HTTP/1.1 200 OK"
    assert allowed["body"] == "abcd" and allowed["framing"] == "chunked"
    assert refused["status"] == "HTTP/1.1 502 Bad Gateway"
    out.assert_same()


@scenario(_listener("hc_balsa", "options"), _cluster("hc_plain"))
def test_use_balsa_parser_false_changes_nothing(http_pair):
    """Envoy 1.40 parses with Balsa either way: an obs-fold is unfolded as Balsa does."""
    folded = b"GET /hc_plain/f HTTP/1.1\r\nHost: example.com\r\nX-Fold: a\r\n b\r\n\r\n"

    def traffic(side):
        with side.connect("hc_balsa_options") as client:
            client.send(folded)
            return client.response().view()

    out = http_pair.run(traffic)
    assert "x-fold: a b" in out.envoy.upstream[0]["headers"]
    out.assert_same()


def _by_host(upstream: list[dict]) -> list[dict]:
    """The requests the upstream saw, by host (a mirror's arrival order varies)."""
    requests = [{k: v for k, v in r.items() if k != "connection"} for r in upstream]
    return sorted(requests, key=lambda r: r["headers"][0].lower())


@scenario(_listener("hc_mirror", "preserve"), _cluster("hc_mirror"), _cluster("hc_mirror_shadow"))
def test_a_mirrored_request_is_written_without_the_recorded_case(http_pair):
    def traffic(side):
        out = side.request("hc_mirror_preserve", "GET", "/mirror", REQUEST_HEADERS, host=None)
        time.sleep(0.2)  # the shadow's response, counted
        return out.view()

    out = http_pair.run(traffic)
    envoy = _by_host(out.envoy.upstream)
    assert [r["headers"][:2] for r in envoy] == [
        ["HOST: example.com", "X-MiXed-Case: a"],
        ["host: example.com-shadow", "x-mixed-case: a"],
    ]
    assert envoy == _by_host(out.legatus.upstream)
    out.assert_same("result", "log", "stats")

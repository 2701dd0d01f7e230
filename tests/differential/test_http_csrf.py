"""The CSRF filter (``envoy.filters.http.csrf``), Envoy against legatus: which requests are
refused (403 ``Invalid origin``, ``csrf_origin_mismatch``) and which go on, the source origin
taken from ``origin`` or ``referer``, per-route and virtual-host policies, shadow mode,
``additional_origins`` and runtime overrides; responses, the upstream's requests, the access
log and the ``csrf.*`` stats are compared."""

from __future__ import annotations

from tests.differential.http_scenario import (  # noqa: F401 (fixtures)
    Cluster,
    Listener,
    http_pair_fixture,
    http_pair_processes_fixture,
    scenario,
)

CSRF = "type.googleapis.com/envoy.extensions.filters.http.csrf.v3.CsrfPolicy"
CORS = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
CORS_POLICY = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"


def percent(numerator: int, runtime_key: str | None = None) -> dict:
    out: dict = {"default_value": {"numerator": numerator, "denominator": "HUNDRED"}}
    if runtime_key:
        out["runtime_key"] = runtime_key
    return out


def policy(**fields) -> dict:
    return {"@type": CSRF, **fields}


def csrf_filter(**fields) -> dict:
    return {"name": "envoy.filters.http.csrf", "typed_config": policy(**fields)}


def per_route(**fields) -> dict:
    return {"envoy.filters.http.csrf": policy(**fields)}


ANY_ORIGIN = {"safe_regex": {"regex": ".*"}}


def samesite(name: str) -> tuple[Listener, Cluster]:
    """Envoy's csrf "samesite" example: off in the filter, on for the virtual host (runtime
    keys), off, shadow-only or with any origin allowed on some routes; CORS in front. A
    listener of its own per test: ``downstream_cx_tx_bytes_total`` is compared relative to what
    the test's clients read, which holds for a listener's first test only."""
    return Listener(name=name, filters=[
        {"name": "envoy.filters.http.cors", "typed_config": {"@type": CORS}},
        csrf_filter(filter_enabled=percent(0)),
    ], virtual_hosts=[{
        "name": "www", "domains": ["*"],
        "typed_per_filter_config": {
            "envoy.filters.http.cors": {
                "@type": CORS_POLICY, "filter_enabled": percent(100),
                "allow_origin_string_match": [{"safe_regex": {"regex": r"\*"}}]},
            **per_route(filter_enabled=percent(100, "csrf.www.enabled"),
                        shadow_enabled=percent(0, "csrf.www.shadow_enabled")),
        },
        "routes": [
            {"match": {"prefix": "/csrf/disabled"}, "route": {"cluster": name},
             "typed_per_filter_config": per_route(filter_enabled=percent(0))},
            {"match": {"prefix": "/csrf/shadow"}, "route": {"cluster": name},
             "typed_per_filter_config": per_route(
                 filter_enabled=percent(0), shadow_enabled=percent(100))},
            {"match": {"prefix": "/csrf/additional_origin"}, "route": {"cluster": name},
             "typed_per_filter_config": per_route(
                 filter_enabled=percent(100), additional_origins=[ANY_ORIGIN])},
            {"match": {"prefix": "/direct"},
             "direct_response": {"status": 200, "body": {"inline_string": "direct"}}},
            {"match": {"prefix": "/"}, "route": {"cluster": name}},
        ],
    }]), Cluster(name=name)  # fmt: skip


def request(side, listener: str, method: str, path: str, headers=(), host="example.com", body=None):
    with side.connect(listener) as c:
        return c.request(method, path, list(headers), body, host=host).view()


@scenario(*samesite("samesite"))
def test_methods_and_source_origins(http_pair):
    methods = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE", "PATCH"]
    sources = [
        [], [("origin", "http://example.com")], [("origin", "https://example.com")],
        [("origin", "http://example.com:80")], [("origin", "http://EXAMPLE.com")],
        [("origin", "null")], [("origin", "")], [("origin", "example.com")],
        [("origin", "garbage value")], [("origin", "http://example.com/")],
        [("origin", "http://user@example.com")], [("origin", "http://[::1]:80")],
        [("referer", "http://example.com/a/b?c")], [("referer", "http://evil.com/a")],
        [("origin", "http://evil.com"), ("referer", "http://example.com/")],
        [("origin", "null"), ("referer", "http://example.com/")], [("origin", "NULL")],
        [("referer", "null")], [("origin", "http://")], [("origin", "http:///x")],
    ]  # fmt: skip

    def traffic(side):
        out = [request(side, "samesite", m, "/", [("origin", "http://evil.com")]) for m in methods]
        out += [request(side, "samesite", "POST", "/", h) for h in sources]
        out.append(request(side, "samesite", "POST", "/", [("origin", "http://example.com:8080")],
                           host="example.com:8080"))  # fmt: skip
        out.append(request(side, "samesite", "POST", "/", [("origin", "http://[::1]:80")],
                           host="[::1]:80"))  # fmt: skip
        out.append(request(side, "samesite", "PUT", "/", [("origin", "http://evil.com")],
                           body=b"a body"))  # fmt: skip
        return out

    out = http_pair.run(traffic)
    refused = out.envoy.result[3]
    assert refused["status"] == "HTTP/1.1 403 Forbidden"
    assert refused["body"] == "Invalid origin"
    assert out.envoy.log[3]["details"] == "csrf_origin_mismatch"
    out.assert_same()


@scenario(*samesite("routes"))
def test_per_route_policies(http_pair):
    paths = ["/csrf/disabled", "/csrf/shadow", "/csrf/additional_origin", "/direct", "/other"]

    def traffic(side):
        out = []
        for path in paths:
            out.append(request(side, "routes", "POST", path, [("origin", "http://evil.com")]))
            out.append(request(side, "routes", "POST", path))
        return out

    out = http_pair.run(traffic)
    assert out.envoy.result[2]["status"] == "HTTP/1.1 200 OK"  # shadow: counted, not refused
    out.assert_same()


ORIGINS = Listener(name="origins", filters=[csrf_filter(
    filter_enabled=percent(100),
    additional_origins=[{"exact": "good.example"}, {"suffix": ".trusted.com"},
                        {"prefix": "Http", "ignore_case": True}, {"exact": "null"}],
)])  # fmt: skip
SHADOW = Listener(name="shadow", filters=[csrf_filter(
    filter_enabled=percent(0), shadow_enabled=percent(100))])  # fmt: skip
RUNTIME = Listener(name="runtime", filters=[csrf_filter(
    filter_enabled=percent(100, "csrf.runtime.enabled"),
    shadow_enabled=percent(0, "csrf.runtime.shadow"))])  # fmt: skip
BOOTSTRAP = {"layered_runtime": {"layers": [{"name": "static", "static_layer": {
    "csrf.runtime.enabled": 0, "csrf.runtime.shadow": 100}}]}}  # fmt: skip


@scenario(ORIGINS, Cluster(name="origins"), SHADOW, Cluster(name="shadow"), RUNTIME,
          Cluster(name="runtime"))  # fmt: skip
def test_filter_policy_additional_origins_shadow_and_runtime(http_pair):
    origins = ["http://good.example", "http://good.example:81", "http://x.trusted.com",
               "http://x.trusted.com:9", "http://evil.com", "hTTP://evil.com",
               "httpfoo"]  # fmt: skip

    def traffic(side):
        out = [request(side, "origins", "POST", "/", [("origin", o)]) for o in origins]
        out.append(request(side, "origins", "POST", "/", [("origin", "null")]))  # still missing
        out.append(request(side, "shadow", "POST", "/", [("origin", "http://evil.com")]))
        out.append(request(side, "shadow", "DELETE", "/"))
        out.append(request(side, "runtime", "POST", "/", [("origin", "http://evil.com")]))
        out.append(request(side, "runtime", "PATCH", "/", [("origin", "http://example.com")]))
        return out

    out = http_pair.run(traffic)
    assert out.envoy.result[0]["status"] == "HTTP/1.1 200 OK"
    assert out.envoy.result[4]["status"] == "HTTP/1.1 403 Forbidden"
    out.assert_same()

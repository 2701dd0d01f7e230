"""Routing, help, methods and the POST-only endpoints, as Envoy 1.40 answers them."""

from __future__ import annotations

import asyncio

import pytest

from legatus.server.admin import router
from legatus.server.admin.response import Query
from legatus.server.admin.router import handle, help_text

TEXT = "text/plain; charset=UTF-8"


async def test_help_lists_served_endpoints_in_envoys_shape(admin):
    status, content_type, body = await admin("/help")
    assert (status, content_type) == (200, TEXT)
    lines = body.splitlines()
    assert lines[:4] == [
        "admin commands are:",
        "  /: Admin home page",
        "  /clusters: upstream cluster status",
        "      filter: Regular expression (Google re2) for filtering clusters by name",
    ]
    assert "  /quitquitquit (POST): exit the server" in lines
    assert "  /ready: print server state, return 200 if LIVE, otherwise return 503" in lines
    assert "  /stats/prometheus: print server stats in prometheus format" in lines
    assert not any(line.startswith("  /cpuprofiler") for line in lines)  # not served
    assert body.endswith("One of (cumulative, summary)\n")


async def test_unknown_path_is_404_with_help(admin):
    for path in ("/nonexistent", "/stats/", "/STATS", "/stats/prometheus/"):
        assert await admin(path) == (404, TEXT, "invalid path. " + help_text())


async def test_mutating_endpoints_need_post(admin, context):
    for path in (
        "/quitquitquit",
        "/healthcheck/fail",
        "/healthcheck/ok",
        "/reset_counters",
        "/reopen_logs",
        "/logging",
    ):
        assert await admin(path) == (405, TEXT, "Method GET not allowed, POST required.")
    assert await admin("/logging", method="PUT") == (
        405,
        TEXT,
        "Method PUT not allowed, POST required.",
    )
    assert context.shutdowns == 0 and not context.healthcheck_failed


async def test_read_only_endpoints_take_any_method(admin):
    assert await admin("/ready", method="POST") == (200, TEXT, "LIVE\n")
    assert await admin("/ready?x", method="DELETE") == (200, TEXT, "LIVE\n")


async def test_headers_are_envoys(context):
    response = await handle(context, "GET", "/ready")
    assert response.headers == (
        ("content-type", TEXT),
        ("cache-control", "no-cache, max-age=0"),
        ("x-content-type-options", "nosniff"),
    )


async def test_home_page_is_html(admin):
    status, content_type, body = await admin("/")
    assert (status, content_type) == (200, "text/html; charset=UTF-8")
    assert "<a href='stats'>stats</a>" in body
    assert "<form action='quitquitquit' method='post'>" in body


async def test_ready_and_health_check_failure(admin, context):
    assert await admin("/ready") == (200, TEXT, "LIVE\n")
    assert await admin("/healthcheck/fail", method="POST") == (200, TEXT, "OK\n")
    assert context.healthcheck_failed
    assert await admin("/ready") == (503, TEXT, "DRAINING\n")  # Envoy reports DRAINING
    assert await admin("/healthcheck/ok", method="POST") == (200, TEXT, "OK\n")
    assert await admin("/ready") == (200, TEXT, "LIVE\n")
    context.state = context.state.INITIALIZING
    assert await admin("/ready") == (503, TEXT, "INITIALIZING\n")


async def test_quitquitquit_answers_before_shutting_down(admin, context):
    assert await admin("/quitquitquit", method="POST") == (200, TEXT, "OK\n")
    assert context.shutdowns == 0
    await asyncio.sleep(0)
    assert context.shutdowns == 1


async def test_reset_counters_and_reopen_logs(admin, context):
    counter = context.stats.counter("cluster.backend.upstream_rq_total")
    counter.add(5)
    gauge = context.stats.gauge("server.live")
    gauge.set(1)
    assert await admin("/reset_counters", method="POST") == (200, TEXT, "OK\n")
    assert (counter.value, gauge.total()) == (0, 1)
    assert await admin("/reopen_logs", method="POST") == (200, TEXT, "OK\n")
    assert context.reopens == 1


async def test_hot_restart_version(admin):
    assert await admin("/hot_restart_version") == (200, TEXT, "11.104")


async def test_form_body_adds_to_query(admin, context):
    form = "application/x-www-form-urlencoded"
    status, _, _ = await admin("/logging", method="POST", body=b"level=debug", content_type=form)
    assert status == 200
    assert set(context.log_sink.levels().values()) == {"debug"}
    await admin("/logging", method="POST", body=b"level=error", content_type="text/plain")
    assert set(context.log_sink.levels().values()) == {"debug"}  # not a form: ignored


async def test_a_failing_handler_answers_500(context, monkeypatch):
    def boom(context, query):
        raise RuntimeError("boom")

    endpoint = router._BY_PATH["/memory"]
    monkeypatch.setitem(
        router._BY_PATH, "/memory", type(endpoint)(path="/memory", help=endpoint.help, handler=boom)
    )
    response = await handle(context, "GET", "/memory")
    assert response.status == 500
    assert b"RuntimeError: boom" in response.body


@pytest.mark.parametrize(
    ("query", "pairs"),
    [
        ("usedonly", (("usedonly", ""),)),
        ("filter=a+b&filter=c", (("filter", "a+b"), ("filter", "c"))),
        ("filter=%5C.x%20y&&", (("filter", "\\.x y"),)),
    ],
)
def test_query_parsing(query, pairs):
    parsed = Query.parse(query)
    assert parsed.pairs == pairs
    assert parsed.get("filter", "none") == (pairs[0][1] if pairs[0][0] == "filter" else "none")


# /logging ------------------------------------------------------------------------------


async def test_logging_lists_and_changes_levels(admin, context):
    assert await admin("/logging", method="POST") == (
        200,
        TEXT,
        "active loggers:\n  admin: info\n  upstream: info\n  http: info\n\n",
    )
    _, _, body = await admin("/logging?level=debug", method="POST")
    assert body == "active loggers:\n  admin: debug\n  upstream: debug\n  http: debug\n\n"
    await admin("/logging?upstream=trace", method="POST")
    await admin("/logging?paths=admin:error,http:off", method="POST")
    assert context.log_sink.levels() == {"admin": "error", "upstream": "trace", "http": "off"}
    await admin("/logging?level=", method="POST")  # an empty level changes nothing
    assert context.log_sink.levels()["upstream"] == "trace"


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("bogus=info", "unknown logger name"),
        ("level=bogus", "unknown logger level"),
        ("level=warn", "unknown logger level"),
        ("level=DEBUG", "unknown logger level"),
        ("upstream=info&level=debug", "invalid number of parameters"),
        ("paths=bogus", "empty logger name or empty logger level"),
        ("paths=upstream:bogus", "unknown logger level"),
        ("paths=nope:debug", "unknown logger name"),
        ("group=upstream:debug", "group parameter requires fine-grain logging to be enabled"),
    ],
)
async def test_logging_errors(admin, context, query, error):
    status, content_type, body = await admin(f"/logging?{query}", method="POST")
    assert (status, content_type) == (400, TEXT)
    assert body.startswith(f"error: {error}\n\nusage: /logging?<name>=<level> (change single")
    assert body.endswith("active loggers:\n  admin: info\n  upstream: info\n  http: info\n\n")
    assert set(context.log_sink.levels().values()) == {"info"}

"""``Route.redirect`` and the ``location`` header of redirects and direct responses.

Envoy answers a redirect route itself, with the configured code (301 by default) and a
``location`` built by Http::Utility::newUri from the request, after the route rewrote the
request path. The rules, each checked against Envoy 1.40 with real requests:

- scheme: ``scheme_redirect``, else ``https`` with ``https_redirect``, else ``:scheme``;
- port: ``:port_redirect`` when set;
- host: ``host_redirect``, else the request's ``:authority`` whose port is dropped when a
  new port is set, or when the scheme changes and the port is the default one of the
  ``x-forwarded-proto`` scheme (``:80`` for http, ``:443`` for https; IPv6 hosts keep
  their brackets);
- path: ``path_redirect`` (the request's query string is appended unless the new path has
  its own), else the request path rewritten by ``prefix_rewrite`` (the matched prefix
  replaced) or ``regex_rewrite`` (applied to the path without the query string), else the
  request path; a path that does not start with ``/`` gets one;
- ``strip_query`` drops the query string, except one that ``path_redirect`` carries.

A direct response (not a redirect) whose status is 201 or 3xx also gets a ``location``: the
request URL as it is (``redirect_location(headers, None)``).

``TLS_REDIRECT`` is a virtual host's ``require_tls`` answer (Envoy's SslRedirector): a 301 to
``https://`` and the request's ``:authority`` and ``:path`` exactly as they are (no port
dropped, no rewrite), without any header mutation of the route table (config.py decides
when it applies).
"""

from __future__ import annotations

from dataclasses import dataclass

from legatus.common.regex import RegexRewrite, compile_rewrite
from legatus.config.errors import join_path
from legatus.config.supported import check_supported
from legatus.router.action import rewrite_path_with
from legatus.router.matchers import PathMatcher

__all__ = ["TLS_REDIRECT", "RedirectAction", "compile_redirect", "redirect_location"]

# RedirectResponseCode: MOVED_PERMANENTLY, FOUND, SEE_OTHER, TEMPORARY_REDIRECT,
# PERMANENT_REDIRECT.
_RESPONSE_CODES = (301, 302, 303, 307, 308)


@dataclass(frozen=True, slots=True, kw_only=True)
class RedirectAction:
    response_code: int = 301
    scheme: str = ""  # scheme_redirect, or "https" for https_redirect
    host: str = ""
    port: str = ""  # ":8443", "" when not redirected
    path: str = ""  # path_redirect
    path_has_query: bool = False
    prefix_rewrite: str = ""
    regex_rewrite: RegexRewrite | None = None
    strip_query: bool = False
    path_matcher: PathMatcher | None = None  # the route's, for prefix_rewrite
    tls_redirect: bool = False  # require_tls's redirect (``TLS_REDIRECT``)

    @property
    def rewrites_path(self) -> bool:
        """Envoy's isRedirect(): only then do prefix/regex rewrites apply to the path."""
        return bool(self.host or self.path or self.prefix_rewrite or self.regex_rewrite)

    def rewrite_path(self, path: str) -> str | None:
        """The request path after the redirect's own prefix/regex rewrite, or None."""
        if not self.rewrites_path:
            return None
        return rewrite_path_with(path, self.prefix_rewrite, self.regex_rewrite, self.path_matcher)


def compile_redirect(proto, path: str, *, path_matcher: PathMatcher) -> RedirectAction:
    check_supported(
        proto,
        (
            "https_redirect",
            "scheme_redirect",
            "host_redirect",
            "port_redirect",
            "path_redirect",
            "prefix_rewrite",
            "regex_rewrite",
            "response_code",
            "strip_query",
        ),
        path,
        "RedirectAction",
    )
    scheme = proto.scheme_redirect or ("https" if proto.https_redirect else "")
    regex_rewrite = None
    if proto.HasField("regex_rewrite"):
        regex_rewrite = compile_rewrite(proto.regex_rewrite, join_path(path, "regex_rewrite"))
    return RedirectAction(
        response_code=_RESPONSE_CODES[proto.response_code],
        scheme=scheme,
        host=proto.host_redirect,
        port=f":{proto.port_redirect}" if proto.port_redirect else "",
        path=proto.path_redirect,
        path_has_query="?" in proto.path_redirect,
        prefix_rewrite=proto.prefix_rewrite,
        regex_rewrite=regex_rewrite,
        strip_query=proto.strip_query,
        path_matcher=path_matcher,
    )


def redirect_location(headers, redirect: RedirectAction | None) -> str:
    """The ``location`` Envoy sends for ``redirect`` (None: a 201/3xx direct response)."""
    request_path = headers.get(":path") or ""
    if redirect is None:
        redirect = _NO_REDIRECT
    elif redirect.tls_redirect:  # Envoy's createSslRedirectPath
        return f"https://{headers.get(':authority') or ''}{request_path}"
    rewritten = redirect.rewrite_path(request_path)
    current_path = request_path if rewritten is None else rewritten
    scheme = redirect.scheme or (headers.get(":scheme") or "")
    host = redirect.host or _request_host(headers, scheme, redirect.port)
    if redirect.path:
        if redirect.path_has_query:
            path = redirect.path
        else:
            query_start = current_path.find("?")
            path = redirect.path + (current_path[query_start:] if query_start >= 0 else "")
    else:
        path = current_path
    if not path.startswith("/"):
        path = "/" + path
    if redirect.strip_query and not redirect.path_has_query:
        query_start = path.find("?")
        if query_start >= 0:
            path = path[:query_start]
    return f"{scheme}://{host}{redirect.port}{path}"


_NO_REDIRECT = RedirectAction()
TLS_REDIRECT = RedirectAction(response_code=301, tls_redirect=True)


def _request_host(headers, new_scheme: str, new_port: str) -> str:
    """Envoy's processRequestHost: the request host, its port dropped when it must be."""
    host = headers.get(":authority")
    if host is None:
        host = headers.get("host") or ""
    if not host:
        return host
    if host[0] == "[":
        end = host.rfind("]:")
        host_end = end + 1 if end >= 0 else -1
    else:
        host_end = host.rfind(":")
    if host_end < 0:
        return host
    port = host[host_end:]
    forwarded_proto = headers.get("x-forwarded-proto") or ""
    remove_port = bool(new_port)
    if new_scheme != forwarded_proto:
        proto = forwarded_proto.lower()
        remove_port |= (proto == "https" and port == ":443") or (proto == "http" and port == ":80")
    return host[:host_end] if remove_port else host

"""Stateful HTTP/1 header formatters (``envoy.http.stateful_header_formatters``)."""

"""Transport socket extensions (Envoy's ``envoy.transport_sockets.*``)."""

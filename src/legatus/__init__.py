"""legatus: the Envoy proxy, written in Python."""

__version__ = "0.1.0"

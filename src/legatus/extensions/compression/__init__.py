"""Compression libraries (Envoy's ``envoy.compression.*.compressor`` extensions), used by the
compressor HTTP filter through ``compressor_library``."""

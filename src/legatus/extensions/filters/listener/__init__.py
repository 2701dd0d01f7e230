"""Listener filters (Envoy's ``envoy.filters.listener.*``): see network/listener_filter.py."""

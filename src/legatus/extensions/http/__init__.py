"""HTTP extensions that are not filters (Envoy's ``source/extensions/http``)."""

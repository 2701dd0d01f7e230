"""Original IP detection extensions (``envoy.http.original_ip_detection``): how a connection
manager finds the client behind its peer (legatus/http/original_ip_detection.py)."""

"""Active health checking (HTTP and TCP), run by the main process; see docs/health-checking.md.

config.py compiles ``Cluster.health_checks``; session.py holds one host's state machine;
http.py and tcp.py are the probes; checker.py runs them for a cluster.
"""

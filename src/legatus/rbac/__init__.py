"""Role-based access control: the engine shared by the HTTP and network RBAC filters.

``envoy.config.rbac.v3.RBAC`` compiles once (``engine.compile_engine``) into an ``Engine``:
its action and its policies, each a tree of small matcher objects (``matchers.py``) built
from the ``permissions`` and ``principals``. A request (or connection) is described by an
``RbacRequest`` (``request.py``); ``Engine.evaluate`` answers whether it is allowed and which
policy decided (Envoy's effective policy id).
"""

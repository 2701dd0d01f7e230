"""``/memory``: ``envoy.admin.v3.Memory`` for this (the main) process.

Envoy reads these figures from tcmalloc; CPython has no such allocator to ask,
so legatus reads the kernel's view of the process instead, from
``/proc/self/statm`` (in pages):

- ``allocated``: resident pages not shared with other processes (the memory
  this process itself holds: Python objects, buffers, C extensions' heaps);
- ``heap_size``: the data segment plus stack (statm "data"), the address space
  the process may have written to;
- ``total_physical_bytes``: the resident set (RSS);
- ``pageheap_unmapped``, ``pageheap_free``, ``total_thread_cache``: 0, as these
  are tcmalloc page-heap figures with no CPython equivalent.

Worker processes are not included. Where /proc is missing (not Linux), the
figures fall back to ``resource.getrusage`` (max RSS) and zeros.
"""

from __future__ import annotations

import os
from typing import Any

from envoy.admin.v3 import memory_pb2

from legatus.server.admin.response import AdminResponse, Query, json_body, proto_json


def memory(statm_path: str = "/proc/self/statm") -> memory_pb2.Memory:
    page = os.sysconf("SC_PAGE_SIZE")
    try:
        with open(statm_path) as f:
            _size, resident, shared, _text, _lib, data, *_ = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return memory_pb2.Memory(allocated=rss, heap_size=rss, total_physical_bytes=rss)
    return memory_pb2.Memory(
        allocated=max(0, resident - shared) * page,
        heap_size=data * page,
        total_physical_bytes=resident * page,
    )


def handle_memory(context: Any, query: Query) -> AdminResponse:
    return json_body(proto_json(memory(), defaults=True))

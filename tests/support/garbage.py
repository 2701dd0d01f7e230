"""What a piece of code leaves to the cyclic garbage collector."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def left_to_the_collector(module_prefix: str = "") -> Iterator[set[str]]:
    """The collector is off inside the block; the set it gives is filled at the block's end
    with the type names (of types from modules starting with ``module_prefix``) of what the
    block left in reference cycles: objects that reference counting alone cannot free."""
    found: set[str] = set()
    gc.collect()
    gc.disable()
    try:
        yield found
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found.update(
            type(o).__name__ for o in gc.garbage if type(o).__module__.startswith(module_prefix)
        )
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def cyclic_garbage(make: Callable[[], object]) -> set[str]:
    """The type names of the objects ``make()`` leaves in reference cycles once it returns."""
    with left_to_the_collector() as found:
        make()
    return found

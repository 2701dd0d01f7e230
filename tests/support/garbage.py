"""What a piece of code leaves to the cyclic garbage collector."""

from __future__ import annotations

import gc
from collections.abc import Callable


def cyclic_garbage(make: Callable[[], object]) -> set[str]:
    """The type names of the objects ``make()`` leaves in reference cycles once it returns
    (objects that reference counting alone cannot free)."""
    gc.collect()
    gc.disable()
    try:
        make()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        return {type(o).__name__ for o in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()

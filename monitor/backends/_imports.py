"""Import heavy libraries (torch, transformers) without the garbage collector walking them.

Importing torch and transformers creates millions of modules, classes and
functions that live as long as the process.  While they are created, the
cyclic collector would walk the growing heap again and again (~0.6 s on a
small CPU), and afterwards every full collection, the one at interpreter exit
included, would walk them once more.  :func:`long_lived_imports` pauses the
collector during the imports and then freezes what exists (``gc.freeze``), so
later collections only look at newer objects.  Reference counting still frees
frozen objects; only reference cycles among them are never collected, which
for module-level objects is what happens anyway.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def long_lived_imports() -> Iterator[None]:
    """Pause the cyclic collector for the block, then freeze every object alive."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()

"""Import heavy libraries (torch, transformers) without the garbage collector walking them.

Importing torch and transformers creates millions of modules, classes and
functions that live as long as the process.  While they are created, the
cyclic collector would walk the growing heap again and again (~0.6 s on a
small CPU), and afterwards every full collection, the one at interpreter exit
included, would walk them once more.  :func:`long_lived_imports` pauses the
collector during the imports and, when they loaded new modules, freezes what
exists (``gc.freeze``), so later collections only look at newer objects.

Reference counting still frees frozen objects; only reference cycles among them
are never collected.  That is what happens to module-level objects anyway; for
the caller's other objects alive at that moment it is a one-off cost, since a
block that imports nothing new (a daemon loading a model of an architecture it
has seen) freezes nothing.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def long_lived_imports() -> Iterator[None]:
    """Pause the cyclic collector for the block; if it imported modules, freeze every object alive."""
    enabled = gc.isenabled()
    modules = len(sys.modules)
    gc.disable()
    try:
        yield
    finally:
        if len(sys.modules) > modules:
            gc.freeze()
        if enabled:
            gc.enable()

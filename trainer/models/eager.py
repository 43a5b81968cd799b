"""Methods that stay eager under ``run.compile``, marked without importing ``torch._dynamo``.

``torch.compiler.disable`` used as a decorator imports ``torch._dynamo`` when the decorated module is imported: about
2 s of start-up in every process of every job (measured with ``python -X importtime -c "import trainer.loop"``),
although only ``run.compile`` needs it. So such methods are only marked here, and ``keep_marked_eager_`` wraps the
marked methods of one object in ``torch.compiler.disable`` when that object is compiled (``CodebookTask.compile_``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable)
_MARK = "__cmg_eager_under_compile__"


def eager_under_compile(method: F) -> F:
    """Mark ``method`` to run eagerly (a graph break) when its object is compiled; no effect otherwise."""
    setattr(method, _MARK, True)
    return method


def keep_marked_eager_(obj: object) -> None:
    """Give ``obj`` (an instance) its marked methods wrapped in ``torch.compiler.disable``, as instance attributes:
    traced calls of ``obj.method`` then run eagerly; other instances of the class are untouched."""
    for name in dir(type(obj)):
        if getattr(getattr(type(obj), name, None), _MARK, False):
            setattr(obj, name, torch.compiler.disable(getattr(obj, name)))

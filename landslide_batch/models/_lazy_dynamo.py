"""Import torchvision, smp and timm without importing ``torch._dynamo`` (about a second).

Two import-time uses pull in all of ``torch._dynamo``, the compiler, which inference never runs:
``torchvision.ops.roi_align`` takes ``is_compile_supported`` from ``torch._dynamo.utils``, and
timm decorates a few functions with ``torch.compiler.disable``, which imports ``torch._dynamo``
to wrap them. While those packages import, :func:`dynamo_deferred` puts stand-ins for
``torch._dynamo`` and ``torch._dynamo.utils`` in ``sys.modules`` whose two functions do the real
work at their first call: the helper imports the real one then, and a disabled function is
wrapped by the real ``torch._dynamo.disable`` when first called (under ``torch.compile``, that
call is itself left to run eagerly). The stand-ins leave ``sys.modules`` when the block ends, so
any later ``import torch._dynamo`` imports the real package; where it is imported already,
nothing is stood in. (A thread importing ``torch._dynamo`` during the block would get the
stand-in: jobs import their models in one thread.)
"""

from __future__ import annotations

import functools
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def _is_compile_supported(device_type: str) -> bool:
    """``torch._dynamo.utils.is_compile_supported``, imported at its first call."""
    from torch._dynamo.utils import is_compile_supported

    return is_compile_supported(device_type)


def _disable(fn: Callable[..., Any] | None = None, recursive: bool = True, *, reason: str | None = None) -> Any:
    """``torch._dynamo.disable``, applied to ``fn`` at its first call."""
    if fn is None:  # used as @disable(recursive=False, reason=...)
        return lambda f: _disable(f, recursive, reason=reason)
    real: list[Callable[..., Any]] = []

    @functools.wraps(fn)
    def disabled(*args: Any, **kwargs: Any) -> Any:
        if not real:
            import torch._dynamo

            real.append(torch._dynamo.disable(fn, recursive, reason=reason))
        return real[0](*args, **kwargs)

    return disabled


@contextmanager
def dynamo_deferred() -> Iterator[None]:
    """Within the block, ``torch._dynamo`` and ``torch._dynamo.utils`` are stand-ins offering
    ``disable`` and ``is_compile_supported``; see the module's docstring."""
    if "torch._dynamo" in sys.modules:
        yield
        return
    package, utils = types.ModuleType("torch._dynamo"), types.ModuleType("torch._dynamo.utils")
    package.__path__ = []  # a package: ``torch._dynamo.utils`` is found in sys.modules
    package.disable = _disable  # type: ignore[attr-defined]
    package.utils = utils  # type: ignore[attr-defined]
    utils.is_compile_supported = _is_compile_supported  # type: ignore[attr-defined]
    stand_ins = {"torch._dynamo": package, "torch._dynamo.utils": utils}
    sys.modules.update(stand_ins)
    try:
        yield
    finally:
        for name, module in stand_ins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]

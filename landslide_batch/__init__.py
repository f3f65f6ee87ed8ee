"""Region-wide landslide mapping from satellite scenes with ensembles of segmentation models.

For notebooks: :func:`map_scene`, :func:`map_region` and :func:`open_result` (``api``, see
``docs/python_api.md``), imported on first use so that ``import landslide_batch`` stays light.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("landslide-batch")
except PackageNotFoundError:  # a source tree on the path, not installed
    __version__ = "0+unknown"

API = ("map_scene", "map_region", "open_result", "MappedResult")
__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    if name in API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

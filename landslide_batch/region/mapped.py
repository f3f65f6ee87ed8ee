"""A scene of a region job as the region holds it: its source, folder, store, footprint, identity
and (once mapped) its scene job's manifest. The merge reads it; ``region.job`` makes it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rasterio.crs import CRS

from ..errors import InputError
from ..ingest import Scene
from ..storage import Location
from .scenes import SceneSource


@dataclass
class MappedScene:
    """A scene of the region once ingested and checked (and, later, mapped)."""

    source: SceneSource
    folder: Location  # OUT/.work/scenes/<id>, local or on object storage
    sha256: str
    scene: Scene
    footprint: Any  # shapely polygon in the region CRS
    ingest_id: str  # the source's hash and the ingest settings: the scene's identity in its job hash
    manifest: dict | None = None

    @property
    def map_store(self) -> Location:
        return self.folder / "map" / "probability.zarr"

    @property
    def result(self) -> dict[str, Any]:
        """The scene's run manifest, once it is mapped."""
        if self.manifest is None:
            raise RuntimeError(f"scene {self.source.id} is not mapped yet")
        return self.manifest

    @property
    def crs(self) -> CRS:
        """The scene's CRS: a region refuses a scene without one when it is prepared."""
        if self.scene.info.crs is None:
            raise InputError(f"scene {self.source.origin} has no CRS")
        return self.scene.info.crs

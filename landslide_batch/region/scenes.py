"""The scenes of a region job: found (paths, globs, STAC ItemCollections), named and described."""

from __future__ import annotations

import glob
import hashlib
import importlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, InputError
from ..storage import Location, Where, is_uri, location, storage_errors

log = logging.getLogger(__name__)

_GLOB_CHARS = re.compile(r"[*?\[]")

#: Turns an asset href into one that can be read (e.g. a Planetary Computer SAS-signed URL).
HrefSigner = Callable[[str], str]


def no_signing(href: str) -> str:
    return href


def load_signer(spec: str | None) -> HrefSigner:
    """``module:function`` (the job's ``href_signer``) -> that function; None -> no signing."""
    if spec is None:
        return no_signing
    module, _, name = spec.partition(":")
    try:
        signer = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(
            f"href_signer: expected 'module:function' naming an importable function, found "
            f"{spec!r} ({type(exc).__name__}: {exc})"
        ) from None
    if not callable(signer):
        raise ConfigError(f"href_signer: {spec} is not a function")
    return signer


@dataclass(frozen=True)
class SceneSource:
    """One scene of the region: where it is read from, and what its STAC item says (if any)."""

    id: str  # names its folder under OUT/.work/scenes
    source: str  # a path or URI ingest understands (for STAC items: the item as written for ingest)
    properties: dict = field(default_factory=dict, compare=False)
    origin: str = ""  # what the job named (a path, URI, glob match or ItemCollection#item id)
    #: Content hash when known without reading ``source`` (STAC items: of the item before signing,
    #: so that fresh signatures do not make a scene new).
    sha256: str | None = None

    @property
    def date(self) -> str | None:
        return self.properties.get("datetime") or self.properties.get("start_datetime")

    @property
    def cloud_cover(self) -> float | None:
        value = self.properties.get("eo:cloud_cover")
        return float(value) if value is not None else None


def scene_id(name: str, source: str) -> str:
    """A folder name: the readable stem of ``name`` plus a short hash of the full ``source``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem)[:60] or "scene"
    return f"{stem}-{hashlib.sha256(source.encode()).hexdigest()[:8]}"


def find_scenes(entries: list[str], items_dir: Where, sign: HrefSigner = no_signing) -> list[SceneSource]:
    """``entries`` (paths, URIs, local globs, STAC items and ItemCollections) -> the scenes, in
    order, each once. STAC items are written to ``items_dir`` for ingest, their asset hrefs made
    absolute and passed through ``sign``."""
    found: dict[str, SceneSource] = {}
    for entry in entries:
        entry = str(entry)
        if not is_uri(entry) and _GLOB_CHARS.search(entry):
            matches = sorted(glob.glob(entry))
            if not matches:
                raise InputError(
                    f"scenes: {entry} matches no file; expected scenes (GeoTIFFs, STAC items, "
                    "band-file folders, Zarr stores) there"
                )
            sources = [SceneSource(scene_id(m, m), m, origin=m) for m in matches]
        elif entry.lower().endswith(".json"):
            sources = _stac_items(entry, location(items_dir), sign)
        else:
            sources = [SceneSource(scene_id(location(entry).name, entry), entry, origin=entry)]
        for s in sources:
            found.setdefault(s.id, s)
    if not found:
        raise InputError("scenes: no scene given (an empty list or an empty ItemCollection)")
    return list(found.values())


def _read_json(src: str) -> dict | None:
    where = location(src)
    with storage_errors(where, "scenes"):
        if not where.is_file():
            raise InputError(
                f"scenes: {src} cannot be read: it does not exist"
                + (" or its server cannot be reached" if where.is_remote else "")
            )
        text = where.read_text()
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{src}: not valid JSON ({exc}); expected a STAC item or ItemCollection") from None
    return data if isinstance(data, dict) else None


def _stac_items(src: str, items_dir: Location, sign: HrefSigner) -> list[SceneSource]:
    """The items of a STAC item or ItemCollection file, each written as an item JSON whose asset
    hrefs are absolute (relative ones resolved against ``src``) and signed."""
    data = _read_json(src) or {}
    if data.get("type") == "FeatureCollection":
        items = data.get("features") or []
    elif data.get("type") == "Feature":
        items = [data]
    else:
        raise InputError(f"{src}: expected a STAC item or ItemCollection, found type {data.get('type')!r}")
    base = location(src).parent
    items_dir.makedirs()
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or item.get("type") != "Feature" or not item.get("assets"):
            raise InputError(f"{src}: feature {i} is not a STAC item with assets")
        for asset in item["assets"].values():
            asset["href"] = base.resolve(str(asset.get("href", "")))
        unsigned = json.dumps(item, sort_keys=True)
        for asset in item["assets"].values():
            asset["href"] = sign(asset["href"]) if asset["href"] else asset["href"]
        item_id = str(item.get("id") or f"item{i}")
        path = items_dir / f"{scene_id(item_id, src + '#' + item_id)}.json"
        path.write_text(json.dumps(item))
        out.append(
            SceneSource(
                Path(path.name).stem,
                str(path),
                dict(item.get("properties") or {}),
                origin=f"{src}#{item_id}",
                sha256=hashlib.sha256(unsigned.encode()).hexdigest(),
            )
        )
    return out

"""Moving finished products into place: all of them, or (on an error) none."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import InputError
from ..storage import Location
from ..storage.contained import contained
from ..storage.durable import durable_replace
from .publish_remote import publish_to_object_store


def product_names(out: Location, manifest: dict) -> dict[str, str]:
    """The ``outputs`` (key -> file name) of the ``run.json`` in ``out``, each checked to lie
    strictly inside ``out`` (:func:`.contained`): a copied or edited manifest naming
    ``/home/me`` or ``../x.gpkg`` is refused (InputError) before anything is read or removed."""
    outputs = manifest.get("outputs", {})
    if not isinstance(outputs, dict):
        raise InputError(f"{out / 'run.json'}: 'outputs' should map products to file names, found {outputs!r}")
    for key, name in outputs.items():
        contained(out, name, f"{out / 'run.json'} outputs.{key}")
    return outputs


def move_all(moves: list[tuple[Path, Path]]) -> None:
    """``os.replace`` each ``(src, target)`` in order (a folder target is removed first), each
    synced to disk (contents, then the rename) before the next: callers list the file that
    vouches for the others (``run.json``) last, so after a power loss it is on disk only if they
    are. A failure part-way moves back what was moved, in reverse order, and re-raises."""
    done: list[tuple[Path, Path]] = []
    try:
        for src, target in moves:
            if target.is_dir():
                shutil.rmtree(target)
            durable_replace(src, target)
            done.append((src, target))
    except BaseException:
        for src, target in reversed(done):
            os.replace(target, src)
        raise


def replace_products(out: Location, new: Path, names: list[str], replaced: list[str]) -> None:
    """Put the products ``names`` (files in the local folder ``new``, with the ``run.json`` that
    vouches for them) into ``out`` in place of ``replaced``: all of them, or on an error none.

    Locally ``new`` lies inside ``out`` (``os.replace`` stays on one file system): the replaced
    files are moved aside into ``new/replaced``. Object stores cannot rename: the new files are
    uploaded under ``OUT/<new's name>/``, the replaced ones copied there, then each copied into
    place, ``run.json`` last; an error removes what was placed and copies the old ones back."""
    incoming = [*names, "run.json"]
    for n in replaced:  # names a manifest gave: never reach outside ``out``
        contained(out, n, "a replaced product")
    if out.is_local:
        aside = new / "replaced"
        aside.mkdir(exist_ok=True)
        moves = [(out.path / n, aside / n) for n in replaced if (out.path / n).exists()]
        move_all(moves + [(new / n, out.path / n) for n in incoming])
        return
    staging = out / new.name
    for n in incoming:
        (staging / n).put_file(new / n)
    kept = [n for n in dict.fromkeys([*replaced, "run.json"]) if (out / n).exists()]
    for n in kept:
        (out / n).copy_to(staging / "replaced" / n)
    placed: list[str] = []
    try:
        for n in incoming:
            placed.append(n)
            (staging / n).copy_to(out / n)
    except BaseException:
        for n in placed:
            (out / n).rm()
        for n in kept:
            (staging / "replaced" / n).copy_to(out / n)
        raise
    for n in set(replaced) - set(names):
        (out / n).rm()
    staging.rm()


def publish_products(
    final: Path, store_path: Location, out: Location, outputs: dict[str, str], *, keep_store: bool = False
) -> None:
    """Move the products of a scene or region job into ``out``: the store after the files (until
    then it stays next to its block markers, so a failure costs no block), ``run.json`` last. A
    failure part-way moves back what was moved: no product lies under its final name without the
    run.json that vouches for it. A previous ``run.json`` in ``out`` goes first (a region adding
    scenes replaces its products): from then on nothing vouches for the products it named.
    ``keep_store``: ``store_path`` stays where it is and a copy is published (a region's merge
    keeps its store for the next pass). On object storage: uploaded under temporary keys and
    copied into place (the store is always copied there), see ``publish_remote``."""
    (out / "run.json").rm()
    if out.is_remote:
        publish_to_object_store(final, store_path, out, outputs)
        return
    store = store_path.path
    if keep_store:
        store = final / outputs["zarr"]
        shutil.rmtree(store, ignore_errors=True)
        shutil.copytree(store_path.path, store)
    moves = [(final / name, out.path / name) for key, name in outputs.items() if key != "zarr"]
    moves += [(store, out.path / outputs["zarr"]), (final / "run.json", out.path / "run.json")]
    move_all(moves)

"""Publishing a job's products to object storage, where nothing can be renamed.

Each product is uploaded under a temporary key (``OUT/.work/final/NAME``), then copied into
place server-side (an object appears whole or not at all); the output store is copied from
``OUT/.work``; ``run.json`` comes last. So a reader that finds ``run.json`` finds every
product complete. A failure part-way removes the products it already placed, so a re-run
(which finds no ``run.json``) re-publishes from the work left under ``OUT/.work``.
"""

from __future__ import annotations

from pathlib import Path

from ..storage import Location


def publish_to_object_store(final: Path, store: Location, out: Location, outputs: dict[str, str]) -> None:
    """``final``: the local folder holding the products and ``run.json``; ``store``: the output
    Zarr store under ``OUT/.work``; ``outputs``: product key -> file name (``zarr``: the store)."""
    names = [name for key, name in outputs.items() if key != "zarr"] + ["run.json"]
    staged = out / ".work" / "final"
    for name in names:
        (staged / name).put_file(final / name)
    placed: list[Location] = []
    try:
        for name in names[:-1]:
            placed.append(out / name)
            (staged / name).copy_to(out / name)
        target = out / outputs["zarr"]
        target.rm()
        placed.append(target)
        store.copy_to(target)
        (staged / "run.json").copy_to(out / "run.json")
    except BaseException:
        for target in reversed(placed):
            target.rm()
        raise
    staged.rm()  # a region keeps OUT/.work for its next pass: not the copies of its products

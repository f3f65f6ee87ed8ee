"""Write the deployable manifests with this deployment's values (cluster/placeholders.yaml).

    python cluster/fill.py OUT_DIR image=REGISTRY/landslide-batch:TAG storage_class=CLASS   (shared disk)
    python cluster/fill.py OUT_DIR image=REGISTRY/landslide-batch:TAG bucket=BUCKET        (object storage)

Copies cluster/*.yaml, cluster/object-storage/*.yaml and ray-cluster.yaml into OUT_DIR (the
same relative paths), replacing on each line marked `# PLACEHOLDER: <key>` that key's
placeholder value. A manifest is written only if every key it holds is given (a copy with a
placeholder left in it would not deploy); the others are named as left out.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

CLUSTER = Path(__file__).resolve().parent
MARK = re.compile(r"#\s*PLACEHOLDER:\s*(\w+)\s*$")


def manifests() -> list[Path]:
    found = [*CLUSTER.glob("*.yaml"), *CLUSTER.glob("object-storage/*.yaml")]
    return sorted(p for p in found if p.name != "placeholders.yaml") + [CLUSTER.parent / "ray-cluster.yaml"]


def target(out: Path, path: Path) -> Path:
    """Where ``path``'s filled copy goes in ``out``: its path under cluster/ (ray-cluster.yaml: its name)."""
    return out / (path.relative_to(CLUSTER) if path.is_relative_to(CLUSTER) else path.name)


def placeholders() -> dict[str, str]:
    return {key: entry["value"] for key, entry in yaml.safe_load((CLUSTER / "placeholders.yaml").read_text()).items()}


def marked_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, key) of every placeholder mark in a manifest."""
    return [(i, m.group(1)) for i, line in enumerate(path.read_text().splitlines(), 1) if (m := MARK.search(line))]


def fill(text: str, values: dict[str, str], known: dict[str, str]) -> str:
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if m := MARK.search(line):
            lines[i] = line.replace(known[m.group(1)], values[m.group(1)])
    return "".join(lines)


def main(argv: list[str]) -> int:
    if not argv or any("=" not in a for a in argv[1:]):
        print(__doc__, file=sys.stderr)
        return 2
    out, values = Path(argv[0]), dict(a.split("=", 1) for a in argv[1:])
    known = placeholders()
    unknown = sorted(set(values) - set(known))
    if unknown or not values:
        print(f"fill.py: keys are {', '.join(known)} (got {', '.join(values) or 'none'})", file=sys.stderr)
        return 2
    written, left_out = [], []
    for path in manifests():
        missing = sorted({key for _, key in marked_lines(path)} - set(values))
        if missing:
            left_out.append(f"{path.relative_to(CLUSTER.parent)} (needs {', '.join(missing)})")
            continue
        dest = target(out, path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(fill(path.read_text(), values, known))
        written.append(str(dest))
    print(f"{len(written)} manifests written: {', '.join(written)}")
    if left_out:
        print(f"left out: {'; '.join(left_out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

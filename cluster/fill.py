"""Write the deployable manifests with this deployment's values (cluster/placeholders.yaml).

    python cluster/fill.py OUT_DIR image=REGISTRY/landslide-batch:TAG storage_class=CLASS

Copies cluster/*.yaml and ray-cluster.yaml into OUT_DIR, replacing on each line marked
`# PLACEHOLDER: <key>` that key's placeholder value. Every key must be given: a copy with a
placeholder left in it would not deploy.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

CLUSTER = Path(__file__).resolve().parent
MARK = re.compile(r"#\s*PLACEHOLDER:\s*(\w+)\s*$")


def manifests() -> list[Path]:
    return sorted(p for p in CLUSTER.glob("*.yaml") if p.name != "placeholders.yaml") + [
        CLUSTER.parent / "ray-cluster.yaml"
    ]


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
    if sorted(values) != sorted(known):
        print(
            f"fill.py: give exactly {', '.join(f'{k}=...' for k in known)} (got {', '.join(values) or 'none'})",
            file=sys.stderr,
        )
        return 2
    out.mkdir(parents=True, exist_ok=True)
    for path in manifests():
        (out / path.name).write_text(fill(path.read_text(), values, known))
    print(f"{len(manifests())} manifests written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

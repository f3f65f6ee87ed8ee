"""Layers import one way: no module of ``landslide_batch`` imports from a layer above its own,
no two modules import each other (directly or round a longer cycle), and no module imports a
private name (``_x``) from another module.

The walker parses every module with ``ast`` (no import side effects), so lazy imports inside
functions and ``TYPE_CHECKING`` blocks count, and relative imports are resolved to the top-level
module or package of ``landslide_batch`` they reach.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "landslide_batch"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

# Bottom to top. A module may import from its own layer and the layers below it.
LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(names.split())
    for names in (
        "errors bands schema hashing storage gdal_env locking metrics download synthetic fetch_data progress",
        "ingest plan",
        "models",
        "config",
        "infer",
        "outputs checks resolved",
        "mapping",
        "scene_job",
        "region",
        "pipeline",
        "jobs app commands cli api",
    )
)
#: Training uses landslide_batch, never the reverse (its folder ``training/`` installs as ``landslide_training``).
FORBIDDEN_ROOTS = frozenset({"training", "landslide_training"})


@dataclass(frozen=True)
class Import:
    """One import statement's target, seen from the module that holds it."""

    module: str  # dotted name of the importing module
    line: int
    target: str  # dotted name of what it imports (a module, or a module's attribute)


def module_name(path: Path, root: Path) -> str:
    """Dotted module name of ``path`` under the directory ``root`` that holds the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    """Absolute name of ``from <level dots><name> import ...`` written in ``module``."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def imports_of(path: Path, root: Path) -> list[Import]:
    """Every import in the file, at any depth (module level, functions, conditional blocks)."""
    module = module_name(path, root)
    is_package = path.name == "__init__.py"
    found: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [Import(module, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve_relative(module, is_package, node.level, node.module) if node.level else node.module or ""
            # ``from pkg import name`` may import submodule ``pkg.name``: keep the name, so that
            # ``from landslide_batch import config`` resolves to the config layer.
            found += [Import(module, node.lineno, f"{source}.{alias.name}") for alias in node.names]
    return found


def top_level(dotted: str, package: str) -> str | None:
    """The top-level module/package of ``package`` that ``dotted`` reaches, else None."""
    parts = dotted.split(".")
    if parts[0] != package or len(parts) < 2:
        return None
    return parts[1]


def layer_of(name: str, layers: tuple[frozenset[str], ...]) -> int | None:
    return next((i for i, members in enumerate(layers) if name in members), None)


def top_level_members(package_dir: Path) -> set[str]:
    """Names of the package's top-level modules and subpackages (with or without __init__)."""
    members = {p.stem for p in package_dir.glob("*.py") if p.name != "__init__.py"}
    members |= {p.name for p in package_dir.iterdir() if p.is_dir() and any(p.rglob("*.py"))}
    return members


def layer_violations(
    package_dir: Path,
    layers: tuple[frozenset[str], ...] = LAYERS,
    forbidden: frozenset[str] = FORBIDDEN_ROOTS,
) -> list[str]:
    """One message per upward or forbidden import, naming the module, its line and both layers."""
    package, members = package_dir.name, top_level_members(package_dir)
    problems = []
    for path in sorted(package_dir.rglob("*.py")):
        for imp in imports_of(path, package_dir.parent):
            where = f"{imp.module}:{imp.line} imports {imp.target}"
            if imp.target.split(".")[0] in forbidden:
                problems.append(f"{where}: {package} never imports {imp.target.split('.')[0]}")
                continue
            own, other = top_level(imp.module, package), top_level(imp.target, package)
            if own is None or other is None or own == other:
                continue
            if other not in members:
                continue  # an attribute of the package root (``from landslide_batch import x``)
            own_layer, other_layer = layer_of(own, layers), layer_of(other, layers)
            if own_layer is not None and other_layer is not None and other_layer > own_layer:
                problems.append(f"{where}: upward from layer {own_layer} ({own}) to layer {other_layer} ({other})")
    return problems


def _modules(package_dir: Path) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    return {module_name(path, package_dir.parent): path for path in sorted(package_dir.rglob("*.py"))}


def _imported_module(target: str, modules: dict[str, Path]) -> tuple[str, str | None] | None:
    """-> (the package's module that ``target`` names or holds, the attribute imported from it or
    None); None for a target outside the package."""
    if target in modules:
        return target, None
    owner, _, name = target.rpartition(".")
    return (owner, name) if owner in modules else None


def private_imports(package_dir: Path) -> list[str]:
    """One message per private name (``_x``, not a dunder) imported from another module: a
    module's private names are its own, free to change without a look elsewhere. A private
    submodule (``pkg/_x.py``) may be imported within its own package."""
    modules, problems = _modules(package_dir), []
    for module, path in modules.items():
        for imp in imports_of(path, package_dir.parent):
            found = _imported_module(imp.target, modules)
            name = imp.target.rpartition(".")[2]
            if found is None or not name.startswith("_") or name.startswith("__") or found[0] == module:
                continue
            own_package = module if path.name == "__init__.py" else module.rpartition(".")[0]
            if found[1] is None and found[0].rpartition(".")[0] == own_package:
                continue  # a private submodule of the importer's own package
            problems.append(f"{module}:{imp.line} imports {imp.target}: a private name of another module")
    return problems


def import_cycles(package_dir: Path) -> list[list[str]]:
    """The package's import cycles: each a sorted list of modules that reach one another through
    imports at any depth (lazy and ``TYPE_CHECKING`` ones too), found as strongly connected
    components (Tarjan). ``from pkg import name`` counts as importing ``pkg``."""
    modules = _modules(package_dir)
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for imp in imports_of(path, package_dir.parent):
            found = _imported_module(imp.target, modules)
            if found is not None and found[0] != module:
                edges[module].add(found[0])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                cycles.append(sorted([v, *component]))

    for v in sorted(modules):
        if v not in index:
            visit(v)
    return sorted(cycles)


def unassigned(package_dir: Path, layers: tuple[frozenset[str], ...] = LAYERS) -> set[str]:
    return {name for name in top_level_members(package_dir) if layer_of(name, layers) is None}


def test_every_top_level_module_is_placed_in_a_layer():
    missing = unassigned(PACKAGE_DIR)
    assert not missing, f"place these in LAYERS of tests/test_layers.py: {sorted(missing)}"
    stale = set().union(*LAYERS) - top_level_members(PACKAGE_DIR)
    assert not stale, f"LAYERS names modules that no longer exist: {sorted(stale)}"


def test_no_module_imports_from_a_layer_above_its_own():
    problems = layer_violations(PACKAGE_DIR)
    assert not problems, "upward imports:\n" + "\n".join(problems)


def test_no_import_cycle_between_modules():
    cycles = import_cycles(PACKAGE_DIR)
    assert not cycles, "modules that import each other:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_module_imports_a_private_name_of_another():
    problems = private_imports(PACKAGE_DIR)
    assert not problems, "private imports:\n" + "\n".join(problems)


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def planted(tmp_path):
    """A small package: ``low`` < ``mid`` < ``top``, with upward imports planted in ``low``."""
    pkg = tmp_path / "pkg"
    _write(pkg, "__init__.py", "")
    _write(pkg, "top.py", "from .mid import helper\nfrom pkg.low import base\n")
    _write(pkg, "mid/__init__.py", "from ..low import base\n")
    _write(pkg, "mid/inner.py", "from . import sibling\nfrom ... import top  # beyond pkg: ignored\n")
    _write(
        pkg,
        "low/__init__.py",
        "def lazy():\n    from ..mid import inner\n    import pkg.top\n    from pkg import mid\n",
    )
    _write(pkg, "low/deep.py", "import training.train\nfrom .. import top\n")
    return pkg


LOW_MID_TOP = (frozenset({"low"}), frozenset({"mid"}), frozenset({"top"}))


def test_walker_finds_planted_upward_imports_lazy_relative_and_absolute(planted):
    problems = layer_violations(planted, LOW_MID_TOP)
    assert problems == [
        "pkg.low:2 imports pkg.mid.inner: upward from layer 0 (low) to layer 1 (mid)",
        "pkg.low:3 imports pkg.top: upward from layer 0 (low) to layer 2 (top)",
        "pkg.low:4 imports pkg.mid: upward from layer 0 (low) to layer 1 (mid)",
        "pkg.low.deep:1 imports training.train: pkg never imports training",
        "pkg.low.deep:2 imports pkg.top: upward from layer 0 (low) to layer 2 (top)",
    ]


def test_walker_flags_a_module_not_placed_in_any_layer(planted):
    _write(planted, "newcomer.py", "")
    assert unassigned(planted, LOW_MID_TOP) == {"newcomer"}


def test_walker_finds_planted_cycles_direct_lazy_and_longer(planted):
    # planted: pkg.low lazily imports pkg.mid, pkg.mid.inner and pkg.top, which reach pkg.low again
    assert import_cycles(planted) == [["pkg.low", "pkg.mid", "pkg.mid.inner", "pkg.top"]]
    clean = planted.parent / "clean"
    _write(clean, "__init__.py", "")
    _write(clean, "a.py", "from .b import f\n")
    _write(clean, "b.py", "from .c import g\n")
    _write(clean, "c.py", "import math\n")
    assert import_cycles(clean) == []
    _write(clean, "c.py", "def later():\n    from .a import h\n")  # a -> b -> c -> a, lazily
    assert import_cycles(clean) == [["clean.a", "clean.b", "clean.c"]]


def test_walker_finds_planted_private_imports(planted):
    _write(planted, "mid/helpers.py", "def _hidden():\n    pass\n")
    _write(planted, "mid/_inner_impl.py", "")
    _write(planted, "mid/user.py", "from .helpers import _hidden\nfrom . import _inner_impl\n")
    _write(
        planted, "top.py", "from .mid.helpers import _hidden\nfrom .mid import _inner_impl\nfrom .low import __doc__\n"
    )
    assert private_imports(planted) == [
        "pkg.mid.user:1 imports pkg.mid.helpers._hidden: a private name of another module",
        "pkg.top:1 imports pkg.mid.helpers._hidden: a private name of another module",
        "pkg.top:2 imports pkg.mid._inner_impl: a private name of another module",
    ]

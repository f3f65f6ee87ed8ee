"""No function or method in the project's code is longer than 80 lines: long ones are split into
named steps, so each reads on one screen and its steps can be tested on their own."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("landslide_batch", "training", "benchmarks", "cluster", "scripts")
MAX_LINES = 80


def long_functions(source: str, max_lines: int = MAX_LINES) -> list[tuple[str, int]]:
    """(qualified name, lines) of each function in ``source`` longer than ``max_lines``, from its
    ``def`` line to its last line (decorators not counted; nested functions counted in their parent too)."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef) and (n := child.end_lineno - child.lineno + 1) > max_lines:
                    found.append((name, n))
                name += "."
            visit(child, name)

    visit(ast.parse(source), "")
    return found


def _function(name: str, lines: int, indent: str = "", kind: str = "def") -> str:
    return f"{indent}{kind} {name}():\n" + "".join(f"{indent}    x = {i}\n" for i in range(lines - 1))


def test_the_check_measures_from_def_to_last_line():
    source = (
        "class C:\n    @staticmethod\n"  # a decorator is not counted: fits stays at 80
        + _function("fits", 80, "    ")
        + _function("long", 81, "    ", kind="async def")
        + "def outer():\n"
        + _function("inner", 81, "    ")  # outer: its own line + inner's 81
    )
    assert long_functions(source) == [("C.long", 81), ("outer", 82), ("outer.inner", 81)]


def test_no_function_over_80_lines():
    files = sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)
    assert len(files) > 50  # the folders were found
    too_long = [
        f"{path.relative_to(ROOT)}::{name} ({n} lines)"
        for path in files
        for name, n in long_functions(path.read_text(encoding="utf-8"))
    ]
    assert not too_long, f"functions over {MAX_LINES} lines; split them into named steps:\n" + "\n".join(too_long)

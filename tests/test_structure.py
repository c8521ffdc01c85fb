"""The structure the library keeps (issue: structure): small functions and modules, layers that stay
layers, one tile parser. A failure here names the place that grew."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "srdistill"
TESTS = Path(__file__).resolve().parent
LIBRARY = [p for p in SRC.rglob("*.py") if "cli" not in p.relative_to(SRC).parts]


def test_library_functions_stay_under_80_lines_and_modules_under_600():
    long_modules = [f"{p.relative_to(SRC)}: {n} lines" for p in LIBRARY
                    if (n := len(p.read_text().splitlines())) > 600]
    long_functions = []
    for p in LIBRARY:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long_functions.append(f"{p.relative_to(SRC)}:{node.lineno} {node.name}: {n} lines")
    assert not long_modules and not long_functions, long_modules + long_functions


def test_the_library_never_imports_the_console():
    offenders = []
    for p in LIBRARY:
        if p.name == "console.py":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] == "console":
                offenders.append(str(p.relative_to(SRC)))
    assert not offenders, offenders


def test_one_tile_parser():
    defs = [f"{p.relative_to(SRC)}:{node.name}" for p in SRC.rglob("*.py")
            for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, ast.FunctionDef) and "tile" in node.name and node.name.startswith(("parse", "_parse"))]
    # upscale's parse_tile is a one-line wrapper that sets its minimum tile size
    assert sorted(defs) == ["tiling.py:parse_tile", "upscale.py:parse_tile"], defs
    wrapper = next(n for n in ast.walk(ast.parse((SRC / "upscale.py").read_text()))
                   if isinstance(n, ast.FunctionDef) and n.name == "parse_tile")
    assert wrapper.end_lineno - wrapper.lineno <= 3


def test_imports_inside_functions_say_why_they_are_lazy():
    """Library imports live at the module top; one inside a function carries a comment (on its line or
    the line above) saying why it must be lazy: start-up time, an optional or costly library, a stdlib
    module newer than our oldest Python, ..."""
    silent = []
    for p in LIBRARY:
        lines = p.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    text = lines[sub.lineno - 1:sub.end_lineno]
                    above = lines[sub.lineno - 2].strip() if sub.lineno >= 2 else ""
                    if not any("#" in t for t in text) and not above.startswith("#"):
                        silent.append(f"{p.relative_to(SRC)}:{sub.lineno}: {text[0].strip()}")
    assert not silent, "imports inside functions with no comment saying why:\n" + "\n".join(sorted(set(silent)))


def test_every_library_module_imports_on_its_own():
    """No import cycle hidden by an import order: each module imports first in a fresh interpreter."""
    import subprocess
    import sys

    names = sorted(".".join(("srdistill",) + p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
                   for p in SRC.rglob("*.py") if "assets" not in p.parts)
    code = ("import importlib, sys\nbad = []\nfor n in sys.argv[1:]:\n"
            "    for m in [k for k in sys.modules if k.startswith('srdistill')]: del sys.modules[m]\n"
            "    try: importlib.import_module(n)\n"
            "    except ImportError as e: bad.append(f'{n}: {e}')\nprint('\\n'.join(bad))")
    out = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


def _module_name(p: Path) -> str:
    return ".".join(("srdistill",) + p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")


def _imported(p: Path, node: ast.ImportFrom | ast.Import) -> list[tuple[str, str | None]]:
    """(module, name) for each srdistill name an import statement takes: relative imports resolved
    against ``p`` (a file under src/srdistill, or a test, whose imports are absolute)."""
    if isinstance(node, ast.Import):
        return [(a.name, None) for a in node.names if a.name.split(".")[0] == "srdistill"]
    base = node.module or ""
    if node.level:
        package = _module_name(p).split(".")
        if p.name != "__init__.py":
            package = package[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    if base.split(".")[0] != "srdistill":
        return []
    return [(base, a.name) for a in node.names]


def _is_private(name: str | None) -> bool:
    return bool(name) and name.startswith("_") and not name.startswith("__")


def test_no_private_name_is_imported_from_another_module():
    """A name another module uses is public and imported from where it lives: ``from .x import _y`` (or
    ``from srdistill.x import _y``, in the library or the tests) means ``_y`` is in the wrong module or
    wrongly private. A private module (``models/_compat.py``) is a module, not a name, and may be imported."""
    modules = {_module_name(p) for p in SRC.rglob("*.py")}
    offenders = []
    for p in list(SRC.rglob("*.py")) + list(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                for module, name in _imported(p, node):
                    if _is_private(name) and f"{module}.{name}" not in modules:
                        offenders.append(f"{p.relative_to(SRC.parents[1])}:{node.lineno}: from {module} import {name}")
    assert not offenders, "private names imported across modules:\n" + "\n".join(offenders)


def import_graph() -> dict[str, set[str]]:
    """module -> the srdistill modules it imports anywhere in its file: at the top, inside functions
    (lazily), under ``if TYPE_CHECKING``. ``from .pkg import sub`` names the submodule ``sub``; any other
    ``from .m import x`` names ``m`` (a package's ``__init__``)."""
    files = {_module_name(p): p for p in SRC.rglob("*.py") if "assets" not in p.parts}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for m, p in files.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for module, name in _imported(p, node):
                target = f"{module}.{name}" if f"{module}.{name}" in files else module
                if target in files and target != m:
                    graph[m].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_no_two_modules_import_each_other_even_lazily():
    """The import graph over src/srdistill, imports inside functions included, has no cycle: a lazy
    import is for start-up time, never a way round a circle (a circle means a name lives in the wrong
    module). A package's ``__init__`` may import its own modules; they then import what they need from a
    sibling (``registry.py``), never from the package."""
    cycle = _cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)

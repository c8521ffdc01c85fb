"""The structure the library keeps (issue: structure): small functions and modules, layers that stay
layers, one tile parser. A failure here names the place that grew."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "srdistill"
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

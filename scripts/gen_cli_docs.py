"""Regenerate the command reference and the family table in README.md from the CLI and the registry.

    python scripts/gen_cli_docs.py          # rewrite README.md between the cli markers
    python scripts/gen_cli_docs.py --check  # exit 1 if README.md is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from srdistill.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- cli:begin -->", "<!-- cli:end -->"
FAM_BEGIN, FAM_END = "<!-- families:begin -->", "<!-- families:end -->"


def _replace(text: str, begin: str, end: str, body: str) -> str | None:
    if begin not in text or end not in text:
        return None
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def render() -> str:
    group = typer.main.get_command(app)
    out = []
    for name, cmd in group.commands.items():
        args = [p for p in cmd.params if p.param_type_name == "argument"]
        opts = [p for p in cmd.params if p.param_type_name == "option" and p.name != "help"]
        usage = " ".join([f"srdistill {name}"] + [a.name.upper() + ("..." if a.nargs == -1 else "") for a in args]
                         + ["[OPTIONS]"])
        out += [f"### `srdistill {name}`", "", (cmd.help or "").strip().replace("\n", " "), "",
                f"```\n{usage}\n```", "", "| option | meaning | default |", "|---|---|---|"]
        for a in args:
            out.append(f"| `{a.name.upper()}` | {(getattr(a, 'help', '') or '').replace('|', '/')} | required |")
        for o in opts:
            names = ", ".join(f"`{x}`" for x in [*o.opts, *o.secondary_opts])
            empty = o.default is None or o.default is False or (isinstance(o.default, (list, tuple)) and not o.default)
            default = "" if empty or o.required else f"`{o.default}`"
            if o.is_flag and o.secondary_opts:
                default = f"`{o.opts[0] if o.default else o.secondary_opts[0]}`"
            if o.required:
                default = "required"
            out.append(f"| {names} | {(o.help or '').replace('|', '/')} | {default} |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    from srdistill.models.families import family_table

    text = README.read_text()
    new = _replace(text, BEGIN, END, render())
    new = new and _replace(new, FAM_BEGIN, FAM_END, "\n".join(family_table()))
    if new is None:
        print("README.md lacks the cli or families markers", file=sys.stderr)
        return 1
    if "--check" in sys.argv:
        if new != text:
            print("README.md command reference is out of date: run python scripts/gen_cli_docs.py",
                  file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

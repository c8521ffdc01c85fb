"""The ``srdistill`` command line: thin wrappers that parse, call the library, render.

Each command lives in its own module in this package and registers itself on
``app``. Library code never prints; commands render result objects as rich
tables (stdout) or one JSON document (``--json``), and progress on stderr.
"""

from __future__ import annotations

import importlib
import sys

import typer
from typer.core import TyperGroup

try:  # typer >= 0.2x vendors its own copy of click
    from typer._click import exceptions as _cx
    from typer._click import echo as _echo
except ImportError:  # older typer runs on click itself
    from click import exceptions as _cx
    from click import echo as _echo

from ..console import debug_enabled, escape_control, stderr_console


_DIR_OPTIONS = {"data", "val", "calibration", "teacher_cache_dir", "save_images"}


def _type_word(p) -> str:
    """"int", "float", "path", "bool", "str" ... for typer's own parameters and for click's."""
    bare = getattr(p, "bare_type", None)
    name = bare() if callable(bare) else getattr(getattr(p, "type", None), "name", "")
    name = str(name).lower()
    for key in ("path", "int", "float", "bool", "choice"):
        if key in name:
            return key
    return "str"


def _word_metavars(group) -> None:
    """Help placeholders in words (DIR, FILE, N, X, TEXT), not Python types (``<list[Path]>``)."""
    words = {"path": "FILE", "int": "N", "float": "X", "str": "TEXT"}
    for cmd in group.commands.values():
        for p in cmd.params:
            kind = _type_word(p)
            if p.param_type_name == "argument":
                p.metavar = p.metavar or p.name.upper()
                if hasattr(p, "display_type_rich"):  # typer's own help: the name says it, no "<path>"
                    p.display_type_rich = lambda ctx: None
                continue
            if p.metavar or getattr(p, "is_flag", False) or kind in ("bool", "choice"):
                continue
            else:
                p.metavar = ("DIR" if p.name in _DIR_OPTIONS else "PATH" if p.name in ("output", "out")
                             else words[kind])


class _Group(TyperGroup):
    """Usage errors as one line (``error: ...``, exit 2), never a traceback or a box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        _word_metavars(self)
        try:
            rv = super().main(args=args, prog_name=prog_name or "srdistill", complete_var=complete_var,
                              standalone_mode=False, **extra)
        except _cx.NoArgsIsHelpError as e:  # bare `srdistill`: help on stdout, exit 0
            _echo(e.ctx.get_help())
            rv = 0
        except _cx.UsageError as e:
            hint = f" (see 'srdistill {e.ctx.info_name} --help')" if e.ctx and e.ctx.parent else " (see 'srdistill --help')"
            stderr_console().print(f"error: {escape_control(e.format_message())}{hint}", style="red", markup=False, soft_wrap=True)
            rv = 2
        except typer.Abort:
            stderr_console().print("error: aborted", style="red")
            rv = 130
        except _cx.ClickException as e:
            stderr_console().print(f"error: {escape_control(e.format_message())}", style="red", markup=False, soft_wrap=True)
            rv = e.exit_code
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=_Group,
    name="srdistill",
    help="Compress pretrained super-resolution models by knowledge distillation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=debug_enabled(),
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool):
    if value:
        from .. import __version__

        typer.echo(f"srdistill {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """srdistill: distill big SR teachers into small, fast, verified students."""


# One module per command; each defines its command with ``@app.command``.
_COMMANDS = ["info", "distill", "plan", "export", "eval", "upscale"]
for _name in _COMMANDS:
    importlib.import_module(f"{__name__}.{_name}")


def main() -> None:
    if not debug_enabled():  # an architecture's UserWarning (torch.meshgrid ...) is not the user's business
        import warnings

        warnings.simplefilter("ignore")
    app()

"""``srdistill upscale``: run a super-resolution model over image files."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from . import app
from ..console import PlainTable, escape_control, RichReporter, print_json, run_cli, stderr_console, stdout_console
from ..data.images import DEFAULT_MAX_PIXELS, DEFAULT_PNG_LEVEL


class _LineReporter(RichReporter):
    """RichReporter whose messages stay one line each (no wrapping at the terminal width),
    so a log or a script can grep a warning with the file name in it."""

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(escape_control(message), markup=False, soft_wrap=True, highlight=False)

    def warn(self, message: str) -> None:
        self.console.print(f"warning: {escape_control(message)}", style="yellow", markup=False, soft_wrap=True,
                           highlight=False)


def _size(s) -> str:
    return f"{s[0]}x{s[1]}" if s else "-"


@app.command("upscale")
def upscale_cmd(
    inputs: List[str] = typer.Argument(..., metavar="INPUT",
                                       help="Image files, folders or glob patterns (quote patterns for the shell)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m",
                                         help="An srdistill student, any supported checkpoint, an .onnx, an "
                                              "OpenVINO .xml or an ncnn .param file. Default: the bundled "
                                              "default model."),
    output: Optional[str] = typer.Option(None, "--output", "-o",
                                         help="Output file (one input file) or folder (an existing folder, a "
                                              "path ending in /, or any path for several inputs). Default: next "
                                              "to each input."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Look in subfolders too (kept under -o)."),
    tile: str = typer.Option("auto", "--tile", "-t",
                             help="Tile size in input pixels, 0 for none, or auto (whole image when it fits, "
                                  "smaller tiles on out-of-memory)."),
    tile_overlap: int = typer.Option(16, "--tile-overlap", help="Context pixels around each tile (seamless blend)."),
    runtime: str = typer.Option("auto", "--runtime",
                                help="auto (the fastest installed runtime, measured at the input size and cached), "
                                     "native (the file's own: checkpoints torch, .onnx onnxruntime), torch, "
                                     "onnxruntime, openvino or ncnn."),
    backend: str = typer.Option("auto", "--backend", hidden=True,
                                help="Deprecated: onnx (--runtime onnxruntime) or torch (--runtime torch)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (torch and onnxruntime)."),
    outscale: Optional[float] = typer.Option(None, "--outscale", "-s",
                                             help="Final size relative to the input (default: the model's scale); "
                                                  "resized with MATLAB bicubic."),
    suffix: Optional[str] = typer.Option(None, "--suffix", help="Appended to output names (default: _x<outscale>)."),
    ext: Optional[str] = typer.Option(None, "--ext",
                                      help="Output format: png (default), jpg, webp, or auto (keep the input's)."),
    png_level: int = typer.Option(DEFAULT_PNG_LEVEL, "--png-level", min=0, max=9,
                                  help="PNG compression, 0-9: 1 is fastest, 9 the smallest files; the pixels "
                                       "are the same at every level."),
    alpha_mode: str = typer.Option("bicubic", "--alpha-mode",
                                   help="Transparency: bicubic (resize the alpha channel) or model (run it "
                                        "through the model)."),
    alpha_old: Optional[str] = typer.Option(None, "--alpha", hidden=True,
                                            help="Deprecated name of --alpha-mode."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels",
                                   help="Refuse larger images before decoding them (0: no limit)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document with every file's result."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or per-file lines (warnings only)."),
) -> None:
    """Upscale images with a super-resolution model (tiled, any size, RGB/RGBA/gray/16-bit).

    Exit status: 0 when every image was written, 1 when any failed or was skipped
    (an existing output without --overwrite), 2 for a usage error.
    """

    def body() -> int:
        from ..upscale import UpscaleOptions, upscale_files

        if alpha_old is not None:
            stderr_console().print("warning: --alpha is deprecated in upscale (it is distill's teacher weight); "
                                   "use --alpha-mode", style="yellow", markup=False, soft_wrap=True)

        opts = UpscaleOptions(
            model=model, output=output, recursive=recursive, tile=tile, tile_overlap=tile_overlap,
            backend=backend, runtime=runtime, device=device, threads=threads, outscale=outscale, suffix=suffix, ext=ext,
            alpha=alpha_mode if alpha_old is None else alpha_old, max_pixels=max_pixels, overwrite=overwrite,
            png_level=png_level,
        )
        res = upscale_files(inputs, opts, _LineReporter(quiet=quiet or json_out))
        if json_out:
            print_json(res)
        else:
            _render(res)
        if res.exit_code:
            bad = len(res.files) - res.ok
            stderr_console().print(
                f"error: {bad} of {len(res.files)} image(s) not written ({res.failed} failed, {res.skipped} skipped)",
                style="red", markup=False, soft_wrap=True)
        return res.exit_code

    code = run_cli(body)
    if code:
        raise typer.Exit(code)


def _render(res) -> None:
    con = stdout_console()
    if not con.is_terminal:
        _render_lines(res, con)
        return
    t = PlainTable(show_header=True, header_style="bold", box=None, pad_edge=False)
    t.add_column("input", overflow="fold")
    t.add_column("output", overflow="fold")
    t.add_column("status")
    t.add_column("size")
    t.add_column("seconds", justify="right")
    failed = any(f.status != "ok" for f in res.files)
    if failed:
        t.add_column("reason", overflow="fold")
    for f in res.files:
        size = f"{_size(f.input_size)} -> {_size(f.output_size)}" if f.status == "ok" else "-"
        row = [f.input, f.output or "-", f.status, size, f"{f.seconds:.2f}"]
        t.add_row(*row, *([f.error or "" if f.status != "ok" else ""] if failed else []))
    con.print(t)
    _summary(res, con)


def _render_lines(res, con) -> None:
    """Piped (a log, a script): one plain line per file, never folded, so it can be grepped."""
    for f in res.files:
        size = f"{_size(f.input_size)} -> {_size(f.output_size)}" if f.status == "ok" else ""
        parts = [f.status, f"{f.input} -> {f.output or '-'}", size, f"{f.seconds:.2f} s"]
        if f.status != "ok":
            parts.append(f"reason: {f.error or 'failed'}")
        con.print(escape_control("  ".join(p for p in parts if p)), soft_wrap=True, markup=False)
    _summary(res, con)


def _summary(res, con) -> None:
    m = res.model
    speed = res.output_mp_per_s
    line = (f"{res.ok} ok, {res.failed} failed, {res.skipped} skipped; "
            f"{res.output_megapixels:.2f} output MP in {res.busy_seconds:.1f} s"
            + (f" ({speed:.3f} MP/s)" if speed is not None else "")
            + f"; {m['architecture']} x{m['scale']} ({m['name']}) on {m['device']} ({m['backend']})")
    con.print(escape_control(line), soft_wrap=True, markup=False)

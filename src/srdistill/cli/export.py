"""``srdistill export``: a checkpoint -> a verified ONNX file (optionally fp16 or int8)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import app
from ..console import PlainTable, RichReporter, print_json, run_cli, stdout_console


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def _diff(v) -> str:
    if v.max_abs_diff is None:
        return "-"
    return f"{v.max_abs_diff:.2e}"


@app.command("export")
def export_cmd(
    model: Path = typer.Argument(..., help="A checkpoint: .safetensors, .pth, .pt or .ckpt."),
    output: str = typer.Option(..., "-o", "--output", help="The .onnx file to write, or a folder (an existing "
                                                           "one, or a path ending in /) to write <model>.onnx into."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (13 to 20)."),
    fp16: bool = typer.Option(False, "--fp16", help="fp16 weights and compute inside (float32 input/output); "
                              "refused where fp16 overflows or drifts more than 2e-2."),
    simplify: bool = typer.Option(True, "--simplify/--no-simplify", help="Simplify the graph with onnxslim "
                                  "(re-verified; on by default)."),
    int8: bool = typer.Option(False, "--int8", help="int8 quantization with onnxruntime: static QDQ calibrated on "
                              "--calibration images, dynamic without them; 7-bit-range weights, so CPUs "
                              "without VNNI do not saturate."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="Folder of HR images for static int8 "
                                               "calibration and the PSNR check (LR is made by bicubic downscale); "
                                               "it must exist and hold images. Without it --int8 is dynamic."),
    max_psnr_drop: float = typer.Option(0.3, "--max-psnr-drop", help="Largest PSNR loss (dB) int8 may cost."),
    force: bool = typer.Option(False, "--force", help="Write an int8 model even if it loses more than "
                               "--max-psnr-drop."),
    static_size: Optional[str] = typer.Option(None, "--static-size", metavar="HxW",
                                              help="Export a fixed-size model (required for window-attention "
                                                   "models such as SwinIR; upscale must then tile at this size)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output (warnings and errors only)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document instead of a table."),
) -> None:
    """Export a model to ONNX and verify it against PyTorch at several input sizes."""

    def body():
        from ..export import ExportOptions, export_onnx, parse_static_size

        opts = ExportOptions(opset=opset, fp16=fp16, simplify=simplify, int8=int8, calibration=calibration,
                             max_psnr_drop=max_psnr_drop, force=force, static_size=parse_static_size(static_size),
                             overwrite=overwrite)
        result = export_onnx(model, onnx_output_path(model, output), opts, reporter=RichReporter(quiet=quiet or json_out))
        if json_out:
            print_json(result)
            return
        con = stdout_console()
        v = PlainTable(title="verification: onnxruntime vs PyTorch fp32", title_justify="left")
        for col in ("stage", "input", "batch", "max abs diff", "tolerance", "ok"):
            v.add_column(col, justify="right" if col in ("batch", "max abs diff", "tolerance") else "left")
        for row in result.verification:
            v.add_row(row.stage, f"{row.size[0]}x{row.size[1]}", str(row.batch), _diff(row),
                      "-" if row.tolerance is None else f"{row.tolerance:g}",
                      "yes" if row.ok else f"no: {row.error or ''}")
        con.print(v)
        t = PlainTable(show_header=False, box=None, pad_edge=False)
        t.add_column(style="bold")
        t.add_column()
        t.add_row("wrote", str(result.path))
        t.add_row("model", f"{result.architecture} x{result.scale}, {result.params:,} parameters")
        t.add_row("opset", str(result.opset))
        t.add_row("precision", result.precision)
        t.add_row("simplified", "yes (onnxslim)" if result.simplified else "no")
        if result.static_size:
            h, w = result.static_size
            t.add_row("input size", f"fixed {h}x{w}, batch 1: upscale must tile at exactly {h}x{w}")
        else:
            t.add_row("input size", "dynamic (batch, height, width)")
        if result.reparameterized:
            t.add_row("re-parameterised", f"{result.reparameterized} blocks folded into single convs")
        size = _mb(result.size_bytes)
        if result.size_bytes != result.fp32_size_bytes:
            size += f" (fp32: {_mb(result.fp32_size_bytes)})"
        t.add_row("file size", size)
        q = result.quantization
        if q is not None:
            t.add_row("int8", f"{q.mode} quantization" + (f", {q.calibration_images} calibration patches "
                                                           f"{q.patch_size[0]}x{q.patch_size[1]}"
                                                           if q.mode == "static" else ""))
            if q.psnr_drop is not None:
                t.add_row("PSNR (Y)", f"fp32 {q.psnr_fp32:.2f} dB, int8 {q.psnr_int8:.2f} dB, drop {q.psnr_drop:.3f} dB "
                                      f"({q.images} {q.image_source} images vs HR)")
            else:
                t.add_row("PSNR (Y)", f"int8 vs fp32 output {q.psnr_int8_vs_fp32:.2f} dB (no HR images)")
            t.add_row("CPU speed", f"fp32 {q.fp32_ms:.1f} ms, int8 {q.int8_ms:.1f} ms at "
                                   f"{q.speed_size[0]}x{q.speed_size[1]}: x{q.speedup:.2f}")
        t.add_row("sha256", result.sha256)
        con.print(t)

    run_cli(body)


def onnx_output_path(model: Path, output: str) -> Path:
    """``-o`` names the .onnx file, or a folder that receives ``<model stem>.onnx``."""
    from ..errors import UsageError

    out = Path(output)
    if output.endswith(("/", "\\")) or out.is_dir():
        return out / (Path(model).stem + ".onnx")
    if out.suffix.lower() != ".onnx":
        raise UsageError(f"-o {output!r}: an ONNX file must end in .onnx", hint=f"use -o {out.with_suffix('.onnx')}")
    return out

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
    output: str = typer.Option(..., "-o", "--output", help="The file to write (.onnx, .xml or .param), or a "
                                                           "folder (an existing one, or a path ending in /) to "
                                                           "write <model>.<suffix> into."),
    fmt: Optional[str] = typer.Option(None, "--format", help="onnx, openvino (IR .xml + .bin) or ncnn (.param + "
                                                            ".bin, fp16 storage, through pnnx). Default: from "
                                                            "the -o suffix, else onnx."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (13 to 20)."),
    fp16: bool = typer.Option(False, "--fp16", help="fp16 weights and compute inside (float32 input/output); "
                              "refused where fp16 overflows or drifts more than 2e-2."),
    simplify: bool = typer.Option(True, "--simplify/--no-simplify", help="Simplify the graph with onnxslim "
                                  "(re-verified; on by default)."),
    int8: bool = typer.Option(False, "--int8", help="int8 quantization (onnx: onnxruntime, static QDQ calibrated "
                              "on --calibration images, dynamic without them; openvino: NNCF). Weights: "
                              "full range on a CPU with VNNI, 7-bit range elsewhere (see --int8-weights)."),
    int8_weights: str = typer.Option("auto", "--int8-weights", help="int8 weight range: auto (full with VNNI, "
                                     "else 7-bit), full or reduced (7-bit: safe on every x86 CPU)."),
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
    """Export a model to ONNX, OpenVINO IR or ncnn and verify it against PyTorch at several input sizes."""

    def body():
        from ..export import ExportOptions, export_model, parse_static_size

        opts = ExportOptions(opset=opset, fp16=fp16, simplify=simplify, int8=int8, calibration=calibration,
                             max_psnr_drop=max_psnr_drop, force=force, static_size=parse_static_size(static_size),
                             overwrite=overwrite, int8_weights=str(int8_weights).strip().lower())
        kind, out = output_path(model, output, fmt)
        result = export_model(kind, model, out, opts, reporter=RichReporter(quiet=quiet or json_out))
        if json_out:
            print_json(result)
            return
        con = stdout_console()
        runtime = {"onnx": "onnxruntime", "openvino": "OpenVINO", "ncnn": "ncnn"}[result.format]
        v = PlainTable(title=f"verification: {runtime} vs PyTorch fp32", title_justify="left")
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
        t.add_row("wrote", ", ".join(result.files) or str(result.path))
        t.add_row("model", f"{result.architecture} x{result.scale}, {result.params:,} parameters")
        t.add_row("format", result.format)
        if result.format != "ncnn":
            t.add_row("opset", str(result.opset))
        t.add_row("precision", result.precision + (" storage" if result.format == "ncnn" else ""))
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
                                                           if q.mode != "dynamic" else "")
                      + f"; {'full' if q.weights == 'full' else '7-bit'}-range weights "
                        f"({'this CPU has VNNI' if q.vnni else 'no VNNI on this CPU'})")
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


def output_path(model: Path, output: str, fmt: str | None) -> tuple[str, Path]:
    """(format, file): ``-o`` names the file, or a folder that receives ``<model stem><suffix>``; the
    format is --format, else the file's suffix, else onnx."""
    from ..errors import UsageError
    from ..export import FORMATS

    if fmt is not None and fmt.strip().lower() not in FORMATS:
        raise UsageError(f"invalid --format {fmt!r}", hint="use onnx, openvino or ncnn")
    out = Path(output)
    folder = output.endswith(("/", "\\")) or out.is_dir()
    by_suffix = next((k for k, v in FORMATS.items() if not folder and out.suffix.lower() == v), None)
    kind = fmt.strip().lower() if fmt is not None else (by_suffix or "onnx")
    suffix = FORMATS[kind]
    if folder:
        return kind, out / (Path(model).stem + suffix)
    if out.suffix.lower() != suffix:
        raise UsageError(f"-o {output!r}: {'an ONNX' if kind == 'onnx' else f'a {kind}'} file must end in {suffix}",
                         hint=f"use -o {out.with_suffix(suffix)}")
    return kind, out


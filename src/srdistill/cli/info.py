"""``srdistill info``: what a model file is."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from ..console import PlainTable, print_json, run_cli, stdout_console


def _fmt(v) -> str:
    if isinstance(v, int) and abs(v) >= 10000:
        return f"{v:,}"
    return str(v)


@app.command("info")
def info_cmd(
    model: Path = typer.Argument(..., help="A model file: .safetensors, .pth, .pt, .ckpt, .onnx, OpenVINO .xml or ncnn .param."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document instead of a table."),
) -> None:
    """Show a model's architecture, scale, size, width/depth knobs and stored metadata."""

    def body():
        from ..info import model_info

        info = model_info(model)
        if json_out:
            print_json(info)
            return
        t = PlainTable(title=str(model), show_header=False, box=None, pad_edge=False)
        t.add_column(style="bold")
        t.add_column(overflow="fold")  # wrap, never cut: the sha256 is there to be copied
        t.add_row("architecture", str(info.architecture))
        t.add_row("format", info.format)
        t.add_row("scale", f"x{info.scale}" if info.scale else "unknown (not in the metadata or the graph's shapes; "
                                                              "the graph is not run to find out)")
        if info.params is not None:
            extra = f" ({_fmt(info.params_total)} incl. training-only branches)" if (
                info.params_total and info.params_total != info.params) else ""
            t.add_row("parameters", _fmt(info.params) + extra)
        for k, v in info.knobs.items():
            if isinstance(v, dict):
                t.add_row(k, f"{v['value']}  ({str(v['name']).strip('()')})")
            else:
                t.add_row(k, str(v))
        if info.input_channels is not None:
            t.add_row("channels", f"{info.input_channels} in, {info.output_channels} out")
        if info.size_requirements:
            sr = info.size_requirements
            t.add_row("input size", f"minimum {sr['minimum']}, multiple of {sr['multiple_of']}"
                      + (", square" if sr["square"] else ""))
        if info.fp16_safe is not None:
            t.add_row("fp16 safe", "yes" if info.fp16_safe else "no")
        if info.onnx:
            o = info.onnx
            t.add_row("opset", str(o["opset"]))
            for io in o["inputs"]:
                t.add_row("input", f"{io['name']} {io['shape']} {io['dtype']}")
            for io in o["outputs"]:
                t.add_row("output", f"{io['name']} {io['shape']} {io['dtype']}")
            t.add_row("dynamic axes", ", ".join(f"{k}: {v}" for k, v in o["dynamic_axes"].items()))
        if info.runtime_file:
            f = info.runtime_file
            if f.get("ir_version"):
                t.add_row("IR version", str(f["ir_version"]))
            for io in f["inputs"]:
                t.add_row("input", f"{io['name']} {io['shape']}" if isinstance(io, dict) else str(io))
            for io in f["outputs"]:
                t.add_row("output", f"{io['name']} {io['shape']}" if isinstance(io, dict) else str(io))
            t.add_row("layers", str(f["layers"]))
            t.add_row("weights", str(f["weights"]))
        if info.hyperparameters:
            t.add_row("hyperparameters", ", ".join(f"{k}={v}" for k, v in info.hyperparameters.items()))
        srd = info.srdistill
        if srd.get("teacher"):
            te = srd["teacher"]
            t.add_row("teacher", f"{te.get('architecture')} {te.get('file') or ''} ({_fmt(te.get('params'))} params)")
        if srd.get("config"):
            cfg = srd["config"]
            t.add_row("training", ", ".join(f"{k}={v}" for k, v in cfg.items() if not isinstance(v, (dict, list))))
        if srd.get("metrics"):
            t.add_row("metrics", ", ".join(f"{k}={v}" for k, v in _flat(srd["metrics"]).items()))
        if info.modelspec.get("title"):
            t.add_row("title", info.modelspec["title"])
        t.add_row("sha256", str(info.sha256))
        stdout_console().print(t)

    run_cli(body)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = round(v, 4) if isinstance(v, float) else v
    return out

"""``srdistill plan``: which student fits a budget (latency measured here, quality by a short proxy)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from . import app
from ..console import PlainTable, RichReporter, escape_control, print_json, run_cli, stdout_console


def _cell(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def render_plan(res) -> None:
    """The table, the pick and its command on stdout."""
    t = PlainTable(title=f"students for {res.teacher['architecture']} x{res.teacher['scale']} at "
                         f"{res.size[0]}x{res.size[1]} (input {res.input_size[0]}x{res.input_size[1]})")
    for h in ("family", "width", "depth", "params", "MB", "GFLOPs", "ms", "fps", "proxy PSNR", "fits", "note"):
        t.add_column(h, justify="left" if h in ("family", "fits", "note") else "right")
    for c in res.candidates:
        if c.status == "failed" and c.ms is None and not c.params:
            continue  # not buildable for this teacher: counted in the progress lines, not a row
        t.add_row(c.family, str(c.width), _cell(c.depth, "d"), f"{c.params:,}", f"{c.mb:.3f}", f"{c.gflops:.2f}",
                  _cell(c.ms, ".1f"), _cell(c.fps, ".1f"), _cell(c.proxy_psnr, ".3f"), "yes" if c.fits else "no",
                  c.status if c.status in ("proxy", "measured") else f"{c.status}: {c.reason}")
    out = stdout_console()
    out.print(t)
    p = res.pick
    if p is None:
        out.print("pick: none (no fitting candidate could be scored)", markup=False)
        return
    out.print(escape_control(f"pick: {p.name} ({p.params:,} params, {p.ms:.1f} ms = {p.fps:.1f} fps with "
                             f"{p.runtime}, proxy PSNR {p.proxy_psnr:.3f} dB)"), markup=False, soft_wrap=True)
    out.print(escape_control(res.command), markup=False, soft_wrap=True)


@app.command("plan")
def plan_cmd(
    teacher: Path = typer.Argument(..., help="The pretrained teacher: .safetensors, .pth, .pt or .ckpt."),
    budget: Optional[str] = typer.Option(None, "--budget", help="Time per output frame (33ms), frame rate "
                                                                "(30fps), file size (1.5MB) or parameters "
                                                                "(250k params)."),
    size: str = typer.Option("1920x1080", "--size", help="OUTPUT size WIDTHxHEIGHT the budget is for (the "
                                                         "input is this divided by the scale)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    runtime: str = typer.Option("auto", "--runtime", help="Runtime the latency is measured in: auto (the fastest "
                                                          "installed, as upscale picks), torch, onnxruntime, "
                                                          "openvino or ncnn."),
    families: Optional[List[str]] = typer.Option(None, "--families", help="Student families to consider, comma "
                                                                          "separated (default: every registered "
                                                                          "family, and the teacher's own shrunk)."),
    max_params: Optional[str] = typer.Option(None, "--max-params", help="At most N parameters (250000, 250k, 1.5M)."),
    max_mb: Optional[float] = typer.Option(None, "--max-mb", help="At most X MB of fp32 weights."),
    data: List[Path] = typer.Option([], "--data", help="HR training images for the proxy distillation "
                                                       "(default: the built-in photos)."),
    val: List[Path] = typer.Option([], "--val", help="HR images the proxy is scored on (default: the built-in "
                                                     "val photos)."),
    proxy_steps: int = typer.Option(300, "--proxy-steps", help="Steps of each candidate's proxy distillation."),
    max_proxy: int = typer.Option(6, "--max-proxy", help="At most N fitting candidates get a proxy distillation."),
    repeats: int = typer.Option(5, "--repeats", help="Timed runs per candidate (the median counts)."),
    pack: Optional[Path] = typer.Option(None, "--pack", help="Keep the proxy's training pack here (reused by "
                                                             "later plans and distills with the same inputs)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (torch and the runtimes)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the proxy runs."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document instead of a table."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output (warnings and errors only)."),
) -> None:
    """Find the student that fits a budget on this machine: candidates of every family, latency measured
    at --size with the chosen runtime, quality by a short proxy distillation; prints the table, the pick
    and the distill command for it."""

    def body():
        from ..plan import ProxySettings, plan, plan_options  # lazy: torch, for the --help start-up path

        opts = plan_options(teacher, budget=budget, max_params=max_params, max_mb=max_mb, size=size, device=device,
                            runtime=runtime, families=families, threads=threads, repeats=repeats,
                            max_proxy=max_proxy,
                            proxy=ProxySettings(steps=proxy_steps, data=[str(d) for d in data],
                                                val=[str(v) for v in val] if val else None,
                                                pack=str(pack) if pack else None, seed=seed))
        res = plan(opts, RichReporter(quiet=quiet or json_out))
        if json_out:
            print_json(res.to_dict())
        else:
            render_plan(res)

    run_cli(body)

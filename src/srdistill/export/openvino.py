"""OpenVINO IR (.xml + .bin) from the verified fp32 ONNX graph: ``openvino.convert_model``, optionally int8
through NNCF (``nncf.quantize`` on the calibration images, else synthetic ones, with the ONNX int8 PSNR
guard), ``openvino.save_model`` (fp32 weights; ``--fp16``: fp16 weights), and the saved files verified
against PyTorch at the same sizes as the ONNX export. The srdistill metadata goes in the IR's rt_info."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError, first_line
from ..fileio import check_writable
from ..progress import NULL, Reporter
from ..runtimes import get_runtime
from ..runtimes.openvino_runtime import RT_INFO_KEY, compile_options
from ..runtimes.openvino_runtime import core as ov_core  # the process's one Core
from .files import digest, staged
from .int8_checks import int8_pairs, int8_psnr, int8_speed
from .onnx import fp32_graph, psnr_guard
from .options import ExportOptions, ExportResult, Int8Report, int8_weight_range
from .prepare import source_hash
from .verify import quiet_export

# Lazy imports here: openvino and nncf are optional extras (seconds to import); only this format needs them.


class _Session:
    """A compiled OpenVINO model behind onnxruntime's ``run(names, feeds)`` (the int8 checks use it)."""

    def __init__(self, compiled):
        self.c = compiled

    def run(self, names, feeds):
        return [np.array(self.c(feeds["input"])[0], dtype=np.float32, copy=True)]


def export_openvino(model: Any, out_path: str | os.PathLike, options: ExportOptions | None = None,
                    reporter: Reporter = NULL) -> ExportResult:
    """``model`` (a checkpoint path or an SRModel) -> a verified OpenVINO IR at ``out_path`` (.xml, with
    its .bin beside it). Errors as :func:`srdistill.export.export_onnx`."""
    get_runtime("openvino").require()
    import openvino as ov  # lazy (see the note at the top)

    o = options or ExportOptions()
    out = Path(out_path)
    check_writable(out.with_suffix(".bin"), overwrite=o.overwrite)  # before any work, as for the .xml
    g = fp32_graph(model, out, o, reporter, "OpenVINO")
    ex, src = g.ex, g.ex.model
    core = ov_core()
    with quiet_export():
        ov_model = ov.convert_model(io.BytesIO(g.data))
    quant = None
    precision = "int8" if o.int8 else "fp16" if o.fp16 else "fp32"
    if o.int8:
        ov_model, quant = _nncf_int8(ex, core, ov_model, g.calib_paths)
    source_sha = source_hash(src)
    ex.metadata(g.proto, precision=precision, source_sha256=source_sha, params=src.params, quant=quant,
                simplified=g.simplified)
    meta = {p.key: p.value for p in g.proto.metadata_props}
    meta["srdistill.export"] = json.dumps({"format": "openvino", "openvino": ov.__version__, "onnx_opset": o.opset})
    ov_model.set_rt_info(json.dumps(meta), RT_INFO_KEY)
    bin_path = out.with_suffix(".bin")
    with staged(out, [bin_path], overwrite=o.overwrite) as tmp:
        ov.save_model(ov_model, str(tmp / out.name), compress_to_fp16=o.fp16)
        if (tmp / out.with_suffix(".bin").name) != tmp / bin_path.name:  # pragma: no cover - same stem
            raise ExportError("OpenVINO wrote its weights under another name")
        _verify_saved(ex, core, tmp / out.name, precision)
    sha, size = digest([out, bin_path])
    reporter.info(f"wrote {out} and {bin_path.name} ({size / 1e6:.2f} MB, {precision})")
    return ExportResult(
        path=out, architecture=src.architecture, scale=int(src.scale), opset=o.opset, fp16=precision == "fp16",
        int8=precision == "int8", simplified=g.simplified, static_size=ex.static, verification=ex.verification,
        size_bytes=size, fp32_size_bytes=len(g.data), params=int(src.params), sha256=sha, source_sha256=source_sha,
        reparameterized=g.folded, quantization=quant, warnings=ex.warnings, format="openvino",
        files=[str(out), str(bin_path)])


def _verify_saved(ex, core, xml: Path, precision: str) -> None:
    """The files as written, read back and run at every verification size."""
    tol = {"fp32": ex.o.atol, "fp16": ex.o.atol_fp16}.get(precision)
    stage = "openvino" if precision == "fp32" else f"openvino {precision}"
    try:
        compiled = core.compile_model(core.read_model(str(xml)), "CPU", compile_options(None))
    except Exception as e:  # noqa: BLE001 - openvino raises RuntimeError and friends
        raise ExportError(f"OpenVINO cannot load the IR it wrote: {first_line(e)}") from None
    rows = ex.verify(None, stage, tol, run=lambda x: np.array(compiled(x)[0], copy=True))
    if not all(v.ok for v in rows):
        raise ExportError(f"OpenVINO does not reproduce the PyTorch {ex.model.architecture} model "
                          f"{ex.fail_message(rows, tol)}")


def _nncf_int8(ex, core, ov_model, calib_paths) -> tuple[Any, Int8Report]:
    """NNCF post-training quantization on LR patches, then the PSNR guard of the ONNX int8 export."""
    try:
        import nncf  # lazy (see the note at the top)
    except ImportError:
        raise ExportError("OpenVINO int8 needs NNCF, which is not installed",
                          hint='pip install "srdistill[openvino]"') from None
    pairs, source = int8_pairs(ex, calib_paths)
    weights, vnni = int8_weight_range(ex.o.int8_weights)
    ex.r.info(f"int8: NNCF quantization, {'7-bit' if weights == 'reduced' else 'full'}-range weights, "
              f"calibrating on {len(pairs)} {source} patches")
    try:
        with quiet_export():
            # the weight range: NNCF's overflow fix is its 7-bit weights (the saturation onnxruntime's
            # reduce_range avoids on CPUs without VNNI); full range on a CPU with VNNI
            fix = nncf.OverflowFix.ENABLE if weights == "reduced" else nncf.OverflowFix.DISABLE
            q = nncf.quantize(ov_model, nncf.Dataset([p.lr for p in pairs]), subset_size=len(pairs),
                              advanced_parameters=nncf.AdvancedQuantizationParameters(overflow_fix=fix))
    except Exception as e:  # noqa: BLE001 - NNCF raises many types
        raise ExportError(f"NNCF quantization failed: {first_line(e)}") from None
    s32 = _Session(core.compile_model(ov_model, "CPU", compile_options(None)))
    s8 = _Session(core.compile_model(q, "CPU", compile_options(None)))
    reference, psnr32, psnr8, drop, vs_fp32, n_hr = int8_psnr(ex, s32, s8, pairs)
    t32, t8, sp = int8_speed(ex, s32, s8)
    quant = Int8Report(
        mode="nncf", images=n_hr if n_hr else len(pairs), image_source=source, psnr_reference=reference,
        psnr_fp32=psnr32, psnr_int8=psnr8, psnr_drop=drop, psnr_int8_vs_fp32=vs_fp32,
        calibration_images=len(pairs), patch_size=tuple(int(v) for v in pairs[0].lr.shape[-2:]),
        fp32_ms=t32, int8_ms=t8, speedup=(t32 / t8) if t8 > 0 else float("inf"), speed_size=tuple(sp),
        weights=weights, vnni=vnni)
    psnr_guard(ex, quant)
    return q, quant

"""ncnn (.param + .bin) through pnnx, with fp16 weight storage as ncnn apps (Real-ESRGAN-ncnn-vulkan,
waifu2x-ncnn-vulkan, Upscayl) expect: the prepared PyTorch module (re-parameterised blocks folded) traced
by pnnx at two input shapes so height and width stay dynamic, then run by ncnn at the same three sizes as
the ONNX export and compared with PyTorch (fp16 storage: within the fp16 tolerance, 2e-2). ncnn's
.param has no place for metadata: it is written beside it as ``<name>.srdistill.json``. int8 and fixed
sizes are not offered for ncnn."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from ..errors import ExportError, UsageError, first_line
from ..fileio import check_writable
from ..progress import NULL, Reporter
from ..runtimes import get_runtime
from ..runtimes.ncnn_runtime import NcnnModel, open_net, pnnx_convert, sidecar
from .files import digest, staged
from .onnx import prepare
from .options import ExportOptions, ExportResult
from .prepare import source_hash


def export_ncnn(model: Any, out_path: str | os.PathLike, options: ExportOptions | None = None,
                reporter: Reporter = NULL) -> ExportResult:
    """``model`` (a checkpoint path or an SRModel) -> a verified ncnn model at ``out_path`` (.param, with
    its .bin and .srdistill.json beside it). Errors as :func:`srdistill.export.export_onnx`."""
    o = options or ExportOptions()
    if o.int8:
        raise UsageError("--int8 is not implemented for ncnn exports",
                         hint="export ncnn without --int8 (fp16 storage), or use --format onnx or openvino")
    if o.static_size:
        raise UsageError("--static-size is not offered for ncnn exports", hint="use --format onnx or openvino")
    get_runtime("ncnn").require()
    out = Path(out_path)
    for companion in (out.with_suffix(".bin"), sidecar(out)):  # before any work, as for the main file
        check_writable(companion, overwrite=o.overwrite)
    p = prepare(model, out, o, reporter, "ncnn")
    ex, src = p.ex, p.ex.model
    keys = list(ex.inputs)
    shapes = [torch.from_numpy(ex.inputs[keys[0]]), torch.from_numpy(ex.inputs[keys[-1]])]
    bin_path, meta_path = out.with_suffix(".bin"), sidecar(out)
    with tempfile.TemporaryDirectory(prefix="srdistill-pnnx-") as work:
        try:
            with torch.no_grad():
                param = pnnx_convert(p.module, Path(work), [s[:1] for s in shapes], fp16=True)
        except Exception as e:  # noqa: BLE001 - pnnx raises many types
            raise ExportError(f"pnnx could not convert {src.architecture}: {first_line(e)}") from None
        _verify(ex, param)
        source_sha = source_hash(src)
        proto = onnx.ModelProto()
        ex.metadata(proto, precision="fp16", source_sha256=source_sha, params=src.params, quant=None,
                    simplified=False)
        meta = {e.key: e.value for e in proto.metadata_props}
        meta["srdistill.export"] = json.dumps({"format": "ncnn", "converter": "pnnx", "fp16_storage": True,
                                               "dynamic": True})
        with staged(out, [bin_path, meta_path], overwrite=o.overwrite) as tmp:
            shutil.copyfile(param, tmp / out.name)
            shutil.copyfile(param.with_suffix(".bin"), tmp / bin_path.name)
            (tmp / meta_path.name).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    sha, size = digest([out, bin_path])
    reporter.info(f"wrote {out} and {bin_path.name} ({size / 1e6:.2f} MB, fp16 storage)")
    return ExportResult(
        path=out, architecture=src.architecture, scale=int(src.scale), opset=0, fp16=True, int8=False,
        simplified=False, static_size=None, verification=ex.verification, size_bytes=size, fp32_size_bytes=size,
        params=int(src.params), sha256=sha, source_sha256=source_sha, reparameterized=p.folded,
        warnings=ex.warnings, format="ncnn", files=[str(out), str(bin_path), str(meta_path)])


def _verify(ex, param: Path) -> None:
    net = NcnnModel(path=param, session=open_net(param), scale=int(ex.model.scale), architecture="ncnn")
    names = (list(net.session.input_names()), list(net.session.output_names()))
    if len(names[0]) != 1 or len(names[1]) != 1:
        raise ExportError(f"pnnx made an ncnn graph with {len(names[0])} inputs and {len(names[1])} outputs")
    net.input_name, net.output_name = names[0][0], names[1][0]
    rows = ex.verify(None, "ncnn fp16", ex.o.atol_fp16, run=lambda x: net.run(np.asarray(x)))
    if not all(v.ok for v in rows):
        raise ExportError(f"ncnn does not reproduce the PyTorch {ex.model.architecture} model "
                          f"{ex.fail_message(rows, ex.o.atol_fp16)}")

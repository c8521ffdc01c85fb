"""ONNX export with verification, optional simplification, fp16 and int8 quantization.

One call, :func:`export_onnx`, turns a checkpoint (or a loaded :class:`SRModel`) into an ONNX
file that follows the ecosystem contract (input ``input``, output ``output``, NCHW float32 RGB in
[0, 1], dynamic ``batch``/``height``/``width``) and that has been *checked*: onnxruntime must
reproduce the PyTorch output at the export size and at two other sizes (one non-square with a
batch of 2, one not a multiple of 8 where the architecture allows it) before anything is
written. A failed check raises :class:`~srdistill.errors.ExportError` and leaves no file behind.

Stages (each one re-verified against the same fp32 PyTorch references):

1. ``torch.onnx.export`` with the TorchScript exporter (``dynamo=False``), in eval mode, with
   re-parameterised convolutions (SPAN's ``Conv3XC``) folded into their single deploy conv
   first, so the graph carries no training-branch compute.
2. ``--simplify`` (default): ``onnxslim.slim``. A graph that onnxslim breaks is not shipped: the
   unsimplified, verified graph is kept and a warning says so.
3. ``--fp16``: ``onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)``
   (internal fp16, float32 I/O so the contract holds), refused when the fp16 graph produces
   NaN/inf or differs from fp32 PyTorch by more than 2e-2.
4. ``--int8``: onnxruntime static QDQ quantization (per-channel int8 weights: full range on a CPU with
   VNNI, 7-bit range elsewhere so CPUs without VNNI do not saturate -- ``ExportOptions.int8_weights``
   forces either; the choice is recorded in the metadata and the result -- and uint8 activations)
   calibrated on LR patches made from ``--calibration DIR`` (images are treated as HR and
   downscaled with srdistill's MATLAB-compatible bicubic), or dynamic quantization when no
   calibration folder is given (its quality is then measured on built-in synthetic images).
   A ``--calibration`` folder that is missing or holds no images is an error, not a silent
   fallback to dynamic quantization.
   The PSNR (Y channel, crop = scale, BasicSR) of the fp32 and int8 models against the HR
   images is compared; a drop above ``max_psnr_drop`` refuses the file unless ``force``.

Window-attention models (SwinIR, HAT, DAT, ...) bake the input size into the traced graph;
they are refused unless a fixed size is asked for with ``static_size``, which exports a
fixed-shape (batch 1) model and records ``srdistill.static_size`` in the metadata: such a model
must be run tile by tile at exactly that size.
"""

from __future__ import annotations

from .onnx import export_onnx  # noqa: F401
from .options import (MAX_OPSET, MIN_OPSET, WINDOW_ATTENTION_FAMILIES, ExportOptions, ExportResult,  # noqa: F401
                      Int8QualityError, Int8Report, Verification, parse_static_size)
__all__ = [
    "ExportOptions",
    "ExportResult",
    "Verification",
    "Int8Report",
    "Int8QualityError",
    "export_onnx",
    "export_model",
    "FORMATS",
    "parse_static_size",
    "WINDOW_ATTENTION_FAMILIES",
    "MIN_OPSET",
    "MAX_OPSET",
]




#: ``export --format``: the file suffix each writes and its export function's module (OpenVINO and ncnn are
#: optional extras: their modules are imported when asked for)
FORMATS = {"onnx": ".onnx", "openvino": ".xml", "ncnn": ".param"}


def export_model(fmt: str, model, out_path, options: ExportOptions | None = None, reporter=None) -> ExportResult:
    """Export ``model`` in ``fmt`` (onnx, openvino or ncnn), verified against PyTorch."""
    from ..progress import NULL  # lazy: keeps this package's import list as it was

    rep = reporter or NULL
    if fmt == "openvino":
        from .openvino import export_openvino  # lazy: OpenVINO is an optional extra

        return export_openvino(model, out_path, options, rep)
    if fmt == "ncnn":
        from .ncnn import export_ncnn  # lazy: ncnn and pnnx are an optional extra

        return export_ncnn(model, out_path, options, rep)
    return export_onnx(model, out_path, options, rep)

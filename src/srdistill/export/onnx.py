"""ONNX: tracing, graph surgery, fp16/int8 with the PSNR guard, verification in onnxruntime, the file."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from .. import __version__
from ..errors import ExportError, BadPathError, UnsupportedModelError, UsageError, first_line, raise_if_terminated
from ..fileio import atomic_path, check_writable
from ..metadata import json_safe
from ..models.families import get_family
from ..models.loading import SRModel, load_model
from ..progress import NULL, Reporter
from .calibration import check_calibration
from .int8_checks import int8_pairs, int8_psnr, int8_speed
from .options import (ExportOptions, ExportResult, Int8QualityError, Int8Report, Verification, check_options,
                      int8_weight_range)
from .prepare import (fold_reparameterized, fp16_hazards, patch_for_export, source_hash, suggest_static,
                      uses_window_attention)
from .surgery import initializer_names, set_io, toposort
from .verify import plan_sizes, quiet_export, synthetic_batch


# --------------------------------------------------------------------------- the export


def _session(model_bytes: bytes):
    import onnxruntime as ort  # lazy: only verification and int8 need onnxruntime

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 4  # failures are reported by us, as one line
    return ort.InferenceSession(model_bytes, sess_options=so, providers=["CPUExecutionProvider"])


def _serialize(proto) -> bytes:
    try:
        return proto.SerializeToString()
    except ValueError as e:  # protobuf's 2 GiB limit
        raise ExportError(f"the ONNX graph cannot be serialised: {first_line(e)}",
                          hint="models over 2 GB are not supported") from None

class Exporter:
    def __init__(self, model, out_path: Path, opts: ExportOptions, reporter: Reporter):
        self.model = model
        self.out = out_path
        self.o = opts
        self.r = reporter
        self.verification: list[Verification] = []
        self.warnings: list[str] = []
        self.static = tuple(opts.static_size) if opts.static_size else None
        self.cin = int(model.input_channels)
        self.cout = int(model.output_channels)

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)
        self.r.warn(msg)

    # -- references ------------------------------------------------------------------------

    def references(self, module: torch.nn.Module, sizes) -> None:
        self.inputs: dict[tuple, np.ndarray] = {}
        self.refs: dict[tuple, np.ndarray] = {}
        for i, (b, h, w) in enumerate(sizes):
            key = (i, b, h, w)
            x = synthetic_batch(b, self.cin, h, w, seed=1000 + i)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                y = module(torch.from_numpy(x))
            if isinstance(y, (tuple, list)):
                y = y[0]
            y = y.detach().to("cpu", torch.float32).numpy()
            if y.shape != (b, self.cout, h * self.model.scale, w * self.model.scale):
                raise UnsupportedModelError(
                    f"{self.model.architecture} maps a {h}x{w} input to shape {tuple(y.shape)}, "
                    f"not an x{self.model.scale} image; it cannot be exported as an SR model")
            if not np.isfinite(y).all():
                raise ExportError(f"the PyTorch model itself outputs NaN/inf at {h}x{w}: nothing to export")
            self.inputs[key] = x
            self.refs[key] = y

    # -- verification ----------------------------------------------------------------------

    def verify(self, model_bytes: bytes | None, stage: str, tol: float | None, run=None) -> list[Verification]:
        """Each reference input through onnxruntime (``model_bytes``) or ``run`` (another runtime: an
        NCHW float32 array in, the output array out), compared with PyTorch's fp32 output."""
        rows: list[Verification] = []
        if run is None:
            try:
                sess = _session(model_bytes)
            except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
                raise_if_terminated()  # a SIGTERM while onnxruntime called into Python is not its failure
                for (_, b, h, w) in self.refs:
                    rows.append(Verification(stage, (h, w), b, None, tol, False,
                                             f"onnxruntime cannot load it: {first_line(e)}"))
                self.verification += rows
                return rows

            def run(x):
                return sess.run(["output"], {"input": x})[0]
        with self.r.task(f"verifying ({stage})", total=len(self.refs)) as task:
            for key, ref in self.refs.items():
                _, b, h, w = key
                try:
                    y = np.asarray(run(self.inputs[key]), dtype=np.float32)
                except Exception as e:  # noqa: BLE001
                    raise_if_terminated()  # a SIGTERM during the run, turned into onnxruntime's error
                    rows.append(Verification(stage, (h, w), b, None, tol, False, first_line(e)))
                    task.advance(1)
                    continue
                raise_if_terminated()  # or swallowed on its way: the output is then no evidence either
                if y.shape != ref.shape:
                    rows.append(Verification(stage, (h, w), b, None, tol, False,
                                             f"output shape {tuple(y.shape)}, expected {tuple(ref.shape)}"))
                elif not np.isfinite(y).all():
                    rows.append(Verification(stage, (h, w), b, float("inf"), tol, False, "output has NaN/inf"))
                else:
                    d = float(np.abs(y - ref).max())
                    rows.append(Verification(stage, (h, w), b, d, tol, tol is None or d <= tol))
                task.advance(1)
        self.verification += rows
        return rows

    def fail_message(self, rows: list[Verification], tol: float | None) -> str:
        bad = [v for v in rows if not v.ok]
        v = bad[0]
        where = f"{v.size[0]}x{v.size[1]}" + (f" (batch {v.batch})" if v.batch > 1 else "")
        if v.error:
            return f"at {where}: {v.error}"
        return f"at {where}: max abs diff {v.max_abs_diff:.3g} > {tol:g}"

    def check_export(self, model_bytes: bytes, stage: str) -> bool:
        """Verify an fp32 graph; raise on failure at the export size, report size-dependence."""
        rows = self.verify(model_bytes, stage, self.o.atol)
        if all(v.ok for v in rows):
            return True
        if stage != "export":
            return False  # the caller falls back to the previous, verified graph
        first = rows[0]
        arch = self.model.architecture
        if not first.ok or self.static:
            raise ExportError(f"onnxruntime does not reproduce the PyTorch {arch} model "
                              f"{self.fail_message(rows, self.o.atol)}")
        raise ExportError(
            f"the exported {arch} graph is only right at the size it was traced at "
            f"({first.size[0]}x{first.size[1]}): {self.fail_message(rows, self.o.atol)}",
            hint=f"export a fixed-size model with --static-size {suggest_static(self.model)} "
                 f"and upscale with tiles of that size")

    # -- stages ----------------------------------------------------------------------------

    def torch_export(self, module: torch.nn.Module, trace_hw: tuple[int, int]) -> bytes:
        h, w = trace_hw
        example = torch.from_numpy(synthetic_batch(1, self.cin, h, w, seed=7))
        if self.static:
            axes = None  # fully fixed shape: window models also bake the batch size
        else:
            axes = {"input": {0: "batch", 2: "height", 3: "width"},
                    "output": {0: "batch", 2: "height_out", 3: "width_out"}}
        buf = io.BytesIO()
        try:
            with quiet_export(), torch.no_grad():
                # Pinned to the TorchScript-based exporter (dynamo=False): torch's default switched
                # to the dynamo exporter, which needs onnxscript (not a dependency of srdistill)
                # and exports data-dependent shapes differently.
                torch.onnx.export(
                    module, (example,), buf,
                    input_names=["input"], output_names=["output"],
                    dynamic_axes=axes, opset_version=self.o.opset,
                    do_constant_folding=True, export_params=True,
                    training=torch.onnx.TrainingMode.EVAL,
                    dynamo=False,
                )
        except Exception as e:  # noqa: BLE001 - the exporter raises many types
            raise_if_terminated()
            raise ExportError(f"torch.onnx.export failed for {self.model.architecture} at opset "
                              f"{self.o.opset}: {first_line(e)}") from None
        raise_if_terminated()  # the tracer calls Python from C++ and may drop the handler's exception
        return buf.getvalue()

    def simplify(self, proto):
        import onnxslim  # lazy: 2 s to import; --no-simplify runs skip it

        try:
            with quiet_export(), contextlib.redirect_stdout(io.StringIO()):
                slim = onnxslim.slim(copy.deepcopy(proto))
        except Exception as e:  # noqa: BLE001
            raise_if_terminated()
            self.warn(f"onnxslim failed ({first_line(e, 160)}); keeping the unsimplified graph")
            return None
        raise_if_terminated()
        return slim

    def to_fp16(self, proto):
        try:
            from onnxruntime.transformers.float16 import convert_float_to_float16  # lazy: ~1 s, --fp16 only
        except ImportError as e:  # pragma: no cover - ships with onnxruntime
            raise ExportError(f"--fp16 needs onnxruntime.transformers.float16: {first_line(e)}") from None
        try:
            with quiet_export():
                half = convert_float_to_float16(proto, keep_io_types=True)  # a failure ends the export: no copy kept
        except Exception as e:  # noqa: BLE001
            raise_if_terminated()
            raise ExportError(f"fp16 conversion failed: {first_line(e)}") from None
        toposort(half.graph)
        return half

    def quantize(self, fp32_bytes: bytes, calib_paths: list[Path] | None) -> tuple[bytes, Int8Report]:
        """int8 with onnxruntime (static QDQ on calibration images, else dynamic), and what it costs."""
        if self.cin not in (1, 3) or self.cout != self.cin:
            raise ExportError(f"int8 calibration needs an RGB or grayscale model; this one maps {self.cin} to "
                              f"{self.cout} channels")
        pairs, source = int8_pairs(self, calib_paths)
        mode = "static" if calib_paths is not None else "dynamic"
        weights, vnni = int8_weight_range(self.o.int8_weights)
        int8_bytes = self._run_quantizer(fp32_bytes, pairs, mode, reduce_range=weights == "reduced")
        try:
            s32 = _session(fp32_bytes)
            s8 = _session(int8_bytes)
        except Exception as e:  # noqa: BLE001
            raise_if_terminated()
            raise ExportError(f"onnxruntime cannot run the int8 model: {first_line(e)}") from None
        reference, psnr32, psnr8, drop, vs_fp32, n_hr = int8_psnr(self, s32, s8, pairs)
        t32, t8, sp = int8_speed(self, s32, s8)
        report = Int8Report(
            mode=mode, images=n_hr if n_hr else len(pairs), image_source=source,
            psnr_reference=reference, psnr_fp32=psnr32, psnr_int8=psnr8, psnr_drop=drop,
            psnr_int8_vs_fp32=vs_fp32, calibration_images=len(pairs) if mode == "static" else 0,
            patch_size=tuple(int(v) for v in pairs[0].lr.shape[-2:]),
            fp32_ms=t32, int8_ms=t8, speedup=(t32 / t8) if t8 > 0 else float("inf"), speed_size=tuple(sp),
            weights=weights, vnni=vnni,
        )
        return int8_bytes, report

    def _run_quantizer(self, fp32_bytes: bytes, pairs, mode: str, *, reduce_range: bool = True) -> bytes:
        # lazy: onnxruntime.quantization costs 1.5 s to import and only --int8 runs need it
        from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                              quantize_static)

        with tempfile.TemporaryDirectory(prefix="srdistill-int8-") as tmp:
            src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            src.write_bytes(fp32_bytes)
            self.r.info(f"int8: {mode} quantization, {'7-bit' if reduce_range else 'full'}-range weights"
                        + (f", calibrating on {len(pairs)} patches" if mode == "static" else ""))
            try:
                with quiet_export():
                    if mode == "static":
                        feeds = [{"input": p.lr} for p in pairs]

                        class _Reader(CalibrationDataReader):
                            def __init__(self):
                                self._it = iter(feeds)

                            def get_next(self):
                                return next(self._it, None)

                            def rewind(self):
                                self._it = iter(feeds)

                        # reduce_range: 7-bit weights. On x86 CPUs without VNNI, onnxruntime's u8 x s8 kernels
                        # (VPMADDUBSW) saturate their 16-bit sums (the bundled default model: a 0.49 dB drop
                        # without it, 0.06 dB with it); with VNNI (VPDPBUSD, 32-bit sums) full range is safe.
                        # int8_weights chooses (auto: by this CPU's flags)
                        quantize_static(str(src), str(dst), _Reader(), quant_format=QuantFormat.QDQ,
                                        per_channel=True, reduce_range=reduce_range,
                                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
                    else:
                        quantize_dynamic(str(src), str(dst), per_channel=True, reduce_range=reduce_range,
                                         weight_type=QuantType.QInt8)
            except Exception as e:  # noqa: BLE001
                raise_if_terminated()
                raise ExportError(f"int8 quantization ({mode}) failed: {first_line(e)}") from None
            int8_proto = onnx.load(str(dst))
        set_io(int8_proto, self.cin, self.cout, self.model.scale, self.static)
        return _serialize(int8_proto)

    def metadata(self, proto, *, precision: str, source_sha256: str, params: int, quant: Int8Report | None,
                 simplified: bool) -> None:
        model = self.model
        meta: dict[str, str] = {}
        for k, v in (model.metadata or {}).items():  # provenance from the student file
            if k.startswith("srdistill.") and k in ("srdistill.teacher", "srdistill.metrics", "srdistill.knobs",
                                                    "srdistill.config"):
                meta[k] = v
            elif k == "modelspec.title":
                meta[k] = v
        meta.update({
            "srdistill.version": json.dumps(__version__),
            "srdistill.scale": json.dumps(int(model.scale)),
            "srdistill.architecture": json.dumps(model.architecture),
            "srdistill.hyperparameters": json.dumps(json_safe(model.hyperparameters or {})),
            "srdistill.source_sha256": json.dumps(source_sha256),
            "srdistill.params": json.dumps(int(params)),
            "srdistill.min_size": json.dumps(int(model.min_size)),
            "srdistill.multiple_of": json.dumps(int(model.multiple_of)),
            "srdistill.precision": json.dumps(precision),
            "srdistill.export": json.dumps({"opset": self.o.opset, "simplified": simplified,
                                            "dynamic": self.static is None, "exporter": "torchscript",
                                            "torch": torch.__version__}),
        })
        if "srdistill.knobs" not in meta:
            fam = get_family(model.architecture)
            if fam is not None:
                try:
                    meta["srdistill.knobs"] = json.dumps({"width": fam.get_width(model.hyperparameters),
                                                          "depth": fam.get_depth(model.hyperparameters)})
                except (KeyError, TypeError, ValueError):
                    pass
        if self.static:
            meta["srdistill.static_size"] = json.dumps(list(self.static))
        if quant is not None:
            meta["srdistill.quantization"] = json.dumps(json_safe(quant.to_dict()))
        del proto.metadata_props[:]
        for k in sorted(meta):
            e = proto.metadata_props.add()
            e.key, e.value = k, meta[k]
        proto.producer_name = "srdistill"
        proto.producer_version = __version__
        proto.doc_string = (f"{model.architecture} x{model.scale} super-resolution; input 'input' NCHW float32 RGB "
                            f"in [0, 1]" + (f", fixed size {self.static[0]}x{self.static[1]}" if self.static else ""))


def _load_source(model_or_path):
    """An SRModel from a path or an SRModel; ONNX files are refused with a clear message."""
    if isinstance(model_or_path, SRModel):
        return model_or_path
    p = Path(model_or_path)
    if p.suffix.lower() == ".onnx":
        if not p.exists():
            raise BadPathError(f"model file {str(p)!r} does not exist")
        raise UnsupportedModelError(f"{p.name} is already an ONNX model",
                                    hint="export takes a PyTorch or safetensors checkpoint")
    return load_model(p, device="cpu")


def export_onnx(model: Any, out_path: str | os.PathLike, options: ExportOptions | None = None,
                reporter: Reporter = NULL) -> ExportResult:
    """Export ``model`` (a checkpoint path or an :class:`SRModel`) to a verified ONNX file at ``out_path``.

    Raises :class:`UsageError` for bad options, :class:`ExportError` when the export, a
    verification, the fp16 safety check or int8 quantization fails, :class:`Int8QualityError`
    (exit 3) when int8 loses more than ``max_psnr_drop`` dB without ``force``, and the model
    loading errors. Nothing is written unless every check passed.
    """
    o = options or ExportOptions()
    g = fp32_graph(model, out_path, o, reporter, "ONNX")
    ex, model, out = g.ex, g.ex.model, g.ex.out
    proto, cur_bytes = g.proto, g.data
    fp32_size = len(cur_bytes)
    # 3. precision
    quant = None
    precision = "fp32"
    if o.fp16:
        proto, cur_bytes = _to_fp16(ex, g.module, proto)
        precision = "fp16"
    elif o.int8:
        int8_bytes, quant = _to_int8(ex, cur_bytes, g.calib_paths)
        proto, cur_bytes, precision = onnx.load_from_string(int8_bytes), int8_bytes, "int8"
    # 4. metadata, check, write
    source_sha = source_hash(model)
    ex.metadata(proto, precision=precision, source_sha256=source_sha, params=model.params, quant=quant,
                simplified=g.simplified)
    data = _write(ex, proto, out, precision)
    return ExportResult(
        path=out, architecture=model.architecture, scale=int(model.scale), opset=o.opset, fp16=precision == "fp16",
        int8=precision == "int8", simplified=g.simplified, static_size=ex.static, verification=ex.verification,
        size_bytes=len(data), fp32_size_bytes=fp32_size, params=int(model.params),
        sha256=hashlib.sha256(data).hexdigest(), source_sha256=source_sha, reparameterized=g.folded,
        quantization=quant, warnings=ex.warnings, files=[str(out)])


@dataclass
class Prepared:
    """What every format starts from: the checked options, the fp32 references at the verification sizes,
    and an eval copy of the module with re-parameterised blocks folded and export-safe forwards."""

    ex: "Exporter"
    module: torch.nn.Module
    trace_hw: tuple[int, int]
    folded: int
    train_only: set
    calib_paths: list[Path] | None


@dataclass
class Fp32Graph(Prepared):
    """The verified (and simplified, unless asked not to) fp32 ONNX graph."""

    proto: Any = None
    data: bytes = b""
    simplified: bool = False


def prepare(model: Any, out_path: str | os.PathLike, o: ExportOptions, reporter: Reporter, fmt: str) -> Prepared:
    """Options and paths checked, the model loaded, PyTorch references computed (nothing written)."""
    check_options(o)
    out = Path(out_path)
    check_writable(out, overwrite=o.overwrite)
    model = _load_source(model)
    calib_paths = check_calibration(o.calibration) if (o.int8 and o.calibration is not None) else None
    ex = Exporter(model, out, o, reporter)
    _check_size_options(model, o, ex)
    # a CPU fp32 eval copy; references from it before any export-only change
    module = copy.deepcopy(model.module).to("cpu", torch.float32).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    trace_hw, sizes = plan_sizes(model, o)
    reporter.info(f"exporting {model.architecture} x{model.scale} ({model.params:,} parameters) to {fmt}"
                  + (f" (ONNX opset {o.opset})" if fmt != "ncnn" else "")
                  + (f", fixed size {trace_hw[0]}x{trace_hw[1]}" if ex.static else ", dynamic size"))
    ex.references(module, sizes)
    folded, train_only = fold_reparameterized(module)
    patch_for_export(module)
    return Prepared(ex, module, trace_hw, folded, train_only, calib_paths)


def fp32_graph(model: Any, out_path: str | os.PathLike, o: ExportOptions, reporter: Reporter,
               fmt: str) -> Fp32Graph:
    """:func:`prepare`, then the traced graph verified against PyTorch and simplified (re-verified)."""
    p = prepare(model, out_path, o, reporter, fmt)
    proto, data = _traced(p.ex, p.module, p.trace_hw, p.train_only)
    proto, data, simplified = _simplified(p.ex, proto, data)
    return Fp32Graph(p.ex, p.module, p.trace_hw, p.folded, p.train_only, p.calib_paths, proto, data, simplified)


def onnx_bytes(model: SRModel, opset: int = 17) -> bytes:
    """A dynamic-size fp32 ONNX graph of ``model`` in memory, not verified here: what runtimes that run
    a checkpoint through ONNX (onnxruntime, OpenVINO) load. Window-attention models are refused
    (their graph is only right at the traced size)."""
    o = ExportOptions(opset=opset)
    ex = Exporter(model, Path("model.onnx"), o, NULL)
    _check_size_options(model, o, ex)
    module = copy.deepcopy(model.module).to("cpu", torch.float32).eval()
    fold_reparameterized(module)
    patch_for_export(module)
    trace_hw, _ = plan_sizes(model, o)
    proto = onnx.load_from_string(ex.torch_export(module, trace_hw))
    set_io(proto, ex.cin, ex.cout, model.scale, None)
    return _serialize(proto)


def _check_size_options(model, o: ExportOptions, ex: "Exporter") -> None:
    arch = model.architecture
    if uses_window_attention(model) and not o.static_size:
        raise ExportError(
            f"{arch} uses window attention: its ONNX graph bakes in the input size it was traced at, so a "
            "dynamic-size export would be wrong at other sizes",
            hint=f"export a fixed-size model with --static-size {suggest_static(model)} and upscale with tiles "
                 "of that size")
    if o.static_size:
        h, w = o.static_size
        if h < model.min_size or w < model.min_size:
            raise UsageError(f"--static-size {h}x{w} is below {arch}'s minimum input size {model.min_size}")
        if h % max(1, model.multiple_of) or w % max(1, model.multiple_of):
            raise UsageError(f"--static-size {h}x{w}: {arch} needs a multiple of {model.multiple_of}")
        if model.square and h != w:
            raise UsageError(f"--static-size {h}x{w}: {arch} needs a square input")
    if o.fp16 and not model.supports_half:
        ex.warn(f"spandrel does not mark {arch} as fp16-safe; checking it on test images")


def _traced(ex: "Exporter", module, trace_hw, train_only: set[str]):
    """The traced graph, checked: no training branch left, verified against PyTorch."""

    raw = ex.torch_export(module, trace_hw)
    proto = onnx.load_from_string(raw)
    leaked = sorted(train_only & initializer_names(proto))
    if leaked:
        raise ExportError(f"the exported graph still computes re-parameterisation training branches "
                          f"({leaked[0]}, ...)")
    set_io(proto, ex.cin, ex.cout, ex.model.scale, ex.static)
    cur_bytes = _serialize(proto)
    ex.check_export(cur_bytes, "export")
    return proto, cur_bytes


def _simplified(ex: "Exporter", proto, cur_bytes: bytes):
    """onnxslim's graph when it verifies too, else the original (with a warning)."""
    if not ex.o.simplify:
        return proto, cur_bytes, False
    slim = ex.simplify(proto)
    if slim is None:
        return proto, cur_bytes, False
    set_io(slim, ex.cin, ex.cout, ex.model.scale, ex.static)
    slim_bytes = _serialize(slim)
    if ex.check_export(slim_bytes, "simplified"):
        return slim, slim_bytes, True
    ex.warn("the simplified graph failed verification "
            f"({ex.fail_message([v for v in ex.verification if v.stage == 'simplified'], ex.o.atol)}); "
            "keeping the unsimplified graph")
    return proto, cur_bytes, False


def _to_fp16(ex: "Exporter", module, proto):
    """fp16 weights and compute, refused where activations overflow or outputs drift."""
    o, arch = ex.o, ex.model.architecture
    key0 = next(iter(ex.refs))
    hazard = fp16_hazards(module, ex.inputs[key0], ex.refs[key0], o.atol_fp16)
    if hazard:
        raise ExportError(f"fp16 is not safe for this {arch} model: {hazard}", hint="export without --fp16")
    half = ex.to_fp16(proto)
    set_io(half, ex.cin, ex.cout, ex.model.scale, ex.static)
    half_bytes = _serialize(half)
    rows = ex.verify(half_bytes, "fp16", o.atol_fp16)
    if not all(v.ok for v in rows):
        bad = next(v for v in rows if not v.ok)
        where = f"{bad.size[0]}x{bad.size[1]}"
        if bad.error == "output has NaN/inf":
            reason = f"the fp16 model outputs NaN/inf at {where} (activations overflow float16)"
        elif bad.error:
            reason = f"the fp16 model fails at {where}: {bad.error}"
        else:
            reason = (f"the fp16 model differs from fp32 PyTorch by {bad.max_abs_diff:.3g} at {where} "
                      f"(more than {o.atol_fp16:g})")
        raise ExportError(f"fp16 is not safe for this {arch} model: {reason}", hint="export without --fp16")
    return half, half_bytes


def _to_int8(ex: "Exporter", cur_bytes: bytes, calib_paths):
    """int8 with onnxruntime, refused when it loses more than --max-psnr-drop (unless --force)."""
    int8_bytes, quant = ex.quantize(cur_bytes, calib_paths)
    ex.verify(int8_bytes, "int8", None)
    bad = [v for v in ex.verification if v.stage == "int8" and not v.ok]
    if bad:
        raise ExportError(f"the int8 model fails {ex.fail_message(bad, None)}")
    psnr_guard(ex, quant)
    return int8_bytes, quant


def psnr_guard(ex: "Exporter", quant: Int8Report) -> None:
    """Refuse an int8 model that loses more than --max-psnr-drop (or whose drop cannot be measured)
    unless --force: :class:`Int8QualityError`, exit 3."""
    o = ex.o
    if quant.psnr_drop is None:
        if not o.force:
            raise Int8QualityError(
                "cannot measure the int8 PSNR drop: the calibration images are too small to make LR/HR pairs",
                hint="use larger images, or pass --force to write the int8 model anyway")
    elif quant.psnr_drop > o.max_psnr_drop:
        msg = (f"int8 loses {quant.psnr_drop:.2f} dB PSNR ({quant.psnr_fp32:.2f} -> {quant.psnr_int8:.2f} dB "
               f"on {quant.images} {quant.image_source} images), more than --max-psnr-drop {o.max_psnr_drop:g}")
        if not o.force:
            raise Int8QualityError(msg, hint="pass --force to write it anyway, or export fp32/fp16")
        ex.warn(msg + "; writing it anyway (--force)")


def _write(ex: "Exporter", proto, out: Path, precision: str) -> bytes:
    """The final model, checked by onnx.checker, written atomically."""

    data = _serialize(proto)
    try:
        onnx.checker.check_model(onnx.load_from_string(data))
    except Exception as e:  # noqa: BLE001
        raise_if_terminated()
        raise ExportError(f"the final ONNX model does not pass onnx.checker: {first_line(e)}") from None
    raise_if_terminated()  # the last gate: no model is written after a SIGTERM, however it was reported
    with atomic_path(out, overwrite=ex.o.overwrite) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    ex.r.info(f"wrote {out} ({len(data) / 1e6:.2f} MB, {precision})")
    return data

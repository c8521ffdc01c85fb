"""ncnn (the ``ncnn`` extra, pnnx to convert): .param + .bin files as Real-ESRGAN-ncnn-vulkan, waifu2x and
Upscayl run them, and checkpoints converted by pnnx into a temporary folder (seconds: ``auto`` measures
ncnn only on .param files). On the CPU it computes in fp32 (fp16 storage and arithmetic off), so an
fp16-storage file is only rounded once, at load."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..file_model import FileModel
from ..errors import BadPathError, ModelLoadError, UnsupportedModelError
from ..fileio import sha256_file
from ..metadata import metadata_int
from .registry import Runtime, file_kind, register_runtime
from .convert import checkpoint_fields, quiet_fds

# Lazy imports here: ncnn and pnnx are an optional extra; torch is imported where a tensor is made (the
# registry is on `info`'s torch-free path).

#: the srdistill metadata of an ncnn model (ncnn's .param has no place for it) lives beside it
SIDECAR_SUFFIX = ".srdistill.json"


def sidecar(param: Path) -> Path:
    return param.with_name(param.stem + SIDECAR_SUFFIX)


@dataclass(kw_only=True)
class NcnnModel(FileModel):
    """An ncnn Net; call it with an NCHW float tensor in [0, 1] (a batch runs image by image)."""

    input_name: str = "in0"
    output_name: str = "out0"
    keep: Any = None  # the temporary folder of a converted checkpoint, removed with the model

    def run(self, arr: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 -> (N, C', H*s, W*s) float32."""
        import ncnn  # lazy (see the note at the top)

        outs = []
        for img in np.ascontiguousarray(arr, dtype=np.float32):
            ex = self.session.create_extractor()
            out = None
            try:
                ex.input(self.input_name, ncnn.Mat(img).clone())
                ret, out = ex.extract(self.output_name)
                if ret != 0:
                    raise RuntimeError(f"ncnn failed to run {self.name} (code {ret})")
                outs.append(np.array(out, dtype=np.float32, copy=True))
            finally:
                # the output Mat and the extractor's blobs live in the Net's pool allocator: release them
                # here, in that order, so that no traceback or reference cycle can keep one alive past the
                # Net (freed later by the garbage collector, it would free into a destroyed pool)
                del out
                ex.clear()
                del ex
        return np.stack(outs)

    def __call__(self, x):
        import torch  # lazy (see the note at the top)

        y = self.run(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(y).to(x.device)

    def to(self, device) -> "NcnnModel":
        return self

    def eval(self) -> "NcnnModel":
        return self


def _devices() -> tuple[str, ...]:
    import ncnn  # lazy (see the note at the top)

    with quiet_fds():  # ncnn reports a missing Vulkan loader on stderr by itself
        gpus = ncnn.get_gpu_count() if hasattr(ncnn, "get_gpu_count") else 0
    return ("cpu", "vulkan") if gpus else ("cpu",)


def open_net(param: Path, *, threads: int | None = None, vulkan: bool = False):
    import ncnn  # lazy (see the note at the top)

    net = ncnn.Net()
    net.opt.use_vulkan_compute = bool(vulkan)
    if not vulkan:  # fp32 on the CPU: within 1e-4 of PyTorch for an fp32 file
        net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = False
        net.opt.use_bf16_storage = False
    net.opt.num_threads = int(threads or os.cpu_count() or 1)
    with quiet_fds():
        if net.load_param(str(param)) != 0 or net.load_model(str(param.with_suffix(".bin"))) != 0:
            raise ModelLoadError(f"ncnn cannot load {param.name} (with {param.with_suffix('.bin').name})")
    return net


def pnnx_convert(module, folder: Path, inputs: list, *, fp16: bool) -> Path:
    """pnnx: ``module`` traced on ``inputs`` (two shapes make height and width dynamic) -> folder/model.ncnn.param
    (+ .bin); returns the .param.

    The pnnx converter runs as its own process, called directly rather than through ``pnnx.export``:
    that helper ignores the converter's exit status and then imports and instantiates the Python model
    pnnx generates (code executed in this process, a module left in ``sys.modules`` and temporary files
    per conversion), which srdistill never uses."""
    import pnnx  # lazy (see the note at the top)
    import torch  # lazy (see the note at the top)

    pt = folder / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python values: the graph is checked after
        torch.jit.trace(module, inputs[0], check_trace=False).save(str(pt))
    cmd = [pnnx.EXEC_PATH, str(pt), "inputshape=" + _shape_arg(inputs[0]), "device=cpu", "optlevel=2"]
    if len(inputs) > 1:
        cmd.append("inputshape2=" + _shape_arg(inputs[1]))
    if not fp16:
        cmd.append("fp16=0")
    try:
        r = subprocess.run(cmd, cwd=folder, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           errors="replace", timeout=PNNX_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ModelLoadError(f"pnnx did not run: {str(e).splitlines()[0][:200]}") from None
    param = folder / "model.ncnn.param"
    if r.returncode != 0 or not param.is_file():
        last = (r.stderr.strip().splitlines() or r.stdout.strip().splitlines() or ["no output"])[-1]
        raise ModelLoadError(f"pnnx could not convert the model to ncnn (exit {r.returncode}: {last[:200]})")
    return param


#: a conversion of an SR student takes seconds; this only stops a converter that hangs
PNNX_TIMEOUT_S = 600


def _shape_arg(t) -> str:
    """pnnx's ``inputshape`` form of a tensor: ``[1,3,64,64]f32``."""
    return "[" + ",".join(str(int(d)) for d in t.shape) + "]f32"


def _from_checkpoint(path, threads):
    import torch  # lazy (see the note at the top)

    from ..export.prepare import fold_reparameterized, patch_for_export  # lazy: torch (see the note at the top)
    from ..models.loading import load_model  # lazy: torch (see the note at the top)

    src = load_model(path, device="cpu")
    module = src.module.eval()
    fold_reparameterized(module)
    patch_for_export(module)
    side = max(16, src.min_size)
    side += -side % max(1, src.multiple_of)
    other = side + max(8, src.multiple_of)
    tmp = tempfile.TemporaryDirectory(prefix="srdistill-ncnn-")
    with torch.no_grad():
        param = pnnx_convert(module, Path(tmp.name), [torch.rand(1, src.input_channels, side, side),
                                                      torch.rand(1, src.input_channels, other, side)], fp16=False)
    fields = checkpoint_fields(src)
    return open_net(param, threads=threads), fields, tmp


def load(path, *, device: str = "cpu", threads: int | None = None) -> NcnnModel:
    p = Path(path)
    if file_kind(p) == "checkpoint":
        net, fields, tmp = _from_checkpoint(p, threads)
        model = NcnnModel(session=net, keep=tmp, **fields)
    else:
        if not p.is_file():
            raise BadPathError(f"model file {str(p)!r} does not exist")
        if not p.with_suffix(".bin").is_file():
            raise BadPathError(f"{p.name}'s weights {p.with_suffix('.bin').name} are missing",
                               hint="keep the .bin next to the .param")
        meta = _read_sidecar(p)
        model = NcnnModel(path=p, session=open_net(p, threads=threads, vulkan=device == "vulkan"), metadata=meta,
                          sha256=sha256_file(p), scale=metadata_int(meta, "srdistill.scale") or 0,
                          architecture=str(meta.get("srdistill.architecture", "ncnn")).strip('"'),
                          params=metadata_int(meta, "srdistill.params", 0),
                          min_size=metadata_int(meta, "srdistill.min_size", 0) or 0,
                          multiple_of=metadata_int(meta, "srdistill.multiple_of", 1) or 1)
    names = (list(model.session.input_names()), list(model.session.output_names()))
    if len(names[0]) != 1 or len(names[1]) != 1:
        raise UnsupportedModelError(f"{p.name} has {len(names[0])} inputs and {len(names[1])} outputs; "
                                    "an SR model has one of each")
    model.input_name, model.output_name = names[0][0], names[1][0]
    if not model.scale:
        h = max(16, model.min_size) + (-max(16, model.min_size) % model.multiple_of)
        y = model.run(np.random.default_rng(0).random((1, model.input_channels, h, h), dtype=np.float32))
        if y.ndim != 4 or y.shape[-1] % h or y.shape[-1] < h:
            raise UnsupportedModelError(f"{p.name} does not map an image to an upscaled image")
        model.scale = int(y.shape[-1] // h)
    return model


def _read_sidecar(param: Path) -> dict:
    s = sidecar(param)
    if not s.is_file():
        return {}
    try:
        meta = json.loads(s.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


register_runtime(Runtime(name="ncnn", packages=("ncnn", "pnnx"), extra="ncnn", runs=("ncnn", "checkpoint"),
                         devices=_devices, load=load, auto=("ncnn",),
                         note="Tencent ncnn (CPU; Vulkan where a driver is present)"))


def describe_param(path: str | os.PathLike) -> dict:
    """What an ncnn .param says about itself (no ncnn needed): layers, blobs, inputs, outputs, metadata."""
    p = Path(path)
    try:
        lines = p.read_text(errors="replace").split("\n")
    except OSError as e:
        raise ModelLoadError(f"cannot read {p.name}: {e}") from None
    if not lines or lines[0].strip() != "7767517" or len(lines) < 2 or len(lines[1].split()) != 2:
        raise ModelLoadError(f"{p.name} is not an ncnn .param file (it does not start with the magic 7767517)")
    layers = [ln.split() for ln in lines[2:] if ln.strip()]
    inputs = [t[1] for t in layers if t[0] == "Input"]
    consumed = {b for t in layers if len(t) > 3 and t[2].isdigit()
                for b in t[4: 4 + int(t[2])]}
    outputs = [b for t in layers if len(t) > 3 and t[2].isdigit() and t[3].isdigit()
               for b in t[4 + int(t[2]): 4 + int(t[2]) + int(t[3])] if b not in consumed]
    return {"format": "ncnn", "layers": len(layers), "blobs": int(lines[1].split()[1]), "inputs": inputs,
            "outputs": outputs, "weights": str(p.with_suffix(".bin")), "metadata": _read_sidecar(p),
            "sha256": sha256_file(p)}

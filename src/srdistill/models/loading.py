"""Load any supported SR checkpoint safely into an :class:`SRModel`.

One path for every file: read the tensors without executing anything
(safetensors, or pickle through ``torch.load(weights_only=True)``), unwrap the
usual wrappers, detect the architecture with spandrel's registry (plus our own
EDSR), check the weights, and describe the model.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

from ..fileio import MAX_MODEL_BYTES, check_input_file, open_input_file, sha256_file, shown_path
from ..errors import BadPathError, ModelLoadError, UnsafeModelError, UnsupportedModelError, UsageError
from ..metadata import decode_srdistill_metadata
from ._compat import import_spandrel
from .reparam import fold_state_dict

CHECKPOINT_EXTENSIONS = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
MAX_UNPACKED_BYTES = 16 * 1024**3  # a zip-packed .pth may not unpack to more than this
MAX_UNPACK_RATIO = 20  # ... nor to more than this many times its size (tensors do not compress)
# Building a model may allocate at most 4x the file's tensor values plus this (buffers, temporaries) ...
MAX_EXTRA_ELEMENTS = 16 * 1024**2
# ... in at most 4 tensors per stored tensor plus this many (every family measured needs <= 1.1 per tensor)
MAX_EXTRA_TENSORS = 1_000

_LOADER = None  # spandrel's loader over its registry + our EDSR + add_architecture(): built by _loader()
_ADDED: list = []  # architectures from add_architecture(), put ahead of spandrel's own
_FACTORIES = frozenset(_device_constructors())  # torch.empty, zeros, ones, rand, tensor, ...


def _add(registry, arch, spandrel) -> None:
    if not any(a.architecture.id == arch.id for a in registry):
        registry.add(spandrel.ArchSupport.from_architecture(arch, before=tuple(a.architecture.id for a in registry)))


def _loader():
    """The model loader, built on first use."""
    global _LOADER
    if _LOADER is None:
        # lazy: spandrel imports torchvision (~3 s on top of torch); a command that stops at a bad path
        # or option says so before paying it
        spandrel = import_spandrel()
        from .archs.edsr import EDSRArch  # lazy: it imports spandrel (see above)

        registry = spandrel.MAIN_REGISTRY.copy()
        for arch in (EDSRArch(), *_ADDED):
            _add(registry, arch, spandrel)
        _LOADER = spandrel.ModelLoader(registry=registry)
    return _LOADER


def add_architecture(arch) -> None:
    """Let the loader detect one more architecture (a spandrel ``Architecture``), ahead of spandrel's own."""
    _ADDED.append(arch)
    if _LOADER is not None:
        _add(_LOADER.registry, arch, import_spandrel())


def supported_architectures() -> list[str]:
    """Every architecture id the loader detects (spandrel's and ours)."""
    return sorted({a.architecture.id for a in _loader().registry}, key=str.lower)




@dataclass
class SRModel:
    """A loaded model and what is known about it.

    ``module`` computes NCHW float RGB in [0, 1] -> NCHW at ``scale`` times the size.
    Call the object itself for inference (no grad, eval mode); call ``module``
    directly for training.
    """

    module: nn.Module
    architecture: str
    scale: int
    input_channels: int = 3
    output_channels: int = 3
    min_size: int = 0
    multiple_of: int = 1
    square: bool = False
    supports_half: bool = False
    supports_bfloat16: bool = False
    tiling: str = "supported"
    purpose: str = "SR"
    hyperparameters: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    path: Path | None = None
    sha256: str | None = None
    _params_cache: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def params(self) -> int:
        """Parameters used at inference: training-only branches of re-parameterisable
        blocks (SPAN's Conv3XC, for instance) do not count."""
        key = (id(self.module), sum(1 for _ in self.module.parameters()))
        if self._params_cache is None or self._params_cache[0] != key:
            self._params_cache = (key, inference_params(self))
        return self._params_cache[1]

    @property
    def params_total(self) -> int:
        """Every parameter in the checkpoint, training-only branches included."""
        return sum(p.numel() for p in self.module.parameters())

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def srdistill(self) -> dict[str, Any]:
        """The ``srdistill.*`` metadata entries, JSON-decoded (empty for foreign files)."""
        return decode_srdistill_metadata(self.metadata)

    @property
    def name(self) -> str:
        return self.path.name if self.path else self.architecture

    def to(self, device: str | torch.device) -> "SRModel":
        self.module.to(device)
        return self

    def eval(self) -> "SRModel":
        self.module.eval()
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                return self.module(x)
        finally:
            self.module.train(was_training)


def inference_params(model: SRModel) -> int:
    """Count the parameters an eval-mode forward actually uses (one tiny forward/backward)."""
    module = model.module
    params = [p for p in module.parameters()]
    if not params:
        return 0
    size = max(16, model.min_size, model.multiple_of)
    x = torch.rand(1, model.input_channels, size, size, device=params[0].device, dtype=params[0].dtype)
    was_training = module.training
    flags = [p.requires_grad for p in params]
    try:
        module.eval()
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            y = module(x)
            grads = torch.autograd.grad(y.float().sum(), params, allow_unused=True)
        # re-parameterised convs replace .data of their deploy weights in eval mode: list again
        used = {id(p) for p, g in zip(params, grads) if g is not None}
        return sum(p.numel() for p in module.parameters() if id(p) in used)
    except Exception:  # noqa: BLE001 - fall back to the plain count for exotic models
        return sum(p.numel() for p in params)
    finally:
        module.train(was_training)
        for p, f in zip(params, flags):
            p.requires_grad_(f)


# --------------------------------------------------------------------------- reading files


def check_model_path(path: str | os.PathLike, *, onnx: bool = False) -> Path:
    """Refuse, as a usage error, a model path that is missing, a folder or not a model file type --
    before any output is checked or written."""
    p = Path(path)
    _check_file(p)
    ext = p.suffix.lower()
    if ext not in CHECKPOINT_EXTENSIONS and not (onnx and ext == ".onnx"):
        raise BadPathError(f"{p.name} is not a model file (type {ext or '(none)'!r})",
                           hint=f"use one of {', '.join(CHECKPOINT_EXTENSIONS)}" + (" or .onnx" if onnx else ""))
    return p


def _check_file(p: Path) -> None:
    """A regular file of at most MAX_MODEL_BYTES (a usage error otherwise: a folder, a device, a FIFO),
    and not empty."""
    if check_input_file(p, "model file", MAX_MODEL_BYTES, error=BadPathError).st_size == 0:
        raise ModelLoadError(f"model file {shown_path(p)} is empty (0 bytes)")


def _read_safetensors(p: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with open_input_file(p, "model file", MAX_MODEL_BYTES, error=BadPathError) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise ModelLoadError(f"{p.name} is truncated: too short to be a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_SAFETENSORS_HEADER or n > size - 8:
            raise ModelLoadError(f"{p.name} is not a valid safetensors file: its header claims {n} bytes "
                                 f"but the file has {size}")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: "[[[[..." nesting
            raise ModelLoadError(f"{p.name} is not a valid safetensors file: its header is not JSON") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{p.name} is not a valid safetensors file: its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelLoadError(f"{p.name} has malformed safetensors metadata (values must be strings)")
    data_len = size - 8 - n
    spans = []
    for name, info in header.items():
        try:
            start, end = (int(x) for x in info["data_offsets"])
            shape = [int(s) for s in info["shape"]]
            dtype = str(info["dtype"])
        except (KeyError, TypeError, ValueError):
            raise ModelLoadError(f"{p.name} is not a valid safetensors file: bad entry for tensor {name!r}") from None
        if not 0 <= start <= end <= data_len:
            raise ModelLoadError(f"{p.name} is truncated or corrupt: tensor {name!r} lies outside the file "
                                 f"(bytes {start}-{end} of {data_len})")
        spans.append((start, end, name))
        if any(s < 0 for s in shape):
            raise ModelLoadError(f"{p.name} is corrupt: tensor {name!r} has a negative dimension")
        del dtype
    spans.sort()
    for (s0, e0, n0), (s1, e1, n1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise ModelLoadError(f"{p.name} is corrupt: tensors {n0!r} and {n1!r} overlap")
    try:
        tensors = load_file(str(p), device="cpu")
    except (SafetensorError, ValueError, RuntimeError, OSError) as e:
        raise ModelLoadError(f"{p.name} is not a valid safetensors file: {str(e).splitlines()[0]}") from None
    return tensors, metadata


# what Python's zipfile raises on a damaged archive (NotImplementedError: "zip file version 6.4", ...)
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, NotImplementedError, EOFError,
               struct.error, UnicodeDecodeError, IndexError, KeyError, OverflowError)


def _read_pickle(p: Path) -> Any:
    try:
        is_zip = zipfile.is_zipfile(p)  # can itself raise BadZipFile ("... span multiple disks ...")
    except _ZIP_ERRORS:
        is_zip = True  # looks like a zip: let the full parse below say what is wrong
    if is_zip:
        try:
            with zipfile.ZipFile(p) as z:
                unpacked = sum(i.file_size for i in z.infolist())
        except _ZIP_ERRORS:
            raise ModelLoadError(f"{p.name} is a corrupt or truncated PyTorch checkpoint") from None
        if unpacked > MAX_UNPACKED_BYTES or unpacked > MAX_UNPACK_RATIO * max(p.stat().st_size, 1 << 20):
            raise ModelLoadError(f"{p.name} unpacks to {unpacked / 2**30:.1f} GiB from a "
                                 f"{p.stat().st_size / 2**20:.1f} MiB file; refusing a likely zip bomb")
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4 ...": noise before our one-line error
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        culprit = ""
        for line in msg.splitlines():
            if "GLOBAL" in line or "Unsupported" in line or "global" in line:
                culprit = line.strip()
                break
        raise UnsafeModelError(
            f"refused to load {p.name}: it is not a plain tensor checkpoint and unpickling it could run code"
            + (f" ({culprit[:160]})" if culprit else ""),
            hint="nothing from it was executed; convert it to .safetensors with a tool you trust",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, AttributeError, TypeError,
            IndexError, KeyError, struct.error, UnicodeDecodeError, MemoryError, OverflowError,
            NotImplementedError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise ModelLoadError(f"{p.name} is not a readable PyTorch checkpoint (truncated or corrupt?): {first}") from None


def _is_training_checkpoint(obj: dict) -> bool:
    return (isinstance(obj.get("format"), int) and "student_arch" in obj and isinstance(obj.get("ema"), dict)
            and isinstance(obj["ema"].get("module"), dict))


def _folded_student(ck: dict) -> dict:
    """The EMA student of a training checkpoint as the family's plain state dict (a re-parameterised
    run's branches folded, as its student.safetensors has them)."""
    sd = ck["ema"]["module"]
    try:
        config = json.loads(ck["config"]) if isinstance(ck.get("config"), str) else {}
    except ValueError:
        config = {}
    branches = str(config.get("reparam_branches") or "") if isinstance(config, dict) else ""
    try:
        return fold_state_dict(sd, identity="identity" in branches)
    except (RuntimeError, KeyError, ValueError, IndexError, TypeError):
        return sd  # not foldable: described (or refused) as the tensors are


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a checkpoint's tensors and metadata without running any code in it."""
    p = Path(path)
    _check_file(p)
    ext = p.suffix.lower()
    if ext == ".safetensors":
        tensors, metadata = _read_safetensors(p)
    elif ext in (".pth", ".pt", ".ckpt", ".bin"):
        obj = _read_pickle(p)
        if not isinstance(obj, dict):
            raise ModelLoadError(f"{p.name} does not hold a state dict (found {type(obj).__name__})")
        metadata = {}
        if _is_training_checkpoint(obj):
            # srdistill's own resumable checkpoint (<out>.ckpt): the model in it is the EMA student
            # the step as written by a run: a whole count (a damaged or hand-made one is left out, not
            # converted: "abc", inf, NaN, [1], None or {} describe the file without a step)
            step = obj.get("step")
            metadata = ({"srdistill.checkpoint_step": json.dumps(step)}
                        if type(step) is int and 0 <= step <= 10**12 else {})
            if isinstance(obj.get("config"), str):
                metadata["srdistill.config"] = obj["config"]
            obj = _folded_student(obj)
        odd = [k for k in obj if not isinstance(k, str)] if isinstance(obj, dict) else []
        if odd:
            raise ModelLoadError(f"{p.name} is not a model state dict: key {odd[0]!r} "
                                 f"({type(odd[0]).__name__}) is not a parameter name")
        import_spandrel()  # the torchvision stand-in first, where torchvision is broken
        from spandrel.__helpers.canonicalize import canonicalize_state_dict  # lazy: spandrel (see _loader)

        tensors = canonicalize_state_dict(obj)
    elif ext == ".onnx":
        raise UnsupportedModelError(f"{p.name} is an ONNX file; this command needs a PyTorch/safetensors checkpoint")
    else:
        raise BadPathError(f"{p.name}: unsupported model file type {ext or '(none)'!r}",
                           hint=f"use one of {', '.join(CHECKPOINT_EXTENSIONS)} or .onnx")
    if not isinstance(tensors, dict) or not tensors:
        raise ModelLoadError(f"{p.name} holds no tensors: it is not a model checkpoint")
    bad = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelLoadError(f"{p.name} is not a model state dict: entry {bad[0]!r} is a "
                             f"{type(tensors[bad[0]]).__name__}, not a tensor")
    cplx = [k for k, v in tensors.items() if v.is_complex()]
    if cplx:  # loading would silently drop the imaginary part (with a warning on stderr)
        raise ModelLoadError(f"{p.name}: tensor {cplx[0]!r} has dtype {tensors[cplx[0]].dtype}, "
                             "expected floating point weights")
    return dict(tensors), metadata


# --------------------------------------------------------------------------- building models


def _describe(desc: Any, *, metadata: dict | None = None, path: Path | None = None,
              sha256: str | None = None) -> SRModel:
    sr = desc.size_requirements
    arch = str(desc.architecture.id)
    if arch == "PLKSR" and type(desc.model).__name__ == "RealPLKSR":
        # spandrel files both under one id; their constructors (and our family knobs) differ
        arch = "RealPLKSR"
    return SRModel(
        module=desc.model,
        architecture=arch,
        scale=int(desc.scale),
        input_channels=int(desc.input_channels),
        output_channels=int(desc.output_channels),
        min_size=int(sr.minimum),
        multiple_of=int(sr.multiple_of),
        square=bool(sr.square),
        supports_half=bool(desc.supports_half),
        supports_bfloat16=bool(desc.supports_bfloat16),
        tiling=str(desc.tiling.name).lower(),
        purpose=str(desc.purpose),
        hyperparameters=_hyperparameters(desc.model),
        metadata=dict(metadata or {}),
        path=path,
        sha256=sha256,
    )


def _hyperparameters(module: nn.Module) -> dict:
    """The constructor arguments, less callables left at their defaults (RCAN's ``conv``, SwinIR's
    ``norm_layer``): detection never sets those, and without them the dict is plain JSON, which
    metadata, checkpoints and ``info --json`` need. Building from the dict gives the same model."""
    hp = dict(getattr(module, "hyperparameters", {}) or {})
    try:
        defaults = {k: p.default for k, p in inspect.signature(type(module).__init__).parameters.items()}
    except (TypeError, ValueError):
        return hp
    return {k: v for k, v in hp.items() if not (callable(v) and k in defaults and defaults[k] is v)}


class _ConstructionBudget(TorchFunctionMode):
    """Refuse to build a model far bigger than the tensors in the file.

    Spandrel reads hyperparameters from key names and shapes (``body.99999.weight``
    means 100000 blocks; a (20000, 3, 3, 3) first conv means 20000 channels), builds
    the model, and only then finds out that the weights do not fit it. A file of a few
    KB could so make the loader allocate gigabytes and run for minutes before failing.
    Every tensor a strict load keeps comes from the file, so counting what the
    constructors allocate and stopping at a generous multiple of the file's tensors
    bounds memory and time without guessing per architecture.
    """

    def __init__(self, state: dict, name: str, *, max_elements: int | None = None, what: str | None = None):
        super().__init__()
        numel = _stored_elements(state)
        self.name = name
        self.max_elements = (4 * numel + MAX_EXTRA_ELEMENTS) if max_elements is None else max_elements
        self.max_tensors = (4 * len(state) + MAX_EXTRA_TENSORS) if max_elements is None else 10**6
        self.what = what
        self.elements = 0
        self.tensors = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _SIZED_FACTORIES:  # refuse before allocating (zeros/ones/rand write every byte)
            self._count(0, _requested_numel(args))
        out = func(*args, **(kwargs or {}))
        if func in _FACTORIES:
            self._count(1, out.numel() if isinstance(out, torch.Tensor) else 0)
        return out

    def _count(self, tensors: int, elements: int) -> None:
        if self.elements + elements > self.max_elements or self.tensors + tensors > self.max_tensors:
            if self.what:
                raise UsageError(f"{self.name} would have over {self.elements + elements:,} parameters: "
                                 f"{self.what}")
            raise ModelLoadError(
                f"{self.name} describes a model far larger than the weights it holds "
                f"(over {self.tensors + tensors:,} tensors / {self.elements + elements:,} values to build from "
                f"{self.max_elements - MAX_EXTRA_ELEMENTS:,} stored): corrupt or hostile file")
        self.tensors += tensors
        self.elements += elements if tensors else 0


def construction_budget(name: str, max_elements: int, what: str) -> _ConstructionBudget:
    """A bound on what building a model may allocate (a usage error naming ``what`` beyond it)."""
    return _ConstructionBudget({}, name, max_elements=max_elements, what=what)


def _stored_elements(state: dict) -> int:
    """Values the file really holds: each distinct storage once, by its bytes. ``numel()`` would
    trust declared shapes, and a few-KB ``.pth`` of stride-0 tensors (``as_strided(..., (0, 0, 0, 0))``)
    or meta tensors declares billions of values it never stored."""
    seen: set[tuple[int, int]] = set()
    n = 0
    for t in state.values():
        if not isinstance(t, torch.Tensor) or t.is_meta or t.layout != torch.strided:
            continue  # meta and sparse tensors: what they declare is not stored (a strict load refuses them)
        st = t.untyped_storage()
        key = (st.data_ptr(), st.nbytes())
        if key in seen:
            continue
        seen.add(key)
        n += min(st.nbytes() // max(1, t.element_size()), t.numel())
    return n


_SIZED_FACTORIES = frozenset({torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn})


def _requested_numel(args: tuple) -> int:
    """Elements asked of ``torch.empty(2, 3)`` / ``torch.zeros((2, 3))`` / ``torch.full((2, 3), v)``."""
    size = args[0] if args and isinstance(args[0], (tuple, list, torch.Size)) else args
    n = 1
    for d in size:
        if not isinstance(d, int) or isinstance(d, bool):
            return 0  # not a plain size: counted after the call instead
        n *= max(d, 0)
    return n if size else 0


def model_from_state_dict(state: dict[str, torch.Tensor], *, name: str = "state dict",
                          metadata: dict | None = None, path: Path | None = None,
                          sha256: str | None = None, require_sr: bool = True) -> SRModel:
    """Detect the architecture of ``state`` and build the model (strict: every key must match)."""
    state = dict(state)
    loader = _loader()
    try:
        with _ConstructionBudget(state, name):
            desc = loader.load_from_state_dict(state)
    except import_spandrel().UnsupportedModelError:
        keys = list(state)[:3]
        raise UnsupportedModelError(
            f"unknown architecture in {name} ({len(state)} tensors, first keys: {', '.join(keys)})",
            hint="supported families: " + ", ".join(supported_architectures()),
        ) from None
    except (KeyError, RuntimeError, ValueError, IndexError, TypeError, AssertionError, ZeroDivisionError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        # torch's load_state_dict puts the offending keys on the lines after its headline
        first = " ".join(lines[1:]) if lines[0].startswith("Error(s) in loading state_dict") else lines[0]
        if len(first) > 300:
            first = first[:300] + "..."
        raise ModelLoadError(f"{name} matches a known layout but its weights do not fit it "
                             f"(missing, extra or misshapen keys): {first}") from None
    if not hasattr(desc, "scale") or type(desc).__name__ != "ImageModelDescriptor":
        raise UnsupportedModelError(f"{name} is a {desc.architecture.id} model ({type(desc).__name__}), "
                                    f"not an image-to-image model srdistill can use")
    model = _describe(desc, metadata=metadata, path=path, sha256=sha256)
    _check_weights(model, state, name)
    if require_sr and model.scale < 2:
        raise UnsupportedModelError(
            f"{name} is a {model.architecture} {model.purpose.lower()} model with scale {model.scale}: "
            "srdistill needs a super-resolution model (scale 2, 3 or 4)")
    if model.architecture in _INPLACE_INPUT:
        model.module.register_forward_pre_hook(_clone_input)
    model.module.eval()
    for p in model.module.parameters():
        p.requires_grad_(True)
    return model


# Architectures whose forward writes into its input tensor (spandrel's RCAN does ``x *= rgb_range``):
# without a copy, running the teacher would scale the caller's batch by 255 before the student sees it.
_INPLACE_INPUT = {"RCAN"}


def _clone_input(module: nn.Module, args: tuple) -> tuple:
    return (args[0].clone(), *args[1:])


def _check_weights(model: SRModel, raw: dict, name: str) -> None:
    for pname, t in model.module.state_dict().items():
        src = raw.get(pname)
        if t.is_floating_point() and isinstance(src, torch.Tensor) and not src.is_floating_point():
            raise ModelLoadError(f"{name}: tensor {pname!r} has dtype {src.dtype}, expected floating point weights")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ModelLoadError(f"{name} has NaN or infinite values in {pname!r}: the checkpoint is broken")


def load_model(path: str | os.PathLike, *, device: str | torch.device = "cpu", require_sr: bool = True) -> SRModel:
    """Load a checkpoint file (safetensors, pth, pt, ckpt) into an SRModel on ``device``."""
    p = Path(path)
    tensors, metadata = read_checkpoint(p)
    model = model_from_state_dict(tensors, name=p.name, metadata=metadata, path=p, sha256=sha256_file(p),
                                  require_sr=require_sr)
    return model.to(device)

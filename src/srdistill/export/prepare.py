"""Getting a PyTorch model ready to trace: folded re-parameterisations, export-safe forwards, hazards."""

from __future__ import annotations

import copy
import math
import re
import types
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import first_line
from ..models.checkpoint import tensor_hash
from .options import WINDOW_ATTENTION_FAMILIES
from .verify import round_up


# --------------------------------------------------------------------------- model preparation


def fold_reparameterized(module: torch.nn.Module) -> tuple[int, set[str]]:
    """Fold re-parameterisable blocks (SPAN's Conv3XC) into their deploy conv, for good.

    In eval mode such a block recomputes ``eval_conv`` from its training branches on every
    forward. We compute it once and make the recomputation a no-op on this (copied) module,
    so the traced graph holds only ``eval_conv``. Returns how many blocks were folded and
    the names of the training-only parameters, which must not appear in the graph.
    """
    n = 0
    train_only: set[str] = set()
    for name, m in module.named_modules():
        if callable(getattr(m, "update_params", None)) and isinstance(getattr(m, "eval_conv", None), torch.nn.Module):
            with torch.no_grad():
                m.update_params()
            m.update_params = lambda: None  # instance attribute: only this copy changes
            n += 1
            prefix = f"{name}." if name else ""
            for pname, _ in m.named_parameters():
                if not pname.startswith("eval_conv."):
                    train_only.add(prefix + pname)
    return n, train_only


def _safm_forward(self, x):
    """SAFMN's SAFM block with ``adaptive_max_pool2d(x, (h // 2**i, w // 2**i))`` written as
    ``max_pool2d(x, 2**i)``: identical for inputs that are multiples of ``2**(n_levels-1)``
    (SAFMN requires multiples of 8), and exportable with dynamic height/width."""
    h, w = x.size()[-2:]
    xc = x.chunk(self.n_levels, dim=1)
    out = []
    for i in range(self.n_levels):
        if i > 0:
            k = 2**i
            s = F.max_pool2d(xc[i], kernel_size=k, stride=k)
            s = self.mfr[i](s)
            s = F.interpolate(s, size=(h, w), mode="nearest")
        else:
            s = self.mfr[i](xc[i])
        out.append(s)
    out = self.aggr(torch.cat(out, dim=1))
    return self.act(out) * x


def patch_for_export(module: torch.nn.Module) -> list[str]:
    """Exportable, numerically identical forwards for blocks the TorchScript exporter cannot take."""
    patched = []
    for name, m in module.named_modules():
        if (type(m).__name__ == "SAFM" and type(m).__module__.startswith("spandrel.")
                and all(hasattr(m, a) for a in ("n_levels", "mfr", "aggr", "act"))):
            m.forward = types.MethodType(_safm_forward, m)
            patched.append(name)
    return patched


def uses_window_attention(model) -> bool:
    if model.architecture in WINDOW_ATTENTION_FAMILIES:
        return True
    for m in model.module.modules():
        if re.search(r"WindowAttention|Swin", type(m).__name__):
            return True
    return False


def suggest_static(model) -> str:
    hp = model.hyperparameters or {}
    ws = hp.get("window_size") or hp.get("split_size") or 8
    if isinstance(ws, (list, tuple)):
        ws = max(int(v) for v in ws) if ws else 8
    side = max(64, int(model.min_size or 0))
    side = round_up(side, math.lcm(int(ws) if isinstance(ws, int) and ws > 0 else 8, max(1, model.multiple_of)))
    return f"{side}x{side}"


FP16_MAX = 65504.0


def fp16_hazards(module: torch.nn.Module, x: np.ndarray, reference: np.ndarray, tol: float) -> str | None:
    """Why fp16 is unsafe for ``module`` on input ``x``, or None.

    onnxruntime's CPU provider runs fp16 nodes that lack fp16 kernels (Conv among them on x86)
    in fp32 behind inserted Casts, so a CPU run of the fp16 graph cannot show activations that
    overflow float16. Check that directly: every weight and every module output of an fp32
    forward must stay within float16's range (65504). Where CUDA is available, also run the
    model in half precision there and compare it with the fp32 output.
    """
    for name, p in module.named_parameters():
        if p.is_floating_point() and p.numel() and float(p.detach().abs().max()) > FP16_MAX:
            return f"weight {name} exceeds float16's range ({float(p.detach().abs().max()):.3g} > 65504)"
    worst: list = [0.0, ""]

    def hook(name):
        def fn(_m, _inp, out):
            for t in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
                    v = float(t.detach().abs().max())
                    if not v <= worst[0]:  # also catches NaN
                        worst[0], worst[1] = v, name
        return fn

    handles = [m.register_forward_hook(hook(n or "(model)")) for n, m in module.named_modules()]
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module(torch.from_numpy(x))
    finally:
        for h in handles:
            h.remove()
    if not worst[0] <= FP16_MAX:
        return f"activations reach {worst[0]:.3g} in {worst[1]} (float16 overflows above 65504)"
    if torch.cuda.is_available():
        try:
            half = copy.deepcopy(module).to("cuda", torch.float16)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                y = half(torch.from_numpy(x).to("cuda", torch.float16)).float().cpu().numpy()
            del half
        except Exception as e:  # noqa: BLE001
            return f"the model fails in half precision on CUDA: {first_line(e)}"
        if not np.isfinite(y).all():
            return "the model outputs NaN/inf in half precision on CUDA"
        d = float(np.abs(y - reference).max())
        if d > tol:
            return f"in half precision on CUDA it differs from fp32 by {d:.3g} (more than {tol:g})"
    return None


def source_hash(model) -> str:
    """The identity of the model an export came from (its file's sha256, else its weights' hash)."""
    if model.sha256:
        return model.sha256
    return tensor_hash({k: v for k, v in model.module.state_dict().items()})

"""Structural re-parameterisation for families made of plain 3x3 convolutions.

During training each chosen 3x3 conv becomes a :class:`RepConv`: the original conv plus parallel
branches (ECBSR, ACM MM'21; RepSR, ACM MM'22; SPAN, NTIRE'24). Every branch is linear in its input
and keeps the 3x3 receptive field, so the sum folds back into one 3x3 conv:

* ``1x1``: a 1x1 conv (with bias), placed at the centre tap;
* ``expand``: 1x1 expand (``EXPAND`` x the input channels, no bias) then 3x3 squeeze (with bias).
  The 1x1 has no bias because the 3x3 after it pads with zeros: a bias there would not be zero
  at the border, so the fold would not be exact there;
* ``sobel`` / ``laplacian``: ECBSR's edge paths, a 1x1 conv (no bias, for the same reason) then a
  fixed depthwise Sobel-x and Sobel-y / Laplacian mask with a learned per-channel scale and bias;
* ``identity``: ``x`` itself (only where input and output channels match).

Training runs the branches summed into one kernel (differentiably, so each branch gets its own
gradient: the parameterisation, not the function, is what changes), so a step costs about what a
plain step costs. The last layer of every extra branch starts at zero, so a student starts as exactly the plain
network (a teacher-initialised one as exactly the teacher's weights): the branches only change
how gradient descent moves through the same function space. :func:`fold` turns each RepConv back
into a plain ``nn.Conv2d`` under the original name, so a folded module's state dict is the
family's ordinary one (spandrel and chaiNNer load it; the ONNX graph is the plain one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError, shown

BRANCHES = ("1x1", "expand", "sobel", "laplacian", "identity")
EXPAND = 2  # expand-squeeze width, in multiples of the input channels
FOLD_TOLERANCE = 1e-4  # max abs difference between the trained and the folded student on a probe batch

_SOBEL_X = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
_MASKS = {"sobel": (_SOBEL_X, _SOBEL_X.t().contiguous()),
          "laplacian": (torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]),)}


def parse_branches(text: str | tuple | list | None, default: tuple[str, ...]) -> tuple[str, ...]:
    """``--reparam-branches`` (comma separated) -> a checked tuple; None -> the family's default."""
    if text is None or text == "":
        return tuple(default)
    items = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text) if str(t).strip()]
    bad = [t for t in items if t not in BRANCHES]
    if bad or not items:
        raise UsageError(f"unknown re-parameterisation branch {shown((bad or [text])[0])}",
                         hint="choose from " + ", ".join(BRANCHES) + " (the 3x3 branch is always there)")
    return tuple(dict.fromkeys(items))


class _EdgeBranch(nn.Module):
    """1x1 conv (no bias) then a fixed depthwise mask with a learned per-channel scale; one bias."""

    def __init__(self, cin: int, cout: int, masks: tuple[torch.Tensor, ...]):
        super().__init__()
        self.pre = nn.ModuleList(nn.Conv2d(cin, cout, 1, bias=False) for _ in masks)
        self.register_buffer("masks", torch.stack(masks), persistent=False)
        self.scale = nn.Parameter(torch.zeros(len(masks), cout))
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x):
        y = 0
        cout = self.bias.numel()
        for k, pre in enumerate(self.pre):
            w = (self.scale[k].view(cout, 1, 1, 1) * self.masks[k].view(1, 1, 3, 3))
            y = y + F.conv2d(pre(x), w.to(x.dtype), padding=1, groups=cout)
        return y + self.bias.view(1, -1, 1, 1)

    def kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = 0
        for k, pre in enumerate(self.pre):
            # (out, in, 1, 1) x (out, 1, 3, 3) * scale -> (out, in, 3, 3)
            w = w + pre.weight * (self.scale[k].view(-1, 1, 1, 1) * self.masks[k].view(1, 1, 3, 3))
        return w, self.bias


class RepConv(nn.Module):
    """A 3x3 conv with parallel, foldable training branches (see the module docstring)."""

    def __init__(self, conv: nn.Conv2d, branches: tuple[str, ...]):
        super().__init__()
        cin, cout = conv.in_channels, conv.out_channels
        self.conv = conv
        self.branches = tuple(branches)
        if "1x1" in branches:
            self.c1x1 = nn.Conv2d(cin, cout, 1)
            nn.init.zeros_(self.c1x1.weight)
            nn.init.zeros_(self.c1x1.bias)
        if "expand" in branches:
            self.expand = nn.Conv2d(cin, EXPAND * cin, 1, bias=False)
            self.squeeze = nn.Conv2d(EXPAND * cin, cout, 3, padding=1)
            nn.init.zeros_(self.squeeze.weight)
            nn.init.zeros_(self.squeeze.bias)
        self.edges = nn.ModuleDict({name: _EdgeBranch(cin, cout, _MASKS[name])
                                    for name in ("sobel", "laplacian") if name in branches})
        self.identity = "identity" in branches and cin == cout
        self.to(device=conv.weight.device, dtype=conv.weight.dtype)

    def forward(self, x):
        # the branches summed as one kernel, differentiably (online re-parameterisation, OREPA
        # CVPR'22): the same function and the same gradients for every branch as running them side
        # by side, at the cost of one 3x3 conv instead of four or more
        w, b = self.kernel()
        return F.conv2d(x, w.to(x.dtype), b.to(x.dtype), padding=1)

    def kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The one 3x3 kernel and bias equal to the sum of the branches (differentiable)."""
        conv = self.conv
        w = conv.weight
        b = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels, device=w.device, dtype=w.dtype)
        if "1x1" in self.branches:
            w = w + F.pad(self.c1x1.weight, (1, 1, 1, 1))
            b = b + self.c1x1.bias
        if "expand" in self.branches:
            # squeeze(expand(x)): W[o, i] = sum_k squeeze[o, k] * expand[k, i]; exact because the
            # expand conv has no bias (the squeeze pads its input with zeros)
            w = w + torch.einsum("okhw,ki->oihw", self.squeeze.weight, self.expand.weight[:, :, 0, 0])
            b = b + self.squeeze.bias
        for edge in self.edges.values():
            ew, eb = edge.kernel()
            w = w + ew
            b = b + eb
        if self.identity:
            eye = torch.zeros_like(w)
            idx = torch.arange(conv.out_channels, device=w.device)
            eye[idx, idx, 1, 1] = 1.0
            w = w + eye
        return w, b

    @torch.no_grad()
    def folded(self) -> nn.Conv2d:
        """One plain 3x3 conv computing the same function."""
        w, b = self.kernel()
        out = nn.Conv2d(self.conv.in_channels, self.conv.out_channels, 3, padding=1, bias=True,
                        device=w.device, dtype=w.dtype)
        out.weight.copy_(w)
        out.bias.copy_(b)
        return out

    def branchwise(self, x):
        """The branches run side by side (what :meth:`forward` computes in one conv): for tests."""
        y = self.conv(x)
        if "1x1" in self.branches:
            y = y + self.c1x1(x)
        if "expand" in self.branches:
            y = y + self.squeeze(self.expand(x))
        for edge in self.edges.values():
            y = y + edge(x)
        if self.identity:
            y = y + x
        return y


def _is_plain_3x3(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.kernel_size == (3, 3) and m.stride == (1, 1) and m.padding == (1, 1)
            and m.dilation == (1, 1) and m.groups == 1 and m.padding_mode == "zeros")


def _set(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def reparameterize(module: nn.Module, spec, branches: tuple[str, ...]) -> int:
    """Replace (in place) every conv of ``module`` that ``spec`` (a family's ``ReparamSpec``) names with a
    :class:`RepConv`."""
    pattern = re.compile(spec.convs)
    names = [n for n, m in module.named_modules() if pattern.fullmatch(n) and _is_plain_3x3(m)]
    for name in names:
        _set(module, name, RepConv(module.get_submodule(name), branches))
    return len(names)


def fold(module: nn.Module) -> int:
    """Replace (in place) every :class:`RepConv` with its folded plain conv; returns how many."""
    names = [n for n, m in module.named_modules() if isinstance(m, RepConv)]
    for name in names:
        _set(module, name, module.get_submodule(name).folded())
    return len(names)


def has_reparam(module: nn.Module) -> bool:
    return any(isinstance(m, RepConv) for m in module.modules())


@dataclass(frozen=True)
class FoldCheck:
    convs: int
    max_abs_diff: float

    def describe(self) -> str:
        return (f"re-parameterisation: {self.convs} convs folded into plain 3x3 convs, max |difference| "
                f"{self.max_abs_diff:.1e} on a probe batch (<= {FOLD_TOLERANCE:g})")

    def to_dict(self) -> dict:
        return {"convs": self.convs, "max_abs_diff": self.max_abs_diff, "tolerance": FOLD_TOLERANCE}


@torch.no_grad()
def fold_checked(module: nn.Module, probe: torch.Tensor) -> FoldCheck:
    """Fold ``module`` in place and check it computes what it did before, on ``probe``."""
    was_training = module.training
    module.eval()
    probe = probe.to(next(module.parameters()).device)
    before = module(probe).float()
    n = fold(module)
    after = module(probe).float()
    module.train(was_training)
    diff = float((before - after).abs().max()) if n else 0.0
    if not diff <= FOLD_TOLERANCE:
        raise RuntimeError(f"folding the re-parameterised student changed its output by {diff:.3g} "
                           f"(more than {FOLD_TOLERANCE:g}); this is a bug, please report it")
    return FoldCheck(n, diff)


_BRANCH_KEYS = (("1x1", "c1x1."), ("expand", "squeeze."), ("sobel", "edges.sobel."), ("laplacian", "edges.laplacian."))


@torch.no_grad()
def fold_state_dict(sd: dict[str, torch.Tensor], identity: bool = False) -> dict[str, torch.Tensor]:
    """A training state dict with :class:`RepConv` entries (a ``.ckpt``'s EMA student) as the family's
    plain one. The branches are read from the keys; ``identity`` (which has no tensor) from the run's
    options. Anything else is returned unchanged."""
    prefixes = []
    for k in sd:
        if k.endswith(".conv.weight"):
            pre = k[: -len(".conv.weight")]
            if any(x.startswith(f"{pre}.{key}") for x in sd for _, key in _BRANCH_KEYS):
                prefixes.append(pre)
    if not prefixes:
        return sd
    out = dict(sd)
    for pre in prefixes:
        sub = {k[len(pre) + 1:]: v for k, v in sd.items() if k.startswith(pre + ".")}
        w = sub["conv.weight"]
        branches = tuple(b for b, key in _BRANCH_KEYS if any(k.startswith(key) for k in sub))
        conv = nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1, bias="conv.bias" in sub)
        rep = RepConv(conv, branches + (("identity",) if identity else ()))
        rep.load_state_dict({k: v.float() for k, v in sub.items()})
        plain = rep.folded()
        for k in sub:
            del out[f"{pre}.{k}"]
        out[f"{pre}.weight"], out[f"{pre}.bias"] = plain.weight.to(w.dtype), plain.bias.to(w.dtype)
    return out

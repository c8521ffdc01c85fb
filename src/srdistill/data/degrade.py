"""Real-world degradations: the Real-ESRGAN second-order pipeline, a milder preset, or your own.

``srdistill distill --degradation realesrgan`` makes training inputs the way Real-ESRGAN
(Wang et al., ICCVW 2021; ``realesrgan/models/realesrgan_model.py`` and
``options/train_realesrgan_x4plus.yml``) does, with its published parameter ranges:

1. blur (isotropic/anisotropic Gaussian, generalised Gaussian, plateau, or a sinc kernel),
   random resize (up/down/keep; area, bilinear or bicubic), Gaussian or Poisson noise
   (colour or gray), JPEG at a random quality;
2. the same again with its own probabilities and ranges (the "second order");
3. a final resize to the LR size with a sinc filter and a JPEG encode, in random order.

The JPEG stage is a real JPEG encode and decode (Pillow, 4:2:0), not a differentiable
approximation. Every random choice comes from one ``numpy.random.Generator``: the same
seed gives the same image. :func:`draw` makes the choices (a plain dict, easy to check
against the ranges) and :func:`render` applies them, so tests can look at both.

Presets are dicts of the fields of :data:`FIELDS`; a TOML or JSON file gives the same
fields (those it leaves out keep the ``realesrgan`` values, or those of ``preset = "light"``).
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import SHOWN_LIMIT, UsageError, shown
from ..fileio import MAX_DEGRADATION_BYTES, read_input_bytes, shown_path
from ..metrics import quantize_u8
from ..progress import NULL
from .datasets import TrainImage, make_lr
from .resize import quantize_uint8

KERNELS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
KERNEL_SIZES = tuple(2 * v + 1 for v in range(3, 11))  # 7 .. 21, as Real-ESRGAN
MAX_KERNEL = 21

# Real-ESRGAN x4plus (options/train_realesrgan_x4plus.yml), field names as there
REALESRGAN: dict[str, Any] = {
    "kernel_list": list(KERNELS), "kernel_prob": [0.45, 0.25, 0.12, 0.03, 0.12, 0.03],
    "sinc_prob": 0.1, "blur_sigma": [0.2, 3.0], "betag_range": [0.5, 4.0], "betap_range": [1.0, 2.0],
    "resize_prob": [0.2, 0.7, 0.1], "resize_range": [0.15, 1.5],
    "gaussian_noise_prob": 0.5, "noise_range": [1.0, 30.0], "poisson_scale_range": [0.05, 3.0],
    "gray_noise_prob": 0.4, "jpeg_range": [30.0, 95.0],
    "second_order_prob": 1.0,  # Real-ESRGAN always runs the second stage
    "second_blur_prob": 0.8,
    "kernel_list2": list(KERNELS), "kernel_prob2": [0.45, 0.25, 0.12, 0.03, 0.12, 0.03],
    "sinc_prob2": 0.1, "blur_sigma2": [0.2, 1.5], "betag_range2": [0.5, 4.0], "betap_range2": [1.0, 2.0],
    "resize_prob2": [0.3, 0.4, 0.3], "resize_range2": [0.3, 1.2],
    "gaussian_noise_prob2": 0.5, "noise_range2": [1.0, 25.0], "poisson_scale_range2": [0.05, 2.5],
    "gray_noise_prob2": 0.4, "jpeg_range2": [30.0, 95.0],
    "final_sinc_prob": 0.8,
    # srdistill's addition, not Real-ESRGAN's: this share of training inputs stays clean (MATLAB bicubic
    # LR), so a student also follows the teacher on clean pictures; chosen by bench/realworld.py (0 gives
    # Real-ESRGAN's own stream). Evaluation degrades every image.
    "clean_prob": 0.75,
}

# blur + mild noise + JPEG, one stage: photos from a decent camera, shared once
LIGHT: dict[str, Any] = {
    **REALESRGAN,
    "kernel_list": ["iso", "aniso"], "kernel_prob": [0.7, 0.3], "sinc_prob": 0.0, "blur_sigma": [0.2, 1.5],
    "resize_prob": [0.0, 0.0, 1.0],
    "gaussian_noise_prob": 0.7, "noise_range": [1.0, 10.0], "poisson_scale_range": [0.05, 0.5],
    "jpeg_range": [70.0, 95.0],
    "second_order_prob": 0.0, "final_sinc_prob": 0.0, "jpeg_range2": [60.0, 95.0],
}

PRESETS = {"realesrgan": REALESRGAN, "light": LIGHT}
NO_DEGRADATION = ("bicubic", "none")
FIELDS = tuple(REALESRGAN)

_PROBS = ("clean_prob", "sinc_prob", "gaussian_noise_prob", "gray_noise_prob", "second_order_prob", "second_blur_prob",
          "sinc_prob2", "gaussian_noise_prob2", "gray_noise_prob2", "final_sinc_prob")
# ranges: (lowest allowed, highest allowed)
_RANGES = {"blur_sigma": (0.01, 20.0), "blur_sigma2": (0.01, 20.0), "betag_range": (0.05, 10.0),
           "betag_range2": (0.05, 10.0), "betap_range": (0.05, 10.0), "betap_range2": (0.05, 10.0),
           "resize_range": (0.05, 4.0), "resize_range2": (0.05, 4.0), "noise_range": (0.0, 255.0),
           "noise_range2": (0.0, 255.0), "poisson_scale_range": (0.0, 20.0), "poisson_scale_range2": (0.0, 20.0),
           "jpeg_range": (1.0, 100.0), "jpeg_range2": (1.0, 100.0)}


@dataclass(frozen=True)
class Degradation:
    """A validated degradation recipe; ``name`` is the preset or file it came from."""

    name: str
    params: dict

    def describe(self) -> str:
        return self.name

    def degrade(self, img: torch.Tensor, scale: int, rng: np.random.Generator, *,
                training: bool = True) -> torch.Tensor:
        """uint8 C x H x W (HR) -> uint8 C x H/scale x W/scale, degraded; H and W multiples of ``scale``.
        In training, a ``clean_prob`` share of inputs is the clean bicubic LR instead."""
        clean = rng.uniform() < self.params["clean_prob"]  # always drawn: the rest of the stream stays put
        if clean and training:
            return degrade_clean(img, scale)
        return render(img, scale, draw(self.params, rng), rng)


def degrade_clean(img: torch.Tensor, scale: int) -> torch.Tensor:
    """The clean input: MATLAB bicubic LR (the image itself at scale 1)."""
    if scale == 1:
        return img.clone()
    return make_lr(img, scale)


# --------------------------------------------------------------------------- loading


def _fail(source: str, msg: str) -> UsageError:
    return UsageError(f"--degradation {shown_path(source)}: {msg}",
                      hint="see the README's 'Real-world teachers' section for the fields and their ranges")


def _cut(text: str, limit: int = SHOWN_LIMIT) -> str:
    """Text from the user's file (a parser's message, field names) cut to about ``limit`` characters."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _number(x: Any) -> float | None:
    """``x`` as a finite float, or None: not a number (a bool, a string, a list), NaN, infinite, or an
    integer too large for a float (a 400-digit number)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        v = float(x)
    except OverflowError:
        return None
    return v if math.isfinite(v) else None


def _check(source: str, p: dict) -> dict:
    for k in _PROBS:
        v = _number(p[k])
        if v is None or not 0 <= v <= 1:
            raise _fail(source, f"{k} must be a probability between 0 and 1, not {shown(p[k])}")
        p[k] = v
    for k, (lo, hi) in _RANGES.items():
        v = p[k]
        pair = [_number(x) for x in v] if isinstance(v, (list, tuple)) and len(v) == 2 else None
        if pair is None or None in pair:
            raise _fail(source, f"{k} must be a [low, high] pair of finite numbers, not {shown(v)}")
        a, b = pair
        if a > b or a < lo or b > hi:
            raise _fail(source, f"{k} {shown(v)} is out of range: need {lo:g} <= low <= high <= {hi:g}")
        p[k] = [a, b]
    for suffix in ("", "2"):
        names, probs = p["kernel_list" + suffix], p["kernel_prob" + suffix]
        if (not isinstance(names, list) or not names
                or any(not isinstance(n, str) or n not in KERNELS for n in names)):
            raise _fail(source, f"kernel_list{suffix} must name kernels among {', '.join(KERNELS)}, "
                                f"not {shown(names)}")
        _check_distribution(source, "kernel_prob" + suffix, probs, len(names))
    for k in ("resize_prob", "resize_prob2"):
        _check_distribution(source, k, p[k], 3)
    return p


def _check_distribution(source: str, key: str, probs: Any, n: int) -> None:
    values = [_number(x) for x in probs] if isinstance(probs, list) and len(probs) == n else None
    if (values is None or any(v is None or v < 0 for v in values)
            or not math.isclose(sum(values), 1.0, abs_tol=1e-6)):
        raise _fail(source, f"{key} must be {n} non-negative numbers that add up to 1, not {shown(probs)}")


def load_degradation(spec: str | None) -> Degradation | None:
    """``bicubic``/``none``/None -> None (clean bicubic LR); a preset name; or a TOML/JSON file: a regular
    file of at most 1 MiB (``MAX_DEGRADATION_BYTES``), checked before it is opened."""
    if spec is None or str(spec).strip().lower() in NO_DEGRADATION:
        return None
    name = str(spec).strip()
    if name.lower() in PRESETS:
        return Degradation(name.lower(), _check(name, json.loads(json.dumps(PRESETS[name.lower()]))))
    path = Path(name)
    try:
        os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"unknown --degradation {shown_path(name)}",
                         hint="use bicubic, realesrgan, light, or a .toml/.json file with the same fields") from None
    except OSError:
        pass  # a path too long, a permission problem ...: worded by the check below
    raw = read_input_bytes(path, "--degradation file", MAX_DEGRADATION_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _fail(name, f"cannot read it: it is not UTF-8 text ({e.reason} at byte {e.start})") from None
    toml = path.suffix.lower() == ".toml"
    try:
        if toml:
            import tomllib  # lazy: stdlib only from Python 3.11 (we support 3.10), and only TOML presets need it

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - a syntax error of either format (or JSON nested too deep): one line
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise _fail(name, f"not valid {'TOML' if toml else 'JSON'}: {_cut(first)}") from None
    if not isinstance(data, dict):
        raise _fail(name, f"expected a table of fields, not a {type(data).__name__}")
    base = data.pop("preset", "realesrgan")
    if not isinstance(base, str) or base not in PRESETS:
        raise _fail(name, f"preset must be one of {', '.join(PRESETS)}, not {shown(base)}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise _fail(name, f"unknown field(s) {_cut(', '.join(unknown))}")
    params = {**json.loads(json.dumps(PRESETS[base])), **data}
    return Degradation(path.name, _check(name, params))


# --------------------------------------------------------------------------- kernels


def mesh(size: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.arange(-(size // 2), size // 2 + 1, dtype=np.float64)
    return np.meshgrid(r, r)


def _quadratic(size: int, sx: float, sy: float, theta: float) -> np.ndarray:
    """x^T Sigma^-1 x on the kernel grid for an (anisotropic, rotated) covariance."""
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    sigma = rot @ np.diag([sx * sx, sy * sy]) @ rot.T
    inv = np.linalg.inv(sigma)
    xx, yy = mesh(size)
    return inv[0, 0] * xx * xx + (inv[0, 1] + inv[1, 0]) * xx * yy + inv[1, 1] * yy * yy


def blur_kernel(kind: str, size: int, sx: float, sy: float, theta: float, beta: float) -> np.ndarray:
    """Gaussian (beta unused), generalised Gaussian exp(-q^beta/2) or plateau 1/(1+q^beta), sum 1."""
    q = _quadratic(size, sx, sy, theta)
    if kind in ("iso", "aniso"):
        k = np.exp(-0.5 * q)
    elif kind.startswith("generalized"):
        k = np.exp(-0.5 * np.power(q, beta))
    else:
        k = 1.0 / (np.power(q, beta) + 1.0)
    return k / k.sum()


def sinc_kernel(size: int, omega: float, pad_to: int = 0) -> np.ndarray:
    """A circular low-pass (2-D sinc, Bessel J1) kernel with cut-off ``omega`` (radians), sum 1."""
    xx, yy = mesh(size)
    r = np.hypot(xx, yy)
    j1 = torch.special.bessel_j1(torch.from_numpy(omega * r)).numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        k = omega * j1 / (2 * np.pi * r)
    k[size // 2, size // 2] = omega * omega / (4 * np.pi)
    k = k / k.sum()
    if pad_to > size:
        p = (pad_to - size) // 2
        k = np.pad(k, ((p, p), (p, p)))
    return k


# --------------------------------------------------------------------------- choices


def _uniform(rng: np.random.Generator, r: list[float]) -> float:
    return float(rng.uniform(r[0], r[1]))


def _draw_blur(p: dict, sfx: str, rng: np.random.Generator) -> dict:
    size = int(rng.choice(KERNEL_SIZES))
    if rng.uniform() < p["sinc_prob" + sfx]:
        lo = math.pi / 3 if size < 13 else math.pi / 5  # as Real-ESRGAN: larger kernels may cut lower
        return {"kind": "sinc", "size": size, "omega": float(rng.uniform(lo, math.pi))}
    names, probs = p["kernel_list" + sfx], np.asarray(p["kernel_prob" + sfx], dtype=np.float64)
    kind = str(names[int(rng.choice(len(names), p=probs / probs.sum()))])
    sig = p["blur_sigma" + sfx]
    sx = _uniform(rng, sig)
    iso = kind.endswith("iso") and not kind.endswith("aniso")
    sy = sx if iso else _uniform(rng, sig)
    theta = 0.0 if iso else float(rng.uniform(-math.pi, math.pi))
    beta = 1.0
    if kind.startswith("generalized") or kind.startswith("plateau"):
        br = p[("betag_range" if kind.startswith("generalized") else "betap_range") + sfx]
        # as Real-ESRGAN: half the time below 1, half above (where the range allows)
        beta = float(rng.uniform(br[0], min(1.0, br[1]))) if rng.uniform() < 0.5 and br[0] < 1 else \
            float(rng.uniform(max(1.0, br[0]), br[1])) if br[1] > 1 else float(rng.uniform(br[0], br[1]))
    return {"kind": kind, "size": size, "sigma_x": sx, "sigma_y": sy, "theta": theta, "beta": beta}


def _draw_resize(p: dict, sfx: str, rng: np.random.Generator) -> dict:
    how = ("up", "down", "keep")[int(rng.choice(3, p=np.asarray(p["resize_prob" + sfx], dtype=np.float64)))]
    r = p["resize_range" + sfx]
    if how == "up":
        factor = float(rng.uniform(1.0, max(1.0, r[1])))
    elif how == "down":
        factor = float(rng.uniform(min(1.0, r[0]), 1.0))
    else:
        factor = 1.0
    return {"direction": how, "factor": factor, "mode": RESIZE_MODES[int(rng.integers(3))]}


def _draw_noise(p: dict, sfx: str, rng: np.random.Generator) -> dict:
    gray = bool(rng.uniform() < p["gray_noise_prob" + sfx])
    if rng.uniform() < p["gaussian_noise_prob" + sfx]:
        return {"kind": "gaussian", "sigma": _uniform(rng, p["noise_range" + sfx]), "gray": gray}
    return {"kind": "poisson", "scale": _uniform(rng, p["poisson_scale_range" + sfx]), "gray": gray}


def draw(p: dict, rng: np.random.Generator) -> dict:
    """Every random choice of one degraded image (noise fields themselves are drawn in render)."""
    plan: dict[str, Any] = {
        "blur1": _draw_blur(p, "", rng), "resize1": _draw_resize(p, "", rng), "noise1": _draw_noise(p, "", rng),
        "jpeg1": int(round(_uniform(rng, p["jpeg_range"]))),
    }
    if rng.uniform() < p["second_order_prob"]:
        plan["blur2"] = _draw_blur(p, "2", rng) if rng.uniform() < p["second_blur_prob"] else None
        plan["resize2"] = _draw_resize(p, "2", rng)
        plan["noise2"] = _draw_noise(p, "2", rng)
    plan["final_sinc"] = None
    if rng.uniform() < p["final_sinc_prob"]:
        plan["final_sinc"] = {"size": int(rng.choice(KERNEL_SIZES)), "omega": float(rng.uniform(math.pi / 3, math.pi))}
    plan["final_mode"] = RESIZE_MODES[int(rng.integers(3))]
    plan["jpeg_first"] = bool(rng.uniform() < 0.5)  # final order: JPEG then resize+sinc, or the reverse
    plan["jpeg2"] = int(round(_uniform(rng, p["jpeg_range2"])))
    return plan


# --------------------------------------------------------------------------- operations (1 x C x H x W float)


def filter2d(x: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """Convolve each channel with ``kernel`` (reflect padding, as Real-ESRGAN's filter2D)."""
    k = torch.from_numpy(np.ascontiguousarray(kernel, dtype=np.float32))
    pad = k.shape[-1] // 2
    c = x.shape[1]
    mode = "reflect" if min(x.shape[-2:]) > pad else "replicate"
    xp = F.pad(x, (pad, pad, pad, pad), mode=mode)
    return F.conv2d(xp, k.expand(c, 1, *k.shape), groups=c)


def _kernel_of(b: dict) -> np.ndarray:
    if b["kind"] == "sinc":
        return sinc_kernel(b["size"], b["omega"], pad_to=MAX_KERNEL)
    k = blur_kernel(b["kind"], b["size"], b["sigma_x"], b["sigma_y"], b["theta"], b["beta"])
    p = (MAX_KERNEL - b["size"]) // 2
    return np.pad(k, ((p, p), (p, p)))


def resize(x: torch.Tensor, h: int, w: int, mode: str) -> torch.Tensor:
    h, w = max(1, int(h)), max(1, int(w))
    if mode == "area":
        return F.interpolate(x, size=(h, w), mode="area")
    return F.interpolate(x, size=(h, w), mode=mode, align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def add_noise(x: torch.Tensor, n: dict, rng: np.random.Generator) -> torch.Tensor:
    """Gaussian noise of ``sigma``/255, or Poisson (shot) noise times ``scale``; clipped to [0, 1]."""
    c = x.shape[1]
    if n["kind"] == "gaussian":
        shape = (1, 1 if n["gray"] else c, *x.shape[-2:])
        noise = torch.from_numpy(rng.standard_normal(shape).astype(np.float32)) * (n["sigma"] / 255.0)
    else:
        src = _gray(x) if n["gray"] else x
        q = quantize_uint8(src)
        vals = 2 ** math.ceil(math.log2(max(2, len(torch.unique(q)))))
        out = torch.from_numpy(rng.poisson(q.double().numpy() * vals).astype(np.float32)) / vals
        noise = (out - q) * n["scale"]
    return (x + noise).clamp_(0, 1)


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """A real JPEG encode and decode (Pillow, 4:2:0 chroma) at ``quality``."""
    u8 = quantize_u8(x[0]).permute(1, 2, 0).numpy()
    mode = "L" if u8.shape[2] == 1 else "RGB"
    buf = io.BytesIO()
    Image.fromarray(u8[..., 0] if mode == "L" else u8, mode).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    dec = np.asarray(Image.open(buf).convert(mode), dtype=np.float32) / 255.0
    if dec.ndim == 2:
        dec = dec[..., None]
    return torch.from_numpy(np.ascontiguousarray(dec.transpose(2, 0, 1))).unsqueeze(0)


def _stage(x: torch.Tensor, blur: dict | None, rs: dict, noise: dict, size: tuple[int, int] | None,
           rng: np.random.Generator) -> torch.Tensor:
    if blur is not None:
        x = filter2d(x, _kernel_of(blur))
    h, w = x.shape[-2:] if size is None else size
    x = resize(x, round(h * rs["factor"]) if size is None else h / rs["factor"],
               round(w * rs["factor"]) if size is None else w / rs["factor"], rs["mode"])
    return add_noise(x, noise, rng)


def render(img: torch.Tensor, scale: int, plan: dict, rng: np.random.Generator) -> torch.Tensor:
    """Apply ``plan`` (from :func:`draw`) to a uint8 C x H x W image; uint8 C x H/scale x W/scale."""
    c, h, w = img.shape
    if h % scale or w % scale:
        raise ValueError(f"image {w}x{h} is not a multiple of the scale {scale}")
    x = img.unsqueeze(0).float().div(255.0)
    x = _stage(x, plan["blur1"], plan["resize1"], plan["noise1"], None, rng)
    x = jpeg(x, plan["jpeg1"])
    if "resize2" in plan:
        x = _stage(x, plan["blur2"], plan["resize2"], plan["noise2"], (h / scale, w / scale), rng)
    lh, lw = h // scale, w // scale

    def resize_sinc(t):
        t = resize(t, lh, lw, plan["final_mode"])
        return filter2d(t, sinc_kernel(plan["final_sinc"]["size"], plan["final_sinc"]["omega"], MAX_KERNEL)) \
            if plan["final_sinc"] else t

    if plan["jpeg_first"]:
        x = resize_sinc(jpeg(x.clamp(0, 1), plan["jpeg2"]))
    else:
        x = jpeg(resize_sinc(x).clamp(0, 1), plan["jpeg2"])
    return quantize_u8(x[0]).contiguous()


def variant_rng(seed: int, index: int, variant: int) -> np.random.Generator:
    """The generator of one degraded variant: fixed by (seed, image index, variant), not by order."""
    return np.random.default_rng([int(seed), int(index), int(variant), 0x5EED])


def variant_inputs(img, deg: Degradation, variants: int, scale: int, seed: int,
                   index: int) -> list[tuple[torch.Tensor, float, int | None]]:
    """(LR input, sampling weight, variant number or None for the clean input) of one training image:
    ``variants`` degradations of its HR (or, with ``--lr-only``, of the image itself at scale 1), seeded
    per (seed, image, variant), and with ``clean_prob`` > 0 the clean input first. The clean inputs
    together get ``clean_prob`` of the patches, the degraded ones the rest. The in-memory path and
    the training pack both make their inputs here."""
    src, s = (img.hr, scale) if img.hr is not None else (img.lr, 1)
    clean = deg.params["clean_prob"]
    out: list[tuple[torch.Tensor, float, int | None]] = [(img.lr, clean, None)] if clean > 0 else []
    for k in range(variants):
        out.append((deg.degrade(src, s, variant_rng(seed, index, k), training=False), (1.0 - clean) / variants, k))
    return out


def make_variants(images: list, deg: Degradation, variants: int, scale: int, seed: int, *,
                  reporter=None) -> tuple[list, list[float]]:
    """The training inputs of :func:`variant_inputs` for every image, and their sampling weights."""
    rep = reporter or NULL
    out, weights = [], []
    with rep.task("degrading", total=len(images) * variants) as task:
        for i, img in enumerate(images):
            for lr, w, k in variant_inputs(img, deg, variants, scale, seed, i):
                out.append(img if k is None else TrainImage(f"{img.name}#{deg.name}{k}", lr, img.hr))
                weights.append(w)
            task.advance(variants)
    return out, weights

"""The data stage of a distillation run: training inputs, their targets, the patch sampler.

Three ways in, one result (:class:`TrainingData`):

* in memory (the default): images read once, LR made (or degraded into K variants), the
  teacher's outputs computed once per input (the teacher cache, optionally kept in
  ``--teacher-cache-dir``);
* a training pack (``--pack DIR``, :mod:`srdistill.data.pack`): the same, on disk, built once
  and memory-mapped, so the data may be larger than RAM;
* on the fly (``--degradation NAME --no-teacher-cache``): every patch degraded afresh and
  labelled by the live teacher.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.datasets import PatchSampler, fill_teacher_cache, load_train_images
from ..data.degrade import load_degradation, make_variants
from ..data.otf import OnTheFlySampler
from ..data.pack import PackRequest, open_pack
from ..data.upcycle import MixedSampler, label_with_targets, make_upcycled
from ..errors import UsageError
from ..progress import Reporter

UPCYCLE_RATIO = 0.25  # default share of upcycled patches per batch with --upcycle
DEFAULT_VARIANTS = 4  # degraded LR variants per training image with --degradation


@dataclass
class TrainingData:
    images: list
    stats: Any
    sampler: Any
    cache_info: dict = field(default_factory=dict)
    pack: Any = None  # PackInfo when --pack
    degradation: Any = None


def prepare_data(cfg, teacher, device: torch.device, rep: Reporter, ctx, needs_teacher: bool) -> TrainingData:
    """Read or build the training data for ``cfg``; prints the data lines of the start-up summary."""
    deg = load_degradation(cfg.degradation)
    use_cache = cfg.teacher_cache and needs_teacher
    if not cfg.data:
        rep.info("data: built-in sample images (for trying the tool; point --data at DIV2K or your own images "
                 "for a real model)")
    cache_info: dict[str, Any] = {"enabled": use_cache}
    pack = None
    if cfg.pack:
        images, weights, stats, pack = _from_pack(cfg, teacher, device, rep, ctx, deg, use_cache)
        cache_info.update(storage=f"pack {pack.path}", pack=pack.to_dict())
    else:
        images, stats = load_train_images(cfg.data or None, teacher.scale, cfg.patch_size,
                                          channels=teacher.input_channels, lr_only=cfg.lr_only, reporter=rep,
                                          max_images=cfg.max_images)
        weights = None
    _say_data(stats, cfg, rep)
    if deg is not None and cfg.teacher_cache and not cfg.pack:
        images, weights, cache_info["degradation"] = _degrade(cfg, deg, images, teacher.scale, rep)
    if cfg.lr_only and cfg.alpha < 1:
        rep.warn("--lr-only has no ground truth: the teacher term gets all the pixel weight")
    if not needs_teacher:
        rep.info("alpha 0: ground truth only, the teacher is not used (training from scratch)")
    if use_cache and not cfg.pack:
        _fill_cache(cfg, images, teacher, device, rep, cache_info)
    sampler = _sampler(cfg, images, weights, deg, teacher, rep)
    if cfg.upcycle:
        sampler = _upcycle(cfg, images, teacher, device, rep, cache_info, sampler)
    return TrainingData(images, stats, sampler, cache_info, pack, deg)


def _say_data(stats, cfg, rep: Reporter) -> None:
    rep.info(f"data: {stats.used} image(s) used of {stats.found}"
             + (f", {stats.paired} paired" if stats.paired else "")
             + (f", {stats.skipped_small} too small" if stats.skipped_small else "")
             + (f", {stats.skipped_unreadable} unreadable" if stats.skipped_unreadable else "")
             + (" (LR-only: the teacher is the only target)" if cfg.lr_only else ""))


def pack_request(cfg, teacher, deg, use_cache: bool):
    return PackRequest(root=cfg.pack, data=list(cfg.data), scale=teacher.scale, patch_size=cfg.patch_size,
                       channels=teacher.input_channels, lr_only=cfg.lr_only, max_images=cfg.max_images,
                       teacher_sha256=(teacher.sha256 or "") if use_cache else None,
                       degradation=deg if (deg is not None and cfg.teacher_cache) else None,
                       variants=cfg.degradation_variants or DEFAULT_VARIANTS, seed=cfg.seed, tile=cfg.cache_tile)


def open_training_pack(cfg, teacher, device, rep: Reporter, ctx, use_cache: bool):
    """``--pack DIR --build-only``: the pack alone, as a run would open it."""
    return _from_pack(cfg, teacher, device, rep, ctx, load_degradation(cfg.degradation), use_cache)


def _from_pack(cfg, teacher, device, rep: Reporter, ctx, deg, use_cache: bool):
    """The run's training pack, opened (built or completed first if needed); ``--build-only`` stops here."""
    req = pack_request(cfg, teacher, deg, use_cache)
    images, weights, stats, info = open_pack(req, teacher if use_cache else None, device=device, reporter=rep,
                                             rank=ctx.rank, world=ctx.world_size,
                                             barrier=ctx.barrier if ctx.enabled else None)
    rep.info(info.describe() + (f"; this process built {info.built_here} image(s)" if info.built_here else ""))
    if deg is not None and cfg.teacher_cache:
        clean = deg.params["clean_prob"]
        rep.info(f"degradation: {deg.describe()}, {req.variants} variant(s) of each image"
                 + (f" + the clean input ({clean:.0%} of the patches)" if clean else "") + ", from the pack")
    return images, (None if all(w == weights[0] for w in weights) else weights), stats, info


def _fill_cache(cfg, images, teacher, device, rep: Reporter, cache_info: dict) -> None:
    t0 = time.monotonic()
    fill = fill_teacher_cache(images, teacher, teacher.scale, device=device, tile=cfg.cache_tile, reporter=rep,
                              cache_dir=cfg.teacher_cache_dir, teacher_key=teacher.sha256 or "")
    qerr = fill["max_quantization_error"]
    cache_info.update(seconds=round(time.monotonic() - t0, 3),
                      storage="memory, uint8" + (f" + {cfg.teacher_cache_dir}" if cfg.teacher_cache_dir else ""),
                      max_quantization_error=qerr, computed=fill["computed"], reused=fill["reused"],
                      bytes=int(sum(i.target.numel() for i in images)))
    rep.info(f"teacher cache: {len(images)} image(s) in {cache_info['seconds']:.1f} s"
             + (f" ({fill['reused']} reused from {cfg.teacher_cache_dir})" if fill["reused"] else "")
             + f", stored as uint8 (targets within {qerr:.5f} = 0.5/255 of the teacher's output)")


def _sampler(cfg, images, weights, deg, teacher, rep: Reporter):
    if deg is not None and not cfg.teacher_cache:
        rep.info(f"degradation: {deg.describe()}, every patch degraded afresh and labelled by the live teacher "
                 "(--no-teacher-cache)")
        return OnTheFlySampler(images, teacher.scale, cfg.patch_size, deg)
    return PatchSampler(images, teacher.scale, cfg.patch_size, weights=weights)


def _degrade(cfg, deg, images, scale: int, rep: Reporter):
    """K degraded variants of every image (they replace the clean LR inputs), made once."""
    k = cfg.degradation_variants or DEFAULT_VARIANTS
    t0 = time.monotonic()
    out, weights = make_variants(images, deg, k, scale, cfg.seed, reporter=rep)
    secs = time.monotonic() - t0
    mb = sum(i.lr.numel() for i in out) / 1e6
    clean = deg.params["clean_prob"]
    rep.info(f"degradation: {deg.describe()}, {k} variant(s) of each of {len(images)} image(s)"
             + (f" + the clean input ({clean:.0%} of the patches)" if clean else "")
             + f" = {len(out)} inputs, {mb:.1f} MB of LR, made in {secs:.1f} s (the teacher labels each once)")
    return out, weights, {"name": deg.describe(), "variants": k, "inputs": len(out), "clean_share": clean,
                          "lr_bytes": int(mb * 1e6), "seconds": round(secs, 3)}


def _upcycle(cfg, images, teacher, device, rep: Reporter, cache_info: dict, sampler):
    """Zoom-in/zoom-out inputs labelled by the teacher (through the cache), mixed into each batch."""
    t0 = time.monotonic()
    up = make_upcycled(images, teacher.scale, cfg.patch_size, cfg.seed)
    if not up:
        raise UsageError("--upcycle: no image is large enough for a zoom-in or zoom-out input",
                         hint="lower --patch-size or drop --upcycle")
    fill = fill_teacher_cache(up, teacher, teacher.scale, device=device, tile=cfg.cache_tile, reporter=rep,
                              cache_dir=_upcycle_cache(cfg, rep), teacher_key=teacher.sha256 or "")
    label_with_targets(up)
    ratio = UPCYCLE_RATIO if cfg.upcycle_ratio is None else cfg.upcycle_ratio
    k = min(cfg.batch_size - 1, max(1, round(ratio * cfg.batch_size)))
    n_in = sum(i.name.endswith("#zoom-in") for i in up)
    mb = sum(i.lr.numel() + i.target.numel() for i in up) / 1e6
    secs = time.monotonic() - t0
    cache_info["upcycle"] = {"zoom_in": n_in, "zoom_out": len(up) - n_in, "bytes": int(mb * 1e6),
                             "seconds": round(secs, 3), "reused": fill["reused"], "per_batch": k}
    rep.info(f"upcycle: {n_in} zoom-in + {len(up) - n_in} zoom-out input(s) labelled by the teacher, "
             f"{mb:.1f} MB extra cache, {secs:.1f} s" + (f" ({fill['reused']} reused)" if fill["reused"] else "")
             + f"; {k} of {cfg.batch_size} patches per batch")
    return MixedSampler(sampler, PatchSampler(up, teacher.scale, cfg.patch_size), k, cfg.batch_size)


def _upcycle_cache(cfg, rep: Reporter) -> Path | None:
    """Where the upcycled inputs' teacher outputs are kept: beside the packs, unless that folder
    cannot be written (a complete pack on a read-only file system is still usable: memory only)."""
    if not cfg.pack:
        return None
    folder = Path(cfg.pack) / "upcycled"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        writable = os.access(folder, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        rep.info(f"upcycle: {str(folder)!r} cannot be written; the zoom inputs' teacher outputs stay in memory")
        return None
    return folder

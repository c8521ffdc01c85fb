"""Extension points (issue: structure): a family registered from outside the package is distilled,
saved, reloaded and exported like a built-in one."""

from __future__ import annotations

import torch
from torch import nn

from srdistill.distill.run import TrainHooks
from srdistill.distill.trainer import distill
from srdistill.models._compat import import_spandrel
from srdistill.models.families import ALIASES, FAMILIES, Family, family_names, register_family, resolve_arch
from srdistill.models.loading import load_model

from test_distill import _cfg, data_dir, teacher_path  # noqa: F401  (fixtures)

import_spandrel()
from spandrel import Architecture, ImageModelDescriptor  # noqa: E402
from spandrel.util import KeyCondition, store_hyperparameters  # noqa: E402


@store_hyperparameters()
class ToyNet(nn.Module):
    """A plain conv net: head, ``num_block`` conv+ReLU pairs, pixel-shuffle tail."""

    hyperparameters = {}

    def __init__(self, *, num_feat: int = 8, num_block: int = 2, scale: int = 2):
        super().__init__()
        self.toy_head = nn.Conv2d(3, num_feat, 3, padding=1)
        self.toy_body = nn.Sequential(*[m for _ in range(num_block)
                                        for m in (nn.Conv2d(num_feat, num_feat, 3, padding=1), nn.ReLU())])
        self.toy_tail = nn.Conv2d(num_feat, 3 * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)
        self.scale = scale

    def forward(self, x):
        f = self.toy_head(x)
        return self.shuffle(self.toy_tail(self.toy_body(f) + f)) + nn.functional.interpolate(
            x, scale_factor=self.scale, mode="nearest")


class ToyArch(Architecture[ToyNet]):
    def __init__(self) -> None:
        super().__init__(id="ToySR", name="ToySR", detect=KeyCondition.has_all("toy_head.weight", "toy_tail.weight"))

    def load(self, state_dict):
        num_feat = state_dict["toy_head.weight"].shape[0]
        num_block = sum(1 for k in state_dict if k.startswith("toy_body.") and k.endswith(".weight"))
        scale = int((state_dict["toy_tail.weight"].shape[0] // 3) ** 0.5)
        model = ToyNet(num_feat=num_feat, num_block=num_block, scale=scale)
        return ImageModelDescriptor(model, state_dict, architecture=self, purpose="SR", tags=[], supports_half=True,
                                    supports_bfloat16=True, scale=scale, input_channels=3, output_channels=3)


def test_a_family_registered_from_a_test_distills_saves_reloads_and_exports(teacher_path, data_dir, tmp_path):  # noqa: F811
    register_family(Family(id="ToySR", model_class=ToyNet, width="num_feat", depth="num_block", scale_kw="scale",
                           default_depth=2, blocks=lambda hp: [f"toy_body.{2 * i}" for i in range(hp["num_block"])],
                           head="toy_head", tail="toy_body", note="a test's toy"),
                    aliases=("toy",), detect=ToyArch())
    try:
        assert resolve_arch("toy").id == "ToySR" and "toysr" in family_names()
        res = distill(_cfg(teacher_path, data_dir, tmp_path, steps=6, student_arch="toy", student_width=6,
                           student_depth=3))
        m = load_model(res.out)
        assert m.architecture == "ToySR" and m.hyperparameters["num_feat"] == 6 and m.hyperparameters["num_block"] == 3
        x = torch.rand(1, 3, 16, 16)
        with torch.no_grad():
            assert m(x).shape == (1, 3, 32, 32)
        from srdistill.export import export_onnx
        from srdistill.onnx_model import load_onnx

        exp = export_onnx(res.out, tmp_path / "toy.onnx")
        assert exp.architecture == "ToySR" and exp.verification and all(v.ok for v in exp.verification)
        onnx_m = load_onnx(tmp_path / "toy.onnx")
        assert onnx_m.scale == 2
        with torch.no_grad():
            assert torch.allclose(torch.as_tensor(onnx_m(x)), m(x), atol=1e-4)
    finally:
        FAMILIES.pop("ToySR", None)
        for k in ("toy", "toysr"):
            ALIASES.pop(k, None)


def test_a_term_registered_from_a_test_trains_checkpoints_and_resumes(teacher_path, data_dir, tmp_path,  # noqa: F811
                                                                      monkeypatch):
    import pytest

    from srdistill.distill.terms import TERMS, Term, register_term
    from srdistill.errors import Interrupted, UsageError

    class GainTerm(Term):
        needs = frozenset({"teacher_output"})

        def __init__(self, ctx):
            super().__init__()
            self.module = nn.Conv2d(3, 3, 1).to(ctx.device)  # trained with the student

        def label(self):
            return "gain(student, teacher)"

        def loss(self, out):
            return (self.module(out.student) - out.teacher).abs().mean()

    register_term("gain", GainTerm, needs={"teacher_output"}, about="a test's toy term")
    try:
        kw = dict(steps=8, checkpoint_every=2, terms={"gain": 0.3})
        full = distill(_cfg(teacher_path, data_dir, tmp_path / "full", **kw))
        assert full.loss_formula == "loss = 0.5*L1(student, teacher) + 0.5*L1(student, HR) + 0.3*gain(student, teacher)"
        assert "gain" in full.final_losses
        ck = torch.load(tmp_path / "full" / "s.ckpt", weights_only=True)
        init = nn.Conv2d(3, 3, 1)
        assert set(ck["terms"]["gain"]["module"]) == set(init.state_dict())
        cfg = _cfg(teacher_path, data_dir, tmp_path / "cut", **kw)
        with pytest.raises(Interrupted):
            distill(cfg, hooks=TrainHooks(sigterm_at_step=3))
        cfg.resume = True
        resumed = distill(cfg)
        ck2 = torch.load(tmp_path / "cut" / "s.ckpt", weights_only=True)
        for k, v in ck["terms"]["gain"]["module"].items():  # the term's own state resumed exactly
            assert torch.equal(v, ck2["terms"]["gain"]["module"][k]), k
        a, b = load_model(full.out).module.state_dict(), load_model(resumed.out).module.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        with pytest.raises(UsageError, match="unknown loss term"):
            distill(_cfg(teacher_path, data_dir, tmp_path / "x", steps=1, terms={"nope": 1.0}))
    finally:
        TERMS.pop("gain", None)


def test_one_runnable_contract_is_met_by_eval_and_the_teacher_cache():
    """A model that only takes 24x24 inputs (a fixed-size ONNX export, say) runs in eval's run_sr and
    in the teacher cache through the same adapter as in upscale: tiles of exactly its size."""
    from srdistill.data.datasets import teacher_output
    from srdistill.runner import run_sr
    from srdistill.runner import SizeRequirements, size_requirements

    class Fixed:
        scale, static_size, input_channels = 2, (24, 24), 3
        seen: set = set()

        def __call__(self, x):
            self.seen.add(tuple(x.shape[-2:]))
            assert tuple(x.shape[-2:]) == (24, 24), x.shape
            return torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")

    m = Fixed()
    assert size_requirements(m) == SizeRequirements(static=(24, 24))
    lr = (torch.rand(3, 40, 50) * 255).to(torch.uint8)
    y = run_sr(m, lr, 2)
    assert y.shape == (1, 3, 80, 100)
    assert torch.equal((y[0, :, ::2, ::2] * 255).round().to(torch.uint8), lr)
    t = teacher_output(m, lr, 2, device=torch.device("cpu"), tile=16)
    assert t.shape == (3, 80, 100) and torch.equal(t[:, ::2, ::2], lr)
    assert m.seen == {(24, 24)}

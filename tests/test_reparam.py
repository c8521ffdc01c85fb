"""distill --reparam: branches fold exactly into the family's plain convs, the saved student is an
ordinary file, the checkpoint keeps the branches (exact resume), the ONNX graph is the plain one."""

from __future__ import annotations

import copy

import onnx
import pytest
import torch
from safetensors.torch import load_file

from srdistill.distill.run import TrainHooks
from srdistill.distill.trainer import distill
from srdistill.errors import Interrupted, UsageError
from srdistill.export import ExportOptions, export_onnx
from srdistill.models.families import FAMILIES
from srdistill.models.loading import load_model
from srdistill.models.reparam import (BRANCHES, RepConv, fold, fold_checked, has_reparam, parse_branches,
                                      reparameterize)
from srdistill.progress import RecordingReporter
from test_distill import Compact, _cfg, data_dir, teacher_path  # noqa: F401  (fixtures)

ALL = ("1x1", "expand", "sobel", "laplacian", "identity")


def _compact(seed=0, **kw):
    torch.manual_seed(seed)
    return Compact(**{"num_feat": 8, "num_conv": 3, "upscale": 2, **kw})


@pytest.mark.parametrize("branches", [("1x1",), ("expand",), ("sobel", "laplacian"), ("identity",), ALL])
def test_every_branch_set_folds_exactly_into_one_conv(branches):
    plain = _compact()
    rep = copy.deepcopy(plain)
    n = reparameterize(rep, FAMILIES["Compact"].reparam, branches)
    assert n == 5 and has_reparam(rep)  # first conv, 3 body convs, last conv
    with torch.no_grad():  # trained-looking branches: every weight away from its zero start
        for name, p in rep.named_parameters():
            if ".conv." not in name:
                p.normal_(0, 0.1)
    x = torch.rand(2, 3, 13, 17)
    check = fold_checked(rep, x)
    assert check.convs == 5 and check.max_abs_diff <= 1e-4
    assert not has_reparam(rep)
    assert list(rep.state_dict()) == list(plain.state_dict())  # the family's own keys, in order
    assert all(v.shape == plain.state_dict()[k].shape for k, v in rep.state_dict().items())


def test_zero_started_branches_leave_the_plain_function():
    plain = _compact(1)
    rep = copy.deepcopy(plain)
    reparameterize(rep, FAMILIES["Compact"].reparam, ("1x1", "expand", "sobel", "laplacian"))
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(rep(x), plain(x))
    fold(rep)
    assert torch.allclose(rep(x), plain(x), atol=1e-6)


def test_only_plain_3x3_convs_named_by_the_family_are_replaced():
    m = _compact()
    reparameterize(m, FAMILIES["Compact"].reparam, ("1x1",))
    assert all(isinstance(m.body[i], RepConv) for i in (0, 2, 4, 6, 8))
    assert not any(isinstance(m.body[i], RepConv) for i in (1, 3, 5, 7))  # the PReLUs


def test_branch_lists_are_checked():
    assert parse_branches(None, ("1x1", "expand")) == ("1x1", "expand")
    assert parse_branches("Sobel, 1x1,sobel", ()) == ("sobel", "1x1")
    for bad in ("3x3", "1x1,foo", ",", "x" * 5000):
        with pytest.raises(UsageError) as ei:
            parse_branches(bad, ())
        assert len(str(ei.value)) < 250
    assert set(BRANCHES) == set(ALL)


def test_distill_reparam_saves_a_plain_student_and_checks_the_fold(teacher_path, data_dir, tmp_path):
    rep = RecordingReporter()
    plain = distill(_cfg(teacher_path, data_dir, tmp_path / "plain", steps=12, reparam=False))
    res = distill(_cfg(teacher_path, data_dir, tmp_path / "rep", steps=12, reparam=True), rep)
    a, b = load_model(plain.out), load_model(res.out)
    assert b.architecture == "Compact" and b.params == a.params == res.student["params"]
    assert list(load_file(res.out)) == list(load_file(plain.out))
    assert not torch.equal(a.module.body[0].weight, b.module.body[0].weight)  # it trained differently
    text = "\n".join(rep.infos)
    assert "re-parameterised training: 4 convs train as 3x3 + 1x1 + expand + sobel + laplacian" in text
    assert "folded into plain 3x3 convs, max |difference|" in text
    assert '"event": "fold"' in open(res.log).read()
    ck = torch.load(res.checkpoint, weights_only=True)
    assert any(".squeeze." in k for k in ck["student"])  # the checkpoint keeps the branches
    assert b.srdistill["config"]["reparam"] is True


def test_reparam_resume_is_exact(teacher_path, data_dir, tmp_path):
    full = distill(_cfg(teacher_path, data_dir, tmp_path / "full", steps=20, reparam=True))
    cfg = _cfg(teacher_path, data_dir, tmp_path / "cut", steps=20, reparam=True)
    with pytest.raises(Interrupted):
        distill(cfg, hooks=TrainHooks(sigterm_at_step=9))
    cfg.resume = True
    resumed = distill(cfg)
    a, b = load_file(full.out), load_file(resumed.out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_reparam_is_refused_for_a_family_without_plain_convs(teacher_path, data_dir, tmp_path):
    with pytest.raises(UsageError, match="SPAN students have no plain 3x3 convs"):
        distill(_cfg(teacher_path, data_dir, tmp_path, steps=2, reparam=True, student_arch="span",
                     student_width=12, student_depth=None))
    with pytest.raises(UsageError, match="--reparam-branches contradicts --no-reparam"):
        distill(_cfg(teacher_path, data_dir, tmp_path, steps=2, reparam=False, reparam_branches="1x1"))
    with pytest.raises(UsageError, match="SPAN students have no plain 3x3 convs"):
        distill(_cfg(teacher_path, data_dir, tmp_path, steps=2, reparam_branches="1x1", student_arch="span",
                     student_width=12, student_depth=None))


def test_reparam_is_the_default_where_the_family_declares_it(teacher_path, data_dir, tmp_path):
    compact = distill(_cfg(teacher_path, data_dir, tmp_path / "c", steps=2))
    assert any(".squeeze." in k for k in torch.load(compact.checkpoint, weights_only=True)["student"])
    assert load_model(compact.out).srdistill["config"]["reparam"] is True
    span = distill(_cfg(teacher_path, data_dir, tmp_path / "s", steps=2, student_arch="span", student_width=12,
                        student_depth=None))
    assert load_model(span.out).srdistill["config"]["reparam"] is False
    off = distill(_cfg(teacher_path, data_dir, tmp_path / "o", steps=2, reparam=False))
    assert not any(".squeeze." in k for k in torch.load(off.checkpoint, weights_only=True)["student"])


def test_reparam_after_teacher_init_starts_from_the_teacher(teacher_path, data_dir, tmp_path):
    """--init teacher: the teacher's weights go into the 3x3 branches; the others start at zero."""
    cfg = _cfg(teacher_path, data_dir, tmp_path, steps=1, init="teacher", student_width=16, reparam=True,
               lr=1e-12, ema_decay=0.0, grad_clip=0.0)
    res = distill(cfg)
    student, teacher = load_model(res.out), load_model(teacher_path)
    for (k, a), (_, b) in zip(student.module.state_dict().items(), teacher.module.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-5), k


def test_reparam_student_exports_the_plain_graph(teacher_path, data_dir, tmp_path):
    outs = {}
    for name, kw in (("plain", {"reparam": False}), ("rep", {"reparam": True})):
        res = distill(_cfg(teacher_path, data_dir, tmp_path / name, steps=4, **kw))
        path = tmp_path / f"{name}.onnx"
        export_onnx(load_model(res.out), path, ExportOptions())
        g = onnx.load(path).graph
        outs[name] = ([(n.op_type, list(n.input), list(n.output)) for n in g.node],
                      [(i.name, list(i.dims)) for i in g.initializer])
    assert outs["plain"] == outs["rep"]


def test_one_kernel_forward_equals_the_branches_side_by_side_with_the_same_gradients():
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(6, 6, 3, padding=1)
    rep = RepConv(conv, ALL)
    with torch.no_grad():
        for p in rep.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.rand(2, 6, 9, 11)
    a = rep(x)
    b = rep.branchwise(x)
    assert torch.allclose(a, b, atol=1e-5)
    ga = torch.autograd.grad(a.square().sum(), list(rep.parameters()))
    gb = torch.autograd.grad(rep.branchwise(x).square().sum(), list(rep.parameters()))
    for u, v in zip(ga, gb):
        assert torch.allclose(u, v, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("branches", [("1x1", "expand"), ("1x1", "expand", "sobel", "laplacian"),
                                      ("expand", "identity")])
def test_a_training_state_dict_folds_as_the_module_does(branches):
    from srdistill.models.reparam import fold_state_dict

    plain = _compact(5)
    rep = copy.deepcopy(plain)
    reparameterize(rep, FAMILIES["Compact"].reparam, branches)
    with torch.no_grad():
        for name, p in rep.named_parameters():
            if ".conv." not in name:
                p.normal_(0, 0.1)
    sd = fold_state_dict(rep.state_dict(), identity="identity" in branches)
    fold(rep)
    assert list(sd) == list(plain.state_dict()) or set(sd) == set(plain.state_dict())
    assert all(torch.allclose(sd[k], v, atol=1e-6) for k, v in rep.state_dict().items())
    assert fold_state_dict(plain.state_dict()) is not None  # a plain one passes through

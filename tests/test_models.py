"""The model layer: every family round-trips through our file format (and through plain
spandrel), students follow their width/depth knobs, EDSR loads in both published key layouts
and computes what EDSR-PyTorch / BasicSR compute, and the real teachers in ../shared load."""

from __future__ import annotations

import json
import math

import pytest

from srdistill.progress import RecordingReporter
import torch
import torch.nn.functional as F

from srdistill.errors import ModelLoadError, SrDistillError, UsageError
from srdistill.models._compat import import_spandrel
from srdistill.models.checkpoint import save_student
from srdistill.models.families import FAMILIES
from srdistill.models.loading import SRModel, load_model, model_from_state_dict
from srdistill.models.students import build_student

spandrel = import_spandrel()

# third-party noise from spandrel's OmniSR / SwinIR code
pytestmark = [
    pytest.mark.filterwarnings("ignore:'saved_variables' is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:torch.meshgrid:UserWarning"),
]

# A tiny teacher per family: the class (from the family table) and its constructor arguments.
TINY = {
    "EDSR": dict(num_feat=16, num_block=2, upscale=2),
    "ESRGAN": dict(num_filters=16, num_blocks=2, scale=4),
    "RCAN": dict(n_feats=24, n_resgroups=2, n_resblocks=1, scale=2),
    "SwinIR": dict(embed_dim=16, depths=[1, 1], num_heads=[4, 4], window_size=8, mlp_ratio=2.0,
                   upsampler="pixelshuffledirect", upscale=2, img_size=32),
    "SPAN": dict(num_in_ch=3, num_out_ch=3, feature_channels=16, upscale=2),
    "Compact": dict(num_feat=16, num_conv=2, upscale=4),
    "PLKSR": dict(dim=16, n_blocks=2, upscaling_factor=2, kernel_size=9),
    "RealPLKSR": dict(dim=16, n_blocks=2, upscaling_factor=3, kernel_size=9),
    "SAFMN": dict(dim=16, n_blocks=2, upscaling_factor=2),
    "OmniSR": dict(num_feat=16, res_num=2, up_scale=2),
    "DCTLSA": dict(nf=20, upscale=2),
}
# Two student widths per family, both narrower than the tiny teacher and valid for the family
# (multiples of 4 for PLKSR/SAFMN/OmniSR, of the 4 heads for SwinIR, of 5 for DCTLSA, >= 16 for RCAN).
WIDTHS = {"RCAN": (16, 20), "DCTLSA": (10, 15)}
FAMILY_IDS = list(FAMILIES)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny models gain nothing from threads, and on a busy 2-core machine threads spinning
    # against each other make these tests ten times slower
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_every_family_has_a_tiny_config():
    assert set(TINY) == set(FAMILIES)


def tiny_module(fid: str, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    module = FAMILIES[fid].cls()(**{**TINY[fid], **overrides})
    with torch.no_grad():  # move every weight off its (often zero/identity) initialisation
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return module


def tiny_teacher(fid: str, **overrides) -> SRModel:
    return model_from_state_dict(tiny_module(fid, **overrides).state_dict(), name=f"tiny {fid}")


def lr_input(model: SRModel, seed: int = 1) -> torch.Tensor:
    """A non-square 16x24 batch (fits every family's size requirements)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, model.input_channels, 16, 24, generator=g)


def knobs(model: SRModel) -> tuple[int, int | None]:
    fam = FAMILIES[model.architecture]
    return fam.get_width(model.hyperparameters), fam.get_depth(model.hyperparameters)


# --------------------------------------------------------------------------------------------
# save -> load round trip, and plain spandrel loads the file


@pytest.mark.parametrize("fid", FAMILY_IDS)
def test_round_trip_identical_and_loads_in_spandrel(fid, tmp_path):
    teacher = tiny_teacher(fid)
    assert teacher.architecture == fid
    w = WIDTHS.get(fid, (8, 12))[0]
    student = build_student(teacher, w, seed=0)
    for name, model in (("teacher", teacher), ("student", student)):
        model.module.eval()
        x = lr_input(model)
        y = model(x)
        assert y.shape == (1, 3, 16 * model.scale, 24 * model.scale)

        path = save_student(tmp_path / f"{name}.safetensors", model)
        loaded = load_model(path)
        assert loaded.architecture == fid
        assert loaded.scale == model.scale
        assert loaded.hyperparameters == model.hyperparameters
        assert knobs(loaded) == knobs(model)
        assert loaded.params == model.params
        assert torch.equal(loaded(x), y), f"{fid} {name}: output changed after save/load"
        assert loaded.srdistill["architecture"] == fid
        # the detected hyperparameters are plain JSON and rebuild the very same model
        assert json.loads(json.dumps(loaded.hyperparameters)) == json.loads(json.dumps(model.hyperparameters))
        rebuilt = FAMILIES[fid].cls()(**loaded.hyperparameters)
        rebuilt.load_state_dict(loaded.module.state_dict())
        rebuilt.eval()
        with torch.no_grad():
            assert torch.equal(rebuilt(x.clone()), y)  # clone: raw RCAN scales its input in place
        assert loaded.srdistill["knobs"] == dict(zip(("width", "depth"), knobs(model)))

        if fid == "EDSR":  # ours: spandrel does not know it
            continue
        desc = spandrel.ModelLoader().load_from_file(str(path))
        # spandrel files RealPLKSR under its PLKSR id
        assert desc.architecture.id == ("PLKSR" if fid == "RealPLKSR" else fid)
        assert desc.scale == model.scale
        desc.model.eval()
        with torch.no_grad():
            assert torch.equal(desc.model(x.clone()), y), f"{fid} {name}: spandrel computes something else"


@pytest.mark.parametrize("fid", FAMILY_IDS)
def test_running_a_model_leaves_its_input_alone(fid):
    # spandrel's RCAN scales its input in place (x *= 255): the teacher must not corrupt the batch
    # the student sees next
    model = tiny_teacher(fid)
    x = lr_input(model)
    before = x.clone()
    model(x)
    model.module.train()
    model.module(x)
    assert torch.equal(x, before)


# --------------------------------------------------------------------------------------------
# students: knobs, shapes, sizes, refusals


@pytest.mark.parametrize("fid", FAMILY_IDS)
def test_students_follow_width_and_depth(fid):
    teacher = tiny_teacher(fid)
    fam = FAMILIES[fid]
    widths = WIDTHS.get(fid, (8, 12))
    depths = (1, 2) if fam.depth else (None,)
    params = {}
    for w in widths:
        for d in depths:
            s = build_student(teacher, w, d, seed=0)
            assert s.architecture == fid and s.scale == teacher.scale
            assert knobs(s) == (w, d if d is not None else fam.fixed_depth)
            x = lr_input(s)
            assert s(x).shape == (1, 3, 16 * teacher.scale, 24 * teacher.scale)
            params[w, d] = s.params
    for d in depths:
        assert params[widths[0], d] < params[widths[1], d], f"{fid}: params must fall with width"
    if fam.depth:
        for w in widths:
            assert params[w, 1] < params[w, 2], f"{fid}: params must fall with depth"
    assert max(params.values()) < teacher.params


def test_student_keeps_the_teachers_other_hyperparameters():
    teacher = tiny_teacher("SwinIR")
    s = build_student(teacher, 8, 1)
    for k in ("window_size", "upsampler", "mlp_ratio", "upscale", "img_size"):
        assert s.hyperparameters[k] == teacher.hyperparameters[k]
    assert s.hyperparameters["depths"] == [1] and s.hyperparameters["num_heads"] == [4]


def test_student_is_freshly_initialised_and_seeded():
    teacher = tiny_teacher("Compact")
    a, b = build_student(teacher, 8, 1, seed=3), build_student(teacher, 8, 1, seed=3)
    c = build_student(teacher, 8, 1, seed=4)
    sa, sb, sc = (m.module.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.module.training  # ready to train; every parameter trainable
    assert all(p.requires_grad for p in a.module.parameters())


@pytest.mark.parametrize("fid", ["EDSR", "Compact", "SPAN", "DCTLSA"])
def test_student_wider_than_teacher_refused_unless_allowed(fid):
    teacher = tiny_teacher(fid)
    tw = knobs(teacher)[0]
    wider = tw + FAMILIES[fid].width_multiple
    with pytest.raises(UsageError, match="wider"):
        build_student(teacher, wider)
    s = build_student(teacher, wider, allow_wider=True)
    assert knobs(s)[0] == wider


def test_swinir_width_is_rounded_to_a_multiple_of_the_heads():
    teacher = tiny_teacher("SwinIR")  # 4 heads
    rep = RecordingReporter()
    assert knobs(build_student(teacher, 10, reporter=rep))[0] == 12  # a tie goes up
    assert rep.infos == ["SwinIR widths are multiples of its 4 attention heads: using 12"]
    assert knobs(build_student(teacher, 12))[0] == 12


@pytest.mark.parametrize("fid,width,used", [("PLKSR", 10, 12), ("SAFMN", 6, 8), ("DCTLSA", 12, 10)])
def test_width_outside_family_multiple_is_rounded_with_a_notice(fid, width, used):
    rep = RecordingReporter()
    assert knobs(build_student(tiny_teacher(fid), width, reporter=rep))[0] == used
    assert len(rep.infos) == 1 and rep.infos[0].startswith(f"{fid} widths are multiples of")


def test_width_below_the_family_minimum_is_refused_with_a_hint():
    with pytest.raises(UsageError, match="RCAN width must be at least 16.*--student-arch compact"):
        build_student(tiny_teacher("RCAN"), 8)


@pytest.mark.parametrize("depth", [0, -1])
def test_depth_below_one_refused(depth):
    with pytest.raises(UsageError, match="depth"):
        build_student(tiny_teacher("Compact"), 8, depth)


@pytest.mark.parametrize("width", [0, -4])
def test_width_below_one_refused(width):
    with pytest.raises(UsageError, match="width"):
        build_student(tiny_teacher("Compact"), width)


@pytest.mark.parametrize("fid", ["SPAN", "DCTLSA"])
def test_depth_for_fixed_depth_family_refused(fid):
    teacher = tiny_teacher(fid)
    w = WIDTHS.get(fid, (8, 12))[0]
    with pytest.raises(UsageError, match="fixed depth"):
        build_student(teacher, w, 2)
    # naming the one depth it has is harmless
    assert knobs(build_student(teacher, w, FAMILIES[fid].fixed_depth))[1] == FAMILIES[fid].fixed_depth


def _tiny_dat() -> SRModel:
    from spandrel.architectures.DAT import DAT

    torch.manual_seed(0)
    module = DAT(embed_dim=32, depth=[1], num_heads=[2], split_size=[2, 4], expansion_factor=2.0,
                 upscale=3, img_size=16)
    return model_from_state_dict(module.state_dict(), name="tiny DAT")


def test_teacher_without_knobs_needs_student_arch():
    teacher = _tiny_dat()
    assert teacher.architecture == "DAT" and "DAT" not in FAMILIES
    with pytest.raises(UsageError, match="--student-arch") as e:
        build_student(teacher, 16)
    assert e.value.exit_code == 2
    s = build_student(teacher, 8, 1, arch="compact")
    assert (s.architecture, s.scale) == ("Compact", 3)


@pytest.mark.parametrize("arch,fid", [("compact", "Compact"), ("span", "SPAN"), ("SRVGGNetCompact", "Compact")])
def test_cross_family_student_keeps_teacher_scale(arch, fid):
    teacher = tiny_teacher("DCTLSA", upscale=3)
    s = build_student(teacher, 8, arch=arch)
    assert s.architecture == fid and s.scale == 3
    assert knobs(s)[0] == 8
    x = lr_input(s)
    assert s(x).shape == (1, 3, 48, 72)
    assert s.params < teacher.params


def test_unknown_student_arch_refused():
    with pytest.raises(UsageError, match="unknown student architecture"):
        build_student(tiny_teacher("Compact"), 8, arch="nosuchnet")


# --------------------------------------------------------------------------------------------
# EDSR in both published key layouts, against independent re-implementations

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


def _conv(x, sd, key, padding=1):
    return F.conv2d(x, sd[f"{key}.weight"], sd[f"{key}.bias"], padding=padding)


def _rand_conv(cin, cout, k=3, gen=None):
    fan_in = cin * k * k
    return (torch.randn(cout, cin, k, k, generator=gen) / math.sqrt(fan_in),
            torch.randn(cout, generator=gen) * 0.1)


def edsr_pytorch_state(nf: int, nb: int, scale: int, seed: int = 0, rgb_range: float = 255) -> dict:
    """A state dict laid out as sanghyun-son/EDSR-PyTorch's EDSR (MeanShift(rgb_range), DIV2K mean, std 1)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def put(key, cin, cout, k=3):
        sd[f"{key}.weight"], sd[f"{key}.bias"] = _rand_conv(cin, cout, k, g)

    mean = torch.tensor(DIV2K_MEAN)
    sd["sub_mean.weight"] = torch.eye(3).view(3, 3, 1, 1) / 1.0
    sd["sub_mean.bias"] = -1 * rgb_range * mean / 1.0
    sd["add_mean.weight"] = torch.eye(3).view(3, 3, 1, 1) / 1.0
    sd["add_mean.bias"] = +1 * rgb_range * mean / 1.0
    put("head.0", 3, nf)
    for i in range(nb):
        put(f"body.{i}.body.0", nf, nf)
        put(f"body.{i}.body.2", nf, nf)
    put(f"body.{nb}", nf, nf)
    if scale == 3:
        put("tail.0.0", nf, 9 * nf)
    else:
        for j in range(int(math.log2(scale))):
            put(f"tail.0.{2 * j}", nf, 4 * nf)
    put("tail.1", nf, 3)
    return sd


def edsr_pytorch_forward(sd: dict, x: torch.Tensor, nb: int, scale: int) -> torch.Tensor:
    """EDSR-PyTorch's forward, written out: input and output in [0, rgb_range]."""
    x = _conv(x, sd, "sub_mean", padding=0)
    x = _conv(x, sd, "head.0")
    res = x
    for i in range(nb):
        r = _conv(F.relu(_conv(res, sd, f"body.{i}.body.0")), sd, f"body.{i}.body.2")
        res = r * 1.0 + res  # ResBlock: res_scale 1
    res = _conv(res, sd, f"body.{nb}")
    res = res + x
    if scale == 3:
        res = F.pixel_shuffle(_conv(res, sd, "tail.0.0"), 3)
    else:
        for j in range(int(math.log2(scale))):
            res = F.pixel_shuffle(_conv(res, sd, f"tail.0.{2 * j}"), 2)
    y = _conv(res, sd, "tail.1")
    return _conv(y, sd, "add_mean", padding=0)


def basicsr_state(nf: int, nb: int, scale: int, seed: int = 0) -> dict:
    """A state dict laid out as BasicSR's EDSR (mean is not stored: it is a plain attribute there)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def put(key, cin, cout):
        sd[f"{key}.weight"], sd[f"{key}.bias"] = _rand_conv(cin, cout, 3, g)

    put("conv_first", 3, nf)
    for i in range(nb):
        put(f"body.{i}.conv1", nf, nf)
        put(f"body.{i}.conv2", nf, nf)
    put("conv_after_body", nf, nf)
    if scale == 3:
        put("upsample.0", nf, 9 * nf)
    else:
        for j in range(int(math.log2(scale))):
            put(f"upsample.{2 * j}", nf, 4 * nf)
    put("conv_last", nf, 3)
    return sd


def basicsr_forward(sd: dict, x: torch.Tensor, nb: int, scale: int) -> torch.Tensor:
    """BasicSR's EDSR forward, written out: [0, 1] in and out, img_range 255, DIV2K mean."""
    mean = torch.tensor(DIV2K_MEAN).view(1, 3, 1, 1)
    x = (x - mean) * 255.0
    x = _conv(x, sd, "conv_first")
    res = x
    for i in range(nb):
        res = res + _conv(F.relu(_conv(res, sd, f"body.{i}.conv1")), sd, f"body.{i}.conv2") * 1.0
    res = _conv(res, sd, "conv_after_body") + x
    if scale == 3:
        res = F.pixel_shuffle(_conv(res, sd, "upsample.0"), 3)
    else:
        for j in range(int(math.log2(scale))):
            res = F.pixel_shuffle(_conv(res, sd, f"upsample.{2 * j}"), 2)
    return _conv(res, sd, "conv_last") / 255.0 + mean


@pytest.mark.parametrize("ext", [".pth", ".pt"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_edsr_pytorch_layout_matches_reference(scale, ext, tmp_path):
    nf, nb = 8, 2
    sd = edsr_pytorch_state(nf, nb, scale)
    path = tmp_path / f"EDSR_x{scale}{ext}"
    torch.save(sd, path)
    m = load_model(path)
    assert (m.architecture, m.scale) == ("EDSR", scale)
    hp = m.hyperparameters
    assert (hp["num_feat"], hp["num_block"], hp["upscale"], hp["img_range"]) == (nf, nb, scale, 255.0)
    assert hp["rgb_mean"] == DIV2K_MEAN
    assert m.params == sum(v.numel() for k, v in sd.items() if not k.startswith(("sub_mean", "add_mean")))

    x255 = torch.randint(0, 256, (1, 3, 12, 10)).float()
    with torch.no_grad():
        ref = edsr_pytorch_forward(sd, x255, nb, scale) / 255.0
    out = m(x255 / 255.0)
    assert out.shape == (1, 3, 12 * scale, 10 * scale)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=2e-5)

    # re-saved in our format it is the same model, in BasicSR's key layout
    again = save_student(tmp_path / "again.safetensors", m)
    back = load_model(again)
    assert back.hyperparameters == hp
    assert torch.equal(back(x255 / 255.0), out)
    from safetensors import safe_open

    with safe_open(str(again), "pt") as f:
        assert set(f.keys()) == set(basicsr_state(nf, nb, scale))


def test_edsr_pytorch_with_rgb_range_1_keeps_its_normalisation(tmp_path):
    """EDSR-PyTorch trained with --rgb_range 1: the saved student must not come back as range 255."""
    sd = edsr_pytorch_state(8, 1, 2, rgb_range=1)
    torch.save(sd, tmp_path / "edsr_r1.pth")
    m = load_model(tmp_path / "edsr_r1.pth")
    assert m.hyperparameters["img_range"] == 1.0
    x = torch.rand(1, 3, 8, 10)
    with torch.no_grad():
        ref = edsr_pytorch_forward(sd, x, 1, 2)
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=2e-5)
    for name, model in (("teacher", m), ("student", build_student(m, 4, 1, seed=0))):
        back = load_model(save_student(tmp_path / f"{name}.safetensors", model))
        assert back.hyperparameters == model.hyperparameters
        assert torch.equal(back(x), model(x))


@pytest.mark.parametrize("ext", [".pth", ".pt"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_edsr_basicsr_layout_matches_reference(scale, ext, tmp_path):
    nf, nb = 8, 2
    sd = basicsr_state(nf, nb, scale, seed=scale)
    path = tmp_path / f"EDSR_x{scale}{ext}"
    torch.save({"params": sd}, path)  # BasicSR wraps its weights in 'params'
    m = load_model(path)
    assert (m.architecture, m.scale) == ("EDSR", scale)
    assert (m.hyperparameters["num_feat"], m.hyperparameters["num_block"]) == (nf, nb)
    x = torch.rand(1, 3, 10, 12, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = basicsr_forward(sd, x, nb, scale)
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=2e-5)


def test_edsr_layouts_agree(tmp_path):
    """The same weights in the two layouts are the same model."""
    sd = edsr_pytorch_state(8, 1, 4)
    rename = {"head.0": "conv_first", "body.0.body.0": "body.0.conv1", "body.0.body.2": "body.0.conv2",
              "body.1": "conv_after_body", "tail.0.0": "upsample.0", "tail.0.2": "upsample.2", "tail.1": "conv_last"}
    basic = {f"{rename[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v for k, v in sd.items()
             if not k.startswith(("sub_mean", "add_mean"))}
    torch.save(sd, tmp_path / "a.pth")
    torch.save(basic, tmp_path / "b.pth")
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(load_model(tmp_path / "a.pth")(x), load_model(tmp_path / "b.pth")(x))


def _one_line_naming(err: SrDistillError, name: str) -> str:
    msg = str(err)
    assert "\n" not in msg and name in msg
    return msg


@pytest.mark.parametrize("layout", ["edsr-pytorch", "basicsr"])
@pytest.mark.parametrize("change", ["missing", "extra"])
def test_edsr_key_mismatch_is_a_clear_error(layout, change, tmp_path):
    sd = edsr_pytorch_state(8, 2, 2) if layout == "edsr-pytorch" else basicsr_state(8, 2, 2)
    if change == "missing":
        del sd["body.1.body.2.bias" if layout == "edsr-pytorch" else "body.1.conv2.bias"]
    else:
        sd["body.1.extra.weight"] = torch.zeros(8, 8, 3, 3)
    path = tmp_path / "broken_edsr.pth"
    torch.save(sd, path)
    with pytest.raises(ModelLoadError) as e:
        load_model(path)
    msg = _one_line_naming(e.value, "broken_edsr.pth")
    assert ("Missing key" if change == "missing" else "Unexpected key") in msg
    assert ("body.1.conv2.bias" if change == "missing" else "body.1.extra.weight") in msg


def test_misshapen_weight_is_a_clear_error(tmp_path):
    sd = basicsr_state(8, 2, 2)
    sd["body.1.conv2.bias"] = torch.zeros(9)
    torch.save(sd, tmp_path / "shape.pth")
    with pytest.raises(ModelLoadError, match="size mismatch for body.1.conv2.bias"):
        load_model(tmp_path / "shape.pth")


# --------------------------------------------------------------------------------------------
# the real teachers in ../shared


@pytest.mark.shared
def test_real_dctlsa_teacher(shared_dir):
    path = shared_dir / "weights" / "DCTLSA_x4.pt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    m = load_model(path)
    assert (m.architecture, m.scale, m.params) == ("DCTLSA", 4, 885_328)
    assert knobs(m) == (55, 6)
    assert m(torch.rand(1, 3, 16, 16)).shape == (1, 3, 64, 64)
    s = build_student(m, 25, seed=0)
    assert (s.architecture, s.scale) == ("DCTLSA", 4) and s.params < m.params / 3


@pytest.mark.shared
def test_real_compact_teacher(shared_dir):
    path = shared_dir / "weights" / "realesr-animevideov3.pth"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert list(raw) == ["params"]  # wrapped, as Real-ESRGAN ships it
    m = load_model(path)
    assert (m.architecture, m.scale, m.params) == ("Compact", 4, 621_424)
    assert knobs(m) == (64, 16)
    s = build_student(m, 32, 8, seed=0)
    assert knobs(s) == (32, 8) and s.params < m.params / 4
    assert s(torch.rand(1, 3, 12, 12)).shape == (1, 3, 48, 48)

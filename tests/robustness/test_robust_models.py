"""Untrusted model files through the real CLI: one-line error, exit 1, no code run, bounded memory.

Every hostile file is built here from a tiny valid model. All of them go through
``srdistill info FILE`` and a few through ``srdistill distill FILE ...``, each in its
own forked child of one probe process (``robust_probe.py``) that measures the child's
peak resident memory. One more real ``python -m srdistill`` subprocess checks the
console entry point end to end.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import struct
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from robust_helpers import HERE, PYTHON, python_env, tiny_compact

CATEGORY = "untrusted model files"
MAX_EXTRA_RSS_MB = 300  # what one hostile file may cost in resident memory, over an idle srdistill


# --------------------------------------------------------------------------- payloads


class _Reduce:
    """Unpickling calls ``fn(*args)``: the classic pickle attack."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


class NotInstalledNet:
    """Pickled by reference as ``test_robust_models.NotInstalledNet``: a class the loader must not import."""

    def __init__(self):
        self.weight = torch.zeros(2)


def _zip_pth(members: dict[str, bytes], *, deflate: set[str] = frozenset()) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
            z.writestr(info, data)
    return out.getvalue()


def _torch_members(obj) -> dict[str, bytes]:
    buf = io.BytesIO()
    torch.save(obj, buf)
    z = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    return {i.filename: z.read(i.filename) for i in z.infolist()}


def _with_data_pkl(pickle_bytes: bytes) -> bytes:
    """A torch zip checkpoint whose data.pkl is ``pickle_bytes``."""
    members = _torch_members({"w": torch.zeros(4)})
    key = next(k for k in members if k.endswith("data.pkl"))
    members[key] = pickle_bytes
    return _zip_pth(members)


def _patch_zip_size(data: bytearray, member: str, size: int) -> None:
    """Overwrite the uncompressed size of ``member`` in its local and central headers."""
    name = member.encode()
    for sig, off_size, off_nlen, hdr in ((b"PK\x03\x04", 22, 26, 30), (b"PK\x01\x02", 24, 28, 46)):
        pos = data.find(sig)
        while pos >= 0:
            nlen = struct.unpack_from("<H", data, pos + off_nlen)[0]
            if bytes(data[pos + hdr: pos + hdr + nlen]) == name:
                struct.pack_into("<I", data, pos + off_size, size)
            pos = data.find(sig, pos + 4)


def _deflate_bomb(zeros_mib: int, claimed: int | None) -> bytes:
    """A torch zip whose data/0 inflates to ``zeros_mib`` MiB; ``claimed``: lie about that size."""
    members = _torch_members({"w": torch.zeros(4)})
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in members.items():
            if name.endswith("data/0"):
                info = zipfile.ZipInfo(name)
                info.compress_type = zipfile.ZIP_DEFLATED
                with z.open(info, "w", force_zip64=False) as f:
                    chunk = bytes(1 << 20)
                    for _ in range(zeros_mib):
                        f.write(chunk)
            else:
                z.writestr(zipfile.ZipInfo(name), data)
    b = bytearray(out.getvalue())
    if claimed is not None:
        _patch_zip_size(b, next(k for k in members if k.endswith("data/0")), claimed)
    return bytes(b)


def _huge_storage_claim() -> bytes:
    """A torch zip whose pickle says tensor ``w`` has 10^12 floats; data/0 holds 16 bytes."""
    members = _torch_members({"w": torch.zeros(4)})
    key = next(k for k in members if k.endswith("data.pkl"))
    big = b"\x8a\x06" + (10**12).to_bytes(6, "little")  # LONG1 10**12
    pk = members[key]
    assert pk.count(b"cpuq\x06K\x04t") == 1 and pk.count(b"K\x00K\x04\x85") == 1
    pk = pk.replace(b"cpuq\x06K\x04t", b"cpuq\x06" + big + b"t").replace(b"K\x00K\x04\x85", b"K\x00" + big + b"\x85")
    members[key] = pk
    return _zip_pth(members)


def _zip_claiming(size: int) -> bytes:
    """A valid torch zip whose central directory says data/0 is ``size`` bytes (zip64 for big sizes)."""
    members = _torch_members({"w": torch.zeros(4)})
    b = bytearray(_zip_pth(members))
    _patch_zip_size(b, next(k for k in members if k.endswith("data/0")), min(size, 0xFFFFFFFE))
    return bytes(b)


def _safetensors(header: dict | bytes, data: bytes = b"", *, n: int | None = None) -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h) if n is None else n) + h + data


def _st_of(sd: dict) -> bytes:
    from safetensors.torch import save

    return save(sd)


def _tiny_sd() -> dict:
    return tiny_compact().state_dict()


def _legacy_pth(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def _onnx_rank2() -> bytes:
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3])
    g = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "g", [inp], [out])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _onnx_external(location: str) -> bytes:
    """A 4-D model whose one initializer is 'stored' in an external file at ``location``."""
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, "h", "w"])
    t = helper.make_tensor("b", TensorProto.FLOAT, [1], [0.0])
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "4")):
        e = t.external_data.add()
        e.key, e.value = k, v
    g = helper.make_graph([helper.make_node("Add", ["input", "b"], ["output"])], "g", [inp], [out], [t])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _onnx_valid() -> bytes:
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, "H", "W"])
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    node = helper.make_node("Resize", ["input", "", "scales"], ["output"], mode="nearest")
    g = helper.make_graph([node], "g", [inp], [out], [scales])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def build_hostile_files(d: Path, marker: Path) -> dict[str, Path]:
    """name -> file. ``marker`` is created if any payload ever runs."""
    touch = f"touch '{marker}'"
    sd = _tiny_sd()
    st = _st_of(sd)
    n = struct.unpack("<Q", st[:8])[0]
    header = json.loads(st[8:8 + n])
    data = st[8 + n:]
    files: dict[str, bytes] = {}

    # --- pickles that would run code or import what they name
    buf = io.BytesIO()
    torch.save({"params": _Reduce(os.system, touch)}, buf)
    files["reduce_os_system.pth"] = buf.getvalue()
    buf = io.BytesIO()
    torch.save({"w": _Reduce(builtins.eval, f"open({str(marker)!r}, 'w').write('pwned')")}, buf)
    files["reduce_builtins_eval.pth"] = buf.getvalue()
    buf = io.BytesIO()
    torch.save([_Reduce(subprocess.Popen, ["touch", str(marker)])], buf)
    files["reduce_subprocess_popen.pt"] = buf.getvalue()
    files["legacy_format_os_system.pth"] = _legacy_pth({"w": _Reduce(os.system, touch)})
    files["raw_pickle_protocol0_system.ckpt"] = f"cos\nsystem\n(S'{touch}'\ntR.".encode()
    files["stack_global_builtins_exec.bin"] = (
        b"\x80\x04\x95" + struct.pack("<Q", 0)  # FRAME (length unchecked by the unpickler)
        + b"\x8c\x08builtins\x94\x8c\x04exec\x94\x93\x94"  # STACK_GLOBAL builtins.exec
        + b"\x8c" + bytes([len(f"open({str(marker)!r},'w')")]) + f"open({str(marker)!r},'w')".encode()
        + b"\x94\x85\x94R\x94.")
    files["zip_data_pkl_global_system.pth"] = _with_data_pkl(f"cposix\nsystem\n(S'{touch}'\ntR.".encode())
    files["unknown_class_not_installed.pth"] = _with_data_pkl(
        b"\x80\x02cmodels.network_swinir\nSwinIR\nq\x00)\x81q\x01}q\x02X\x01\x00\x00\x00wq\x03K\x01sb.")
    buf = io.BytesIO()
    torch.save({"net": NotInstalledNet()}, buf)
    files["local_class_instance.pth"] = buf.getvalue()
    buf = io.BytesIO()
    torch.save(tiny_compact(), buf)  # a whole nn.Module pickled, not a state dict
    files["whole_module_pickle.pth"] = buf.getvalue()
    files["pickle_tensor_claims_1e12_elements.pth"] = _huge_storage_claim()

    # --- zip bombs
    files["zip_claims_huge_member.pth"] = _zip_claiming(0xFFFFFFF0)
    files["zip_deflate_bomb_128MiB.pth"] = _deflate_bomb(128, None)
    files["zip_deflate_bomb_lying_sizes.pth"] = _deflate_bomb(128, claimed=16)
    pth = io.BytesIO()
    torch.save(sd, pth)
    files["pth_truncated_half.pth"] = pth.getvalue()[: len(pth.getvalue()) // 2]

    # --- safetensors
    files["st_truncated_in_header.safetensors"] = st[: 8 + n // 2]
    files["st_truncated_in_data.safetensors"] = st[: 8 + n + len(data) // 2]
    files["st_header_len_2_63.safetensors"] = _safetensors(b"{}", n=2**63)
    files["st_header_len_90MB_tiny_file.safetensors"] = _safetensors(b"{}", n=90_000_000)
    files["st_header_not_json.safetensors"] = _safetensors(b"\xff\xfe not json at all \x00\x01")
    files["st_header_deeply_nested_json.safetensors"] = _safetensors(b"[" * 200_000 + b"]" * 200_000)
    files["st_header_json_list.safetensors"] = _safetensors(b"[1, 2, 3]")
    h = json.loads(json.dumps(header))
    h["body.0.weight"]["shape"] = [2**31, 2**31]
    files["st_claims_huge_tensor_small_offsets.safetensors"] = _safetensors(h, data)
    h = json.loads(json.dumps(header))
    h["body.0.weight"]["shape"] = [2**20, 2**20]
    h["body.0.weight"]["data_offsets"] = [0, 2**42]
    files["st_claims_huge_tensor_and_offsets.safetensors"] = _safetensors(h, data)
    h = json.loads(json.dumps(header))
    k0, k1 = "body.0.weight", "body.0.bias"
    h[k1]["data_offsets"] = [h[k0]["data_offsets"][0], h[k0]["data_offsets"][0] + 16]
    files["st_overlapping_offsets.safetensors"] = _safetensors(h, data)
    h = json.loads(json.dumps(header))
    h["__metadata__"] = {"srdistill.scale": 2}
    files["st_metadata_not_strings.safetensors"] = _safetensors(h, data)
    h = json.loads(json.dumps(header))
    h["body.0.weight"]["dtype"] = "X99"
    files["st_unknown_dtype.safetensors"] = _safetensors(h, data)
    files["st_int64_weights.safetensors"] = _st_of({k: (v * 100).to(torch.int64) for k, v in sd.items()})
    files["st_complex64_weights.safetensors"] = _st_of({k: v.to(torch.complex64) for k, v in sd.items()})
    for bad in ("nan", "inf"):
        s2 = {k: v.clone() for k, v in sd.items()}
        s2["body.2.weight"].view(-1)[3] = float(bad)
        files[f"st_{bad}_weights.safetensors"] = _st_of(s2)
    s2 = {k.replace("body.4.", "body.9999999."): v for k, v in sd.items()}
    files["st_key_claims_10M_blocks.safetensors"] = _st_of(s2)  # a 3 KB file that asks for 10^7 convs
    s2 = dict(sd)
    s2["body.0.weight"] = torch.zeros(5000, 3, 3, 3)
    s2["body.0.bias"] = torch.zeros(5000)
    files["st_shape_claims_5000_channels.safetensors"] = _st_of(s2)  # 0.5 MB file, 0.9 GB model

    # --- ONNX
    files["text_named.onnx"] = b"this is a README, not a model\n" * 20
    files["random_bytes.onnx"] = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    files["wrong_input_rank.onnx"] = _onnx_rank2()
    files["truncated.onnx"] = _onnx_valid()[:40]
    files["external_data_escapes_folder.onnx"] = _onnx_external("../../../../../../etc/passwd")

    # --- not a model at all
    from PIL import Image as PILImage

    png = io.BytesIO()
    PILImage.new("RGB", (8, 8)).save(png, format="PNG")
    files["png_named.pth"] = png.getvalue()
    files["empty.safetensors"] = b""
    files["empty.pth"] = b""

    out = {}
    for name, blob in files.items():
        p = d / name
        p.write_bytes(blob)
        out[name] = p
    folder = d / "folder_named.safetensors"
    folder.mkdir()
    out[folder.name] = folder
    return out


DISTILL_TOO = ("reduce_os_system.pth", "zip_deflate_bomb_128MiB.pth", "st_header_deeply_nested_json.safetensors",
               "st_key_claims_10M_blocks.safetensors", "st_nan_weights.safetensors")


JSON_TOO = ("reduce_os_system.pth", "zip_claims_huge_member.pth", "st_overlapping_offsets.safetensors",
            "wrong_input_rank.onnx", "st_shape_claims_5000_channels.safetensors")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile models")
    marker = d / "MARKER"
    return build_hostile_files(d, marker), marker


@pytest.fixture(scope="module")
def probe_results(hostile, tmp_path_factory, train_dir):
    files, marker = hostile
    d = tmp_path_factory.mktemp("probe")
    jobs = []
    for name, p in files.items():
        jobs.append({"id": f"info:{name}", "kind": "cli", "argv": ["info", str(p)], "file": name})
        if name in JSON_TOO:
            jobs.append({"id": f"info-json:{name}", "kind": "cli", "argv": ["info", str(p), "--json"], "file": name})
    outdir = d / "distill out"
    for name in DISTILL_TOO:
        jobs.append({"id": f"distill:{name}", "kind": "cli", "file": name, "out": str(outdir / name),
                     "argv": ["distill", str(files[name]), "--student-width", "4", "--data", str(train_dir),
                              "--no-val", "--steps", "2", "--batch-size", "2", "--patch-size", "8",
                              "-o", str(outdir / name / "s.safetensors")]})
    jobs_path, res_path = d / "jobs.json", d / "results.json"
    jobs_path.write_text(json.dumps(jobs))
    proc = subprocess.run([PYTHON, str(HERE / "robust_probe.py"), str(jobs_path), str(res_path)],
                          env=python_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(res_path.read_text())
    return {"results": results, "marker": marker, "files": files, "outdir": outdir}


def _check_one_line_error(r: dict) -> None:
    assert not r["timed_out"], f"{r['id']}: still running after the time limit"
    assert r.get("outcome") != "crash", f"{r['id']}: {r.get('traceback')}"
    # a path of the wrong kind (a folder named like a model) is a usage error; a file that fails to load is 1
    expected = 2 if r["file"] == "folder_named.safetensors" else 1
    assert r["exit_code"] == expected, f"{r['id']}: exit {r['exit_code']}\n{r['stderr'][-2000:]}"
    lines = [ln for ln in r["stderr"].splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{r['id']}: stderr is not one error line:\n" + \
        r["stderr"][-2000:]
    assert "Traceback" not in r["stderr"] + r["stdout"]
    assert r["stdout"].strip() == "", f"{r['id']}: something on stdout: {r['stdout'][:300]}"
    assert r["extra_rss_mb"] < MAX_EXTRA_RSS_MB, f"{r['id']}: used {r['extra_rss_mb']} MB"


def test_every_hostile_file_is_a_one_line_error_with_bounded_memory_and_no_code_run(probe_results, tally):
    results = probe_results["results"]
    failures = []
    worst = max(results, key=lambda r: r["extra_rss_mb"])
    by_file: dict[str, list] = {}
    for r in results:
        by_file.setdefault(r["file"], []).append(r)
    for name, runs in by_file.items():  # one input = one file, through every command tried on it
        try:
            with tally.case(CATEGORY, name):
                for r in runs:
                    _check_one_line_error(r)
        except AssertionError as e:
            failures.append(str(e))
    print(f"\n{len(results)} CLI runs on {len(probe_results['files'])} hostile files; "
          f"peak extra memory {worst['extra_rss_mb']} MB ({worst['id']}); "
          f"slowest {max(r['seconds'] for r in results):.2f} s")
    marker_ran = probe_results["marker"].exists()
    if marker_ran:
        tally.lost(CATEGORY)
    assert not marker_ran, "a payload ran: the marker file exists"
    # the distill runs stopped before writing anything
    for name in DISTILL_TOO:
        left = [p.name for p in (probe_results["outdir"] / name).glob("*") if not p.name.endswith(".lock")]
        assert left == [] or set(left) <= {"s.train.jsonl"}, (name, left)
        assert not list((probe_results["outdir"] / name).glob("*.lock")), f"{name}: lock file left behind"
    assert not failures, "\n\n".join(failures)


def test_errors_say_what_is_wrong(probe_results):
    """Spot checks that the one line names the actual problem, not a generic failure."""
    by = {r["id"]: r["stderr"] for r in probe_results["results"]}
    expect = {
        "reduce_os_system.pth": "could run code",
        "reduce_builtins_eval.pth": "could run code",
        "reduce_subprocess_popen.pt": "could run code",
        "raw_pickle_protocol0_system.ckpt": "could run code",
        "zip_claims_huge_member.pth": "zip bomb",
        "zip_deflate_bomb_128MiB.pth": "zip bomb",
        "st_header_len_2_63.safetensors": "header claims",
        "st_header_not_json.safetensors": "not JSON",
        "st_header_deeply_nested_json.safetensors": "not JSON",
        "st_overlapping_offsets.safetensors": "overlap",
        "st_claims_huge_tensor_and_offsets.safetensors": "outside the file",
        "st_int64_weights.safetensors": "int64",
        "st_complex64_weights.safetensors": "complex64",
        "st_nan_weights.safetensors": "NaN",
        "st_inf_weights.safetensors": "infinite",
        "st_key_claims_10M_blocks.safetensors": "far larger than the weights",
        "st_shape_claims_5000_channels.safetensors": "far larger than the weights",
        "wrong_input_rank.onnx": "rank-2",
        "text_named.onnx": "not a valid ONNX",
        "empty.pth": "empty",
        "folder_named.safetensors": "folder",
    }
    for name, words in expect.items():
        assert words.lower() in by[f"info:{name}"].lower(), (name, by[f"info:{name}"])


def test_console_script_end_to_end(tmp_path, tally):
    """The installed entry point (``python -m srdistill``), not a fork: the os.system pickle."""
    marker = tmp_path / "MARKER"
    p = tmp_path / "evil model.pth"
    buf = io.BytesIO()
    torch.save({"w": _Reduce(os.system, f"touch '{marker}'")}, buf)
    p.write_bytes(buf.getvalue())
    with tally.case(CATEGORY, "python -m srdistill info (os.system pickle)"):
        r = subprocess.run([PYTHON, "-m", "srdistill", "info", str(p)], env=python_env(), capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 1, r.stderr
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: refused to load"), r.stderr
        assert r.stdout == ""
        assert not marker.exists()


def test_hostile_files_through_the_library_raise_only_our_errors(hostile):
    """load_model/load_any on each file: an SrDistillError subclass, nothing else (in-process)."""
    from srdistill.errors import ModelLoadError, SrDistillError
    from srdistill.runtimes.select import load_any

    files, marker = hostile
    for name, p in files.items():
        if "bomb" in name:  # measured in the probe; no need to inflate here
            continue
        with pytest.raises(SrDistillError) as ei:
            load_any(p)
        assert "\n" not in str(ei.value)
        assert isinstance(ei.value, ModelLoadError), (name, type(ei.value))
    assert not marker.exists()

"""snrt.tuners: the numpy reader of task (tuner) files: names, shapes, metadata, and the check
that a task was trained on the bundle's own backbone."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from task_files import random_task, write_task

import snrt
from snrt.errors import BackboneMismatchError, TaskFileError
from snrt.tuners import bundle_backbone_sha256, read_task_file, route_supported

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle():
    return snrt.Bundle.open(snrt.default_bundle(), verify="size")


@pytest.fixture(scope="module")
def sha(bundle):
    return bundle_backbone_sha256(bundle)


def test_bundle_hash_is_the_one_the_training_study_recorded(sha):
    """docs/tuners.md (written by tools/tuners_study.py from the torch side) records the
    backbone's hash prefix; the reader rebuilds it from weights.bin alone."""
    doc = (ROOT / "docs" / "tuners.md").read_text()
    assert f"backbone sha256 `{sha[:16]}...`" in doc


def test_reads_every_kind_and_fits_the_bundle(bundle, sha, tmp_path):
    tuners = (("adapter", 3), ("lora", 2), ("prefix", 2), ("prompt", 1))
    tensors, meta = random_task(sha, tuners=tuners, tuned={"ti": [0, 5], "s": [11]},
                                heads=("s",), variants=["s", "ti>s@3:4"])
    path = write_task(tmp_path / "faces.safetensors", tensors, meta,
                      {"test": {"s": {"top1": 91.0, "n": 80}}})
    task = read_task_file(path, bundle=bundle)
    assert task.name == "faces" and task.labels == ["face", "other", "x"]
    assert task.kinds == ["adapter", "lora", "prefix", "prompt"]
    assert task.tuned_blocks("ti") == [0, 5] and task.tuned_blocks("b") == []
    blk = task.block("ti", 5)
    assert set(blk) == {"adapter.down.weight", "adapter.down.bias", "adapter.up.weight",
                        "adapter.up.bias", "lora.down.weight", "lora.up.weight", "prefix.key",
                        "prefix.value", "prompt.tokens"}
    np.testing.assert_array_equal(blk["lora.up.weight"],
                                  tensors["tuners.ti.blocks.5.lora.up.weight"])
    assert task.block("ti", 1) is None
    assert set(task.head("s")) == {"norm.weight", "norm.bias", "fc.weight", "fc.bias"}
    with pytest.raises(TaskFileError, match="no head for anchor ti"):
        task.head("ti")
    assert task.nbytes == sum(a.nbytes for a in tensors.values())
    assert task.accuracy("s") == {"top1": 91.0, "n": 80} and task.accuracy("b") is None
    assert route_supported(task, ["ti", "s"]) and not route_supported(task, ["s", "b"])


def test_reads_the_training_tool_file(bundle, sha, tmp_path):
    """A file written by tools/tuners_torch.py (the torch side) reads back unchanged."""
    torch = pytest.importorskip("torch")
    for p in (str(ROOT / "tools"), str(ROOT)):
        if p not in sys.path:
            sys.path.insert(0, p)
    import tuners_torch as T

    dims = {a["name"]: (a["config"]["embed_dim"], a["config"]["num_heads"],
                        a["config"]["depth"]) for a in bundle.manifest.family["anchors"]}
    torch.manual_seed(0)
    tt = T.TaskTuners(dims, [T.TunerSpec.parse("adapter:r=2"), T.TunerSpec.parse(
        "lora:r=2,alpha=4")], 2, {"b": [3, 7]}, ["b"])
    meta = tt.task_json("digits2", ["even", "odd"], bundle.name, sha, ["b"])
    path = tmp_path / "digits2.safetensors"
    T.write_task_file(path, tt, meta)
    task = read_task_file(path, bundle=bundle)
    assert task.variants == ["b"] and task.tuned_blocks("b") == [3, 7]
    want = tt.export_tensors()
    assert set(task.tensors) == set(want)
    for k, a in want.items():
        np.testing.assert_array_equal(task.tensors[k], a)


def _write(tmp_path, tensors, meta, name="t.safetensors"):
    return write_task(tmp_path / name, tensors, meta)


def test_shape_errors_name_the_block_and_the_expected_shape(sha, tmp_path):
    tensors, meta = random_task(sha, tuners=(("adapter", 3),), tuned={"s": [2]}, heads=("s",))
    bad = dict(tensors)
    bad["tuners.s.blocks.2.adapter.up.weight"] = np.zeros((48, 4), np.float32)
    with pytest.raises(TaskFileError, match=r"anchor s block 2: 'tuners\.s\.blocks\.2\.adapter"
                       r"\.up\.weight' has shape \[48, 4\], expected \[48, 3\]"):
        read_task_file(_write(tmp_path, bad, meta))
    bad = {k: v for k, v in tensors.items() if k != "heads.s.fc.bias"}
    with pytest.raises(TaskFileError, match=r"head of anchor s: missing 'heads\.s\.fc\.bias' "
                       r"\(expected shape \[3\]\)"):
        read_task_file(_write(tmp_path, bad, meta))
    bad = dict(tensors, **{"tuners.s.blocks.3.adapter.up.bias": np.zeros(48, np.float32)})
    with pytest.raises(TaskFileError, match=r"unexpected tensor 'tuners\.s\.blocks\.3"):
        read_task_file(_write(tmp_path, bad, meta))
    bad = dict(tensors, **{"heads.s.fc.bias": np.zeros(3, np.float64)})
    with pytest.raises(TaskFileError, match="float64, expected float32"):
        read_task_file(_write(tmp_path, bad, meta))
    bad = dict(tensors, **{"heads.s.fc.bias": np.array([0, np.nan, 0], np.float32)})
    with pytest.raises(TaskFileError, match="NaN"):
        read_task_file(_write(tmp_path, bad, meta))
    with pytest.raises(TaskFileError, match="not a task file"):
        read_task_file(_write(tmp_path, tensors, None))
    with pytest.raises(TaskFileError, match="no such task file"):
        read_task_file(tmp_path / "absent.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x05")
    with pytest.raises(TaskFileError, match="truncated"):
        read_task_file(tmp_path / "junk.safetensors")


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.update(format=2), "task format 2"),
    (lambda m: m.pop("backbone_sha256"), r"snrt\.task\.backbone_sha256: missing"),
    (lambda m: m.update(backbone_sha256="xyz"), "64 lowercase hex"),
    (lambda m: m.update(name="../evil"), r"snrt\.task\.name"),
    (lambda m: m.update(labels=["only"]), r"snrt\.task\.labels"),
    (lambda m: m["tuners"].append({"kind": "adapter", "r": 2}), "each kind at most once"),
    (lambda m: m["tuners"].append({"kind": "bitfit"}), r"tuners\[1\]\.kind"),
    (lambda m: m["tuners"][0].update(r=0), r"tuners\[0\]\.r"),
    (lambda m: m["anchors"]["s"].update(num_heads=5), "not divisible"),
    (lambda m: m["anchors"]["s"].update(blocks=[2, 2]), "distinct"),
    (lambda m: m.update(lora_scale_folded=False), "lora_scale_folded"),
])
def test_metadata_errors_name_the_field(sha, tmp_path, edit, match):
    tensors, meta = random_task(sha, tuners=(("adapter", 3),), tuned={"s": [2]}, heads=("s",))
    meta = copy.deepcopy(meta)
    edit(meta)
    with pytest.raises(TaskFileError, match=match):
        read_task_file(_write(tmp_path, tensors, meta))


def test_metadata_not_json(sha, tmp_path):
    from snrt.weights_io import write_safetensors

    tensors, _ = random_task(sha)
    write_safetensors(tmp_path / "t.safetensors", tensors, {"snrt.task": "{nope"})
    with pytest.raises(TaskFileError, match="not valid JSON"):
        read_task_file(tmp_path / "t.safetensors")


def test_backbone_mismatch(bundle, sha, tmp_path):
    other = ("0" if sha[0] != "0" else "1") + sha[1:]
    tensors, meta = random_task(other)
    path = _write(tmp_path, tensors, meta)
    read_task_file(path)  # well-formed on its own
    with pytest.raises(BackboneMismatchError, match=r"trained on backbone .*retrain it"):
        read_task_file(path, bundle=bundle)
    assert issubclass(BackboneMismatchError, TaskFileError)


def test_a_changed_weight_changes_the_hash(bundle, sha, tmp_path):
    from snrt.tuners import backbone_sha256

    fam = bundle.load_family()
    assert backbone_sha256(fam) == sha
    fam.anchors[1].weights["blocks.4.mlp.fc1.bias"][3] += np.float32(1e-3)
    assert backbone_sha256(fam) != sha


@pytest.mark.parametrize("edit,match", [
    (lambda t, m: m["anchors"]["ti"].update(embed_dim=48, num_heads=6), "width 48"),
    (lambda t, m: m["anchors"]["ti"].update(blocks=[0, 12]), r"blocks \[12\] outside 0\.\.11"),
    (lambda t, m: m.update(variants=["ti", "zz"]), "'zz', which"),
    (lambda t, m: m.update(variants=["ti", "s"]), "no head for s"),
    (lambda t, m: m["anchors"].update(q={"embed_dim": 24, "num_heads": 3, "blocks": []}),
     "anchor 'q'"),
])
def test_task_must_fit_the_bundle(bundle, sha, tmp_path, edit, match):
    tensors, meta = random_task(sha)
    meta = copy.deepcopy(meta)
    edit(tensors, meta)
    if meta["anchors"]["ti"]["embed_dim"] == 48:  # consistent file, wrong for this bundle
        tensors, _ = random_task(sha, widths={"ti": (48, 6)})
    if 12 in meta["anchors"]["ti"]["blocks"]:
        tensors, _ = random_task(sha, tuned={"ti": [0, 12]})
    path = _write(tmp_path, tensors, meta)
    with pytest.raises(TaskFileError, match=match):
        read_task_file(path, bundle=bundle)


def test_json_metadata_roundtrip_is_plain(sha, tmp_path):
    """The metadata is plain JSON another reader can parse (safetensors stores strings)."""
    tensors, meta = random_task(sha)
    path = _write(tmp_path, tensors, meta)
    n = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8:8 + n])
    assert json.loads(header["__metadata__"]["snrt.task"]) == meta

"""snrt-export regraph on a bundle with tasks (exporters/task_regraph.py): the task pieces are
rebuilt in the new operator form from the tensors the bundle stores (no task file), each task's
task_<name>.bin byte-identical, and every form's task chains compute what the PyTorch reference
of tests/tuner_reference.py computes (prompts run there as real tokens, not folded)."""

from __future__ import annotations

import collections
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from task_files import backbone_bundle, random_task, write_task
from tuner_reference import Reference

from exporters.cli import main
from exporters.task_bundle import add_task
from snrt.bundle import Bundle
from snrt.tuners import bundle_backbone_sha256, read_task_file

pytest.importorskip("torch")
TOL = 1e-4
TASKS = {  # name -> random_task arguments: LoRA with adapters; extra keys/values (prefix, prompt)
    "mix": dict(tuners=(("adapter", 3), ("lora", 2)), tuned={"ti": [0, 3], "s": [5]},
                heads=("ti", "s"), variants=["ti", "s", "ti>s@5:6"], seed=7, scale=0.2),
    "kv": dict(tuners=(("prefix", 2), ("prompt", 2), ("adapter", 2)), tuned={"ti": [1, 11]},
               heads=("ti",), variants=["ti"], seed=8, scale=0.2),
}


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    """The standard-form bundle with two tasks (one whole graph), regraphed to decomposed,
    contrib, and from decomposed back to standard; and the tasks as read from their files."""
    d = tmp_path_factory.mktemp("task-regraph")
    src = d / "standard.snrt"
    shutil.copytree(backbone_bundle(), src)
    sha = bundle_backbone_sha256(Bundle.open(src))
    tasks = {}
    for name, kw in TASKS.items():
        tensors, meta = random_task(sha, name=name, labels=("a", "b", "c"), **kw)
        path = write_task(d / f"{name}.safetensors", tensors, meta)
        add_task(src, path, graphs=["ti"] if name == "mix" else None)
        tasks[name] = read_task_file(path)
    out = {"standard": Bundle.open(src)}
    for ops, frm in (("decomposed", "standard"), ("contrib", "standard"), ("again", "decomposed")):
        p = d / f"{ops}.snrt"
        assert main(["regraph", str(d / f"{frm}.snrt"), "--out", str(p),
                     "--ops", "standard" if ops == "again" else ops]) == 0
        out[ops] = Bundle.open(p, verify=True)
    return out, tasks


def _ops(path) -> collections.Counter:
    m = onnx.load(str(path), load_external_data=False)
    return collections.Counter(n.op_type for n in m.graph.node)


def _run(paths, x):
    for p in paths:
        s = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        x = s.run(None, {s.get_inputs()[0].name: x})[0]
    return x


def _chain(b: Bundle, name: str, vid: str):
    t, v = b.task(name), b.variant(vid)
    own = {p["id"]: b.file(p["graph"]) for p in t.pieces}
    return [own.get(pid) or b.piece_path(pid) for pid in t.chain(v.pieces, v.anchors)]


def test_task_weights_stay_byte_identical(forms):
    out, _ = forms
    std = out["standard"].manifest
    for ops, b in out.items():
        m = b.manifest
        assert m.exports["onnx"]["ops"] == ("standard" if ops == "again" else ops)
        for t in std.tasks:
            rec = b.task(t.name)
            assert m.files[rec.weights] == std.files[t.weights], (ops, t.name)
            assert rec.pieces == t.pieces and rec.graphs == t.graphs
            assert rec.bytes == sum(m.files[f]["bytes"] for f in
                                    [rec.weights, *(p["graph"] for p in rec.pieces),
                                     *rec.graphs.values()])
    # decomposed -> standard gives back the very graphs the task export wrote
    for t in std.tasks:
        for p in t.pieces:
            assert out["again"].file(p["graph"]).read_bytes() == \
                out["standard"].file(p["graph"]).read_bytes(), p["id"]


def test_tuned_blocks_take_the_form(forms):
    out, _ = forms
    lora = {ops: _ops(b.file(b.task("mix").pieces[0]["graph"])) for ops, b in out.items()}
    assert out["standard"].task("mix").pieces[0]["id"] == "ti.block0@mix"
    assert lora["standard"]["Attention"] == 1 and lora["standard"]["Gelu"] == 2
    assert "Softmax" not in lora["standard"] and "Erf" not in lora["standard"]
    assert lora["decomposed"]["Softmax"] == 1 and lora["decomposed"]["Erf"] == 2
    assert "Attention" not in lora["decomposed"]
    assert lora["contrib"]["Softmax"] == 1  # com.microsoft Attention holds qkv: spelled out
    kv = _ops(out["standard"].file(out["standard"].task("kv").pieces[0]["graph"]))
    assert kv["Softmax"] == 1 and "Attention" not in kv and kv["Gelu"] == 2


def test_every_form_matches_the_reference(forms):
    out, tasks = forms
    family = out["decomposed"].load_family()
    x = np.random.default_rng(2).standard_normal((2, 1, 28, 28)).astype(np.float32)
    for name, task in tasks.items():
        ref = Reference(family, task)
        for vid in task.variants:
            want = ref.route(out["standard"].variant(vid), x)
            for ops, b in out.items():
                got = _run(_chain(b, name, vid), x)
                assert np.abs(got - want).max() <= TOL, (name, vid, ops)
    want = Reference(family, tasks["mix"]).route(out["standard"].variant("ti"), x)
    for ops, b in out.items():  # the whole graph the task export was asked for
        got = _run([b.task_graph_path("mix", "ti")], x)
        assert np.abs(got - want).max() <= TOL, ops

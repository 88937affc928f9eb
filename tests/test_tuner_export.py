"""exporters/tuner_onnx.py: a task's pieces against a PyTorch reference written here from the
frozen weights and the documented tuner math (VPT-deep prompts run as real tokens here, not
folded), and how the pieces store their weights (frozen ones by reference into weights.bin)."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import onnxruntime as ort
import pytest
from task_files import backbone_bundle, random_task, write_task
from tuner_reference import Reference, _t

import snrt
from exporters.tuner_onnx import export_task_onnx, task_chain, variant_graph
from snrt.onnx_file import read_onnx_info
from snrt.tuners import bundle_backbone_sha256, read_task_file

torch = pytest.importorskip("torch")
TOL = 1e-4


def _record(what: str, d: float) -> float:
    print(f"max |dlogit| {what}: {d:.2e}")  # the parity figures (pytest -s)
    return d


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A copy of the default bundle (tasks are exported into it; the shipped one is read-only
    here)."""
    dst = tmp_path_factory.mktemp("tasks") / "default.snrt"
    shutil.copytree(backbone_bundle(), dst)
    return snrt.Bundle.open(dst, verify="size")


@pytest.fixture(scope="module")
def family(bundle):
    return bundle.load_family()


@pytest.fixture(scope="module")
def sha(bundle):
    return bundle_backbone_sha256(bundle)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(5).standard_normal((3, 1, 28, 28)).astype(np.float32)


# ----------------------------------------------------------------------------- running onnx

def _session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class Chain:
    def __init__(self, bundle, export):
        self.bundle = bundle
        self.task_graphs = {p.id: bundle.path / p.graph for p in export.pieces}
        self.sessions: dict[str, ort.InferenceSession] = {}

    def run(self, pieces, img):
        x = img
        for pid in pieces:
            if pid not in self.sessions:
                path = self.task_graphs.get(pid) or self.bundle.piece_path(pid)
                self.sessions[pid] = _session(path)
            s = self.sessions[pid]
            x = s.run(None, {s.get_inputs()[0].name: x})[0]
        return x


def _export(bundle, sha, tmp_path, name, **kw):
    tensors, meta = random_task(sha, name=name, **kw)
    task = read_task_file(write_task(tmp_path / f"{name}.safetensors", tensors, meta),
                          bundle=bundle)
    return task, export_task_onnx(bundle, task)


def _delta(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


# ----------------------------------------------------------------------------- tests

@pytest.mark.parametrize("kind,size", [("adapter", 4), ("prefix", 3), ("prompt", 3),
                                       ("lora", 2)])
def test_each_kind_on_every_block_of_an_anchor(bundle, family, sha, images, tmp_path, kind,
                                               size):
    task, export = _export(bundle, sha, tmp_path, f"k_{kind}", tuners=((kind, size),),
                           tuned={"ti": list(range(12))}, heads=("ti",), variants=["ti"],
                           scale=0.2, seed=hash(kind) % 1000)
    v = bundle.variant("ti")
    chain = task_chain(v.pieces, v.anchors, task)
    assert chain == ["ti.embed"] + [f"ti.block{i}@k_{kind}" for i in range(12)] + \
        [f"ti.head@k_{kind}"]
    got = Chain(bundle, export).run(chain, images)
    ref = Reference(family, task)
    want = ref.route(v, images)
    d = _record(f"{kind} (ti, 12 blocks)", _delta(got, want))
    assert got.shape == (3, 3) and d <= TOL, d
    # the tuners act: the same head on the frozen blocks differs
    plain = Reference(family, task)
    plain.tuners = lambda a, i: {}
    assert _delta(plain.route(v, images), want) > 1e-2


def test_single_tuned_block_piece(bundle, family, sha, tmp_path):
    """One tuned block piece alone, all four kinds in it, on random tokens."""
    task, export = _export(bundle, sha, tmp_path, "one",
                           tuners=(("adapter", 3), ("lora", 2), ("prefix", 2), ("prompt", 2)),
                           tuned={"s": [6]}, heads=("s",), variants=["s"], seed=11)
    (p,) = [p for p in export.pieces if p.kind == "block"]
    assert p.id == "s.block6@one" and p.base == "s.block6"
    x = np.random.default_rng(1).standard_normal((2, 17, 48)).astype(np.float32)
    got = _session(bundle.path / p.graph).run(None, {"tokens_in": x})[0]
    with torch.no_grad():
        want = Reference(family, task).block("s", 6, _t(x)).numpy()
    _record("all four kinds (s block 6, tokens)", _delta(got, want))
    assert got.shape == x.shape and _delta(got, want) <= TOL


def test_variants_with_a_task_anchor_and_stitch(bundle, family, sha, images, tmp_path):
    """All four kinds on some blocks of ti and s (the rest frozen), heads on both: an anchor
    route and a stitch, as chained pieces and as one whole-variant graph."""
    tuners = (("adapter", 4), ("lora", 2), ("prefix", 2), ("prompt", 2))
    task, export = _export(bundle, sha, tmp_path, "faces", tuners=tuners,
                           tuned={"ti": [0, 1, 2, 3, 4, 5, 9], "s": [4, 5, 6, 7, 8, 10, 11]},
                           heads=("ti", "s"), variants=["ti", "s", "ti>s@5:6"], scale=0.15,
                           seed=3)
    chain_runner = Chain(bundle, export)
    ref = Reference(family, task)
    for vid in ("s", "ti>s@5:6", "ti"):
        v = bundle.variant(vid)
        chain = task_chain(v.pieces, v.anchors, task)
        assert chain[-1] == f"{v.anchors[-1]}.head@faces"
        assert ("s.block9" in chain) == (vid != "ti")  # untuned blocks stay the bundle's
        got = chain_runner.run(chain, images)
        want = ref.route(v, images)
        _record(f"variant {vid} + task (chained pieces)", _delta(got, want))
        assert _delta(got, want) <= TOL
        model = variant_graph(bundle, task, vid, family)
        path = bundle.path / "graphs" / f"whole_faces_{vid.replace('>', '-')}.onnx"
        path.write_bytes(model.SerializeToString())
        whole = _session(path).run(None, {"image": images})[0]
        _record(f"variant {vid} + task (whole graph)", _delta(whole, want))
        assert _delta(whole, want) <= TOL


def test_frozen_weights_are_referenced_never_copied(bundle, sha, tmp_path):
    before = hashlib.sha256((bundle.path / "graphs/weights.bin").read_bytes()).hexdigest()
    task, export = _export(bundle, sha, tmp_path, "store",
                           tuners=(("adapter", 2), ("lora", 2), ("prefix", 1)),
                           tuned={"b": [0, 11]}, heads=("b",), variants=["b"])
    assert hashlib.sha256((bundle.path / "graphs/weights.bin").read_bytes()).hexdigest() == \
        before
    assert bundle.manifest.files["graphs/weights.bin"]["sha256"] == before
    tensors = bundle.manifest.tensors
    bin_size = (bundle.path / export.weights).stat().st_size
    assert export.weights == "graphs/task_store.bin"
    # the task's own bytes only (prefix kept as K, V; alignment at most 63 bytes per tensor)
    assert task.nbytes <= bin_size <= task.nbytes + 64 * len(task.tensors)
    n_frozen = 0
    for p in export.pieces:
        info = read_onnx_info(bundle.path / p.graph)
        assert info.graph_name == p.id
        for r in info.external:
            if r.location == "weights.bin":
                t = tensors[r.tensor]
                assert (r.offset, r.dims) == (t["offset"], tuple(t["shape"]))
                n_frozen += 1
            else:
                assert r.location == "task_store.bin" and r.tensor.startswith("store/")
                assert r.offset + r.length <= bin_size
    assert n_frozen == 2 * 12  # per block: 2 norms x2, qkv x2, proj x2, fc1 x2, fc2 x2

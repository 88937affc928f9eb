"""exporters/tuner_onnx.py: a task's pieces against a PyTorch reference written here from the
frozen weights and the documented tuner math (VPT-deep prompts run as real tokens here, not
folded), and how the pieces store their weights (frozen ones by reference into weights.bin)."""

from __future__ import annotations

import hashlib
import math
import shutil

import numpy as np
import onnxruntime as ort
import pytest
from task_files import random_task, write_task

import snrt
from exporters.tuner_onnx import export_task_onnx, task_chain, variant_graph
from snrt.onnx_file import read_onnx_info
from snrt.tuners import bundle_backbone_sha256, read_task_file

torch = pytest.importorskip("torch")
F = torch.nn.functional
TOL = 1e-4


def _record(what: str, d: float) -> float:
    print(f"max |dlogit| {what}: {d:.2e}")  # the parity figures (pytest -s)
    return d


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A copy of the default bundle (tasks are exported into it; the shipped one is read-only
    here)."""
    dst = tmp_path_factory.mktemp("tasks") / "default.snrt"
    shutil.copytree(snrt.default_bundle(), dst)
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


# ----------------------------------------------------------------------------- the reference

def _t(a):
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


class Reference:
    """The family's routes with a task, in float64 torch, from the raw (timm-named) weights."""

    def __init__(self, family, task):
        self.W = {a.name: {k: _t(v) for k, v in a.weights.items()} for a in family.anchors}
        self.heads = {a.name: a.config.num_heads for a in family.anchors}
        self.patch = {a.name: a.config.patch_size for a in family.anchors}
        self.stitch = {(family.anchors[f].name, family.anchors[e].name, t): (_t(s.weight),
                                                                             _t(s.bias))
                       for (f, e), ls in family.stitch_layers.items() for t, s in enumerate(ls)}
        self.task = task

    def tuners(self, a, i):
        if task_blocks := (self.task.block(a, i) if self.task is not None else None):
            return {k: _t(v) for k, v in task_blocks.items()}
        return {}

    def embed(self, a, img):
        W = self.W[a]
        x = F.conv2d(_t(img), W["patch_embed.proj.weight"], W["patch_embed.proj.bias"],
                     stride=self.patch[a]).flatten(2).transpose(1, 2)
        cls = W["cls_token"].expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], 1) + W["pos_embed"]

    def block(self, a, i, x):
        W, t = self.W[a], self.tuners(a, i)
        p = f"blocks.{i}."
        B, T, D = x.shape
        H = self.heads[a]
        d = D // H
        if "prompt.tokens" in t:  # VPT-deep: L tokens appended, run, dropped at the output
            x = torch.cat([x, t["prompt.tokens"].expand(B, -1, -1)], 1)
        N = x.shape[1]
        h1 = F.layer_norm(x, (D,), W[p + "norm1.weight"], W[p + "norm1.bias"], eps=1e-6)
        qkv = F.linear(h1, W[p + "attn.qkv.weight"], W[p + "attn.qkv.bias"])
        if "lora.down.weight" in t:
            qkv = qkv + h1 @ t["lora.down.weight"].T @ t["lora.up.weight"].T
        q, k, v = (qkv[..., j * D:(j + 1) * D].reshape(B, N, H, d).transpose(1, 2)
                   for j in range(3))
        if "prefix.key" in t:
            L = t["prefix.key"].shape[0]
            k = torch.cat([k, t["prefix.key"].reshape(L, H, d).transpose(0, 1).expand(B, -1, -1,
                                                                                      -1)], 2)
            v = torch.cat([v, t["prefix.value"].reshape(L, H, d).transpose(0, 1).expand(
                B, -1, -1, -1)], 2)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), -1)
        x = x + F.linear((att @ v).transpose(1, 2).reshape(B, N, D), W[p + "attn.proj.weight"],
                         W[p + "attn.proj.bias"])
        h2 = F.layer_norm(x, (D,), W[p + "norm2.weight"], W[p + "norm2.bias"], eps=1e-6)
        m = F.linear(F.gelu(F.linear(h2, W[p + "mlp.fc1.weight"], W[p + "mlp.fc1.bias"])),
                     W[p + "mlp.fc2.weight"], W[p + "mlp.fc2.bias"])
        if "adapter.down.weight" in t:
            m = m + F.linear(F.gelu(F.linear(h2, t["adapter.down.weight"],
                                             t["adapter.down.bias"])),
                             t["adapter.up.weight"], t["adapter.up.bias"])
        return (x + m)[:, :T]

    def head(self, a, x):
        h = {k: _t(v) for k, v in self.task.head(a).items()}
        y = F.layer_norm(x[:, 0], (x.shape[-1],), h["norm.weight"], h["norm.bias"], eps=1e-6)
        return F.linear(y, h["fc.weight"], h["fc.bias"])

    def route(self, variant, img):
        """Anchor route (variant.anchors == [a]) or one stitch front j -> end k."""
        with torch.no_grad():
            if not variant.stitches:
                a = variant.anchors[0]
                x = self.embed(a, img)
                for i in range(12):
                    x = self.block(a, i, x)
                return self.head(a, x).numpy()
            s = variant.stitches[0]
            x = self.embed(s["front"], img)
            for i in range(s["front_block"] + 1):
                x = self.block(s["front"], i, x)
            w, b = self.stitch[(s["front"], s["end"], s["layer"])]
            x = x @ w.T + b
            for i in range(s["end_block"], 12):
                x = self.block(s["end"], i, x)
            return self.head(s["end"], x).numpy()


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

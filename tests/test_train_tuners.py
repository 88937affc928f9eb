"""tools/tuners_torch.py + tools/train_tuners.py: the tuner math against references written here
(and timm's Block), zero-init, a frozen backbone, a short training run, and the task-file format
read back with the `safetensors` library."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT / "tools"), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)

import tuners_torch as T


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread here (the tools' default): a 2-core machine shared with other work."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def backbone():
    import train_tuners as tt

    return tt.load_backbone("default")


def _randomise(module, seed: int, scale: float = 0.1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return module


def _task(bb, specs, seed=0, tuned=None, heads=None):
    torch.manual_seed(seed)
    names = bb.frozen.anchor_names
    tuned = tuned if tuned is not None else {n: list(range(bb.frozen.depth)) for n in names}
    return T.TaskTuners(bb.frozen.dims(), [T.TunerSpec.parse(s) for s in specs], 4, tuned,
                        heads if heads is not None else list(names))


# ----------------------------------------------------------------------------- the math

def _ref_block(block, x, *, adapter=None, lora=None, prefix=None):
    """The documented math from the block's raw weights, with torch's scaled_dot_product_attn."""
    sd = {k: v.detach() for k, v in block.state_dict().items()}
    B, N, D = x.shape
    H = block.attn.num_heads
    d = D // H
    h1 = F.layer_norm(x, (D,), sd["norm1.weight"], sd["norm1.bias"], eps=1e-6)
    qkv = F.linear(h1, sd["attn.qkv.weight"], sd["attn.qkv.bias"])
    if lora is not None:  # (A [r, D], B [3D, r], scale)
        A, Bm, scale = lora
        qkv = qkv + scale * (h1 @ A.T @ Bm.T)
    q, k, v = (qkv[..., i * D:(i + 1) * D].reshape(B, N, H, d).transpose(1, 2) for i in range(3))
    if prefix is not None:
        Kp, Vp = prefix
        L = Kp.shape[0]
        k = torch.cat([k, Kp.reshape(L, H, d).transpose(0, 1).expand(B, H, L, d)], 2)
        v = torch.cat([v, Vp.reshape(L, H, d).transpose(0, 1).expand(B, H, L, d)], 2)
    a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D)
    x = x + F.linear(a, sd["attn.proj.weight"], sd["attn.proj.bias"])
    h2 = F.layer_norm(x, (D,), sd["norm2.weight"], sd["norm2.bias"], eps=1e-6)
    m = F.linear(F.gelu(F.linear(h2, sd["mlp.fc1.weight"], sd["mlp.fc1.bias"])),
                 sd["mlp.fc2.weight"], sd["mlp.fc2.bias"])
    if adapter is not None:  # (down W, down b, up W, up b)
        dw, db, uw, ub = adapter
        m = m + F.linear(F.gelu(F.linear(h2, dw, db)), uw, ub)
    return x + m


@pytest.mark.parametrize("kind", ["adapter", "lora", "prefix"])
def test_tuned_block_matches_reference(backbone, kind):
    """Each kind (randomised, so a zero init cannot hide a wrong term) against the math of the
    module docstring written independently here."""
    spec = {"adapter": "adapter:r=3", "lora": "lora:r=2,alpha=6", "prefix": "prefix:l=3"}[kind]
    task = _randomise(_task(backbone, [spec], tuned={"s": [4]}, heads=["s"]), 1)
    blk = backbone.frozen.anchor("s").blocks[4]
    t = task.block("s", 4)
    x = torch.randn(3, 17, 48, generator=torch.Generator().manual_seed(2))
    kw = {}
    if kind == "adapter":
        kw["adapter"] = (t.adapter.down.weight, t.adapter.down.bias, t.adapter.up.weight,
                         t.adapter.up.bias)
    elif kind == "lora":
        kw["lora"] = (t.lora.down.weight, t.lora.up.weight, 3.0)
    else:
        kw["prefix"] = (t.prefix.key, t.prefix.value)
    with torch.no_grad():
        got = T.tuned_block(blk, t, x)
        want = _ref_block(blk, x, **kw)
        plain = blk(x)
    assert float((got - want).abs().max()) < 1e-5
    assert float((got - plain).abs().max()) > 1e-3  # the tuner does act


def test_prompt_is_timm_block_on_longer_sequence_and_a_prefix(backbone):
    """Prompt tokens: timm's own Block run on [x; P], prompt positions dropped; and the
    documented folding into a prefix K = k(LN1(P)), V = v(LN1(P))."""
    pytest.importorskip("timm")
    from timm.models.vision_transformer import Block as TimmBlock

    task = _randomise(_task(backbone, ["prompt:l=4"], tuned={"ti": [7]}, heads=["ti"]), 3, 0.5)
    blk = backbone.frozen.anchor("ti").blocks[7]
    ref = TimmBlock(24, 3, mlp_ratio=4.0, qkv_bias=True).eval()
    ref.load_state_dict(blk.state_dict())
    P = task.block("ti", 7).prompt.tokens
    x = torch.randn(2, 17, 24, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = T.tuned_block(blk, task.block("ti", 7), x)
        want = ref(torch.cat([x, P.expand(2, -1, -1)], 1))[:, :17]
        qkv = blk.attn.qkv(blk.norm1(P))
        folded = _ref_block(blk, x, prefix=(qkv[:, 24:48], qkv[:, 48:]))
    assert got.shape == x.shape
    assert float((got - want).abs().max()) < 1e-5
    assert float((got - folded).abs().max()) < 1e-5


def test_zero_init_tuners_leave_features_unchanged(backbone):
    """adapter (up = 0) and LoRA (B = 0) at step 0: every variant's features and the frozen
    backbone's are the same; prefix and prompt (not zero-init) do change them."""
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    zero = _task(backbone, ["adapter:r=4", "lora:r=2"])
    other = _task(backbone, ["prefix:l=2", "prompt:l=2"])
    with torch.no_grad():
        for vid in ("ti", "b", "ti>s@3:3", "s>b@10:11"):
            route = backbone.space.get(vid).route
            ref = backbone.frozen.net.forward_route(x, route)  # the backbone's own logits
            # the backbone's head on the tuned route's tokens
            toks = T.forward_task(backbone.frozen, zero, x, route, head=False)
            a = backbone.frozen.net.anchors[route.anchors[-1]]
            assert float((a.forward_head(toks, norm=route.is_anchor) - ref).abs().max()) < 1e-6
            toks2 = T.forward_task(backbone.frozen, other, x, route, head=False)
            assert float((a.forward_head(toks2, norm=route.is_anchor) - ref).abs().max()) > 1e-4


def test_short_training_reduces_loss_and_keeps_backbone_frozen(backbone):
    import task_datasets
    import train_tuners as tt

    data = task_datasets.load_uci_digits()
    tensors = tt.prepare(torch, data, backbone.bundle.preprocess, limit=48, test_limit=20)
    before = {k: v.clone() for k, v in backbone.frozen.state_dict().items()}
    settings = tt.Settings(steps=24, batch_size=16, lr=1e-2, label_smoothing=0.0)
    variants = tt.resolve_variants(backbone.space, "ti,ti>s@11:11")

    def loss_of(task):
        with torch.no_grad():
            return float(np.mean([F.cross_entropy(T.forward_task(
                backbone.frozen, task, tensors.x["train"], v.route), tensors.y["train"])
                for v in variants]))

    specs = [T.TunerSpec.parse("adapter:r=4"), T.TunerSpec.parse("lora:r=2")]
    torch.manual_seed(tt._mix(0, "init", "tuners"))
    tuned, heads = tt.route_anchors(backbone, variants)
    start = T.TaskTuners(backbone.frozen.dims(), specs, 10, tuned, heads)
    start.init_heads_from(backbone.frozen)
    res = tt.train(torch, backbone, data, tensors, "tuners", specs, variants, settings, seed=0,
                   progress=False)
    assert set(res.task.tuners) == {"ti", "s"} and set(res.task.heads) == {"ti", "s"}
    assert res.task.tuners["s"].tuned == [11]  # ti>s@11:11 runs block 11 of s only
    assert loss_of(res.task) < 0.9 * loss_of(start)
    after = backbone.frozen.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # seeded: the same run again gives the same weights bit for bit
    res2 = tt.train(torch, backbone, data, tensors, "tuners", specs, variants, settings, seed=0,
                    progress=False)
    a, b = res.task.export_tensors(), res2.task.export_tensors()
    assert all(np.array_equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- the file format

DOC_SHAPES = {  # the module docstring's table, for D and r/l
    "adapter.down.weight": lambda D, r: (r, D), "adapter.down.bias": lambda D, r: (r,),
    "adapter.up.weight": lambda D, r: (D, r), "adapter.up.bias": lambda D, r: (D,),
    "lora.down.weight": lambda D, r: (r, D), "lora.up.weight": lambda D, r: (3 * D, r),
    "prefix.key": lambda D, r: (r, D), "prefix.value": lambda D, r: (r, D),
    "prompt.tokens": lambda D, r: (r, D),
}


def test_task_file_format(backbone, tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    sizes = {"adapter": 3, "lora": 2, "prefix": 2, "prompt": 1}
    task = _randomise(_task(backbone, ["adapter:r=3", "lora:r=2,alpha=8", "prefix:l=2",
                                       "prompt:l=1"], tuned={"ti": [0, 5], "b": [11]},
                            heads=["s", "b"]), 6)
    meta = task.task_json("demo", ["a", "b", "c", "d"], backbone.family.name, backbone.sha256,
                          ["b"])
    path = tmp_path / "demo.safetensors"
    T.write_task_file(path, task, meta, {"note": "test"})

    arrays = load_file(str(path))  # the independent reader
    with safe_open(str(path), "np") as f:
        md = f.metadata()
    task_md = json.loads(md["snrt.task"])
    assert json.loads(md["snrt.task.provenance"]) == {"note": "test"}
    for field in ("format", "name", "labels", "family", "backbone_sha256", "tuners", "anchors",
                  "heads", "head", "variants"):
        assert field in task_md
    assert task_md["format"] == 1 and task_md["labels"] == ["a", "b", "c", "d"]
    assert task_md["anchors"]["ti"] == {"embed_dim": 24, "num_heads": 3, "blocks": [0, 5]}
    assert task_md["tuners"][1] == {"kind": "lora", "r": 2, "alpha": 8.0}
    dims = {"ti": 24, "s": 48, "b": 96}
    pat = re.compile(r"^tuners\.(ti|s|b)\.blocks\.(\d+)\.(\w+\.\w+(?:\.\w+)?)$|"
                     r"^heads\.(ti|s|b)\.(norm|fc)\.(weight|bias)$")
    seen_blocks = set()
    for k, a in arrays.items():
        m = pat.match(k)
        assert m, k
        assert a.dtype == np.float32
        if m.group(1):
            name, sub = m.group(1), m.group(3)
            seen_blocks.add((name, int(m.group(2))))
            assert a.shape == DOC_SHAPES[sub](dims[name], sizes[sub.split(".")[0]]), k
        else:
            D = dims[m.group(4)]
            want = {"norm": (D,), "fc": (4, D) if m.group(6) == "weight" else (4,)}
            assert a.shape == (want["norm"] if m.group(5) == "norm" else want["fc"]), k
    assert seen_blocks == {("ti", 0), ("ti", 5), ("b", 11)}
    assert len(arrays) == 3 * 9 + 2 * 4
    # LoRA's alpha / r = 4 is folded into the stored up weight
    np.testing.assert_allclose(arrays["tuners.b.blocks.11.lora.up.weight"],
                               4.0 * task.block("b", 11).lora.up.weight.detach().numpy(),
                               rtol=1e-6)
    # read back: same forward
    tensors, m2, _ = T.read_task_file(path)
    back = T.TaskTuners.from_task_json(m2, backbone.frozen.dims())
    back.load_tensors(tensors)
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(7))
    route = backbone.space.get("b").route
    with torch.no_grad():
        assert torch.allclose(T.forward_task(backbone.frozen, task, x, route),
                              T.forward_task(backbone.frozen, back, x, route), atol=1e-6)


def test_task_file_shape_errors_name_the_block(backbone, tmp_path):
    from snrt.weights_io import write_safetensors

    task = _task(backbone, ["adapter:r=3"], tuned={"s": [2]}, heads=["s"])
    meta = task.task_json("t", list("abcd"), "f", "0" * 64, ["s"])
    tensors = task.export_tensors()
    tensors["tuners.s.blocks.2.adapter.up.weight"] = np.zeros((48, 4), np.float32)
    bad = tmp_path / "bad.safetensors"
    write_safetensors(bad, tensors, {"snrt.task": json.dumps(meta)})
    with pytest.raises(T.TaskFileError, match=r"anchor s block 2.*\[48, 4\], expected \[48, 3\]"):
        T.read_task_file(bad)
    del tensors["tuners.s.blocks.2.adapter.up.weight"]
    write_safetensors(bad, tensors, {"snrt.task": json.dumps(meta)})
    with pytest.raises(T.TaskFileError, match=r"anchor s block 2: missing"):
        T.read_task_file(bad)
    write_safetensors(bad, tensors, {})
    with pytest.raises(T.TaskFileError, match="not a task file"):
        T.read_task_file(bad)


@pytest.mark.parametrize("text,err", [("adaptor:r=8", "unknown kind"), ("adapter:l=8", "takes r"),
                                      ("prefix:l=x", "integer"), ("lora:r=0", ">= 1"),
                                      ("prompt:l=2,alpha=1", "takes l")])
def test_tuner_spec_errors(text, err):
    with pytest.raises(T.TaskFileError, match=err):
        T.TunerSpec.parse(text)


def test_spec_params_match_u_tuning_counts():
    """The notes' ViT-B/16 counts (D = 768): adapter 1537r + 768, prefix 1536L, prompt 768L,
    LoRA 3072r per block."""
    D = 768
    assert T.TunerSpec.parse("adapter:r=8").params_per_block(D) == 1537 * 8 + 768
    assert T.TunerSpec.parse("prefix:l=5").params_per_block(D) == 1536 * 5
    assert T.TunerSpec.parse("prompt:l=5").params_per_block(D) == 768 * 5
    assert T.TunerSpec.parse("lora:r=4").params_per_block(D) == 3072 * 4


# ----------------------------------------------------------------------------- data

def test_packaged_datasets_load_offline_with_fixed_disjoint_splits():
    import task_datasets as D

    for load, n, classes, test in ((D.load_uci_digits, 1797, 10, 500), (D.load_faces, 200, 2, 80)):
        d = load()
        assert len(d.images) == n and len(d.labels) == classes
        assert d.images[0].dtype == np.uint8
        parts = [set(d.split[k].tolist()) for k in ("train", "val", "test")]
        assert sum(map(len, parts)) == n and not (parts[0] & parts[1] or parts[0] & parts[2]
                                                  or parts[1] & parts[2])
        assert len(parts[2]) == test
        assert np.bincount(d.targets[d.split["test"]]).tolist() == [test // classes] * classes
        assert np.array_equal(load().split["test"], d.split["test"])  # fixed seed
    lo, hi = D.wilson_interval(90, 100)
    assert lo < 90 < hi and math.isclose(lo, 82.6, abs_tol=0.1)


@pytest.mark.slow
def test_study_smoke(tmp_path):
    """The whole study end to end with 3-step runs: report and task files written."""
    import tuners_study

    assert tuners_study.main(["--smoke", "--quiet", "--out-dir", str(tmp_path),
                              "--report-dir", str(tmp_path)]) == 0
    md = (tmp_path / "tuners.md").read_text()
    assert "## Which variants can run a task" in md and md.count("\n| ") > 71
    for t in ("uci-digits", "faces"):
        _, meta, prov = T.read_task_file(tmp_path / f"{t}.safetensors")
        assert len(meta["variants"]) == 71 and len(prov["test"]) == 71


def test_variants_a_task_is_valid_for(backbone):
    """Tuners on b alone: only b (an s>b stitch would run untuned s blocks); tuners everywhere:
    all 71; heads only (linear probe on b): b and the 34 stitches ending in b."""
    names = backbone.frozen.anchor_names

    def ok(task):
        return [v.id for v in backbone.space.variants
                if T.route_supported(task, v.route, names)]

    assert ok(_task(backbone, ["adapter:r=2"], tuned={"b": list(range(12))}, heads=["b"])) == ["b"]
    assert len(ok(_task(backbone, ["adapter:r=2"]))) == 71
    probe = ok(_task(backbone, [], tuned={}, heads=["b"]))
    assert len(probe) == 35 and all(i == "b" or i.startswith("s>b@") for i in probe)

"""Self-checks of tests/subnet_reference.py, the independent reference for elastic subnets.

Nothing here uses snrt's subnet code. Each check compares the reference's sliced timm model with
something written differently: a hand-written numpy forward of POA's dynamic layers (the scale
on the input, as poa/layers/dynamic_ops.py computes it), a masked full-size model (UFO), Paddle's
[in, out] indexing expressions replayed on transposed weights, hand counts of FLOPs and params,
and VIMER-UFO's published arch strings.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("timm")
pytest.importorskip("fvcore")

import subnet_reference as R  # tests/ is on sys.path under pytest (rootdir conftest)

UFO_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "ufo"
EPS = 1e-6  # timm's ViT LayerNorm (and POA's DynamicLayerNorm, UFO's norm_layer)

POA_GEOM = R.Geometry(embed_dim=256, depth=6, img_size=32, patch_size=8, mlp_hidden=1024,
                      num_classes=10, layer_scale=True)
UFO_GEOM = R.Geometry(embed_dim=256, depth=6, img_size=32, patch_size=8, mlp_hidden=1024,
                      num_classes=10)
UFO_SMALL = R.ufo_space(256, 6, {"j": 4, "k": 5, "l": 6}, {"1": 4, "2": 3, "3": 2},
                        {"1": 4.0, "2": 3.5, "3": 3.0})


@pytest.fixture(scope="module")
def poa_super():
    m = R.supernet(POA_GEOM, seed=5)
    return m, R.state_dict_np(m)


@pytest.fixture(scope="module")
def ufo_super():
    m = R.supernet(UFO_GEOM, seed=6)
    return m, R.state_dict_np(m)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)


# ---------------------------------------------------------------------------- numpy forward

def _ln(x, w, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + EPS) * w + b


def _gelu(x):
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _softmax(a):
    a = a - a.max(-1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(-1, keepdims=True)


def poa_dynamic_block(sd, i, x, width, D, H):
    """POA's DynamicBlock at width `width` on the FULL supernet weights of block i, float64:
    each DynamicLinear computes F.linear(x * max_in / active_in, W[:out, :in], b[:out]); qkv is
    the grouped one (rows [g*D, g*D + width) of each of q, k, v); head_dim 64, scale 64**-0.5."""
    f = {k: v.astype(np.float64) for k, v in sd.items() if k.startswith(f"blocks.{i}.")}
    p = f"blocks.{i}."
    hi = int(width / D * H)
    n_tok = x.shape[-2]
    ls1 = f.get(p + "ls1.gamma", np.ones(D))[:width]
    ls2 = f.get(p + "ls2.gamma", np.ones(D))[:width]

    h = _ln(x, f[p + "norm1.weight"][:width], f[p + "norm1.bias"][:width])
    qkv_w, qkv_b = f[p + "attn.qkv.weight"], f[p + "attn.qkv.bias"]
    q, k, v = (
        (h * (D / width)) @ qkv_w[g * D: g * D + width, :width].T + qkv_b[g * D: g * D + width]
        for g in range(3))
    nh = width // 64

    def heads(t):
        return t.reshape(n_tok, nh, 64).transpose(1, 0, 2)

    att = _softmax(heads(q) @ heads(k).transpose(0, 2, 1) * 64 ** -0.5)
    o = (att @ heads(v)).transpose(1, 0, 2).reshape(n_tok, width)
    o = (o * (D / width)) @ f[p + "attn.proj.weight"][:width, :width].T \
        + f[p + "attn.proj.bias"][:width]
    x = x + ls1 * o
    h = _ln(x, f[p + "norm2.weight"][:width], f[p + "norm2.bias"][:width])
    h = (h * (D / width)) @ f[p + "mlp.fc1.weight"][:hi, :width].T + f[p + "mlp.fc1.bias"][:hi]
    h = _gelu(h)
    h = (h * (H / hi)) @ f[p + "mlp.fc2.weight"][:width, :hi].T + f[p + "mlp.fc2.bias"][:width]
    return x + ls2 * h


def poa_dynamic_model(sd, geom, width, depth, img):
    """POA's DinoVisionTransformer forward (no interpolation, order mode) for one image, plus the
    contract's head: patch_embed / cls_token / pos_embed / final norm take the first `width`
    channels, blocks np.linspace(0, L-1, depth).astype(int64), head sliced and not scaled."""
    f = {k: v.astype(np.float64) for k, v in sd.items()}
    p = geom.patch_size
    g = geom.img_size // p
    patches = img.astype(np.float64).reshape(3, g, p, g, p).transpose(1, 3, 0, 2, 4)
    patches = patches.reshape(g * g, 3 * p * p)
    conv = f["patch_embed.proj.weight"][:width].reshape(width, -1)
    x = patches @ conv.T + f["patch_embed.proj.bias"][:width]
    x = np.concatenate([f["cls_token"][0, :, :width], x], 0) + f["pos_embed"][0, :, :width]
    kept = np.linspace(0, geom.depth - 1, depth).astype(np.int64)
    for i in kept:
        x = poa_dynamic_block(sd, int(i), x, width, geom.embed_dim, geom.mlp_hidden)
    cls = _ln(x, f["norm.weight"][:width], f["norm.bias"][:width])[0]
    if "head.weight" not in f:
        return cls
    return cls @ f["head.weight"][:, :width].T + f["head.bias"]


# ---------------------------------------------------------------------------- POA

def test_poa_blocks_are_numpy_linspace():
    assert R.poa_blocks(24, 12) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 23]  # the note's
    assert R.poa_blocks(6, 6) == list(range(6))
    assert R.poa_blocks(6, 1) == [0]
    assert R.poa_blocks(10, 4) == [0, 3, 6, 9]
    assert R.poa_blocks(6, 4) == [0, 1, 3, 5]  # 5/3 = 1.67 -> 1, 3.33 -> 3 (truncation)


def test_poa_mlp_hidden_is_dynamic_mlp_rule():
    vit_l = R.Geometry(1024, 24, 224, 16, 4096)
    assert [R.poa_mlp_hidden(vit_l, w) for w in (384, 768, 1024)] == [1536, 3072, 4096]
    odd = R.Geometry(320, 4, 32, 8, 1001)
    assert R.poa_mlp_hidden(odd, 64) == 200  # int(200.2)


def test_poa_full_subnet_is_the_supernet(poa_super, images):
    m, sd = poa_super
    full = R.poa_subnet(sd, POA_GEOM, POA_GEOM.embed_dim, POA_GEOM.depth)
    np.testing.assert_array_equal(R.forward(full, images), R.forward(m, images))


@pytest.mark.parametrize("width", [64, 128, 192])
def test_poa_block_equals_dynamic_ops_forward(poa_super, width):
    """The sliced block (scale folded into W) equals POA's dynamic block (scale on the input)."""
    import torch

    _, sd = poa_super
    sub = R.poa_subnet(sd, POA_GEOM, width, POA_GEOM.depth)
    x = np.random.default_rng(width).standard_normal((POA_GEOM.tokens, width))
    for i in (0, 3):
        with torch.no_grad():
            got = sub.blocks[i](torch.as_tensor(x[None], dtype=torch.float32))[0].numpy()
        want = poa_dynamic_block(sd, i, x, width, POA_GEOM.embed_dim, POA_GEOM.mlp_hidden)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        # the factor matters: without it the block is a different function
        assert np.abs(got - poa_dynamic_block(sd, i, x, width, width, width * 4)).max() > 1e-2


@pytest.mark.parametrize("width,depth", [(64, 1), (128, 4), (192, 5), (256, 3)])
def test_poa_model_equals_numpy_dynamic_model(poa_super, images, width, depth):
    _, sd = poa_super
    got = R.forward(R.poa_subnet(sd, POA_GEOM, width, depth), images)
    want = np.stack([poa_dynamic_model(sd, POA_GEOM, width, depth, im) for im in images])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_poa_features_without_head(images):
    geom = R.Geometry(192, 4, 32, 8, 768, num_classes=0)
    sd = R.state_dict_np(R.supernet(geom, seed=9))
    assert not any(k.startswith("head.") for k in sd)
    got = R.forward(R.poa_subnet(sd, geom, 128, 3), images)
    assert got.shape == (2, 128)
    want = np.stack([poa_dynamic_model(sd, geom, 128, 3, im) for im in images])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_poa_teacher_keys_as_extract_elastic_net():
    """Key names written out by hand from POA's modules: DynamicLinear wraps nn.Linear as
    `.linear`, DynamicLayerNorm wraps nn.LayerNorm as `.norm`, DynamicLayerScale keeps `gamma`,
    the patch embedding is a plain Conv2d; all under `backbone.`."""
    v = np.zeros(1, np.float32)
    teacher = {k: v for k in [
        "backbone.cls_token", "backbone.pos_embed", "backbone.mask_token",
        "backbone.patch_embed.proj.weight", "backbone.patch_embed.proj.bias",
        "backbone.blocks.0.3.norm1.norm.weight", "backbone.blocks.0.3.attn.qkv.linear.weight",
        "backbone.blocks.1.7.attn.proj.linear.bias", "backbone.blocks.1.7.ls2.gamma",
        "backbone.blocks.2.mlp.fc1.linear.weight", "backbone.blocks.2.norm2.norm.bias",
        "backbone.blocks.2.mlp.fc2.linear.bias",
        "backbone.norm.norm.weight", "backbone.norm.norm.bias",
        "dino_head.mlp.0.weight", "ibot_head.last_layer.weight_g"]}
    assert sorted(R.poa_teacher_to_timm(teacher)) == sorted([
        "cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
        "blocks.3.norm1.weight", "blocks.3.attn.qkv.weight", "blocks.7.attn.proj.bias",
        "blocks.7.ls2.gamma", "blocks.2.mlp.fc1.weight", "blocks.2.norm2.bias",
        "blocks.2.mlp.fc2.bias", "norm.weight", "norm.bias"])
    with pytest.raises(KeyError, match="norm"):
        R.poa_teacher_to_timm({k: v for k, v in teacher.items() if "backbone.norm" not in k})


@pytest.mark.parametrize("chunks", [0, 2, 3])
def test_poa_teacher_round_trip(poa_super, chunks):
    _, sd = poa_super
    body = {k: v for k, v in sd.items() if not k.startswith("head.")}
    teacher = R.timm_to_poa_teacher(sd, chunks=chunks)
    assert "backbone.mask_token" in teacher and any(k.startswith("dino_head.") for k in teacher)
    if chunks:
        per = -(-POA_GEOM.depth // chunks)  # DINOv2's BlockChunk: global index inside a chunk
        assert f"backbone.blocks.{5 // per}.5.attn.qkv.linear.weight" in teacher
    back = R.poa_teacher_to_timm(teacher)
    assert sorted(back) == sorted(body)
    for k in body:
        np.testing.assert_array_equal(back[k], body[k])


def test_poa_rejects_widths_outside_heads(poa_super):
    _, sd = poa_super
    for w in (0, 96, 320):
        with pytest.raises(ValueError, match="width"):
            R.poa_subnet_state_dict(sd, POA_GEOM, w, 3)
    with pytest.raises(ValueError, match="depth"):
        R.poa_subnet_state_dict(sd, POA_GEOM, 128, 7)


# ---------------------------------------------------------------------------- UFO

def _ufo_masked_full(model, arch: R.UfoArch):
    """The full supernet with the dropped heads' proj columns and the dropped hidden units' fc2
    columns zeroed and the blocks past the depth replaced by identity: a subnet computed
    without slicing anything."""
    import torch

    m = copy.deepcopy(model)
    with torch.no_grad():
        for b, blk in enumerate(m.blocks):
            if b >= arch.depth:
                m.blocks[b] = torch.nn.Identity()
                continue
            blk.attn.proj.weight[:, arch.heads[b] * 64:] = 0
            blk.mlp.fc2.weight[:, R.ufo_mlp_hidden(256, arch.mlp_ratios[b]):] = 0
    return m


def test_ufo_sliced_equals_masked_full_model(ufo_super, images):
    m, sd = ufo_super
    rng = np.random.default_rng(7)
    archs = [R.random_ufo_arch(rng, UFO_SMALL) for _ in range(4)] + ["j" + "331" * 4 + "000" * 2]
    for s in archs:
        arch = R.parse_ufo_arch(s, UFO_SMALL)
        got = R.forward(R.ufo_subnet(sd, UFO_GEOM, arch), images)
        want = R.forward(_ufo_masked_full(m, arch), images)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=s)
    # and the masking is not a no-op: a sliced subnet differs from the supernet
    small = R.forward(R.ufo_subnet(sd, UFO_GEOM, archs[-1], UFO_SMALL), images)
    assert np.abs(small - R.forward(m, images)).max() > 1e-2


def test_ufo_full_arch_is_the_supernet(ufo_super, images):
    m, sd = ufo_super
    full = R.ufo_subnet(sd, UFO_GEOM, "l" + "111" * 6, UFO_SMALL)
    np.testing.assert_array_equal(R.forward(full, images), R.forward(m, images))


def test_ufo_slices_replay_paddle_indexing(ufo_super):
    """qkv_super.sample_weight / Linear_super.sample_weight replayed on Paddle-layout ([in, out])
    copies of the weights give the transposes of the reference's torch-layout slices."""
    _, sd = ufo_super
    arch = R.UfoArch(2, (3, 2), (3.5, 3.0))
    sub = R.ufo_subnet_state_dict(sd, UFO_GEOM, arch)
    D = 256
    for b in range(arch.depth):
        p = f"blocks.{b}."
        qkv = sd[p + "attn.qkv.weight"].T  # paddle [in, out]
        super_out = qkv.shape[1]
        sample_out = 3 * arch.heads[b] * 64
        w = qkv[:D, :]
        w = np.concatenate([w[:, i * super_out // 3: i * super_out // 3 + sample_out // 3]
                            for i in range(3)], axis=1)
        np.testing.assert_array_equal(sub[p + "attn.qkv.weight"].T, w)
        bias = sd[p + "attn.qkv.bias"]
        bias = np.concatenate([bias[i * super_out // 3: i * super_out // 3 + sample_out // 3]
                               for i in range(3)])
        np.testing.assert_array_equal(sub[p + "attn.qkv.bias"], bias)
        proj = sd[p + "attn.proj.weight"].T[: arch.heads[b] * 64, :][:, :D]
        np.testing.assert_array_equal(sub[p + "attn.proj.weight"].T, proj)
        ffn = int(D * arch.mlp_ratios[b])
        np.testing.assert_array_equal(sub[p + "mlp.fc1.weight"].T,
                                      sd[p + "mlp.fc1.weight"].T[:D, :][:, :ffn])
        np.testing.assert_array_equal(sub[p + "mlp.fc2.weight"].T,
                                      sd[p + "mlp.fc2.weight"].T[:ffn, :][:, :D])
        np.testing.assert_array_equal(sub[p + "mlp.fc1.bias"], sd[p + "mlp.fc1.bias"][:ffn])
        np.testing.assert_array_equal(sub[p + "mlp.fc2.bias"], sd[p + "mlp.fc2.bias"])
    assert not any(k.startswith("blocks.2.") for k in sub)
    for k in ("cls_token", "pos_embed", "patch_embed.proj.weight", "norm.weight", "head.weight"):
        np.testing.assert_array_equal(sub[k], sd[k])


def test_ufo_arch_strings_of_the_published_table():
    table = json.loads((UFO_DIR / "CCF_UFO_train.json").read_text())
    assert len(table) == 500
    depths = set()
    for e in table.values():
        a = e["arch"]
        assert len(a) == 37 == 1 + 3 * R.UFO_VITB["max_depth"]
        arch = R.parse_ufo_arch(a, R.UFO_VITB)
        depths.add(arch.depth)
        assert len(arch.heads) == arch.depth
        assert set(arch.heads) <= {10, 11, 12} and set(arch.mlp_ratios) <= {3.0, 3.5, 4.0}
        assert a[1 + 3 * arch.depth:] == "000" * (12 - arch.depth)
        assert R.ufo_arch_string(arch, R.UFO_VITB) == a
    assert depths == {10, 11, 12}
    ex = R.parse_ufo_arch("j111231321311311221231121111231000000", R.UFO_VITB)  # the README's
    assert ex == R.UfoArch(10, (12, 11, 10, 10, 10, 11, 11, 12, 12, 11),
                           (4.0, 3.0, 3.5, 4.0, 4.0, 3.5, 3.0, 3.5, 4.0, 3.0))
    size = sum((len(R.UFO_VITB["heads_codes"]) * len(R.UFO_VITB["mlp_codes"])) ** d
               for d in R.UFO_VITB["depth_codes"].values())
    assert size == 9 ** 10 + 9 ** 11 + 9 ** 12


@pytest.mark.parametrize("arch,pos", [
    ("l" + "111" * 5, None),              # too short
    ("m" + "111" * 6, 0),                 # depth code
    ("l111" + "411" + "111" * 4, 4),      # heads code of block 1 ('4')
    ("l111" + "151" + "111" * 4, 5),      # mlp code of block 1
    ("l111" + "112" + "111" * 4, 6),      # embed code of block 1
    ("j" + "111" * 4 + "000" + "100", 16),  # block 5 past depth 4 not '000'
    ("k" + "111" * 4 + "000" * 2, 13),    # block 4 inside depth 5 written '000'
])
def test_ufo_parser_names_the_position(arch, pos):
    with pytest.raises(ValueError) as e:
        R.parse_ufo_arch(arch, UFO_SMALL)
    if pos is None:
        assert "19" in str(e.value)
    else:
        assert f"position {pos} (0-based)" in str(e.value)


# ---------------------------------------------------------------------------- FLOPs, params

def _block_flops(D, A, Hm, N):
    """fvcore's convention by hand: linear in*out per token (bias free), q@k^T and attn@v
    A*N*N each, LayerNorm 5 per element with affine; softmax, GELU, adds, scales not counted."""
    return N * (2 * 5 * D + 3 * D * A + A * D + 2 * D * Hm) + 2 * A * N * N


def _model_flops(D, blocks, N, p, C):
    conv = (N - 1) * D * 3 * p * p
    return conv + sum(_block_flops(D, A, Hm, N) for A, Hm in blocks) + 5 * D * N + D * C


def _model_params(D, blocks, N, p, C, layer_scale):
    per = [4 * D + (3 * D * A + 3 * A) + (A * D + D) + (D * Hm + Hm) + (Hm * D + D)
           + (2 * D if layer_scale else 0) for A, Hm in blocks]
    return D + N * D + (3 * p * p * D + D) + sum(per) + 2 * D + (D * C + C if C else 0)


def test_block_flops_hand_count_vs_fvcore(ufo_super):
    import torch

    _, sd = ufo_super
    arch = R.UfoArch(4, (3, 2, 4, 4), (3.5, 3.0, 4.0, 3.0))
    sub = R.ufo_subnet(sd, UFO_GEOM, arch)
    N = UFO_GEOM.tokens
    for b in range(arch.depth):
        got = R.fvcore_flops_of(sub.blocks[b], torch.zeros(1, N, 256))
        assert got == _block_flops(256, arch.heads[b] * 64, int(256 * arch.mlp_ratios[b]), N)


def test_model_flops_and_params_hand_count(poa_super, ufo_super):
    _, sd = poa_super
    N, p, C = POA_GEOM.tokens, POA_GEOM.patch_size, POA_GEOM.num_classes
    for w, d in [(128, 4), (256, 6), (64, 1)]:
        sub = R.poa_subnet(sd, POA_GEOM, w, d)
        blocks = [(w, R.poa_mlp_hidden(POA_GEOM, w))] * d
        assert R.fvcore_flops(sub, 32) == _model_flops(w, blocks, N, p, C)
        assert R.num_params(sub) == _model_params(w, blocks, N, p, C, layer_scale=True)
    _, sd = ufo_super
    arch = R.parse_ufo_arch("k" + "231" + "321" + "111" + "331" + "121" + "000", UFO_SMALL)
    sub = R.ufo_subnet(sd, UFO_GEOM, arch)
    blocks = [(h * 64, int(256 * r)) for h, r in zip(arch.heads, arch.mlp_ratios)]
    assert R.fvcore_flops(sub, 32) == _model_flops(256, blocks, N, p, C)
    assert R.num_params(sub) == _model_params(256, blocks, N, p, C, layer_scale=False)


def test_fvcore_of_the_full_model_is_the_vit_b_figure():
    """The counting set-up reproduces fvcore's published ViT-B/16 figure (17.58 GFLOPs, the
    number test_predict.py also uses) on a timm ViT-B/16 built by the reference."""
    geom = R.Geometry(768, 12, 224, 16, 3072, num_classes=1000)
    m = R._timm_vit(768, 12, 224, 16, 1000, [12] * 12, [3072] * 12, False).to_empty(device="cpu")
    flops = R.fvcore_flops(m, 224)
    assert flops == _model_flops(768, [(768, 3072)] * 12, geom.tokens, 16, 1000)
    assert abs(flops / 1e9 - 17.58) < 0.01
    assert R.num_params(m) == 86_567_656  # timm's vit_base_patch16_224

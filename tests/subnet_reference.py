"""Independent PyTorch reference for elastic ViT subnets (POA and VIMER-UFO); test-only.

Written from the public code of the two papers and docs/subnets-contract.md, sharing nothing with
snrt's own subnet code (which it is meant to check):
- POA (alipay/POA): `tools/extract_elastic_net.py` (which blocks, which rows/columns, the
  `max_width / width` factor folded into the linear weights, the teacher's key names),
  `poa/layers/dynamic_ops.py` (`F.linear(x * max_in / active_in, W, b)`: the factor multiplies the
  input, so folding it into W and leaving b alone is exact), `poa/layers/mlp.py` (hidden width
  `int(out / max_out * max_hidden)`), `poa/layers/attention.py` (head_dim fixed, scale 64**-0.5).
- VIMER-UFO (PaddlePaddle/VIMER, UFO/OneForAll): `super_module/qkv_super.py` (first h*64 outputs
  of each of q, k, v; Paddle weights are [in, out]), `super_module/Linear_super.py` (`W[:in, :out]`,
  no rescale unless `scale=True`, which the ViT does not set), `super_module/multihead_super.py`
  (head_dim 64, proj input `h*64`), `vision_transformer_super.py` (first `layer_num` blocks run,
  the rest are identity; fc1 width `int(embed_dim * mlp_ratio)`; embed_dim stays full).

Every sliced subnet is built as a standalone timm model (pretrained=False) holding the sliced
weights, so its forward pass, fvcore FLOPs and parameter count are timm's and fvcore's, not ours.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import numpy as np

HEAD_DIM = 64


# --------------------------------------------------------------------------------------------
# Supernet geometry and random supernets
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Geometry:
    """A timm ViT supernet: class-token pooling, pre-norm blocks, qkv_bias=True, 64-wide heads."""

    embed_dim: int
    depth: int
    img_size: int
    patch_size: int
    mlp_hidden: int
    num_classes: int = 0  # 0: no head, the output is the class token after the final norm
    layer_scale: bool = False
    head_dim: int = HEAD_DIM  # POA: any fixed head width (the bundled elastic family's is 8)
    in_chans: int = 3

    @property
    def num_heads(self) -> int:
        return self.embed_dim // self.head_dim

    @property
    def tokens(self) -> int:
        return (self.img_size // self.patch_size) ** 2 + 1


def _timm_vit(embed_dim: int, depth: int, img_size: int, patch_size: int, num_classes: int,
              heads: list[int], hidden: list[int], layer_scale: bool,
              head_dim: int = HEAD_DIM, in_chans: int = 3):
    """A timm VisionTransformer whose block i has heads[i] 64-wide heads and an MLP hidden width
    hidden[i] (timm's Attention(attn_head_dim=64) and Mlp(hidden_features=...))."""
    import torch
    from timm.layers import Mlp
    from timm.layers.attention import Attention
    from timm.models.vision_transformer import VisionTransformer

    # built on the meta device (no init cost); _load assigns every parameter from a state dict
    with torch.device("meta"):
        m = VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim,
                              in_chans=in_chans,
                              depth=depth, num_heads=1, mlp_ratio=1.0, qkv_bias=True,
                              num_classes=num_classes, global_pool="token", class_token=True,
                              init_values=1e-5 if layer_scale else None, weight_init="skip")
        for blk, h, hm in zip(m.blocks, heads, hidden, strict=True):
            blk.attn = Attention(embed_dim, num_heads=h, attn_head_dim=head_dim, qkv_bias=True)
            blk.mlp = Mlp(in_features=embed_dim, hidden_features=hm)
    return m.eval()


def supernet(geom: Geometry, seed: int):
    """A supernet with random weights; biases, norms, layer scales and tokens randomised too (a
    wrong bias or affine slice cannot hide behind timm's zero/one init)."""
    import torch

    m = _timm_vit(geom.embed_dim, geom.depth, geom.img_size, geom.patch_size, geom.num_classes,
                  [geom.num_heads] * geom.depth, [geom.mlp_hidden] * geom.depth, geom.layer_scale,
                  geom.head_dim, geom.in_chans)
    m = m.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, p in m.named_parameters():
            if k.endswith("weight") and p.ndim >= 2:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(fan_in))
            elif "gamma" in k:
                p.copy_(0.5 + 0.5 * torch.rand(p.shape, generator=g))
            elif "norm" in k and k.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:  # biases, cls_token, pos_embed
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return m


def state_dict_np(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def geometry_from_state_dict(sd: dict, layer_scale: bool | None = None,
                             head_dim: int = HEAD_DIM) -> Geometry:
    """Geometry read from timm key names (what the contract says snrt reads from the keys)."""
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    d = sd["patch_embed.proj.weight"].shape[0]
    p = sd["patch_embed.proj.weight"].shape[-1]
    grid = int(round(np.sqrt(sd["pos_embed"].shape[1] - 1)))
    return Geometry(embed_dim=d, depth=depth, img_size=grid * p, patch_size=p,
                    mlp_hidden=sd["blocks.0.mlp.fc1.weight"].shape[0],
                    num_classes=sd["head.weight"].shape[0] if "head.weight" in sd else 0,
                    layer_scale="blocks.0.ls1.gamma" in sd if layer_scale is None else layer_scale,
                    head_dim=head_dim, in_chans=sd["patch_embed.proj.weight"].shape[1])


def _load(model, sd: dict):
    import torch

    model.load_state_dict({k: torch.as_tensor(np.ascontiguousarray(v)) for k, v in sd.items()},
                          strict=True, assign=True)
    for k, b in list(model.named_buffers()):
        if b.is_meta:
            raise RuntimeError(f"{k}: a buffer the state dict does not set")
    return model.eval()


# --------------------------------------------------------------------------------------------
# POA: width x depth
# --------------------------------------------------------------------------------------------

def poa_blocks(max_depth: int, depth: int) -> list[int]:
    """Kept blocks of a depth-`depth` subnet: POA's get_block_idx / extract_elastic_net.py."""
    return np.linspace(0, max_depth - 1, depth).astype(np.int64).tolist()


def poa_mlp_hidden(geom: Geometry, width: int) -> int:
    """DynamicMlp.get_index: int(out_features / max_out_features * max_hidden_features)."""
    return int(width / geom.embed_dim * geom.mlp_hidden)


def poa_subnet_state_dict(sd: dict, geom: Geometry, width: int, depth: int) -> dict:
    """The standalone state dict of subnet (width, depth), timm key names, blocks renumbered."""
    if width % geom.head_dim or not 0 < width <= geom.embed_dim:
        raise ValueError(f"width {width}: must be a multiple of {geom.head_dim} "
                         f"in (0, {geom.embed_dim}]")
    if not 0 < depth <= geom.depth:
        raise ValueError(f"depth {depth}: must be in [1, {geom.depth}]")
    D, wi = geom.embed_dim, width
    hi = poa_mlp_hidden(geom, wi)
    scale = D / wi               # DynamicLinear.offset_scale of qkv, proj, fc1 (max_in / in)
    scale_fc2 = geom.mlp_hidden / hi  # fc2's input is the hidden layer: H / H_i
    out = {
        "cls_token": sd["cls_token"][..., :wi],
        "pos_embed": sd["pos_embed"][..., :wi],
        "patch_embed.proj.weight": sd["patch_embed.proj.weight"][:wi],
        "patch_embed.proj.bias": sd["patch_embed.proj.bias"][:wi],
        "norm.weight": sd["norm.weight"][:wi],
        "norm.bias": sd["norm.bias"][:wi],
    }
    if "head.weight" in sd:  # the classifier: sliced, not scaled (contract)
        out["head.weight"] = sd["head.weight"][:, :wi]
        out["head.bias"] = sd["head.bias"]
    rows = np.concatenate([np.arange(i * D, i * D + wi) for i in range(3)])  # q, k, v
    for new, old in enumerate(poa_blocks(geom.depth, depth)):
        s, t = f"blocks.{old}.", f"blocks.{new}."
        for n in ("norm1", "norm2"):
            out[t + n + ".weight"] = sd[s + n + ".weight"][:wi]
            out[t + n + ".bias"] = sd[s + n + ".bias"][:wi]
        for n in ("ls1", "ls2"):
            if s + n + ".gamma" in sd:
                out[t + n + ".gamma"] = sd[s + n + ".gamma"][:wi]
        out[t + "attn.qkv.weight"] = sd[s + "attn.qkv.weight"][rows][:, :wi] * scale
        out[t + "attn.qkv.bias"] = sd[s + "attn.qkv.bias"][rows]
        out[t + "attn.proj.weight"] = sd[s + "attn.proj.weight"][:wi, :wi] * scale
        out[t + "attn.proj.bias"] = sd[s + "attn.proj.bias"][:wi]
        out[t + "mlp.fc1.weight"] = sd[s + "mlp.fc1.weight"][:hi, :wi] * scale
        out[t + "mlp.fc1.bias"] = sd[s + "mlp.fc1.bias"][:hi]
        out[t + "mlp.fc2.weight"] = sd[s + "mlp.fc2.weight"][:wi, :hi] * scale_fc2
        out[t + "mlp.fc2.bias"] = sd[s + "mlp.fc2.bias"][:wi]
    return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}


def poa_subnet(sd: dict, geom: Geometry, width: int, depth: int):
    """The standalone timm model of POA subnet (width, depth)."""
    m = _timm_vit(width, depth, geom.img_size, geom.patch_size, geom.num_classes,
                  [width // geom.head_dim] * depth, [poa_mlp_hidden(geom, width)] * depth,
                  geom.layer_scale, geom.head_dim, geom.in_chans)
    return _load(m, poa_subnet_state_dict(sd, geom, width, depth))


def poa_id(width: int, depth: int) -> str:
    return f"w{width}d{depth}"


def parse_poa_id(s: str) -> tuple[int, int]:
    m = re.fullmatch(r"w(\d+)d(\d+)", s)
    if not m:
        raise ValueError(f"{s!r}: a POA subnet id is w{{width}}d{{depth}}, e.g. w192d5")
    return int(m.group(1)), int(m.group(2))


# POA teacher checkpoints: `torch.load(ckpt)['teacher']`, POA's dynamic-layer names.
_POA_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def poa_teacher_to_timm(teacher: dict) -> dict:
    """timm key names for a POA teacher state dict, as extract_elastic_net.py renames them
    (`backbone.` stripped, `.linear.` and the DynamicLayerNorm's inner `norm.` removed), blocks
    flat (`blocks.{i}`) or chunked (`blocks.{chunk}.{i}`, i global). Non-backbone keys
    (dino_head.*, ibot_head.*) and mask_token are dropped; no slicing here."""
    out = {}
    for k, v in teacher.items():
        if not k.startswith("backbone."):
            continue
        k = k[len("backbone."):]
        if k == "mask_token":
            continue
        m = re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(.+)", k)
        if m:  # chunked: the second number is the block index
            k = f"blocks.{m.group(2)}.{m.group(3)}"
        for lin in _POA_LINEARS:
            k = k.replace(f"{lin}.linear.", f"{lin}.")
        k = re.sub(r"(^|\.)(norm\d?)\.norm\.(weight|bias)$", r"\1\2.\3", k)
        out[k] = v
    if "norm.weight" not in out or "norm.bias" not in out:
        raise KeyError("backbone.norm.norm.weight / backbone.norm.norm.bias: missing final norm")
    return out


def timm_to_poa_teacher(sd: dict, chunks: int = 0, extra: bool = True) -> dict:
    """The inverse, to make test checkpoints: POA's names for a timm state dict (no head), blocks
    chunked DINOv2-style when chunks > 0; with extra, a dino_head and a mask_token beside."""
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    per = -(-depth // chunks) if chunks else 0
    out = {}
    for k, v in sd.items():
        if k.startswith("head."):
            continue
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", k)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            for lin in _POA_LINEARS:
                if rest.startswith(lin + "."):
                    rest = f"{lin}.linear.{rest[len(lin) + 1:]}"
            rest = re.sub(r"^(norm\d)\.(weight|bias)$", r"\1.norm.\2", rest)
            k = f"blocks.{i // per}.{i}.{rest}" if chunks else f"blocks.{i}.{rest}"
        elif k in ("norm.weight", "norm.bias"):
            k = "norm.norm." + k.split(".")[1]
        out["backbone." + k] = v
    if extra:
        d = sd["cls_token"].shape[-1]
        rng = np.random.default_rng(0)
        out["backbone.mask_token"] = rng.standard_normal((1, d)).astype(np.float32)
        out["dino_head.mlp.0.weight"] = rng.standard_normal((16, d)).astype(np.float32)
        out["dino_head.last_layer.weight_g"] = np.ones((16, 1), np.float32)
    return out


# --------------------------------------------------------------------------------------------
# UFO: per-block heads and MLP ratio, depth; the arch string
# --------------------------------------------------------------------------------------------

def ufo_space(embed_dim: int, max_depth: int, depth_codes: dict, heads_codes: dict,
              mlp_codes: dict) -> dict:
    return {"kind": "ufo", "embed_dim": embed_dim, "max_depth": max_depth, "head_dim": HEAD_DIM,
            "depth_codes": depth_codes, "heads_codes": heads_codes, "mlp_codes": mlp_codes,
            "embed_codes": {"1": embed_dim}}


# VIMER-UFO's ViT-B table (../shared/reference/ufo/README.md)
UFO_VITB = ufo_space(768, 12, {"j": 10, "k": 11, "l": 12}, {"1": 12, "2": 11, "3": 10},
                     {"1": 4.0, "2": 3.5, "3": 3.0})


@dataclass(frozen=True)
class UfoArch:
    depth: int
    heads: tuple[int, ...]
    mlp_ratios: tuple[float, ...]


def parse_ufo_arch(arch: str, space: dict) -> UfoArch:
    """An arch string: 1 depth char, then per block heads/mlp/embed chars, `000` past the depth.
    Errors name the offending position, 0-based."""
    n = 1 + 3 * space["max_depth"]
    if len(arch) != n:
        raise ValueError(f"arch {arch!r}: {len(arch)} characters, expected {n}")
    if arch[0] not in space["depth_codes"]:
        raise ValueError(f"arch position 0 (0-based): depth code {arch[0]!r} not in "
                         f"{sorted(space['depth_codes'])}")
    depth = int(space["depth_codes"][arch[0]])
    heads, mlps = [], []
    tables = (("heads", space["heads_codes"]), ("mlp", space["mlp_codes"]),
              ("embed", space["embed_codes"]))
    for b in range(space["max_depth"]):
        group = arch[1 + 3 * b: 4 + 3 * b]
        if b >= depth:
            if group != "000":
                raise ValueError(f"arch position {1 + 3 * b} (0-based): block {b} is beyond "
                                 f"depth {depth}, must be '000', got {group!r}")
            continue
        for j, (what, table) in enumerate(tables):
            if group[j] not in table:
                raise ValueError(f"arch position {1 + 3 * b + j} (0-based): {what} code "
                                 f"{group[j]!r} not in {sorted(table)}")
        if int(space["embed_codes"][group[2]]) != space["embed_dim"]:
            raise ValueError(f"arch position {3 + 3 * b}: embed width is fixed at "
                             f"{space['embed_dim']}")
        heads.append(int(space["heads_codes"][group[0]]))
        mlps.append(float(space["mlp_codes"][group[1]]))
    return UfoArch(depth, tuple(heads), tuple(mlps))


def ufo_arch_string(arch: UfoArch, space: dict) -> str:
    inv = {k: {v: c for c, v in space[k].items()} for k in
           ("depth_codes", "heads_codes", "mlp_codes", "embed_codes")}
    s = inv["depth_codes"][arch.depth]
    for h, r in zip(arch.heads, arch.mlp_ratios, strict=True):
        s += inv["heads_codes"][h] + inv["mlp_codes"][r] + inv["embed_codes"][space["embed_dim"]]
    return s + "000" * (space["max_depth"] - arch.depth)


def random_ufo_arch(rng: np.random.Generator, space: dict) -> str:
    d = str(rng.choice(sorted(space["depth_codes"])))
    depth = int(space["depth_codes"][d])
    s = d
    for _ in range(depth):
        s += (str(rng.choice(sorted(space["heads_codes"]))) +
              str(rng.choice(sorted(space["mlp_codes"]))) +
              str(rng.choice(sorted(space["embed_codes"]))))
    return s + "000" * (space["max_depth"] - depth)


def ufo_mlp_hidden(embed_dim: int, ratio: float) -> int:
    """Block.set_sample_config: int(sample_embed_dim * sample_mlp_ratio)."""
    return int(embed_dim * ratio)


def ufo_subnet_state_dict(sd: dict, geom: Geometry, arch: UfoArch) -> dict:
    """Standalone state dict of a UFO subnet: first `depth` blocks, heads and MLP rows sliced,
    nothing rescaled, embedding / norms / head unchanged."""
    D = geom.embed_dim
    out = {k: v for k, v in sd.items() if not k.startswith("blocks.")}
    for b in range(arch.depth):
        p = f"blocks.{b}."
        a = arch.heads[b] * HEAD_DIM
        hm = ufo_mlp_hidden(D, arch.mlp_ratios[b])
        qkv_out = sd[p + "attn.qkv.weight"].shape[0] // 3
        rows = np.concatenate([np.arange(i * qkv_out, i * qkv_out + a) for i in range(3)])
        for k, v in sd.items():
            if k.startswith(p):
                out[k] = v
        out[p + "attn.qkv.weight"] = sd[p + "attn.qkv.weight"][rows]
        out[p + "attn.qkv.bias"] = sd[p + "attn.qkv.bias"][rows]
        out[p + "attn.proj.weight"] = sd[p + "attn.proj.weight"][:, :a]
        out[p + "mlp.fc1.weight"] = sd[p + "mlp.fc1.weight"][:hm]
        out[p + "mlp.fc1.bias"] = sd[p + "mlp.fc1.bias"][:hm]
        out[p + "mlp.fc2.weight"] = sd[p + "mlp.fc2.weight"][:, :hm]
    return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}


def ufo_subnet(sd: dict, geom: Geometry, arch: UfoArch | str, space: dict | None = None):
    """The standalone timm model of a UFO subnet (an UfoArch, or an arch string with its space)."""
    if isinstance(arch, str):
        arch = parse_ufo_arch(arch, space)
    m = _timm_vit(geom.embed_dim, arch.depth, geom.img_size, geom.patch_size, geom.num_classes,
                  list(arch.heads), [ufo_mlp_hidden(geom.embed_dim, r) for r in arch.mlp_ratios],
                  geom.layer_scale)
    return _load(m, ufo_subnet_state_dict(sd, geom, arch))


# --------------------------------------------------------------------------------------------
# Forward, FLOPs, params of a (sliced) timm model
# --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def one_thread():
    """Run torch on one thread: these models are tiny, and on a shared 2-core machine torch's
    thread pool spinning against other processes made a forward 5-10x slower (measured)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def forward(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad(), one_thread():
        return model(torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def fvcore_flops(model, img_size: int, in_chans: int = 3) -> int:
    """fvcore's count for one image (one multiply-add = one FLOP). Attention runs unfused here
    so that fvcore sees the two matmuls (q@k^T, attn@v) it counts; it has no handler for
    scaled_dot_product_attention."""
    import torch

    return fvcore_flops_of(model, torch.zeros(1, in_chans, img_size, img_size))


def fvcore_flops_of(model, inputs) -> int:
    """fvcore's count of `model(inputs)`, attention unfused (see fvcore_flops)."""
    import torch
    from fvcore.nn import FlopCountAnalysis

    fused = [(mod, mod.fused_attn) for mod in model.modules() if hasattr(mod, "fused_attn")]
    try:
        for mod, _ in fused:
            mod.fused_attn = False
        fca = FlopCountAnalysis(model.eval(), inputs)
        fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        with torch.no_grad(), one_thread():
            total = fca.total()
    finally:
        for mod, f in fused:
            mod.fused_attn = f
    return int(total)


def num_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))

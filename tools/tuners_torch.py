"""Task tuners (U-Tuning) as parallel branches on a frozen ViT in plain torch; the task file format.

U-Tuning (arXiv 2303.00690) writes every parameter-efficient tuner as `x' = OP(x) + U-Tuner(x)`:
OP is a frozen operation of the backbone (MHA, FFN, a block), the tuner a small trainable branch.
This module adds the four instances of the paper to `snnet_torch.Block` (timm's pre-norm ViT
block: `x = x + MHA(LN1(x)); x = x + FFN(LN2(x))`) without touching its weights. Notation per
block: x [B, T, D] the block input (T = 1 + N: class token + N patch tokens), H heads of size
d = D / H, h1 = LN1(x), h2 = LN2(x + MHA(h1)); `W_qkv` [3D, D], `b_qkv` [3D] the frozen qkv layer.

Tuner kinds (the exporter reproduces exactly this):

- **adapter** (rank r, on the FFN; parallel adapter, the FFN's own input):
    FFN'(h2) = FFN(h2) + up(GELU(down(h2)))
  down: Linear(D -> r) with bias, up: Linear(r -> D) with bias, GELU the exact erf form.
  Init: down as torch's Linear default, up weight and bias zero (so the block is unchanged at
  step 0). Params per block 2Dr + r + D.
- **lora** (rank r, on qkv):
    qkv'(h1) = W_qkv h1 + b_qkv + B (A h1)
  A = down.weight [r, D], B = up.weight [3D, r], no biases. LoRA's scale alpha / r is trained as
  a separate factor but **folded into B in the task file** (`lora.up.weight` = scale * B), so a
  reader computes `h1 A^T B^T` and nothing else. Init: A as torch's Linear default, B zero.
  The 3D outputs split into q, k, v and heads exactly as the frozen qkv's. Params per block 4Dr.
- **prefix** (length L, on MHA): learned K_pre, V_pre [L, D], split into H heads of d like k, v,
  appended after the sequence's own keys and values of every head:
    MHA'(h1) = proj(softmax(q [k; K_pre]^T / sqrt(d)) [v; V_pre])
  (the queries are still the T tokens, so the output keeps T tokens). No projection of the
  prefix (it is already in key/value space). Init: trunc-normal std 0.02. Params 2LD per block.
- **prompt** (length L, at the block input; VPT-deep): learned tokens P [L, D] are concatenated
  after the sequence at the block's input, the whole block runs on the T + L tokens, and the L
  prompt positions are **dropped again at the block's output** (a block's output is [B, T, D]
  with or without prompts). This equals VPT-deep (each block's prompts replace the previous
  block's prompt outputs, and the class-token head never reads prompt outputs), and keeps every
  tuned block a drop-in piece for untuned pieces, stitching layers and other tasks. Because the
  prompt outputs are dropped, prompts act on the T tokens only as extra keys/values: a prompt
  equals a prefix with K_pre = (LN1(P) W_qkv^T + b_qkv)[k part], V_pre = the v part (an exporter
  may fold it so and skip the L tokens' FFN). Init: trunc-normal std 0.02. Params LD per block.
- **task head**: its own LayerNorm (eps 1e-6, initialised from the anchor's final norm) and a
  Linear D -> C on the class token: logits = fc(LN_task(x[:, 0])). It is applied on every route,
  anchor or stitched (the backbone's own head skips the final norm on stitched routes, as
  SN-Net does; a task head always normalises). Params 2D + (D + 1)C per anchor.

Several kinds can be combined in one block (LoRA and prefix both act inside MHA: qkv gets the
LoRA term first, then the prefix is appended to k and v). A task = tuners on some blocks of
some anchors + one head per anchor a route can end in + labels.

Task file (safetensors, float32, little-endian; keys sorted):

    tuners.{anchor}.blocks.{i}.adapter.down.weight  [r, D]      tuners...adapter.down.bias [r]
    tuners.{anchor}.blocks.{i}.adapter.up.weight    [D, r]      tuners...adapter.up.bias   [D]
    tuners.{anchor}.blocks.{i}.lora.down.weight     [r, D]
    tuners.{anchor}.blocks.{i}.lora.up.weight       [3D, r]     (alpha / r already folded in)
    tuners.{anchor}.blocks.{i}.prefix.key           [L, D]      ...prefix.value [L, D]
    tuners.{anchor}.blocks.{i}.prompt.tokens        [L, D]
    heads.{anchor}.norm.weight [D]   heads.{anchor}.norm.bias [D]
    heads.{anchor}.fc.weight   [C, D] heads.{anchor}.fc.bias  [C]

`{anchor}` is the family's anchor name (ti, s, b), `{i}` the block index in that anchor (0-based),
D that anchor's width, C = len(labels). Metadata (safetensors `__metadata__`, strings):

- `snrt.task`: JSON, what a reader needs: {"format": 1, "name", "labels": [C names],
  "family": family name, "backbone_sha256": `backbone_sha256()` of the frozen weights (a task
  runs only on the exact backbone it was trained on), "tuners": [{"kind": "adapter", "r": 8},
  {"kind": "lora", "r": 4, "alpha": 4.0}, {"kind": "prefix", "l": 4}, {"kind": "prompt", "l": 4}],
  "anchors": {name: {"embed_dim", "num_heads", "blocks": [i, ...]}} (anchors with tuners),
  "heads": [anchor names with a task head], "head_dims": {anchor: D of its head},
  "head": {"norm": "layernorm", "eps": 1e-6, "pool": "token", "on_stitched_routes": "norm"},
  "prompt_drop": "block_output", "lora_scale_folded": true,
  "variants": [variant ids the task is valid for: routes ending in an anchor with a head whose
  anchors all carry tuners (`route_supported`)]}.
- `snrt.task.provenance`: JSON, for people: dataset, split, training settings, test accuracy per
  variant (top-1, n, 95% interval), trained params.

`read_task_file` checks every key and shape against `expected_shapes` and names the block and
the expected shape when one is wrong.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from snrt.errors import TaskFileError  # one error class for the tool and the run-time reader

KINDS = ("adapter", "lora", "prefix", "prompt")
FORMAT = 1
HEAD_EPS = 1e-6


# ----------------------------------------------------------------------------- specs

@dataclass(frozen=True)
class TunerSpec:
    """One tuner kind and its size: rank r (adapter, lora) or length l (prefix, prompt)."""

    kind: str
    size: int
    alpha: float | None = None  # lora only; scale = alpha / r (default alpha = r: scale 1)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TaskFileError(f"unknown tuner kind '{self.kind}'; known: {', '.join(KINDS)}")
        if self.size < 1:
            raise TaskFileError(f"tuner {self.kind}: size must be >= 1, got {self.size}")
        if self.alpha is not None and self.kind != "lora":
            raise TaskFileError(f"tuner {self.kind}: alpha applies to lora only")

    @property
    def size_key(self) -> str:
        return "r" if self.kind in ("adapter", "lora") else "l"

    @property
    def scale(self) -> float:
        return (self.alpha if self.alpha is not None else self.size) / self.size

    @classmethod
    def parse(cls, text: str) -> TunerSpec:
        """'adapter:r=8', 'lora:r=4,alpha=8', 'prefix:l=4', 'prompt:l=4'."""
        kind, _, rest = text.partition(":")
        kind = kind.strip()
        if kind not in KINDS:
            raise TaskFileError(f"--tuner {text!r}: unknown kind '{kind}'; known: "
                                f"{', '.join(KINDS)} (e.g. adapter:r=8, lora:r=4,alpha=8, "
                                "prefix:l=4, prompt:l=4)")
        want = "r" if kind in ("adapter", "lora") else "l"
        opts: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            k, eq, v = part.partition("=")
            if not eq:
                raise TaskFileError(f"--tuner {text!r}: '{part}' is not key=value")
            opts[k.strip()] = v.strip()
        allowed = {want} | ({"alpha"} if kind == "lora" else set())
        if set(opts) - allowed or want not in opts:
            raise TaskFileError(f"--tuner {text!r}: {kind} takes {want}=N"
                                + (" [,alpha=X]" if kind == "lora" else "")
                                + f", got {sorted(opts)}")
        try:
            size = int(opts[want])
            alpha = float(opts["alpha"]) if "alpha" in opts else None
        except ValueError:
            raise TaskFileError(f"--tuner {text!r}: {want} must be an integer"
                                " (alpha a number)") from None
        return cls(kind, size, alpha)

    def to_json(self) -> dict:
        d: dict = {"kind": self.kind, self.size_key: self.size}
        if self.kind == "lora":
            d["alpha"] = float(self.alpha if self.alpha is not None else self.size)
        return d

    @classmethod
    def from_json(cls, d: dict) -> TunerSpec:
        kind = d.get("kind")
        key = "r" if kind in ("adapter", "lora") else "l"
        if kind not in KINDS or not isinstance(d.get(key), int):
            raise TaskFileError(f"tuner entry {d}: needs kind in {KINDS} and an integer '{key}'")
        return cls(kind, d[key], d.get("alpha") if kind == "lora" else None)

    def label(self) -> str:
        return f"{self.kind}:{self.size_key}={self.size}"

    def block_shapes(self, dim: int) -> dict[str, tuple[int, ...]]:
        """Tensor name (after `tuners.{anchor}.blocks.{i}.`) -> shape, for width `dim`."""
        r = self.size
        if self.kind == "adapter":
            return {"adapter.down.weight": (r, dim), "adapter.down.bias": (r,),
                    "adapter.up.weight": (dim, r), "adapter.up.bias": (dim,)}
        if self.kind == "lora":
            return {"lora.down.weight": (r, dim), "lora.up.weight": (3 * dim, r)}
        if self.kind == "prefix":
            return {"prefix.key": (r, dim), "prefix.value": (r, dim)}
        return {"prompt.tokens": (r, dim)}

    def params_per_block(self, dim: int) -> int:
        return sum(math.prod(s) for s in self.block_shapes(dim).values())


def head_shapes(dim: int, num_classes: int) -> dict[str, tuple[int, ...]]:
    return {"norm.weight": (dim,), "norm.bias": (dim,), "fc.weight": (num_classes, dim),
            "fc.bias": (num_classes,)}


def expected_shapes(task: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor a task file with metadata `task` (the `snrt.task` JSON) must hold."""
    specs = [TunerSpec.from_json(t) for t in task["tuners"]]
    out: dict[str, tuple[int, ...]] = {}
    for name, a in task["anchors"].items():
        for i in a["blocks"]:
            for s in specs:
                for k, shape in s.block_shapes(a["embed_dim"]).items():
                    out[f"tuners.{name}.blocks.{i}.{k}"] = shape
    dims = task.get("head_dims", {})
    for name in task["heads"]:
        dim = task["anchors"].get(name, {}).get("embed_dim", dims.get(name))
        if dim is None:
            raise TaskFileError(f"head '{name}': no embed_dim (anchors.{name} or "
                                f"head_dims.{name})")
        for k, shape in head_shapes(dim, len(task["labels"])).items():
            out[f"heads.{name}.{k}"] = shape
    return out


# ----------------------------------------------------------------------------- modules

class Adapter(nn.Module):
    def __init__(self, dim: int, r: int):
        super().__init__()
        self.down = nn.Linear(dim, r)
        self.up = nn.Linear(r, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(F.gelu(self.down(h)))


class LoRA(nn.Module):
    def __init__(self, dim: int, r: int, scale: float):
        super().__init__()
        self.down = nn.Linear(dim, r, bias=False)
        self.up = nn.Linear(r, 3 * dim, bias=False)
        nn.init.zeros_(self.up.weight)
        self.scale = scale

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(h)) * self.scale


class Prefix(nn.Module):
    def __init__(self, dim: int, length: int):
        super().__init__()
        self.key = nn.Parameter(torch.empty(length, dim))
        self.value = nn.Parameter(torch.empty(length, dim))
        nn.init.trunc_normal_(self.key, std=0.02)
        nn.init.trunc_normal_(self.value, std=0.02)


class Prompt(nn.Module):
    def __init__(self, dim: int, length: int):
        super().__init__()
        self.tokens = nn.Parameter(torch.empty(length, dim))
        nn.init.trunc_normal_(self.tokens, std=0.02)


class BlockTuners(nn.Module):
    """The tuners of one block (any subset of the kinds; empty for an untuned block)."""

    def __init__(self, dim: int, specs: list[TunerSpec]):
        super().__init__()
        self.adapter = self.lora = self.prefix = self.prompt = None
        for s in specs:
            if s.kind == "adapter":
                self.adapter = Adapter(dim, s.size)
            elif s.kind == "lora":
                self.lora = LoRA(dim, s.size, s.scale)
            elif s.kind == "prefix":
                self.prefix = Prefix(dim, s.size)
            else:
                self.prompt = Prompt(dim, s.size)

    @property
    def empty(self) -> bool:
        return not any((self.adapter, self.lora, self.prefix, self.prompt))


class AnchorTuners(nn.Module):
    def __init__(self, dim: int, depth: int, blocks: list[int], specs: list[TunerSpec]):
        super().__init__()
        self.blocks = nn.ModuleList(BlockTuners(dim, specs if i in blocks else [])
                                    for i in range(depth))
        self.tuned = sorted(blocks)


class TaskHead(nn.Module):
    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=HEAD_EPS)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x[:, 0]))  # LayerNorm is per token: only the class token's


def tuned_attention(attn, h: torch.Tensor, t: BlockTuners) -> torch.Tensor:
    """snnet_torch.Attention's forward with the LoRA term on qkv and the prefix on k, v."""
    B, N, D = h.shape
    H, d = attn.num_heads, attn.head_dim
    qkv = attn.qkv(h)
    if t.lora is not None:
        qkv = qkv + t.lora(h)
    q, k, v = qkv.reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)
    if t.prefix is not None:
        L = t.prefix.key.shape[0]
        kp = t.prefix.key.reshape(1, L, H, d).permute(0, 2, 1, 3).expand(B, -1, -1, -1)
        vp = t.prefix.value.reshape(1, L, H, d).permute(0, 2, 1, 3).expand(B, -1, -1, -1)
        k, v = torch.cat([k, kp], dim=2), torch.cat([v, vp], dim=2)
    att = (q * (1.0 / math.sqrt(d))) @ k.transpose(-2, -1)
    out = att.softmax(dim=-1) @ v
    return attn.proj(out.transpose(1, 2).reshape(B, N, D))


def tuned_block(block, t: BlockTuners | None, x: torch.Tensor) -> torch.Tensor:
    """One frozen `snnet_torch.Block` plus its tuners (the math of the module docstring)."""
    if t is None or t.empty:
        return block(x)
    T = x.shape[1]
    if t.prompt is not None:
        x = torch.cat([x, t.prompt.tokens.expand(x.shape[0], -1, -1)], dim=1)
    h1 = block.norm1(x)
    if t.lora is None and t.prefix is None:
        x = x + block.attn(h1)
    else:
        x = x + tuned_attention(block.attn, h1, t)
    h2 = block.norm2(x)
    m = block.mlp(h2)
    if t.adapter is not None:
        m = m + t.adapter(h2)
    x = x + m
    return x[:, :T] if t.prompt is not None else x


class TaskTuners(nn.Module):
    """All trainable parts of a task: tuners per anchor and block, one head per anchor."""

    def __init__(self, anchors: dict[str, tuple[int, int, int]], specs: list[TunerSpec],
                 num_classes: int, tuned: dict[str, list[int]], heads: list[str]):
        """anchors: name -> (embed_dim, num_heads, depth) of every anchor of the family;
        tuned: anchor -> block indices that carry `specs`; heads: anchors with a task head."""
        super().__init__()
        kinds = [s.kind for s in specs]
        if len(set(kinds)) != len(kinds):
            raise TaskFileError(f"each tuner kind at most once per task, got {kinds}")
        for name in list(tuned) + list(heads):
            if name not in anchors:
                raise TaskFileError(f"unknown anchor '{name}'; known: {', '.join(anchors)}")
        for name, blocks in tuned.items():
            depth = anchors[name][2]
            bad = [i for i in blocks if not 0 <= i < depth]
            if bad:
                raise TaskFileError(f"anchor {name}: blocks {bad} outside 0..{depth - 1}")
        for s in specs:
            if s.kind == "prefix":
                for name in tuned:
                    if anchors[name][0] % anchors[name][1]:
                        raise TaskFileError(f"anchor {name}: width not divisible by heads")
        self.anchor_dims = dict(anchors)
        self.specs = list(specs)
        self.num_classes = num_classes
        self.tuners = nn.ModuleDict({n: AnchorTuners(anchors[n][0], anchors[n][2], b, specs)
                                     for n, b in tuned.items()})
        self.heads = nn.ModuleDict({n: TaskHead(anchors[n][0], num_classes) for n in heads})

    def block(self, anchor: str, i: int) -> BlockTuners | None:
        t = self.tuners[anchor] if anchor in self.tuners else None
        return t.blocks[i] if t is not None else None

    def param_count(self, anchors: list[str] | None = None) -> int:
        """Trained parameters (of the given anchors' tuners and heads, default all)."""
        names = anchors if anchors is not None else list(self.anchor_dims)
        n = 0
        for name in names:
            if name in self.tuners:
                n += sum(p.numel() for p in self.tuners[name].parameters())
            if name in self.heads:
                n += sum(p.numel() for p in self.heads[name].parameters())
        return n

    def init_heads_from(self, backbone) -> None:
        """Start each task norm from its anchor's final LayerNorm (the features it was trained
        to normalise)."""
        with torch.no_grad():
            for name, head in self.heads.items():
                a = backbone.anchor(name)
                head.norm.weight.copy_(a.norm.weight)
                head.norm.bias.copy_(a.norm.bias)

    # ------------------------------------------------------------------ file format

    def task_json(self, name: str, labels: list[str], family: str, backbone_sha: str,
                  variants: list[str]) -> dict:
        if len(labels) != self.num_classes:
            raise TaskFileError(f"{len(labels)} labels for a {self.num_classes}-class head")
        return {
            "format": FORMAT, "name": name, "labels": list(labels), "family": family,
            "backbone_sha256": backbone_sha, "tuners": [s.to_json() for s in self.specs],
            "anchors": {n: {"embed_dim": self.anchor_dims[n][0],
                            "num_heads": self.anchor_dims[n][1], "blocks": t.tuned}
                        for n, t in self.tuners.items()},
            "heads": list(self.heads),
            "head_dims": {n: self.anchor_dims[n][0] for n in self.heads},
            "head": {"norm": "layernorm", "eps": HEAD_EPS, "pool": "token",
                     "on_stitched_routes": "norm"},
            "prompt_drop": "block_output", "lora_scale_folded": True,
            "variants": list(variants),
        }

    def export_tensors(self) -> dict[str, np.ndarray]:
        """The task file's tensors (LoRA scale folded into up.weight), sorted by key."""
        out = {}
        for k, v in self.state_dict().items():
            a = v.detach().cpu().numpy().astype(np.float32)
            if k.endswith(".lora.up.weight"):
                a = a * np.float32(self._lora_scale())
            out[k] = np.ascontiguousarray(a)
        return dict(sorted(out.items()))

    def load_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        """Inverse of `export_tensors` (un-folds the LoRA scale)."""
        sd = {}
        for k, a in tensors.items():
            t = torch.as_tensor(np.asarray(a, dtype=np.float32))
            if k.endswith(".lora.up.weight"):
                t = t / self._lora_scale()
            sd[k] = t
        self.load_state_dict(sd, strict=True)

    def _lora_scale(self) -> float:
        return next(s.scale for s in self.specs if s.kind == "lora")

    @classmethod
    def from_task_json(cls, task: dict, anchors: dict[str, tuple[int, int, int]]) -> TaskTuners:
        specs = [TunerSpec.from_json(t) for t in task["tuners"]]
        for n, a in task["anchors"].items():
            if n in anchors and (a["embed_dim"], a["num_heads"]) != anchors[n][:2]:
                raise TaskFileError(f"anchor {n}: the task was trained for width "
                                    f"{a['embed_dim']} / {a['num_heads']} heads, the backbone "
                                    f"has {anchors[n][0]} / {anchors[n][1]}")
        return cls(anchors, specs, len(task["labels"]),
                   {n: a["blocks"] for n, a in task["anchors"].items()}, task["heads"])


def write_task_file(path: str | Path, task: TaskTuners, task_json: dict,
                    provenance: dict | None = None) -> None:
    from snrt.weights_io import write_safetensors

    tensors = task.export_tensors()
    want = expected_shapes(task_json)
    if set(want) != set(tensors) or any(tuple(tensors[k].shape) != want[k] for k in want):
        raise TaskFileError("internal: the tensors do not match the documented layout")
    meta = {"snrt.task": json.dumps(task_json, sort_keys=True)}
    if provenance is not None:
        meta["snrt.task.provenance"] = json.dumps(provenance, sort_keys=True)
    write_safetensors(path, tensors, meta)


_KEY = re.compile(r"^(tuners\.([^.]+)\.blocks\.(\d+)|heads\.([^.]+))\.")


def read_task_file(path: str | Path) -> tuple[dict[str, np.ndarray], dict, dict]:
    """(tensors, `snrt.task` JSON, provenance JSON) after checking every key and shape."""
    from snrt.weights_io import read_safetensors

    path = Path(path)
    tensors, meta = read_safetensors(path)
    if "snrt.task" not in meta:
        raise TaskFileError(f"{path}: no 'snrt.task' metadata; not a task file (write one with "
                            "tools/train_tuners.py)")
    try:
        task = json.loads(meta["snrt.task"])
        prov = json.loads(meta.get("snrt.task.provenance", "{}"))
    except json.JSONDecodeError as e:
        raise TaskFileError(f"{path}: 'snrt.task' metadata is not valid JSON ({e})") from None
    if task.get("format") != FORMAT:
        raise TaskFileError(f"{path}: task format {task.get('format')}, this reader knows "
                            f"{FORMAT}")
    for field in ("name", "labels", "tuners", "anchors", "heads", "backbone_sha256"):
        if field not in task:
            raise TaskFileError(f"{path}: 'snrt.task' lacks '{field}'")
    want = expected_shapes(task)
    for k in sorted(set(tensors) - set(want)):
        raise TaskFileError(f"{path}: unexpected tensor '{k}' (not in the task's tuners "
                            f"{[t['kind'] for t in task['tuners']]} / heads {task['heads']})")
    for k, shape in want.items():
        m = _KEY.match(k)
        where = (f"anchor {m.group(2)} block {m.group(3)}" if m and m.group(2)
                 else f"head of anchor {m.group(4)}" if m else k)
        if k not in tensors:
            raise TaskFileError(f"{path}: {where}: missing '{k}' (expected shape {list(shape)})")
        if tuple(tensors[k].shape) != shape:
            raise TaskFileError(f"{path}: {where}: '{k}' has shape {list(tensors[k].shape)}, "
                                f"expected {list(shape)}")
    return tensors, task, prov


def backbone_sha256(family) -> str:
    """Content hash of a numpy `snrt.family.Family`'s frozen weights; the run-time reader's
    function (`snrt.tuners.backbone_sha256`), so the tool and the reader cannot drift."""
    from snrt.tuners import backbone_sha256 as sha

    return sha(family)


# ----------------------------------------------------------------------------- backbone + task

class FrozenBackbone(nn.Module):
    """The family's SNNet (snnet_torch) with every weight frozen, plus anchor names."""

    def __init__(self, net, anchor_names: list[str]):
        super().__init__()
        self.net = net
        self.anchor_names = list(anchor_names)
        net.requires_grad_(False)
        net.eval()

    def anchor(self, name: str):
        return self.net.anchors[self.anchor_names.index(name)]

    def train(self, mode: bool = True):  # the backbone never leaves eval mode
        super().train(False)
        return self

    @property
    def depth(self) -> int:
        return len(self.net.anchors[0].blocks)

    def dims(self) -> dict[str, tuple[int, int, int]]:
        return {n: (a.cfg.embed_dim, a.cfg.num_heads, len(a.blocks))
                for n, a in zip(self.anchor_names, self.net.anchors)}


def forward_task(backbone: FrozenBackbone, task: TaskTuners, x: torch.Tensor, route,
                 head: bool = True) -> torch.Tensor:
    """Run an `snrt.variants.Route` with the task's tuners on its blocks and the task head of
    the route's last anchor (blocks of anchors without tuners run frozen and untuned).
    head=False returns the tokens the head would read, [B, T, D]."""
    net, names = backbone.net, backbone.anchor_names
    for p in route.pieces(backbone.depth):
        a = net.anchors[p.anchor]
        if p.kind == "embed":
            x = a.embed(x)
        elif p.kind == "block":
            x = tuned_block(a.blocks[p.index], task.block(names[p.anchor], p.index), x)
        elif p.kind == "stitch":
            x = net.stitch(p.anchor, p.end, p.index)(x)
        elif head:
            name = names[p.anchor]
            if name not in task.heads:
                raise TaskFileError(f"the task has no head for anchor {name}; routes ending "
                                    f"there cannot run it (heads: {', '.join(task.heads)})")
            x = task.heads[name](x)
    return x


def route_supported(task: TaskTuners, route, anchor_names: list[str]) -> bool:
    """The routes a task is valid for (its file's `variants`): the route ends in an anchor with
    a task head and, if the task has tuners, every anchor it passes through has them (tuners
    trained on b alone say nothing about an s>b stitch's untuned s blocks)."""
    if anchor_names[route.anchors[-1]] not in task.heads:
        return False
    return not task.tuners or all(anchor_names[a] in task.tuners for a in route.anchors)


def backbone_from_family(family):
    """snnet_torch.SNNet holding a numpy `snrt.family.Family` (timm keys), frozen."""
    from snnet_torch import SNNet, TinyViT, TinyViTConfig

    anchors = []
    for a in family.anchors:
        c = a.config
        if c.layer_scale or c.distilled or c.global_pool != "token" or not c.class_token:
            raise TaskFileError(f"anchor {a.name}: only plain class-token ViTs are supported")
        cfg = TinyViTConfig(embed_dim=c.embed_dim, num_heads=c.num_heads, depth=c.depth,
                            mlp_ratio=c.mlp_hidden / c.embed_dim, img_size=c.img_size,
                            patch_size=c.patch_size, in_chans=c.in_chans,
                            num_classes=c.num_classes)
        m = TinyViT(cfg)
        sd = {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in a.weights.items()}
        m.load_state_dict(sd, strict=True)
        anchors.append(m)
    pairs = sorted(family.stitch_layers)
    n_layers = max((len(v) for v in family.stitch_layers.values()), default=0)
    net = SNNet(anchors, pairs, n_layers)
    with torch.no_grad():
        for pair, layers in family.stitch_layers.items():
            for t, layer in enumerate(layers):
                lin = net.stitch(*pair, t).transform
                lin.weight.copy_(torch.as_tensor(layer.weight))
                lin.bias.copy_(torch.as_tensor(layer.bias))
    return FrozenBackbone(net, [a.name for a in family.anchors])

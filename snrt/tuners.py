"""Task tuners (U-Tuning) read from a task file, with numpy only (no torch).

A *task* runs on the frozen backbone of a bundle: small parallel branches `x' = OP(x) + tuner(x)`
on some blocks of some anchors, one task head per anchor a route can end in, and labels. The
math of each kind (docs/tuners.md; tools/tuners_torch.py trains them) per block, with x [B, T, D]
the block input, H heads of size d = D / H, h1 = LN1(x), h2 = LN2(x + MHA(h1)):

- adapter (rank r, FFN):  FFN'(h2) = FFN(h2) + up(GELU(down(h2)))   (GELU the exact erf form)
- lora (rank r, qkv):     qkv'(h1) = W_qkv h1 + b_qkv + B (A h1)     (alpha / r folded into B)
- prefix (length L, MHA): K_pre, V_pre [L, D], split into heads like k, v, appended after the
                          sequence's own keys and values:
                          softmax(q [k; K_pre]^T / sqrt(d)) [v; V_pre]
- prompt (length L):      tokens P [L, D] appended to the block's input and dropped again at its
                          output; equal to a prefix with K, V = the k, v parts of qkv'(LN1(P))
- task head:              logits = fc(LayerNorm_task(x[:, 0])) (eps 1e-6), on every route.

Task file (safetensors, float32; `{anchor}` an anchor name of the family, `{i}` a block index,
D that anchor's width, C = len(labels)):

    tuners.{anchor}.blocks.{i}.adapter.down.weight  [r, D]    tuners...adapter.down.bias  [r]
    tuners.{anchor}.blocks.{i}.adapter.up.weight    [D, r]    tuners...adapter.up.bias    [D]
    tuners.{anchor}.blocks.{i}.lora.down.weight     [r, D]
    tuners.{anchor}.blocks.{i}.lora.up.weight       [3D, r]   (alpha / r already folded in)
    tuners.{anchor}.blocks.{i}.prefix.key           [L, D]    tuners...prefix.value       [L, D]
    tuners.{anchor}.blocks.{i}.prompt.tokens        [L, D]
    heads.{anchor}.norm.weight [D]    heads.{anchor}.norm.bias [D]
    heads.{anchor}.fc.weight   [C, D] heads.{anchor}.fc.bias   [C]

Metadata `snrt.task` (JSON): format 1, name, labels, family, backbone_sha256 (`backbone_sha256`
of the frozen weights it was trained on), tuners [{"kind", "r"|"l"[, "alpha"]}], anchors
{name: {embed_dim, num_heads, blocks}}, heads [anchor names], head_dims, head, prompt_drop,
lora_scale_folded, variants [the variant ids it was trained and measured for]; and
`snrt.task.provenance` (JSON, for people: dataset, split, accuracy per variant).

`read_task_file(path, bundle=)` checks every field, key and shape (a wrong one raises
TaskFileError naming the block and the expected shape) and, given a bundle, that the task was
trained on exactly this bundle's backbone (BackboneMismatchError otherwise) and fits its
anchors and variants.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import BackboneMismatchError, ModelFileError, TaskFileError

KINDS = ("adapter", "lora", "prefix", "prompt")
FORMAT = 1
HEAD_EPS = 1e-6
TASK_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # used in piece ids and file names
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEY = re.compile(r"^(tuners\.([^.]+)\.blocks\.(\d+)|heads\.([^.]+))\.")


@dataclass(frozen=True)
class TunerSpec:
    """One tuner kind and its size: rank r (adapter, lora) or length l (prefix, prompt)."""

    kind: str
    size: int
    alpha: float | None = None  # lora only; already folded into lora.up.weight

    @property
    def size_key(self) -> str:
        return "r" if self.kind in ("adapter", "lora") else "l"

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


def head_shapes(dim: int, num_classes: int) -> dict[str, tuple[int, ...]]:
    return {"norm.weight": (dim,), "norm.bias": (dim,), "fc.weight": (num_classes, dim),
            "fc.bias": (num_classes,)}


@dataclass
class Task:
    """A task file's contents, checked. `tensors` keeps the file's key names."""

    name: str
    labels: list[str]
    family: str
    backbone_sha256: str
    tuners: list[TunerSpec]
    anchors: dict[str, dict]  # name -> {"embed_dim", "num_heads", "blocks": [i, ...]}
    heads: list[str]
    variants: list[str]
    tensors: dict[str, np.ndarray]
    provenance: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def kinds(self) -> list[str]:
        return [t.kind for t in self.tuners]

    def tuned_blocks(self, anchor: str) -> list[int]:
        return list(self.anchors.get(anchor, {}).get("blocks", []))

    def block(self, anchor: str, i: int) -> dict[str, np.ndarray] | None:
        """The tuners of block i of `anchor` ({"adapter.down.weight": ..., ...}), or None when
        the block is untuned (it runs frozen)."""
        if i not in self.tuned_blocks(anchor):
            return None
        pre = f"tuners.{anchor}.blocks.{i}."
        return {k[len(pre):]: v for k, v in self.tensors.items() if k.startswith(pre)}

    def head(self, anchor: str) -> dict[str, np.ndarray]:
        if anchor not in self.heads:
            raise TaskFileError(f"task '{self.name}' has no head for anchor {anchor}; routes "
                                f"ending there cannot run it (heads: {', '.join(self.heads)})")
        pre = f"heads.{anchor}."
        return {k[len(pre):]: v for k, v in self.tensors.items() if k.startswith(pre)}

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.tensors.values())

    @property
    def num_params(self) -> int:
        return sum(a.size for a in self.tensors.values())

    def accuracy(self, variant: str) -> dict | None:
        """{top1, n, interval...} measured for `variant` (from the provenance), or None."""
        test = self.provenance.get("test", {}) if isinstance(self.provenance, dict) else {}
        acc = test.get(variant) if isinstance(test, dict) else None
        return acc if isinstance(acc, dict) else None


# ----------------------------------------------------------------------------- reading

def _fail(where: str, fld: str, problem: str) -> TaskFileError:
    return TaskFileError(f"{where}: snrt.task.{fld}: {problem}; the task file is damaged or "
                         "was not written by tools/train_tuners.py: retrain or re-export it")


def _int(x, where, fld, lo=1) -> int:
    if type(x) is not int or x < lo:
        raise _fail(where, fld, f"expected an integer >= {lo}, got {x!r}"[:160])
    return x


def _str_list(x, where, fld, min_len=0) -> list[str]:
    if not isinstance(x, list) or len(x) < min_len or not all(isinstance(s, str) for s in x):
        raise _fail(where, fld, f"expected a list of at least {min_len} strings")
    if len(set(x)) != len(x):
        raise _fail(where, fld, "holds duplicates")
    return x


def parse_task_json(task, where: str) -> tuple[list[TunerSpec], dict]:
    """Check the `snrt.task` metadata's fields; return (tuner specs, task dict)."""
    if not isinstance(task, dict):
        raise _fail(where, "", "expected a JSON object")
    if task.get("format") != FORMAT:
        raise TaskFileError(f"{where}: task format {task.get('format')!r}, this snrt reads "
                            f"format {FORMAT}; upgrade snrt or retrain the task")
    for fld in ("name", "labels", "family", "backbone_sha256", "tuners", "anchors", "heads",
                "variants"):
        if fld not in task:
            raise _fail(where, fld, "missing")
    if not isinstance(task["name"], str) or not TASK_NAME.fullmatch(task["name"]):
        raise _fail(where, "name", f"{task['name']!r} is not 1-64 of A-Z a-z 0-9 _ -")
    _str_list(task["labels"], where, "labels", min_len=2)
    if not isinstance(task["family"], str):
        raise _fail(where, "family", "expected a string")
    if not isinstance(task["backbone_sha256"], str) or \
            not _HEX64.fullmatch(task["backbone_sha256"]):
        raise _fail(where, "backbone_sha256", "expected 64 lowercase hex digits")
    if task.get("lora_scale_folded", True) is not True:
        raise _fail(where, "lora_scale_folded", "must be true (alpha / r folded into "
                    "lora.up.weight)")
    if task.get("prompt_drop", "block_output") != "block_output":
        raise _fail(where, "prompt_drop", "only 'block_output' is defined")
    eps = task.get("head", {}).get("eps", HEAD_EPS) if isinstance(task.get("head"), dict) \
        else None
    if eps != HEAD_EPS:
        raise _fail(where, "head.eps", f"expected {HEAD_EPS} (the task head's LayerNorm)")
    if not isinstance(task["tuners"], list):
        raise _fail(where, "tuners", "expected a list")
    specs = []
    for n, t in enumerate(task["tuners"]):
        kind = t.get("kind") if isinstance(t, dict) else None
        if kind not in KINDS:
            raise _fail(where, f"tuners[{n}].kind", f"{kind!r}; known: {', '.join(KINDS)}")
        key = "r" if kind in ("adapter", "lora") else "l"
        size = _int(t.get(key), where, f"tuners[{n}].{key}")
        alpha = t.get("alpha") if kind == "lora" else None
        specs.append(TunerSpec(kind, size, alpha))
    if len({s.kind for s in specs}) != len(specs):
        raise _fail(where, "tuners", f"each kind at most once, got {[s.kind for s in specs]}")
    if not isinstance(task["anchors"], dict):
        raise _fail(where, "anchors", "expected an object")
    for name, a in task["anchors"].items():
        fld = f"anchors.{name}"
        if not isinstance(a, dict):
            raise _fail(where, fld, "expected an object")
        D = _int(a.get("embed_dim"), where, fld + ".embed_dim")
        H = _int(a.get("num_heads"), where, fld + ".num_heads")
        if D % H:
            raise _fail(where, fld, f"embed_dim {D} is not divisible by num_heads {H}")
        blocks = a.get("blocks")
        if not isinstance(blocks, list) or len(set(map(repr, blocks))) != len(blocks):
            raise _fail(where, fld + ".blocks", "expected a list of distinct block indices")
        for b in blocks:
            _int(b, where, fld + ".blocks", lo=0)
    _str_list(task["heads"], where, "heads")
    _str_list(task["variants"], where, "variants")
    if not isinstance(task.get("head_dims", {}), dict):
        raise _fail(where, "head_dims", "expected an object")
    return specs, task


def expected_shapes(specs: list[TunerSpec], task: dict, where: str = "task"
                    ) -> dict[str, tuple[int, ...]]:
    """Every tensor a task file with these tuners, anchors and heads must hold."""
    out: dict[str, tuple[int, ...]] = {}
    for name, a in task["anchors"].items():
        for i in a["blocks"]:
            for s in specs:
                for k, shape in s.block_shapes(a["embed_dim"]).items():
                    out[f"tuners.{name}.blocks.{i}.{k}"] = shape
    dims = task.get("head_dims", {})
    for name in task["heads"]:
        dim = task["anchors"].get(name, {}).get("embed_dim", dims.get(name))
        if type(dim) is not int or dim < 1:
            raise _fail(where, f"head_dims.{name}", "the head's width is missing (no "
                        f"anchors.{name}.embed_dim or head_dims.{name})")
        for k, shape in head_shapes(dim, len(task["labels"])).items():
            out[f"heads.{name}.{k}"] = shape
    return out


def _where(key: str) -> str:
    m = _KEY.match(key)
    if m and m.group(2):
        return f"anchor {m.group(2)} block {m.group(3)}"
    return f"head of anchor {m.group(4)}" if m else key


def read_task_file(path: str | os.PathLike, *, bundle=None) -> Task:
    """Read and check a task file; with `bundle` (an open snrt.Bundle) also that it was
    trained on that bundle's backbone and fits its anchors and variants (`check_task`)."""
    from .weights_io import read_safetensors

    path = Path(path)
    if not path.is_file():
        raise TaskFileError(f"{path}: no such task file (write one with tools/train_tuners.py)")
    try:
        tensors, meta = read_safetensors(path)
    except ModelFileError as e:
        raise TaskFileError(str(e)) from None
    where = str(path)
    if "snrt.task" not in meta:
        raise TaskFileError(f"{path}: no 'snrt.task' metadata; not a task file (write one "
                            "with tools/train_tuners.py)")
    try:
        raw = json.loads(meta["snrt.task"])
        prov = json.loads(meta.get("snrt.task.provenance", "{}"))
    except (json.JSONDecodeError, RecursionError) as e:
        raise TaskFileError(f"{path}: task metadata is not valid JSON ({e})") from None
    specs, task = parse_task_json(raw, where)
    want = expected_shapes(specs, task, where)
    for k in sorted(set(tensors) - set(want)):
        raise TaskFileError(f"{path}: unexpected tensor '{k}' (not in the task's tuners "
                            f"{[s.kind for s in specs]} on blocks snrt.task.anchors, or heads "
                            f"{task['heads']})")
    for k, shape in want.items():
        if k not in tensors:
            raise TaskFileError(f"{path}: {_where(k)}: missing '{k}' (expected shape "
                                f"{list(shape)})")
        a = tensors[k]
        if tuple(a.shape) != shape:
            raise TaskFileError(f"{path}: {_where(k)}: '{k}' has shape {list(a.shape)}, "
                                f"expected {list(shape)}")
        if a.dtype != np.float32:
            raise TaskFileError(f"{path}: {_where(k)}: '{k}' is {a.dtype}, expected float32")
        if not np.isfinite(a).all():
            raise TaskFileError(f"{path}: {_where(k)}: '{k}' holds NaN or infinite values")
    out = Task(name=task["name"], labels=list(task["labels"]), family=task["family"],
               backbone_sha256=task["backbone_sha256"], tuners=specs,
               anchors={n: dict(a) for n, a in task["anchors"].items()},
               heads=list(task["heads"]), variants=list(task["variants"]),
               tensors=dict(sorted(tensors.items())),
               provenance=prov if isinstance(prov, dict) else {}, path=path)
    if bundle is not None:
        check_task(out, bundle)
    return out


def check_task(task: Task, bundle) -> None:
    """BackboneMismatchError unless `task` was trained on `bundle`'s frozen weights; then
    TaskFileError unless its anchors, heads and variants fit the bundle."""
    where = str(task.path) if task.path is not None else f"task '{task.name}'"
    have = bundle_backbone_sha256(bundle)
    if task.backbone_sha256 != have:
        raise BackboneMismatchError(
            f"{where}: task '{task.name}' was trained on backbone {task.backbone_sha256[:16]}... "
            f"(family '{task.family}'), but {bundle.path} holds backbone {have[:16]}... "
            f"(family '{bundle.name}'): a task runs only on the exact weights it was trained on; "
            "retrain it on this bundle with tools/train_tuners.py --bundle")
    anchors = {a["name"]: a["config"] for a in bundle.manifest.family["anchors"]}
    for name, a in task.anchors.items():
        c = anchors.get(name)
        if c is None:
            raise TaskFileError(f"{where}: tuners for anchor '{name}', which {bundle.path} does "
                                f"not have (anchors: {', '.join(anchors)})")
        if (a["embed_dim"], a["num_heads"]) != (c["embed_dim"], c["num_heads"]):
            raise TaskFileError(f"{where}: anchor {name}: tuners for width {a['embed_dim']} / "
                                f"{a['num_heads']} heads, the bundle has {c['embed_dim']} / "
                                f"{c['num_heads']}")
        bad = [i for i in a["blocks"] if i >= c["depth"]]
        if bad:
            raise TaskFileError(f"{where}: anchor {name}: blocks {bad} outside "
                                f"0..{c['depth'] - 1}")
    for name in task.heads:
        if name not in anchors:
            raise TaskFileError(f"{where}: a head for anchor '{name}', which {bundle.path} "
                                "does not have")
        D = task.tensors[f"heads.{name}.norm.weight"].shape[0]
        if D != anchors[name]["embed_dim"]:
            raise TaskFileError(f"{where}: head of anchor {name}: width {D}, the anchor's is "
                                f"{anchors[name]['embed_dim']}")
    ids = {v.id: v for v in bundle.variants}
    for vid in task.variants:
        v = ids.get(vid)
        if v is None:
            raise TaskFileError(f"{where}: snrt.task.variants names '{vid}', which "
                                f"{bundle.path} does not have")
        if not route_supported(task, v.anchors):
            raise TaskFileError(f"{where}: snrt.task.variants names '{vid}', but the task has "
                                f"no head for {v.anchors[-1]} or no tuners on some of "
                                f"{v.anchors}")


def route_supported(task: Task, anchors: list[str]) -> bool:
    """A route (its anchors in order) can run the task: it ends in an anchor with a task head
    and, if the task has tuners, every anchor it passes through carries them."""
    if anchors[-1] not in task.heads:
        return False
    return not task.anchors or all(a in task.anchors for a in anchors)


# ----------------------------------------------------------------------------- backbone hash

def backbone_sha256(family) -> str:
    """Content hash of a numpy `snrt.family.Family`'s frozen weights (layout-independent):
    sha256 over, for each anchor in order then each stitching layer, `name key shape` and the
    float32 little-endian bytes, keys sorted. A task file stores the hash of the backbone it
    was trained on."""
    h = hashlib.sha256()
    for a in family.anchors:
        for k in sorted(a.weights):
            arr = np.ascontiguousarray(a.weights[k], dtype="<f4")
            h.update(f"{a.name} {k} {list(arr.shape)}\n".encode())
            h.update(arr.tobytes())
    for (f, e), layers in sorted(family.stitch_layers.items()):
        for t, layer in enumerate(layers):
            for k, arr in (("weight", layer.weight), ("bias", layer.bias)):
                arr = np.ascontiguousarray(arr, dtype="<f4")
                h.update(f"{f}>{e}.{t}.{k} {list(arr.shape)}\n".encode())
                h.update(arr.tobytes())
    return h.hexdigest()


_SHA_BY_DIGEST: dict[tuple[str, str], str] = {}
_sha_lock = threading.Lock()


def bundle_backbone_sha256(bundle) -> str:
    """`backbone_sha256` of a bundle's weights (rebuilt from graphs/weights.bin; cached per
    bundle path and manifest digest, which pins weights.bin through its sha256)."""
    key = (str(Path(bundle.path).resolve()), bundle.digest or "")
    with _sha_lock:
        if key in _SHA_BY_DIGEST:
            return _SHA_BY_DIGEST[key]
    sha = backbone_sha256(bundle.load_family())
    with _sha_lock:
        _SHA_BY_DIGEST[key] = sha
    return sha


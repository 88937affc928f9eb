"""Task files for tests, written from the documented layout (docs/tuners.md) with random
tensors, so that a tuner that is wrongly exported or read cannot hide behind a zero init."""

from __future__ import annotations

import json

import numpy as np

SHAPES = {  # documented names -> shape for width D, size r (rank or length)
    "adapter": lambda D, r: {"adapter.down.weight": (r, D), "adapter.down.bias": (r,),
                             "adapter.up.weight": (D, r), "adapter.up.bias": (D,)},
    "lora": lambda D, r: {"lora.down.weight": (r, D), "lora.up.weight": (3 * D, r)},
    "prefix": lambda D, r: {"prefix.key": (r, D), "prefix.value": (r, D)},
    "prompt": lambda D, r: {"prompt.tokens": (r, D)},
}
WIDTHS = {"ti": (24, 3), "s": (48, 6), "b": (96, 12)}  # the default family's anchors


def random_task(sha: str, *, name: str = "faces", tuners=(("adapter", 3),),
                tuned: dict | None = None, heads=("ti",), labels=("face", "other", "x"),
                variants=None, seed: int = 0, scale: float = 0.3, widths=WIDTHS
                ) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors, snrt.task metadata) of a task on the default family's anchors."""
    rng = np.random.default_rng(seed)
    tuned = {"ti": [0, 5]} if tuned is None else tuned
    tensors: dict[str, np.ndarray] = {}
    for a, blocks in tuned.items():
        D = widths[a][0]
        for i in blocks:
            for kind, r in tuners:
                for k, shape in SHAPES[kind](D, r).items():
                    tensors[f"tuners.{a}.blocks.{i}.{k}"] = \
                        (rng.standard_normal(shape) * scale).astype(np.float32)
    C = len(labels)
    for a in heads:
        D = widths[a][0]
        tensors[f"heads.{a}.norm.weight"] = (1 + rng.standard_normal(D) * 0.2).astype(np.float32)
        tensors[f"heads.{a}.norm.bias"] = (rng.standard_normal(D) * 0.2).astype(np.float32)
        tensors[f"heads.{a}.fc.weight"] = (rng.standard_normal((C, D)) * 0.3).astype(np.float32)
        tensors[f"heads.{a}.fc.bias"] = (rng.standard_normal(C) * 0.3).astype(np.float32)
    meta = {
        "format": 1, "name": name, "labels": list(labels), "family": "snrt-default-mnist",
        "backbone_sha256": sha,
        "tuners": [{"kind": k, ("r" if k in ("adapter", "lora") else "l"): r,
                    **({"alpha": float(r)} if k == "lora" else {})} for k, r in tuners],
        "anchors": {a: {"embed_dim": widths[a][0], "num_heads": widths[a][1],
                        "blocks": list(b)} for a, b in tuned.items()},
        "heads": list(heads), "head_dims": {a: widths[a][0] for a in heads},
        "head": {"norm": "layernorm", "eps": 1e-6, "pool": "token",
                 "on_stitched_routes": "norm"},
        "prompt_drop": "block_output", "lora_scale_folded": True,
        "variants": list(variants if variants is not None else heads),
    }
    return tensors, meta


def write_task(path, tensors: dict, meta: dict | None, provenance: dict | None = None):
    from snrt.weights_io import write_safetensors

    md = {} if meta is None else {"snrt.task": json.dumps(meta)}
    if provenance is not None:
        md["snrt.task.provenance"] = json.dumps(provenance)
    write_safetensors(path, tensors, md)
    return path


_BACKBONE: list = []


def backbone_bundle():
    """A copy of the shipped default bundle without its tasks (made once per test process):
    tests add their own random tasks, some named like the shipped ones."""
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    import snrt
    from snrt.bundle import update_manifest

    if not _BACKBONE:
        d = Path(tempfile.mkdtemp(prefix="snrt-backbone-"))
        atexit.register(shutil.rmtree, d, True)
        dst = d / "default.snrt"
        shutil.copytree(snrt.default_bundle(), dst)
        own: set[str] = set()

        def drop_tasks(m, _path):
            for t in m.tasks:
                own.update([t.weights, *(p["graph"] for p in t.pieces), *t.graphs.values()])
                for e in t.exports.values():
                    own.update(r["file"] for r in e.get("tflite", {}).values())
            m.tasks = []
            for f in own:
                m.files.pop(f, None)

        update_manifest(dst, drop_tasks)
        for f in own:
            (dst / f).unlink()
        _BACKBONE.append(dst)
    return _BACKBONE[0]

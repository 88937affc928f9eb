"""ONNX export of a family's variant space into a bundle (graphs + one shared weights file),
and onnxruntime-computed block activations for the stitch fit."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from snrt.bundle import BundleWriter, Manifest, PieceInfo, VariantInfo
from snrt.family import Family
from snrt.progress import Progress
from snrt.variants import Piece, VariantSpace

from .onnx_graph import DEFAULT_OPS, OPS_FORMS, WEIGHTS_FILE, GraphBuilder, WeightStore, ops_opsets

log = logging.getLogger(__name__)
GRAPHS = "graphs"


def onnx_export_record(ops: str) -> dict:
    """manifest.exports["onnx"]: the operator form of the bundle's graphs."""
    return {"ops": ops, "opsets": ops_opsets(ops), "description": OPS_FORMS[ops],
            "onnxruntime": ort.__version__}


def bundle_ops(manifest: Manifest) -> str:
    """The operator form a bundle's graphs were exported in (bundles from before the option:
    decomposed), so that pieces added later (tasks) match the bundle's opsets."""
    rec = (manifest.exports or {}).get("onnx") or {}
    ops = rec.get("ops", "decomposed") if isinstance(rec, dict) else "decomposed"
    return ops if ops in OPS_FORMS else "decomposed"


def _safe(s: str) -> str:
    return s.replace(">", "-").replace("@", "_").replace(":", "-")


def export_onnx(family: Family, space: VariantSpace, writer: BundleWriter, *,
                progress: bool = True, ops: str = DEFAULT_OPS) -> Manifest:
    """Write every variant's graph and every piece's graph, sharing weights.bin; return the
    manifest (without file hashes: the writer adds them on commit). `ops`: the graphs' operator
    form (exporters.onnx_graph.OPS_FORMS), recorded as manifest.exports["onnx"]; it does not
    change weights.bin."""
    t0 = time.monotonic()
    builder = GraphBuilder(family, ops=ops)
    depth = family.depth
    pieces: dict[str, tuple[Piece, PieceInfo]] = {}
    variants: list[VariantInfo] = []
    for v in space:
        for p in v.route.pieces(depth):
            pid = space.piece_id(p)
            if pid not in pieces:
                rel = f"{GRAPHS}/p_{_safe(pid)}.onnx"
                pieces[pid] = (p, PieceInfo(
                    id=pid, kind=p.kind, anchor=family.anchors[p.anchor].name, graph=rel,
                    flops=space.piece_flops(p),
                    input="image" if p.kind == "embed" else "tokens_in",
                    output="logits" if p.kind == "head" else "tokens_out",
                    input_shape=builder.io_shape(p, "in"), output_shape=builder.io_shape(p, "out")))
    with Progress(len(pieces) + len(space), "export onnx", enabled=progress) as bar:
        for pid, (p, info) in pieces.items():
            model = builder.graph([p], pid, doc=f"snrt piece {pid} of family {family.name}")
            writer.path(info.graph).write_bytes(model.SerializeToString())
            bar.update(note=pid)
        for v in space:
            rel = f"{GRAPHS}/v{v.index:03d}_{_safe(v.id)}.onnx"
            model = builder.graph(v.route.pieces(depth), v.id,
                                  doc=f"snrt variant {v.id} (cfg_id {v.cfg_id}) of {family.name}")
            writer.path(rel).write_bytes(model.SerializeToString())
            variants.append(VariantInfo(**space.variant_record(v.id), graph=rel,
                                        accuracy=v.accuracy))
            bar.update(note=v.id)
    with open(writer.path(f"{GRAPHS}/{WEIGHTS_FILE}"), "wb") as f:
        builder.store.write(f)
    for rel in [f"{GRAPHS}/{WEIGHTS_FILE}"] + [i.graph for _, i in pieces.values()] + \
            [v.graph for v in variants]:
        writer.add(rel)
    c0 = family.anchors[0].config
    manifest = Manifest(
        family={
            "name": family.name, "kind": "snnet" if len(family.anchors) > 1 else "vit",
            "anchors": [{"name": a.name, "config": a.config.to_json(), "source": a.source,
                         "params": a.num_params} for a in family.anchors],
            "stitching": space.stitching_json(),
            "sources": family.sources,
        },
        preprocess=family.preprocess,
        input={"name": "image", "shape": ["batch", c0.in_chans, c0.img_size, c0.img_size],
               "layout": "NCHW", "dtype": "float32"},
        output={"name": "logits", "shape": ["batch", c0.num_classes]},
        variants=variants, pieces=[i for _, i in pieces.values()], files={},
        tensors={name: {"offset": r.offset, "shape": list(r.shape), "source": r.source,
                        "transposed": r.transposed}
                 for name, r in builder.store.records.items()},
        labels=family.labels,
        exports={"onnx": onnx_export_record(ops)},
    )
    log.info("exported %d variants, %d pieces, %.1f MB weights in %.1fs", len(variants),
             len(pieces), builder.store.size / 1e6, time.monotonic() - t0)
    return manifest


class AnchorFeatures:
    """Block outputs of every anchor, computed with onnxruntime (for the stitch fit)."""

    def __init__(self, family: Family, threads: int = 0):
        self._tmp = tempfile.TemporaryDirectory(prefix="snrt-features-")
        store = WeightStore()
        builder = GraphBuilder(family, store)
        paths = []
        depth = family.depth
        for i, a in enumerate(family.anchors):
            pieces = [Piece("embed", i)] + [Piece("block", i, b) for b in range(depth)]
            outs = {f"block_{b - 1}": b for b in range(depth + 1)}  # embed -> "block_-1"
            model = builder.graph(pieces, f"{a.name}_features", extra_outputs=outs)
            p = Path(self._tmp.name) / f"{a.name}.onnx"
            p.write_bytes(model.SerializeToString())
            paths.append(p)
        with open(Path(self._tmp.name) / WEIGHTS_FILE, "wb") as f:
            store.write(f)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        self.sessions = [ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
                         for p in paths]
        self.depth = depth

    def __call__(self, batch: np.ndarray) -> list[dict[int, np.ndarray]]:
        names = [f"block_{b}" for b in range(-1, self.depth)]
        out = []
        for s in self.sessions:
            vals = s.run(names, {"image": batch})
            out.append({b: v for b, v in zip(range(-1, self.depth), vals)})
        return out

    def close(self) -> None:
        self.sessions = []
        self._tmp.cleanup()


def batched(images: Iterable[np.ndarray], batch_size: int) -> Iterable[np.ndarray]:
    buf = []
    for im in images:
        buf.append(im)
        if len(buf) == batch_size:
            yield np.stack(buf)
            buf = []
    if buf:
        yield np.stack(buf)


def regraph_stitches(bundle, writer: BundleWriter, ops: str, *,
                     progress: bool = False) -> Manifest:
    """Rebuild an SN-Net (or single-ViT) bundle's graphs in form `ops` from the bundle's own
    weights.bin (Bundle.load_family) into `writer`; return the manifest (the stitch half of
    exporters/regraph.py). Tasks come along: their piece graphs are rebuilt in `ops` from the
    tensors the bundle stores, task_<name>.bin byte-identical (exporters.task_regraph)."""
    from .task_regraph import regraph_tasks

    family = bundle.load_family()
    m = export_onnx(family, bundle.variant_space(), writer, progress=progress, ops=ops)
    m.tasks = regraph_tasks(bundle, family, writer, ops)
    return m


def regraph_bundle(src, out, **kwargs) -> Manifest:
    """snrt-export regraph's entry point, which lives in exporters/regraph.py (one for every
    bundle kind); kept here for callers that import it from this module."""
    from .regraph import regraph_bundle as entry

    return entry(src, out, **kwargs)

"""Export a supernet's subnet space as a bundle: every piece of the space (so that any member
runs, listed or not) as an ONNX graph whose initializers are views into one weights.bin; or
one subnet as a self-contained ONNX file (--standalone)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from snrt.bundle import BundleWriter, Manifest, PieceInfo, VariantInfo
from snrt.family.supernet import Supernet
from snrt.fileio import atomic_write_bytes
from snrt.progress import Progress
from snrt.variants.subnets import SUPERNET, SubnetSpace

from .onnx_export import onnx_export_record
from .onnx_graph import WEIGHTS_FILE
from .subnet_graph import SubnetGraphBuilder

log = logging.getLogger(__name__)
GRAPHS = "graphs"


def _safe(s: str) -> str:
    return s.replace(">", "-").replace("@", "_").replace(":", "-")


def export_subnets(net: Supernet, space: SubnetSpace, writer: BundleWriter, *,
                   progress: bool = True) -> Manifest:
    """Write every piece graph of `space` and weights.bin; return the manifest (the listed
    variants are `space.listed`)."""
    t0 = time.monotonic()
    builder = SubnetGraphBuilder(net, space)
    pieces = space.all_pieces()
    infos: list[PieceInfo] = []
    with Progress(len(pieces), "export subnet pieces", enabled=progress) as bar:
        for p in pieces:
            rel = f"{GRAPHS}/p_{_safe(p.id)}.onnx"
            model = builder.graph([p], p.id, doc=f"snrt piece {p.id} of supernet {net.name}")
            writer.path(rel).write_bytes(model.SerializeToString())
            infos.append(PieceInfo(
                id=p.id, kind=p.kind, anchor=SUPERNET, graph=rel, flops=space.piece_flops(p),
                input="image" if p.kind == "embed" else "tokens_in",
                output="logits" if p.kind == "head" else "tokens_out",
                input_shape=space.piece_io_shape(p, "in"),
                output_shape=space.piece_io_shape(p, "out")))
            bar.update(note=p.id)
    with open(writer.path(f"{GRAPHS}/{WEIGHTS_FILE}"), "wb") as f:
        builder.store.write(f)
    for rel in [f"{GRAPHS}/{WEIGHTS_FILE}"] + [i.graph for i in infos]:
        writer.add(rel)
    variants = [VariantInfo(index=v.index, cfg_id=v.index, graph=None, accuracy=v.accuracy,
                            **space.variant_record(v.id)) for v in space.listed]
    c = net.config
    manifest = Manifest(
        family={"name": net.name, "kind": "subnets",
                "anchors": [{"name": SUPERNET, "config": c.to_json(), "source": net.source,
                             "params": net.num_params}],
                "space": space.family_json()["space"], "sources": [net.source]},
        preprocess=net.preprocess,
        input={"name": "image", "shape": ["batch", c.in_chans, c.img_size, c.img_size],
               "layout": "NCHW", "dtype": "float32"},
        output={"name": "logits", "shape": ["batch", *space.output_dims]},
        variants=variants, pieces=infos, files={},
        tensors={name: {"offset": r.offset, "shape": list(r.shape), "source": r.source,
                        "transposed": r.transposed}
                 for name, r in builder.store.records.items()},
        labels=net.labels, exports={"onnx": onnx_export_record(builder.ops)})
    log.info("exported %d pieces (any of %d subnets runnable, %d listed), %.1f MB weights in "
             "%.1fs", len(infos), space.size(), len(variants), builder.store.size / 1e6,
             time.monotonic() - t0)
    return manifest


def export_standalone(net: Supernet, space: SubnetSpace, sid: str,
                      out: str | os.PathLike) -> Path:
    """One subnet as a single self-contained ONNX file (weights embedded, sliced and, for POA,
    scaled in the graph as in the bundle's pieces)."""
    s = space.get(sid).subnet
    model = SubnetGraphBuilder(net, space, inline=True).graph(
        s.pieces(), s.id, doc=f"snrt subnet {s.id} of supernet {net.name} (standalone)")
    data = model.SerializeToString()
    out = Path(out)
    atomic_write_bytes(out, data)
    return out

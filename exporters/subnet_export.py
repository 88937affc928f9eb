"""Export a supernet's subnet space as a bundle: every piece of the space (so that any member
runs, listed or not) as an ONNX graph whose initializers are views into one weights.bin; or
one subnet as a self-contained ONNX file (--standalone). `regraph_subnets` rebuilds a subnet
bundle's graphs in another operator form from the bundle's own weights.bin (the subnet half of
exporters/regraph.py)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from snrt.bundle import Bundle, BundleWriter, Manifest, PieceInfo, VariantInfo
from snrt.errors import SnrtError
from snrt.family.supernet import Supernet
from snrt.fileio import atomic_write_bytes
from snrt.progress import Progress
from snrt.variants.subnets import SUPERNET, SubnetSpace

from .onnx_export import onnx_export_record
from .onnx_graph import DEFAULT_OPS, WEIGHTS_FILE
from .subnet_graph import SUBNET_OPS, SubnetGraphBuilder

log = logging.getLogger(__name__)
GRAPHS = "graphs"


def _safe(s: str) -> str:
    return s.replace(">", "-").replace("@", "_").replace(":", "-")


def export_subnets(net: Supernet, space: SubnetSpace, writer: BundleWriter, *,
                   progress: bool = True, ops: str = DEFAULT_OPS,
                   graphs: dict[str, str] | None = None) -> Manifest:
    """Write every piece graph of `space` (operator form `ops`: SUBNET_OPS) and weights.bin;
    return the manifest (the listed variants are `space.listed`). `graphs`: listed variants
    that also get a whole graph (id -> path in the bundle); by default none do (a subnet runs
    as its route of pieces)."""
    graphs = graphs or {}
    t0 = time.monotonic()
    builder = SubnetGraphBuilder(net, space, ops=ops)
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
    for sid, rel in graphs.items():  # every tensor is in the store already: no new offsets
        model = builder.graph(space.get(sid).subnet.pieces(), sid,
                              doc=f"snrt subnet {sid} of supernet {net.name}")
        writer.path(rel).write_bytes(model.SerializeToString())
    with open(writer.path(f"{GRAPHS}/{WEIGHTS_FILE}"), "wb") as f:
        builder.store.write(f)
    for rel in [f"{GRAPHS}/{WEIGHTS_FILE}"] + [i.graph for i in infos] + list(graphs.values()):
        writer.add(rel)
    variants = [VariantInfo(index=v.index, cfg_id=v.index, graph=graphs.get(v.id),
                            accuracy=v.accuracy, **space.variant_record(v.id))
                for v in space.listed]
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
                      out: str | os.PathLike, *, ops: str = DEFAULT_OPS) -> Path:
    """One subnet as a single self-contained ONNX file (weights embedded, sliced and, for POA,
    scaled in the graph as in the bundle's pieces)."""
    s = space.get(sid).subnet
    model = SubnetGraphBuilder(net, space, inline=True, ops=ops).graph(
        s.pieces(), s.id, doc=f"snrt subnet {s.id} of supernet {net.name} (standalone)")
    data = model.SerializeToString()
    out = Path(out)
    atomic_write_bytes(out, data)
    return out


def supernet_from_bundle(bundle: Bundle) -> Supernet:
    """The supernet a subnet bundle stores (the tensors its pieces view, under timm key names;
    transposed ones undone, cls_token flat as stored), for rebuilding graphs from the bundle."""
    a = bundle.load_family().anchors[0]
    return Supernet(bundle.name, a.config, a.weights,
                    head_dim=bundle.manifest.family["space"]["head_dim"],
                    preprocess=bundle.preprocess, labels=bundle.labels, source=a.source)


def regraph_subnets(bundle: Bundle, writer: BundleWriter, ops: str, *,
                    progress: bool = False) -> Manifest:
    """Rebuild every piece graph of a subnet bundle (and any whole variant graph, at the path
    the bundle records) in form `ops` from the bundle's own weights.bin into `writer`; return
    the manifest, its listed variants as the bundle lists them (index, accuracy) with routes and
    costs recomputed (exporters.regraph checks those, weights.bin and the tensor table)."""
    if ops not in SUBNET_OPS:
        raise SnrtError(f"{bundle.path.name}: a subnet bundle's graphs take --ops "
                        f"{' or '.join(SUBNET_OPS)}, not '{ops}' (onnxruntime's contrib "
                        "Attention packs the q/k/v projections into one matrix, which the "
                        "subnets' row views of one stored copy cannot give)")
    if bundle.manifest.tasks:
        raise SnrtError(f"{bundle.path.name}: has tasks; regraph handles tasks on stitch "
                        "bundles only (tasks attach to an anchor's blocks)")
    old = bundle.manifest.variants
    space = bundle.variant_space()
    space.add_listed([v.id for v in old])
    m = export_subnets(supernet_from_bundle(bundle), space, writer, progress=progress, ops=ops,
                       graphs={v.id: v.graph for v in old if v.graph is not None})
    for new, v in zip(m.variants, old):
        new.index, new.cfg_id, new.accuracy = v.index, v.cfg_id, v.accuracy
    return m

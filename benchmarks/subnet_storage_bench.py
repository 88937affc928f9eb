"""Elastic subnets: bundle bytes vs one graph per subnet, and memory/latency with subnets ready.

UFO ViT-B supernet (embed 768, 12 blocks, 224 px, 1000 classes) with random weights, the
built-in UFO space, 200 sampled subnets listed; 1 thread. Rows:

- storage: the bundle (pieces + one weights.bin) vs naive one self-contained graph per listed
  subnet (sum of their weight bytes);
- RSS growth (fresh process per row) with N subnets run once (their pieces ready), and with
  every piece ready (9 covering subnets: all 12 x 9 block pieces), in three operating points
  (MODES: onnxruntime options of the runtime): default (each piece session loads its slices
  and packs them), fast (sessions' weights are OrtValues over one mmap of weights.bin, packed
  per session), shared (the same, no prepacking: one copy of the weights for every session);
- latency: a subnet's median through the runtime's piece chain vs the same subnet's standalone
  graph (snrt-export subnets --standalone) in a bare InferenceSession; switching to a subnet
  never run before whose pieces are ready, and its first frame vs its steady median.

    flock /tmp/snrt-timing.lock python benchmarks/subnet_storage_bench.py [--runs 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import CACHE, random_vit_state_dict, table

N_LISTED = 200
N_SWITCHES = 300  # never-run subnets switched to (pieces ready); p99 needs a few hundred


def build(cache: Path) -> tuple[Path, Path]:
    from exporters.subnet_export import export_subnets
    from snrt.bundle import BundleWriter
    from snrt.family.supernet import load_supernet
    from snrt.variants.subnets import SubnetSpace, builtin_table
    from snrt.weights_io import write_safetensors

    cache.mkdir(parents=True, exist_ok=True)
    w, out = cache / "ufo_vitb_random.safetensors", cache / "ufo_vitb_random.snrt"
    if not w.exists():
        write_safetensors(w, random_vit_state_dict(768, seed=0))
    if not (out / "manifest.json").exists():
        net = load_supernet(w)
        space = SubnetSpace(net.config, builtin_table("ufo", net.config))
        space.add_listed(space.sample(N_LISTED, seed=0))
        with BundleWriter(out) as wr:
            wr.commit(export_subnets(net, space, wr, progress=False))
    return w, out


CHILD = r"""
import gc, json, sys, time
import numpy as np, psutil
sys.path.insert(0, {root!r})
import snrt
from snrt.bundle import Bundle
proc = psutil.Process()
def rss():
    gc.collect(); return proc.memory_info().rss
b = Bundle.open({bundle!r}, verify="size")
space = b._space
ids = {ids!r}
x = np.zeros((1, 3, 224, 224), np.float32)
r0 = rss()
rt = snrt.Runtime(b, lazy=True, threads=1, **{opts!r})
t0 = time.perf_counter()
for sid in ids:
    rt.infer(x, variant=sid)
print(json.dumps({{"rss": rss() - r0, "pieces": rt.stats()["backend"]["sessions"],
                  "load_s": time.perf_counter() - t0}}))
"""


# onnxruntime backend options of the operating points
MODES = {"default": {"prepack": True, "share_weights": False},  # each session loads + packs
         "fast": {"prepack": True, "share_weights": True},  # shared mmap, packed per session
         "shared": {"prepack": False, "share_weights": True}}  # one copy for every session


def child_rss(bundle: Path, ids: list[str], opts: dict) -> dict:
    code = CHILD.format(root=str(Path(__file__).resolve().parents[1]), bundle=str(bundle),
                        ids=ids, opts=opts)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def covering(space) -> list[str]:
    """9 depth-12 subnets, each with one (heads, mlp) choice in every block: all pieces."""
    t = space.table
    return [space.subnet_id(depth=12, heads=[h] * 12, mlp=[m] * 12)
            for h in t["heads_codes"].values() for m in t["mlp_codes"].values()]


def latency(bundle: Path, weights: Path, runs: int, opts: dict) -> dict:
    import onnxruntime as ort

    import snrt
    from exporters.subnet_export import export_standalone
    from snrt.bundle import Bundle
    from snrt.family.supernet import load_supernet

    b = Bundle.open(bundle, verify="size")
    space = b._space
    sid = b.variants[0].id
    sa = CACHE / f"standalone_{sid}.onnx"
    if not sa.exists():
        export_standalone(load_supernet(weights), space, sid, sa)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    bare = ort.InferenceSession(str(sa), so, providers=["CPUExecutionProvider"])
    rt = snrt.Runtime(b, lazy=True, threads=1, **opts)
    for s in covering(space):  # every piece ready
        rt.infer(x, variant=s)
    for _ in range(2):
        bare.run(None, {"image": x})
        rt.infer(x, variant=sid)
    tb, tr = [], []
    for _ in range(runs):  # interleaved, so load drifts hit both alike
        t = time.perf_counter()
        bare.run(None, {"image": x})
        tb.append(time.perf_counter() - t)
        t = time.perf_counter()
        rt.infer(x, variant=sid)
        tr.append(time.perf_counter() - t)
    listed = {v.id for v in b.variants}
    fresh = [s for s in space.sample(2 * N_SWITCHES, seed=99) if s not in listed][:N_SWITCHES]
    sw, cpu = [], []  # wall and this thread's CPU time: their gap is time spent descheduled
    for s in fresh:
        t, c = time.perf_counter(), time.thread_time()
        rt.switch(s)
        sw.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c)
    first_s, steady = [], []
    for s in fresh[:3]:
        rt.switch(s)
        t = time.perf_counter()
        rt.infer(x)
        first_s.append(time.perf_counter() - t)
        ts = []
        for _ in range(max(3, runs // 3)):
            t = time.perf_counter()
            rt.infer(x)
            ts.append(time.perf_counter() - t)
        steady.append(float(np.median(ts)))
    return {"subnet": sid, "standalone ms": 1e3 * float(np.median(tb)),
            "pieces ms": 1e3 * float(np.median(tr)),
            "pieces / standalone": float(np.median(tr) / np.median(tb)),
            "switches": len(sw), "switch p50 ms": 1e3 * float(np.median(sw)),
            "switch p99 ms": 1e3 * float(np.percentile(sw, 99)),
            "switch p99 CPU ms": 1e3 * float(np.percentile(cpu, 99)),
            "first / steady": float(np.max(np.array(first_s) / np.array(steady)))}


def poa_storage_rows() -> list[dict]:
    """POA on ViT-B (built-in table: widths 384..768 step 64, depths 6..12): the bytes of the
    two ways to serve its D/W scale and two-axis slices. snrt stores one copy and slices/scales
    in the graph (onnxruntime folds the Slice and Mul when a piece loads); the alternative
    stores a pre-scaled sliced copy of qkv/proj/fc1/fc2 per width (computed, not built)."""
    from snrt.family import ViTConfig
    from snrt.variants.subnets import SubnetSpace, builtin_table

    c = ViTConfig(768, 12, 12, 3072, 16, 224, 3, 1000)
    space = SubnetSpace(c, builtin_table("poa", c))
    sd = random_vit_state_dict(768, seed=0)
    supernet = sum(a.nbytes for a in sd.values())
    blocks = {p.block for p in space.all_pieces() if p.kind == "block"}
    copies = sum(4 * len(blocks) * (3 * w * w + w * w + 2 * w * (w * c.mlp_hidden // 768))
                 for w in space.table["widths"] if w < c.embed_dim)
    return [{"POA ViT-B scale": "in-graph Slice + Mul (snrt)", "MB": supernet / 1e6,
             "x supernet": 1.0},
            {"POA ViT-B scale": "stored scaled copy per width", "MB": (supernet + copies) / 1e6,
             "x supernet": (supernet + copies) / supernet}]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--only-latency", action="store_true",
                    help="skip the storage and RSS rows (the bundle is still built if missing)")
    args = ap.parse_args()
    w, bundle = build(CACHE)
    from snrt.bundle import Bundle

    b = Bundle.open(bundle, verify="size")
    m = b.manifest
    supernet = sum(int(np.prod(t["shape"])) * 4 for t in m.tensors.values())
    total = sum(f["bytes"] for f in m.files.values())
    naive = sum(v.params * 4 for v in b.variants)
    if args.only_latency:
        lat = [dict(mode=m, **latency(bundle, w, args.runs, MODES[m])) for m in ("fast", "shared")]
        print(table(lat))
        return 0
    print(f"# UFO ViT-B random supernet: {supernet / 1e6:.1f} MB of weights, "
          f"{b._space.size():.3g} members, {len(b.variants)} listed, {len(m.pieces)} pieces")
    print(table([
        {"storage": "snrt bundle (pieces + one weights.bin)", "MB": total / 1e6,
         "x supernet": total / supernet},
        {"storage": f"naive: {len(b.variants)} standalone graphs", "MB": naive / 1e6,
         "x supernet": naive / supernet}]))
    print(table(poa_storage_rows()))
    space = b._space
    listed = [v.id for v in b.variants]
    rows = []
    for mode, opts in MODES.items():
        for label, ids in (("1 subnet", listed[:1]), ("10 subnets", listed[:10]),
                           ("every piece (9 covering subnets)", covering(space))):
            r = child_rss(bundle, ids, opts)
            rows.append({"ready": label, "mode": mode, "piece sessions": r["pieces"],
                         "RSS growth MB": r["rss"] / 1e6, "/ supernet bytes": r["rss"] / supernet,
                         "load s": r["load_s"]})
    print(table(rows))
    if not args.no_latency:
        lat = [dict(mode=m, **latency(bundle, w, args.runs, MODES[m])) for m in ("fast", "shared")]
        print(table(lat))
    return 0


if __name__ == "__main__":
    sys.exit(main())

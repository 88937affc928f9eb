"""Tasks on the default bundle: memory each task added brings, start-up, frame time vs the
backbone, with task pieces on shared sessions (share_tasks=True, the default) and without.

    flock /tmp/snrt-timing.lock python benchmarks/task_share_bench.py [--extra 2] [--rounds 5]
    python benchmarks/task_share_bench.py --no-time --baseline /tmp/old   # memory, before/after

(`--baseline DIR`: another checkout of snrt, e.g. `git archive COMMIT | tar -x -C DIR`, whose
memory rows are measured in the same run beside this checkout's.)

The bundle: a temporary copy of the shipped default bundle (uci-digits, faces: adapter r=8 on
every block of ti/s/b and a head per anchor, all 71 variants) plus `--extra` random tasks of the
same form (tests/task_files.py; their accuracy is meaningless, their cost is the same).
Memory: one fresh process per mode: Runtime(tasks=[]) on all 71 variants, then each task in
turn with rt.add_task(name) and one call on ti, s, b, ti>s@5:6; RSS/PSS added and sessions
added per task, against the task's tuner + head bytes (task_<name>.bin). Start-up: Runtime()
with every task vs tasks=[] (fresh process each). Frame time: one process, one Runtime per
(placement, mode) on ti, s, b, ti>s@5:6 with the shipped tasks (graphs: what `snrt-profile
--variants` of these four gets; pieces: what a Runtime on all 71 variants gets), all (variant,
head) calls alternating call by call; per round the p50 of `runs` calls each; printed: the min
p50 over rounds and the median over rounds of the per-round ratio task / the variant's own
head. Last, one block per anchor alone (plain, plain with its GELU in the
fusable form a shared task graph gets, the task piece as shipped, the shared graph), each run
through the session's C++ run (no Python feed checks): the adapter's own cost.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
VARIANTS = ["ti", "s", "b", "ti>s@5:6"]
MODES = {"shared (default)": {}, "one session per task piece": {"share_tasks": False}}

MEM_CHILD = r"""
import gc, json, os, sys, time, psutil, snrt
b, opts, names = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3].split(",")
trace = os.environ.get("SNRT_BENCH_TRACE") == "1"
if trace:
    import tracemalloc
    tracemalloc.start(1)
p = psutil.Process()
def task_pages():  # resident kB of the task files' mappings (the tensors paged in)
    kb, task = 0, False
    for line in open("/proc/self/smaps"):
        f = line.split()
        if len(f) >= 5 and "-" in f[0]:
            task = len(f) > 5 and os.path.basename(f[5]).startswith("task_")
        elif task and f[0] == "Rss:":
            kb += int(f[1])
    return kb * 1024
def mem():
    gc.collect(); m = p.memory_full_info()
    return m.rss, m.pss, task_pages(), tracemalloc.get_traced_memory()[0] if trace else 0
rt = snrt.Runtime(b, tasks=[], **opts)
img = sorted((snrt.default_bundle().parent / "samples").glob("*.png"))[0]
x = snrt.preprocess.to_batch(img, rt.bundle.preprocess)[0]
V = json.loads(sys.argv[4])
for v in V: rt.infer(x, variant=v)
rows, prev, n = [], mem(), rt._backend.session_count
for name in names:
    t = rt.add_task(name)
    for v in V: rt.infer(x, task=name, variant=v)
    m, k = mem(), rt._backend.session_count
    rows.append({"task": name, "rss": m[0] - prev[0], "pss": m[1] - prev[1], "sessions": k - n,
                 "pages": m[2] - prev[2], "python": m[3] - prev[3],
                 "weights": (rt.bundle.path / t.weights).stat().st_size})
    prev, n = m, k
print(json.dumps(rows))
"""


START_CHILD = r"""
import json, sys, time, snrt
b, opts, tasks = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
t0 = time.perf_counter(); rt = snrt.Runtime(b, tasks=tasks, **opts)
print(json.dumps({"s": time.perf_counter() - t0, "sessions": rt._backend.session_count}))
"""


def build(d: Path, extra: int) -> tuple[Path, list[str]]:
    from task_files import random_task, write_task

    import snrt
    from exporters.task_bundle import add_task
    from snrt.tuners import bundle_backbone_sha256

    src = snrt.Bundle.open(snrt.default_bundle(), verify="size")
    names = [t.name for t in src.tasks]
    out = d / "bench.snrt"
    sha = bundle_backbone_sha256(src)
    variants = [v.id for v in src.variants]
    for k in range(extra):
        name = f"extra{k + 1}"
        tensors, meta = random_task(sha, name=name, tuners=(("adapter", 8),),
                                    tuned={a: list(range(12)) for a in ("ti", "s", "b")},
                                    heads=("ti", "s", "b"), variants=variants,
                                    labels=tuple(f"c{j}" for j in range(3 + k)), scale=0.1,
                                    seed=k)
        f = write_task(d / f"{name}.safetensors", tensors, meta)
        add_task(src.path if k == 0 else out, f, out=out if k == 0 else None)
        names.append(name)
    if not extra:
        import shutil
        shutil.copytree(src.path, out)
    return out, names


def child(code: str, *args: str, root: Path = ROOT, trace: bool = False) -> object:
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    if trace:
        env["SNRT_BENCH_TRACE"] = "1"
    # cwd: `python -c` puts it first on sys.path, before PYTHONPATH
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         check=True, env=env, cwd=str(root))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--extra", type=int, default=10, help="random tasks added (default 10)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--no-time", action="store_true", help="memory and start-up only")
    ap.add_argument("--no-memory", action="store_true", help="frame times only")
    ap.add_argument("--baseline", type=Path, help="another snrt checkout: its memory rows too")
    a = ap.parse_args()
    import numpy as np

    import snrt

    with tempfile.TemporaryDirectory() as tmp:
        b, names = build(Path(tmp), 0 if a.no_memory else a.extra)
        print("| mode | task (in order added) | sessions added | tuner+head bytes | RSS added "
              "| RSS / bytes | PSS added | task file pages | Python heap (traced run) |")
        print("|---|---|---|---|---|---|---|---|---|")
        sums = []
        mem_modes = [(m, o, ROOT) for m, o in MODES.items()]
        if a.baseline is not None:
            mem_modes.insert(1, (f"shared, {a.baseline.name} (baseline)", {}, a.baseline))
        for mode, opts, root in [] if a.no_memory else mem_modes:
            args = (MEM_CHILD, str(b), json.dumps(opts), ",".join(names), json.dumps(VARIANTS))
            rows = child(*args, root=root)
            # the Python heap a task adds, exactly (tracemalloc), in a run of its own (tracing
            # costs memory itself, so its RSS is not the one above)
            traced = child(*args, root=root, trace=True)
            for r, tr in zip(rows, traced):
                r["python"] = tr["python"]
                print(f"| {mode} | {r['task']} | {r['sessions']} | {r['weights'] / 1e3:.0f} kB "
                      f"| {r['rss'] / 1e6:.3f} MB | {r['rss'] / r['weights']:.2f}x | "
                      f"{r['pss'] / 1e6:.3f} MB | {r['pages'] / r['weights']:.2f}x | "
                      f"{r['python'] / 1e3:.1f} kB ({r['python'] / r['weights']:.3f}x) |")
            sums.append((mode, rows[1:]))
        print("\nEvery further task (all but the first, which opens the form's sessions), summed: "
              "RSS added / tuner+head bytes; the task file's pages + the Python heap it adds "
              "(traced) / bytes. RSS is coarse per task (4 kB pages; freed heap the process "
              "already holds is reused), the sum over many tasks is not.\n")
        print("| mode | further tasks | RSS / bytes | (pages + Python heap) / bytes |")
        print("|---|---|---|---|")
        for mode, rs in sums:
            w = sum(r["weights"] for r in rs)
            print(f"| {mode} | {len(rs)} | {sum(r['rss'] for r in rs) / w:.3f}x | "
                  f"{sum(r['pages'] + r['python'] for r in rs) / w:.3f}x |")
        print("\n| mode | Runtime() start, no tasks | with the 2 shipped tasks | sessions |")
        print("|---|---|---|---|")
        shipped = str(snrt.default_bundle())
        for mode, opts in ({} if a.no_memory else MODES).items():
            t0 = child(START_CHILD, shipped, json.dumps(opts), "[]")
            t1 = child(START_CHILD, shipped, json.dumps(opts), "null")
            print(f"| {mode} | {t0['s']:.2f} s | {t1['s']:.2f} s | {t0['sessions']} -> "
                  f"{t1['sessions']} |")
        if a.no_time:
            return
        rts = {(pl, m): snrt.Runtime(shipped, variants=VARIANTS, placement=pl, **o)
               for pl in ("graphs", "pieces") for m, o in MODES.items()}
        img = sorted((snrt.default_bundle().parent / "samples").glob("*.png"))[0]
        first = next(iter(rts.values()))
        x = snrt.preprocess.to_batch(img, first.bundle.preprocess)[0]
        heads = [False] + [t.name for t in first.tasks]
        p50: dict = {}
        ratios: dict = {}
        for _ in range(a.rounds):
            for m, rt in rts.items():
                for v in VARIANTS:
                    # the heads alternate call by call: load from other processes hits all alike
                    ts: dict = {h: [] for h in heads}
                    for _ in range(a.runs):
                        for h in heads:
                            t0 = time.perf_counter()
                            rt.infer(x, task=h, variant=v)
                            ts[h].append(time.perf_counter() - t0)
                    med = {h: float(np.median(t)) for h, t in ts.items()}
                    for h in heads:
                        k = (m, v, h)
                        p50[k] = min(p50.get(k, float("inf")), med[h])
                        ratios.setdefault(k, []).append(med[h] / med[False])
        print("\n| placement | mode | variant | backbone p50 | " + " | ".join(heads[1:]) + " |")
        print("|---|---|---|---|" + "---|" * (len(heads) - 1))
        for m in rts:
            for v in VARIANTS:
                cells = [f"{p50[(m, v, h)] * 1e3:.3f} ms "
                         f"({float(np.median(ratios[(m, v, h)])):.2f}x)" for h in heads[1:]]
                print(f"| {m[0]} | {m[1]} | {v} | {p50[(m, v, False)] * 1e3:.3f} ms | "
                      + " | ".join(cells) + " |")
        for rt in rts.values():
            rt.close()
        switches(shipped, 200 * a.runs // 10)
        blocks(a.rounds, a.runs)


def switches(bundle: str, n: int) -> None:
    """rt.switch() to random (variant, task) pairs on all 71 variants, pieces placement: the
    switch's own time (SwitchEvent.switch_ms: lookup + reference swap; a task on shared pieces is
    bound per lookup, no session created), and sessions before/after."""
    import numpy as np

    import snrt

    rows = []
    for mode, opts in MODES.items():
        rt = snrt.Runtime(bundle, placement="pieces", **opts)
        ids = [v.id for v in rt.variants]
        names = [False] + [t.name for t in rt.tasks]
        rng = np.random.default_rng(0)
        k = rt._backend.session_count
        for _ in range(200):  # warm
            rt.switch(ids[int(rng.integers(len(ids)))], task=names[int(rng.integers(3))])
        ms = {"task": [], "backbone": []}
        for _ in range(n):
            t = names[int(rng.integers(len(names)))]
            ev_v = rt.switch(ids[int(rng.integers(len(ids)))], task=t)
            ms["task" if t else "backbone"].append(rt.switches()[-1].switch_ms)
            assert ev_v.id == rt.current.id
        rows.append((mode, {h: np.percentile(v, [50, 99]) for h, v in ms.items()},
                     max(max(v) for v in ms.values()), k, rt._backend.session_count))
        rt.close()
    print(f"\n| mode (pieces, 71 variants, 2 tasks) | switch to a task p50 / p99 | to the "
          f"backbone head p50 / p99 | max | sessions before -> after {n} switches |")
    print("|---|---|---|---|---|")
    for mode, q, mx, k0, k1 in rows:
        print(f"| {mode} | {q['task'][0]:.3f} / {q['task'][1]:.3f} ms | {q['backbone'][0]:.3f} "
              f"/ {q['backbone'][1]:.3f} ms | {mx:.3f} ms | {k0} -> {k1} |")


def blocks(rounds: int, runs: int) -> None:
    """One block 3 per anchor as its own session: the plain piece, the plain piece with its
    GELU in the fusable form (what a shared task graph gets: snrt.task_graphs), the shipped
    task piece as is, and the shared task graph fed the faces tuners."""
    import numpy as np
    import onnxruntime as ort

    import snrt
    from snrt.backends.ort import session_options
    from snrt.task_graphs import fuse_gelu_form, shared_graph

    g = snrt.default_bundle() / "graphs"

    def open_(buf):
        so = session_options(1)
        so.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                    str(g))
        return ort.InferenceSession(buf, so, providers=["CPUExecutionProvider"])

    mm = np.memmap(g / "task_faces.bin", dtype=np.uint8, mode="r")
    print("\n| block (own session) | plain | plain, GELU fusable | task as shipped | "
          "task shared | shared / plain | shared / plain fusable |")
    print("|---|---|---|---|---|---|---|")
    for a, D in (("ti", 24), ("s", 48), ("b", 96)):
        plain = (g / f"p_{a}.block3.onnx").read_bytes()
        tuned = (g / f"t_faces.{a}.block3.onnx").read_bytes()
        sg = shared_graph(tuned, "task_faces.bin")
        feeds = {f.input: np.ndarray(f.dims, np.float32, buffer=mm, offset=f.offset)
                 for f in sg.feeds}
        sess = {"plain": (open_(plain), {}), "fusable": (open_(fuse_gelu_form(plain)), {}),
                "shipped": (open_(tuned), {}), "shared": (open_(sg.model), feeds)}
        x = np.random.default_rng(0).random((1, 17, D), np.float32)
        best: dict = {}
        rat: dict = {}
        for _ in range(rounds):
            ts: dict = {k: [] for k in sess}
            for _ in range(runs * 3):
                for k, (s, f) in sess.items():
                    feed = {**f, "tokens_in": x}
                    t0 = time.perf_counter()  # the C++ run for all: the kernels' cost alone
                    s._sess.run(["tokens_out"], feed, None)
                    ts[k].append(time.perf_counter() - t0)
            med = {k: float(np.median(t)) for k, t in ts.items()}
            for k in sess:
                best[k] = min(best.get(k, float("inf")), med[k])
            for k in ("plain", "fusable"):
                rat.setdefault(k, []).append(med["shared"] / med[k])
        print(f"| {a}.block3 | " + " | ".join(f"{best[k] * 1e6:.1f} us" for k in sess) +
              f" | {float(np.median(rat['plain'])):.2f}x | "
              f"{float(np.median(rat['fusable'])):.2f}x |")


if __name__ == "__main__":
    main()

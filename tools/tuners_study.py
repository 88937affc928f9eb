"""The tuners study: every task x tuner kind x variant on the bundled backbone, with baselines.

    python tools/tuners_study.py                      # regenerates docs/tuners.md + task files
    python tools/tuners_study.py --tasks faces --out-dir /tmp/t --report-dir /tmp/t

One command, end to end, re-runnable when the backbone is retrained: per task (uci-digits,
faces) it trains with tools/train_tuners.py's functions
  - baselines on anchor `b`: linear probe (task head only) and full fine-tune (all weights);
  - each tuner kind alone on anchor `b` (adapter r=8, lora r=4, prefix l=4, prompt l=4);
  - a sweep on `b` within 5% of its parameters (LoRA r=8, 3x the learning rate, LoRA +
    adapter with twice the steps), the run to use chosen on the val split;
  - adapters on each anchor alone (ti, s, b), composed into one task and run on all 71 variants;
  - adapters on every anchor trained jointly, one of the 71 variants drawn per step (SN-Net's
    recipe): the task file that ships, `<out-dir>/<task>.safetensors`;
measures test top-1 (n, 95% Wilson interval) per variant, and writes `<report-dir>/tuners.md`.
Finished runs are cached in `<out-dir>/runs/` under a signature of backbone, data, settings and
seed, so an interrupted study resumes at the next run. Two tasks can train side by side
(`--jobs 2`, one thread each).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
for _p in (ROOT, TOOLS):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import train_tuners as tt

from snrt.errors import SnrtError
from snrt.fileio import atomic_write_bytes, atomic_write_json

log = logging.getLogger("snrt.tuners_study")

TASKS = ("uci-digits", "faces")
BASE_ANCHOR = "b"
KIND_SPECS = {"adapter": "adapter:r=8", "lora": "lora:r=4", "prefix": "prefix:l=4",
              "prompt": "prompt:l=4"}
JOINT_STEP_FACTOR = 2  # joint training spreads its steps over 3 anchors' tuners


@dataclass(frozen=True)
class RunSpec:
    key: str  # file name in runs/<task>/
    method: str
    tuners: tuple[str, ...]
    train_variants: str
    eval_variants: str  # "runnable" = every variant with a head, or ids
    steps_factor: int = 1
    init: str = ""  # start from this run's (or composition's) weights
    lr_scale: float = 1.0
    anchor_share: float = 0.0  # fraction of steps drawing an anchor route


def study_runs() -> list[RunSpec]:
    a = BASE_ANCHOR
    adapter = (KIND_SPECS["adapter"],)
    # the decisive runs first (an interrupted study resumes at the next one); the sweep
    # on b decides the accuracy target
    runs = [RunSpec("linear-probe_b", "linear-probe", (), a, a),
            RunSpec("full-finetune_b", "full-finetune", (), a, a),
            RunSpec("adapter_b", "tuners", adapter, a, "runnable")] + SWEEP_RUNS
    runs += [RunSpec("adapter_all", "tuners", adapter, "all", "runnable", JOINT_STEP_FACTOR)]
    runs += [RunSpec(f"adapter_{n}", "tuners", adapter, n, n) for n in ("ti", "s")]
    runs += [RunSpec(f"{k}_b", "tuners", (s,), a, a) for k, s in KIND_SPECS.items()
             if k != "adapter"]
    return runs


# Capacity and learning rate on b, within 5% of b's parameters: which one a task uses is chosen
# on the val split (tools/tuners_report.py), never on the test split.
SWEEP_RUNS = [
    RunSpec("lora-r8_b", "tuners", ("lora:r=8",), BASE_ANCHOR, BASE_ANCHOR),
    RunSpec("lora_lr3_b", "tuners", (KIND_SPECS["lora"],), BASE_ANCHOR, BASE_ANCHOR,
            lr_scale=3.0),
    RunSpec("lora-r8_lr3_b", "tuners", ("lora:r=8",), BASE_ANCHOR, BASE_ANCHOR, lr_scale=3.0),
    RunSpec("adapter_lr3_b", "tuners", (KIND_SPECS["adapter"],), BASE_ANCHOR, BASE_ANCHOR,
            lr_scale=3.0),
    RunSpec("lora-r8+adapter_b", "tuners", ("lora:r=8", KIND_SPECS["adapter"]), BASE_ANCHOR,
            BASE_ANCHOR, steps_factor=2),
]


JOINT_FROM_EACH = RunSpec("adapter_each_joint", "tuners", (KIND_SPECS["adapter"],), "all",
                          "runnable", init="adapter_each", lr_scale=1 / 3)
# the same with half the steps on an anchor route: (3) starves the anchors (ti is 1 of 71)
JOINT_ANCHORS = RunSpec("adapter_each_joint_anchors", "tuners", (KIND_SPECS["adapter"],), "all",
                        "runnable", init="adapter_each", lr_scale=1 / 3, anchor_share=0.5)
SHIPPED_RUN = JOINT_ANCHORS.key
SHIPPED_NEEDS = {f"adapter_{n}" for n in ("ti", "s", "b")}  # composed, then SHIPPED_RUN


def _signature(bb, data, settings, spec: RunSpec, seed: int) -> str:
    run = asdict(spec)
    # fields added later are left out at their defaults: older runs' signatures stay valid
    for k, default in (("init", ""), ("lr_scale", 1.0), ("anchor_share", 0.0)):
        if run[k] == default:
            del run[k]
    blob = json.dumps({"backbone": bb.sha256, "data": data.source["sha256"],
                       "split": {k: v.tolist() for k, v in data.split.items()},
                       "settings": asdict(settings), "run": run, "seed": seed,
                       "format": 1}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_task(task_name: str, bundle: str, out_dir: Path, seed: int, threads: int,
             progress: bool, command: str, smoke: bool = False,
             shipped_only: bool = False) -> dict:
    """All runs of one task (cached); returns {run key: result}. shipped_only: only the runs
    the shipped task file is made from (each anchor's adapters, then the joint run)."""
    import torch
    from task_datasets import load_task_data
    from tuners_torch import (
        TaskTuners,
        TunerSpec,
        read_task_file,
        route_supported,
        write_task_file,
    )

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    bb = tt.load_backbone(bundle)
    data = load_task_data(task_name)
    base = tt.TASK_SETTINGS[task_name]
    if smoke:  # a seconds-long pass through every stage (tests, CI)
        base = replace(base, steps=3, train_limit=32)
    tensors = tt.prepare(torch, data, bb.bundle.preprocess, base.train_limit,
                         test_limit=20 if smoke else None)
    runs_dir = out_dir / "runs" / task_name
    runs_dir.mkdir(parents=True, exist_ok=True)
    space, names = bb.space, bb.frozen.anchor_names
    results: dict[str, dict] = {}
    tasks: dict[str, object] = {}

    def eval_list(spec: RunSpec, task) -> list:
        if spec.eval_variants == "runnable":
            return [v for v in space.variants if names[v.route.anchors[-1]] in task.heads]
        return tt.resolve_variants(space, spec.eval_variants)

    def do_run(spec: RunSpec, init=None, extra_sig: str = "") -> None:
        settings = replace(base, steps=base.steps * spec.steps_factor,
                           lr=base.lr * spec.lr_scale)
        sig = _signature(bb, data, settings, spec, seed) + extra_sig
        res_path = runs_dir / f"{spec.key}.json"
        file_path = runs_dir / f"{spec.key}.safetensors"
        if res_path.is_file():
            old = json.loads(res_path.read_text())
            if old.get("signature") == sig and (spec.method == "full-finetune"
                                                or file_path.is_file()):
                log.info("%s %s: cached", task_name, spec.key)
                results[spec.key] = old
                if file_path.is_file():
                    tensors_, meta, _ = read_task_file(file_path)
                    t = TaskTuners.from_task_json(meta, bb.frozen.dims())
                    t.load_tensors(tensors_)
                    tasks[spec.key] = t.eval()
                return
        specs = [TunerSpec.parse(s) for s in spec.tuners]
        train_variants = tt.resolve_variants(space, spec.train_variants)
        t0 = time.process_time()
        res = tt.train(torch, bb, data, tensors, spec.method, specs, train_variants, settings,
                       seed, progress=progress, init=init, anchor_share=spec.anchor_share)
        train_cpu = time.process_time() - t0
        evs = eval_list(spec, res.task)
        t0 = time.process_time()
        test = tt.evaluate(torch, res.backbone, res.task, evs, tensors.x["test"],
                           tensors.y["test"], progress=progress, desc=f"{spec.key} test")
        val = tt.evaluate(torch, res.backbone, res.task, train_variants[:3], tensors.x["val"],
                          tensors.y["val"])
        eval_cpu = time.process_time() - t0
        result = {"signature": sig, "run": asdict(spec), "settings": asdict(settings),
                  "trained_params": res.trained_params, "history": res.history,
                  "train_seconds": round(res.seconds, 1), "train_cpu_seconds": round(train_cpu, 1),
                  "eval_cpu_seconds": round(eval_cpu, 1), "test": test, "val": val,
                  "threads": threads, "torch": torch.__version__}
        if spec.method != "full-finetune":
            runnable = [v.id for v in space.variants
                        if route_supported(res.task, v.route, names)]
            meta = res.task.task_json(data.name, data.labels, bb.family.name, bb.sha256,
                                      runnable)
            write_task_file(file_path, res.task, meta,
                            {"tool": "tools/tuners_study.py", "command": command,
                             "dataset": data.source, **{k: v for k, v in result.items()
                                                        if k != "history"}})
            tasks[spec.key] = res.task
        atomic_write_json(res_path, result)
        results[spec.key] = result
        log.info("%s %s: %s, %d params, train %.0f s CPU", task_name, spec.key,
                 ", ".join(f"{k} {v['top1']:.1f}%" for k, v in list(test.items())[:3]),
                 res.trained_params, train_cpu)

    for spec in study_runs():
        if not shipped_only or spec.key in SHIPPED_NEEDS:
            do_run(spec)

    # adapters trained on each anchor alone, composed: every variant runs with the tuners of
    # the anchors it passes through, trained without ever seeing a stitch
    parts = [tasks[f"adapter_{n}"] for n in names]
    comp_key = "adapter_each"
    sig = hashlib.sha256("".join(results[f"adapter_{n}"]["signature"] for n in names)
                         .encode()).hexdigest()[:16]
    res_path = runs_dir / f"{comp_key}.json"
    old = json.loads(res_path.read_text()) if res_path.is_file() else {}
    comp = TaskTuners(bb.frozen.dims(), parts[0].specs, len(data.labels),
                      {n: list(range(bb.frozen.depth)) for n in names}, list(names))
    merged = {}
    for p in parts:
        merged.update(p.export_tensors())
    comp.load_tensors(merged)
    comp.eval()
    if old.get("signature") == sig:
        results[comp_key] = old
    else:
        t0 = time.process_time()
        test = tt.evaluate(torch, bb, comp, list(space.variants), tensors.x["test"],
                           tensors.y["test"], progress=progress, desc="adapter_each test")
        results[comp_key] = {"signature": sig, "run": {"key": comp_key, "method": "tuners",
                                                       "tuners": [KIND_SPECS["adapter"]],
                                                       "train_variants": "ti | s | b alone"},
                             "trained_params": comp.param_count(), "test": test,
                             "eval_cpu_seconds": round(time.process_time() - t0, 1)}
        atomic_write_json(res_path, results[comp_key])

    # SN-Net's order: anchors first, then joint training of every variant from there
    if not shipped_only:
        do_run(JOINT_FROM_EACH, init=comp, extra_sig=sig)
    do_run(JOINT_ANCHORS, init=comp, extra_sig=sig)

    # the shipped task file: joint adapters (every variant can run it)
    ship = out_dir / f"{task_name}.safetensors"
    src = runs_dir / f"{SHIPPED_RUN}.safetensors"
    atomic_write_bytes(ship, src.read_bytes())
    return {"task": task_name, "data": _data_summary(data, tensors), "results": results,
            "backbone_sha256": bb.sha256, "family": bb.family.name, "file": str(ship)}


def _data_summary(data, tensors) -> dict:
    return {"labels": data.labels, "source": data.source,
            "sizes": {k: len(v) for k, v in tensors.y.items()}, "hflip": data.hflip}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="default", help="'default' or a bundle directory")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma list of task data names")
    p.add_argument("--out-dir", type=Path, default=ROOT / "build" / "tuners",
                   help="task files and the run cache (default: build/tuners)")
    p.add_argument("--report-dir", type=Path, default=ROOT / "docs",
                   help="where tuners.md goes (default: docs/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads per job")
    p.add_argument("--jobs", type=int, default=1, help="tasks trained side by side")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--shipped-only", action="store_true",
                   help="train only what the shipped task files need (each anchor's adapters, "
                        "then the joint run); writes the task files, not the report")
    p.add_argument("--smoke", action="store_true", help="3 steps, 32 train / 20 test images "
                   "per run: checks the pipeline, numbers meaningless")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    command = shlex.join(["python", "tools/tuners_study.py"] +
                         (argv if argv is not None else sys.argv[1:]))
    tasks = [t for t in args.tasks.split(",") if t]
    t0, c0 = time.monotonic(), time.process_time()
    try:
        if args.jobs > 1:
            with ProcessPoolExecutor(args.jobs) as ex:
                futs = [ex.submit(run_task, t, args.bundle, args.out_dir, args.seed, args.threads,
                                  not args.quiet, command, args.smoke, args.shipped_only)
                        for t in tasks]
                summaries = [f.result() for f in futs]
        else:
            summaries = [run_task(t, args.bundle, args.out_dir, args.seed, args.threads,
                                  not args.quiet, command, args.smoke, args.shipped_only)
                         for t in tasks]
    except SnrtError as e:
        log.error("error: %s", e)
        return 1
    wall = time.monotonic() - t0
    if args.shipped_only:
        print(json.dumps({"files": [s["file"] for s in summaries],
                          "wall_seconds": round(wall, 1)}, indent=1))
        return 0
    from tuners_report import write_report

    import snrt

    bundle = snrt.Bundle.open(snrt.default_bundle() if args.bundle == "default"
                              else args.bundle)
    md = write_report(summaries, bundle, args.report_dir / "tuners.md", command,
                      {"wall_seconds": round(wall, 1), "threads": args.threads,
                       "jobs": args.jobs, "main_cpu_seconds": round(time.process_time() - c0)})
    log.info("done in %.1f min: %s", wall / 60, md)
    print(json.dumps({"report": str(md), "files": [s["file"] for s in summaries],
                      "wall_seconds": round(wall, 1)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

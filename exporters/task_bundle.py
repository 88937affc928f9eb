"""`snrt-export task`: add a task (a tuner file from tools/train_tuners.py) to a bundle.

    snrt-export task BUNDLE --tuners faces.safetensors [--name faces] [--labels labels.txt]
                     [--out COPY.snrt] [--force] [--graphs all|anchors|ID,...]

The task file is read and checked against the bundle (snrt.tuners: shapes, backbone hash), its
pieces are exported (exporters.tuner_onnx: the frozen weights stay in graphs/weights.bin, the
task adds graphs/task_<name>.bin and its piece graphs), and the manifest gains a `tasks` record
listing them (hashed like every file). With --out, the bundle is copied first and the copy
gets the task; without it, the bundle is changed in place, which is refused for a bundle inside
the installed snrt package (the shipped default bundle is read-only: name a copy).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from snrt.bundle import MANIFEST, Bundle, record_file
from snrt.errors import SnrtError
from snrt.manifest import TaskInfo, write_manifest
from snrt.tuners import TASK_NAME, Task, read_task_file

from .tuner_onnx import export_task_onnx

log = logging.getLogger("snrt.export")
_PROVENANCE_DROP = ("history", "test", "val")  # per-step history stays in the task file


def _inside_package(path: Path) -> bool:
    import snrt

    pkg = Path(snrt.__file__).resolve().parent
    p = path.resolve()
    return p == pkg or pkg in p.parents


def _read_labels(path: str | os.PathLike, n: int) -> list[str]:
    p = Path(path)
    try:
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise SnrtError(f"--labels {p}: cannot be read ({e})") from None
    labels = [ln for ln in lines if ln]
    if len(labels) != n:
        raise SnrtError(f"--labels {p}: {len(labels)} non-empty lines, the task's head has {n} "
                        "classes (one label per line, in class order)")
    return labels


def task_record(task: Task, export, files: dict) -> TaskInfo:
    acc = {v: a for v in task.variants if (a := task.accuracy(v)) is not None}
    prov = {k: x for k, x in task.provenance.items() if k not in _PROVENANCE_DROP}
    return TaskInfo(
        name=task.name, labels=list(task.labels), backbone_sha256=task.backbone_sha256,
        tuners=[{"kind": s.kind, s.size_key: s.size} for s in task.tuners],
        heads=list(task.heads), variants=list(task.variants), weights=export.weights,
        pieces=[p.to_json() for p in export.pieces], params=task.num_params,
        bytes=sum(files[f]["bytes"] for f in export.files), accuracy=acc, provenance=prov,
        graphs=dict(export.graphs))


def add_task(bundle: str | os.PathLike, tuners: str | os.PathLike, *, name: str | None = None,
             labels: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
             force: bool = False, graphs: str | list[str] | None = None) -> Bundle:
    """Add the task in `tuners` to `bundle` (or to a copy at `out`); returns the bundle opened
    and verified after the change. graphs: also one whole graph per variant for these of the
    task's variants ("all", "anchors", or ids; default none: the runtime chains pieces)."""
    src = Path(bundle)
    if out is None and _inside_package(src):
        raise SnrtError(f"{src} is inside the installed snrt package (the shipped bundle is "
                        "read-only); write the task into a copy: --out MY.snrt")
    if out is not None:
        dest = Path(out)
        if dest.exists() and not force:
            raise SnrtError(f"--out {dest}: exists; pass --force to replace it")
        if _inside_package(dest):
            raise SnrtError(f"--out {dest}: inside the installed snrt package; choose a "
                            "directory of your own")
        Bundle.open(src, verify=True)  # copy only a bundle that verifies
        dest.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".staging",
                                      dir=dest.parent))
        try:
            work = stage / "bundle"
            shutil.copytree(src, work)
            _add(work, tuners, name, labels, force, graphs)
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(work, dest)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return Bundle.open(dest, verify=True)
    _add(src, tuners, name, labels, force, graphs)
    return Bundle.open(src, verify=True)


def _whole(spec, task: Task, bundle: Bundle) -> list[str]:
    if not spec:
        return []
    if spec == "all":
        return list(task.variants)
    if spec == "anchors":
        return [v for v in task.variants if bundle.variant(v).is_anchor]
    ids = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    bad = [v for v in ids if v not in task.variants]
    if bad:
        raise SnrtError(f"--graphs {bad}: not variants of task '{task.name}' (it runs on "
                        f"{task.variants[:6]}{'...' if len(task.variants) > 6 else ''})")
    return ids


def _add(path: Path, tuners, name, labels, force: bool, graphs=None) -> None:
    b = Bundle.open(path, verify=True)
    task = read_task_file(tuners, bundle=b)
    if name is not None:
        if not TASK_NAME.fullmatch(name):
            raise SnrtError(f"--name {name!r}: use 1-64 of A-Z a-z 0-9 _ - (it names files "
                            "and pieces)")
        task.name = name
    if labels is not None:
        task.labels = _read_labels(labels, len(task.labels))
    m = b.manifest
    old = next((t for t in m.tasks if t.name == task.name), None)
    if old is not None and not force:
        raise SnrtError(f"{path}: already has a task '{task.name}'; pass --force to replace "
                        "it, or --name another")
    if old is not None:  # its files are overwritten or dropped
        for rel in [old.weights] + [p["graph"] for p in old.pieces] + list(old.graphs.values()):
            m.files.pop(rel, None)
            (path / rel).unlink(missing_ok=True)
        m.tasks = [t for t in m.tasks if t.name != task.name]
    export = export_task_onnx(b, task, whole=_whole(graphs, task, b))
    for rel in export.files:
        record_file(m, path, rel)
    m.tasks.append(task_record(task, export, m.files))
    m.provenance.setdefault("tasks_added", []).append(
        {"name": task.name, "from": str(Path(tuners).name), "bytes": m.tasks[-1].bytes})
    write_manifest(path / MANIFEST, m)
    log.info("added task %s (%d pieces, %d bytes of its own)", task.name, len(export.pieces),
             m.tasks[-1].bytes)

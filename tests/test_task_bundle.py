"""snrt-export task: a task added to a copy of a bundle, recorded and hashed in the manifest's
`tasks` section; the shipped bundle is never written."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from task_files import backbone_bundle, random_task, write_task

import snrt
from exporters.cli import main
from exporters.task_bundle import add_task
from snrt.errors import BundleError, SnrtError
from snrt.manifest import manifest_digest
from snrt.tuners import bundle_backbone_sha256


@pytest.fixture(scope="module")
def sha():
    return bundle_backbone_sha256(snrt.Bundle.open(snrt.default_bundle(), verify="size"))


@pytest.fixture(scope="module")
def task_file(sha, tmp_path_factory):
    d = tmp_path_factory.mktemp("taskfile")
    tensors, meta = random_task(sha, tuners=(("adapter", 2), ("prefix", 2)),
                                tuned={"ti": [0, 3, 11]}, heads=("ti",),
                                variants=["ti"])
    return write_task(d / "faces.safetensors", tensors, meta,
                      {"test": {"ti": {"top1": 88.0, "n": 80}}, "history": [0] * 5,
                       "dataset": "x"})


def _digest(path):
    return hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest()


def test_task_into_a_copy(task_file, tmp_path, capsys):
    shipped = snrt.default_bundle()
    before = _digest(shipped)
    labels = tmp_path / "labels.txt"
    labels.write_text("face\nnot a face\nother\n")
    out = tmp_path / "mine.snrt"
    assert main(["task", str(shipped), "--tuners", str(task_file), "--name", "lfw",
                 "--labels", str(labels), "--out", str(out)]) == 0
    assert _digest(shipped) == before  # the shipped bundle is untouched
    b = snrt.Bundle.open(out, verify=True)
    *shipped_tasks, t = b.tasks  # the copy keeps the shipped bundle's own tasks
    assert [x.name for x in shipped_tasks] == [x.name for x in snrt.Bundle.open(shipped).tasks]
    assert t.name == "lfw" and t.labels == ["face", "not a face", "other"]
    assert [p["id"] for p in t.pieces] == ["ti.block0@lfw", "ti.block3@lfw", "ti.block11@lfw",
                                           "ti.head@lfw"]
    assert t.accuracy == {"ti": {"top1": 88.0, "n": 80}}
    assert "history" not in t.provenance and t.provenance["dataset"] == "x"
    for rel in [t.weights] + [p["graph"] for p in t.pieces]:
        assert rel in b.manifest.files
    # bytes a task adds: its own tensors (+ alignment) and small graphs; weights.bin unchanged
    assert b.manifest.files["graphs/weights.bin"] == \
        snrt.Bundle.open(shipped, verify="size").manifest.files["graphs/weights.bin"]
    assert t.bytes == sum(b.manifest.files[r]["bytes"] for r in
                          [t.weights] + [p["graph"] for p in t.pieces])
    assert b.task("lfw").chain(b.variant("ti").pieces, ["ti"])[-1] == "ti.head@lfw"
    with pytest.raises(snrt.UnknownVariantError, match="no task 'x'.*lfw"):
        b.task("x")
    assert main(["info", str(out)]) == 0
    assert "task lfw" in capsys.readouterr().out


def test_refusals(task_file, tmp_path, sha):
    with pytest.raises(SnrtError, match="inside the installed snrt package"):
        add_task(snrt.default_bundle(), task_file)  # refused: inside the package
    out = tmp_path / "b.snrt"
    add_task(backbone_bundle(), task_file, out=out)
    with pytest.raises(SnrtError, match="exists; pass --force"):
        add_task(backbone_bundle(), task_file, out=out)
    with pytest.raises(SnrtError, match="already has a task 'faces'"):
        add_task(out, task_file)
    add_task(out, task_file, force=True)  # replaced in place
    assert [t.name for t in snrt.Bundle.open(out).tasks] == ["faces"]
    bad = tmp_path / "labels.txt"
    bad.write_text("a\nb\n")
    with pytest.raises(SnrtError, match="2 non-empty lines, the task's head has 3"):
        add_task(out, task_file, name="x", labels=bad)
    with pytest.raises(SnrtError, match="--name"):
        add_task(out, task_file, name="no/slash")
    other = ("0" if sha[0] != "0" else "1") + sha[1:]
    tensors, meta = random_task(other)
    wrong = write_task(tmp_path / "wrong.safetensors", tensors, meta)
    assert main(["task", str(out), "--tuners", str(wrong), "--name", "w"]) == 1


def test_task_files_are_hashed_and_rules_checked(task_file, tmp_path):
    out = tmp_path / "c.snrt"
    add_task(backbone_bundle(), task_file, out=out)
    m = json.loads((out / "manifest.json").read_text())

    def write(d):
        d["digest"] = manifest_digest(d)
        (out / "manifest.json").write_text(json.dumps(d))

    saved = json.dumps(m)
    binf = out / "graphs" / "task_faces.bin"
    data = bytearray(binf.read_bytes())
    data[10] ^= 1
    binf.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="task_faces.bin: sha256 does not match"):
        snrt.Bundle.open(out, verify=True)
    data[10] ^= 1
    binf.write_bytes(bytes(data))
    for edit, match in [
        (lambda t: t["pieces"][0].update(base="ti.block7"), r"tasks\[0\]\.pieces\[0\]\.id"),
        (lambda t: t["pieces"][0].update(base="ti.block12", id="ti.block12@faces"),
         r"pieces\[0\]\.base.*not a block piece"),
        (lambda t: t.update(variants=["s"]), r"tasks\[0\]\.variants\[0\].*no head"),
        (lambda t: t.update(weights="graphs/other.bin"), r"tasks\[0\]\.weights.*not listed"),
        (lambda t: t["pieces"].pop(), r"no piece 'ti\.head@faces'"),
        (lambda t: t.update(extra=1), r"tasks\[0\]\.extra: unknown field"),
    ]:
        d = json.loads(saved)
        edit(d["tasks"][0])
        write(d)
        with pytest.raises(BundleError, match=match):
            snrt.Bundle.open(out, verify=False)
    write(json.loads(saved))
    snrt.Bundle.open(out, verify=True)


def test_a_bundle_without_tasks_keeps_its_manifest(tmp_path):
    """Re-writing a manifest without tasks writes no `tasks` field (same digest)."""
    from snrt.bundle import update_manifest

    dst = tmp_path / "d.snrt"
    shutil.copytree(backbone_bundle(), dst)
    before = snrt.Bundle.open(dst, verify="size").digest
    update_manifest(dst, lambda m, p: None)
    assert snrt.Bundle.open(dst, verify="size").digest == before

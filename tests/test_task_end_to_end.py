"""The product path end to end: a task file written by the training tool (tools/tuners_torch.py)
-> snrt-export task into a copy of the default bundle -> snrt.Runtime, on the real faces test
split (scikit-image's lfw_subset): the runtime's logits equal the training side's forward
(`forward_task`, what the tool measures accuracy with) for an anchor and a stitch."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from task_files import backbone_bundle

import snrt
from exporters.task_bundle import add_task

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT / "tools"), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_tool_file_through_export_and_runtime(tmp_path, one_thread):
    pytest.importorskip("skimage")
    import task_datasets
    import train_tuners as tt
    import tuners_torch as T

    bb = tt.load_backbone("default")
    torch.manual_seed(0)
    specs = [T.TunerSpec.parse(s) for s in ("adapter:r=4", "lora:r=2,alpha=4", "prefix:l=2",
                                            "prompt:l=2")]
    task = T.TaskTuners(bb.frozen.dims(), specs, 2, {"ti": list(range(12)),
                                                     "s": list(range(12))}, ["ti", "s"])
    task.init_heads_from(bb.frozen)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # as if trained: no zero-initialised branch left
        for p in task.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    variants = ["ti", "s", "ti>s@3:4"]
    meta = task.task_json("faces", ["face", "non-face"], bb.family.name, bb.sha256, variants)
    path = tmp_path / "faces.safetensors"
    T.write_task_file(path, task, meta, {"test": {"s": {"top1": 50.0, "n": 80}}})

    bundle = add_task(backbone_bundle(), path, out=tmp_path / "faces.snrt")
    data = task_datasets.load_faces()
    images, _ = data.part("test")
    x = task_datasets.to_inputs(images, bundle.preprocess)
    with snrt.Runtime(bundle, variants=variants, initial="s") as rt:
        assert rt.tasks[0].accuracy == {"s": {"top1": 50.0, "n": 80}}
        for vid in variants:
            got = rt.run(x, task="faces", variant=vid)
            assert (got.task, got.variant.id, got.labels) == ("faces", vid,
                                                              ["face", "non-face"])
            with torch.no_grad():
                want = T.forward_task(bb.frozen, task, torch.as_tensor(x),
                                      bb.space.get(vid).route).numpy()
            d = float(np.abs(got.logits - want).max())
            print(f"max |dlogit| tool forward vs runtime, {vid}, 80 faces: {d:.2e}")
            assert d <= 1e-4
            assert (got.logits.argmax(1) == want.argmax(1)).all()

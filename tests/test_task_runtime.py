"""Runtime with tasks: classify(x, task=...) against the independent torch reference of
test_tuner_export, results that name their task and variant, task switches that create no
session, and per-call task= from several threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from task_files import backbone_bundle, random_task, write_task
from tuner_reference import Reference

import snrt
from exporters.task_bundle import add_task
from snrt.preprocess import to_batch
from snrt.tuners import bundle_backbone_sha256, read_task_file

READY = ["ti", "s", "ti>s@5:6", "b"]
SAMPLES = sorted((snrt.default_bundle().parent / "samples").glob("*.png"))[:4]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("taskrt")
    shipped = snrt.Bundle.open(snrt.default_bundle(), verify="size")
    sha = bundle_backbone_sha256(shipped)
    files = {}
    for name, tuners, seed in (("faces", (("adapter", 4), ("lora", 2), ("prefix", 2),
                                          ("prompt", 2)), 1),
                               ("digits", (("adapter", 3),), 2)):
        tensors, meta = random_task(sha, name=name, tuners=tuners,
                                    tuned={"ti": [0, 2, 4, 5], "s": [6, 7, 9, 11]},
                                    heads=("ti", "s"), variants=["ti", "s", "ti>s@5:6"],
                                    scale=0.15, seed=seed)
        files[name] = write_task(d / f"{name}.safetensors", tensors, meta)
    out = d / "tasks.snrt"
    add_task(backbone_bundle(), files["faces"], out=out)
    add_task(out, files["digits"])
    bundle = snrt.Bundle.open(out)
    family = bundle.load_family()
    refs = {n: Reference(family, read_task_file(f, bundle=bundle)) for n, f in files.items()}
    return bundle, refs


@pytest.fixture(scope="module")
def rt(setup):
    r = snrt.Runtime(setup[0], variants=READY, initial="s")
    yield r
    r.close()


def _ref_logits(setup, task, vid, img):
    bundle, refs = setup
    batch, _ = to_batch(img, bundle.preprocess)
    return refs[task].route(bundle.variant(vid), batch)[0]


def test_classify_with_a_task_matches_the_reference(setup, rt):
    assert [t.name for t in rt.tasks] == ["faces", "digits"]
    worst = 0.0
    for img in SAMPLES:
        for task in ("faces", "digits"):
            for vid in ("s", "ti>s@5:6", "ti"):
                res = rt.run(img, task=task, variant=vid)
                assert (res.task, res.variant.id) == (task, vid)
                want = _ref_logits(setup, task, vid, img)
                worst = max(worst, float(np.abs(res.logits - want).max()))
    print(f"max |dlogit| runtime task chains vs torch reference: {worst:.2e}")
    assert worst <= 1e-4
    top = rt.classify(SAMPLES[0], k=3, task="faces")
    want = _ref_logits(setup, "faces", "s", SAMPLES[0])
    p = np.exp(want - want.max())
    p /= p.sum()
    assert [lab for lab, _ in top] == [["face", "other", "x"][i] for i in np.argsort(-p)]
    np.testing.assert_allclose([q for _, q in top], np.sort(p)[::-1], atol=1e-5)
    # without a task: the backbone's own head and labels
    plain = rt.run(SAMPLES[0])
    assert plain.task is None and plain.labels == setup[0].labels
    np.testing.assert_array_equal(plain.logits, rt.infer(SAMPLES[0], task=False))


def test_switching_task_creates_no_session(rt):
    n = rt._backend.session_count
    assert n == rt.stats()["backend"]["sessions"]
    rt.switch(task="faces")
    assert (rt.current.id, rt.current_task) == ("s", "faces")
    a = rt.run(SAMPLES[1])
    assert (a.task, a.variant.id) == ("faces", "s")
    rt.switch("ti>s@5:6")  # the task stays
    assert rt.current_task == "faces" and rt.run(SAMPLES[1]).task == "faces"
    rt.switch(task="digits")
    assert rt.run(SAMPLES[1]).task == "digits"
    for _ in range(50):
        rt.switch(task="faces")
        rt.switch(task=False)
    rt.switch("s", task=None)
    assert rt.current_task is None
    ev = rt.switches()[-1]
    assert (ev.from_task, ev.to_task, ev.to_id) == (None, None, "s")
    assert rt.switches()[-2].to_task is None and rt.switches()[-3].to_task == "faces"
    ms = sorted(e.switch_ms for e in rt.switches())
    print(f"task/variant switch p99 {ms[int(0.99 * (len(ms) - 1))]:.3f} ms over {len(ms)}")
    assert rt._backend.session_count == n  # everything was ready: no session created


def test_per_call_task_from_threads(rt):
    imgs = [to_batch(p, rt.bundle.preprocess)[0][0] for p in SAMPLES]
    pairs = [(t, v) for t in ("faces", "digits", False) for v in ("s", "ti>s@5:6")]
    want = {(i, t, v): rt.infer(imgs[i], task=t, variant=v)
            for i in range(len(imgs)) for t, v in pairs}
    errors, seen = [], []

    def work(seed):
        rng = np.random.default_rng(seed)
        for _ in range(30):
            i = int(rng.integers(len(imgs)))
            t, v = pairs[int(rng.integers(len(pairs)))]
            res = rt.run(imgs[i], task=t, variant=v)
            seen.append((res.task, res.variant.id))
            if (res.task, res.variant.id) != (t or None, v) or \
                    not np.array_equal(res.logits, want[(i, t, v)]):
                errors.append((i, t, v))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for th in threads:
        th.start()
    for _ in range(40):  # the active pair changes meanwhile; per-call pins ignore it
        rt.switch(task="digits")
        rt.switch(task=False)
    for th in threads:
        th.join()
    assert not errors and len(seen) == 120


def test_task_errors(rt, setup):
    with pytest.raises(snrt.SnrtError, match="unknown task 'cats'.*faces, digits"):
        rt.infer(SAMPLES[0], task="cats")
    with pytest.raises(snrt.SnrtError, match="not trained for variant 'b'"):
        rt.infer(SAMPLES[0], task="faces", variant="b")
    with pytest.raises(snrt.SnrtError, match="not trained for variant 'b'"):
        rt.switch("b", task="faces")
    assert rt.current_task is None or rt.current.id != "b"
    with pytest.raises(snrt.SnrtError, match="no TFLite fp32 files|cannot run on the tflite"):
        snrt.Runtime(setup[0], backend="tflite", tasks=["faces"])  # nothing exported as TFLite


def test_whole_graphs_with_a_task(setup, tmp_path):
    """snrt-export task --graphs: the graphs placement runs one session per (variant, task);
    same logits as the reference, and still no session created by switching."""
    _, refs = setup
    src = tmp_path / "faces.safetensors"
    sha = refs["faces"].task.backbone_sha256
    tensors, meta = random_task(sha, name="faces", tuners=(("adapter", 4), ("prompt", 2)),
                                tuned={"ti": [0, 2, 4, 5], "s": [6, 7, 9, 11]},
                                heads=("ti", "s"), variants=["ti", "s", "ti>s@5:6"],
                                scale=0.15, seed=7)
    write_task(src, tensors, meta)
    b = add_task(backbone_bundle(), src, out=tmp_path / "w.snrt", graphs="s,ti>s@5:6")
    (t,) = b.tasks
    assert sorted(t.graphs) == ["s", "ti>s@5:6"]
    assert b.task_graph_path("faces", "ti") is None
    ref = Reference(b.load_family(), read_task_file(src, bundle=b))
    with snrt.Runtime(b, variants=["ti", "s", "ti>s@5:6"], placement="graphs") as r:
        n = r._backend.session_count
        assert len(r._backend._task_whole) == 2  # ti runs as a chain of pieces
        for vid in ("s", "ti>s@5:6", "ti"):
            batch, _ = to_batch(SAMPLES[0], b.preprocess)
            got = r.infer(batch, task="faces", variant=vid)
            want = ref.route(b.variant(vid), batch)
            assert float(np.abs(got - want).max()) <= 1e-4
        for _ in range(10):
            r.switch("s", task="faces")
            r.switch("ti>s@5:6", task=False)
        assert r._backend.session_count == n
    with pytest.raises(snrt.SnrtError, match="not variants of task"):
        add_task(backbone_bundle(), src, out=tmp_path / "x.snrt", graphs="b")


def test_add_task_to_a_running_runtime(setup):
    """Runtime(tasks=[]) then add_task(): the task runs like one ready at start (same torch
    reference), creates only its own sessions (tuned runs and head; the frozen pieces are
    shared with the plain variants), and is safe while other threads run inference."""
    bundle, _ = setup
    with snrt.Runtime(bundle, variants=READY, initial="s", tasks=[]) as r:
        assert r.tasks == []
        with pytest.raises(snrt.SnrtError, match="add_task.*faces, digits"):
            r.infer(SAMPLES[0], task="faces")
        before = r._backend.session_count
        plain = r.infer(SAMPLES[0])
        errors = []
        stop = threading.Event()

        def work():
            while not stop.is_set():
                if not np.array_equal(r.infer(SAMPLES[0]), plain):
                    errors.append("plain logits changed")

        th = threading.Thread(target=work)
        th.start()
        try:
            t = r.add_task("faces")
        finally:
            stop.set()
            th.join()
        assert not errors and t.name == "faces" and [x.name for x in r.tasks] == ["faces"]
        assert r.add_task("faces") is t  # already ready: nothing loaded
        added = r._backend.session_count - before
        assert added == r._backend.task_session_count("faces")
        # the graphs placement (auto for this tiny family): one session per (variant, task)
        assert r._backend.placement == "graphs" and added == 3
        for vid in ("s", "ti>s@5:6", "ti"):
            got = r.run(SAMPLES[0], task="faces", variant=vid)
            assert (got.task, got.variant.id) == ("faces", vid)
            want = _ref_logits(setup, "faces", vid, SAMPLES[0])
            assert float(np.abs(got.logits - want).max()) <= 1e-4
        with pytest.raises(snrt.SnrtError, match="no task 'cats'"):
            r.add_task("cats")


@pytest.mark.parametrize("merge, sessions", [(True, 7), (False, 10)])
def test_task_runs_in_the_pieces_placement(setup, merge, sessions):
    """Pieces placement: the faces task tunes blocks 0,2,4,5 of ti and 6,7,9,11 of s and has
    a head on each. Merged, each run of consecutive task pieces is one session: s runs
    (6,7) (9) (11,head), ti (0) (2) (4,5) (head), and ti>s@5:6 reuses (4,5), (6,7), (9) and
    (11,head): 7 sessions. Unmerged, one per tuned block and head: 10. Same logits."""
    bundle, _ = setup
    with snrt.Runtime(bundle, variants=READY, initial="s", tasks=[], placement="pieces",
                      merge_tasks=merge) as r:
        before = r._backend.session_count
        r.add_task("faces")
        assert r._backend.session_count - before == sessions
        assert r._backend.task_session_count("faces") == sessions
        for vid in ("s", "ti>s@5:6", "ti"):
            got = r.infer(SAMPLES[1], task="faces", variant=vid)
            want = _ref_logits(setup, "faces", vid, SAMPLES[1])
            assert float(np.abs(got - want).max()) <= 1e-4

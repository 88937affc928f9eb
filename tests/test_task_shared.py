"""Task pieces on shared sessions (snrt.task_graphs, snrt.backends.ort_tasks): tasks of one form
share their sessions, every task still gives the independent torch reference's logits, and
tasks running on shared sessions from several threads get their own results."""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort
import pytest
from task_files import backbone_bundle, random_task, write_task
from tuner_reference import Reference

import snrt
from exporters.task_bundle import add_task
from snrt.errors import ModelFileError
from snrt.preprocess import to_batch
from snrt.task_graphs import fuse_gelu_form, shared_graph
from snrt.tuners import bundle_backbone_sha256, read_task_file

READY = ["ti", "s", "ti>s@5:6"]
TUNED = {"ti": [0, 2, 4, 5], "s": [6, 7, 9, 11]}
SAMPLES = sorted((snrt.default_bundle().parent / "samples").glob("*.png"))[:2]
# two tasks of one form (adapter + prefix, different values and label counts), one of another
TASKS = {"one": ((("adapter", 4), ("prefix", 2)), 3, 11),
         "two": ((("adapter", 4), ("prefix", 2)), 5, 12),
         "other": ((("lora", 2),), 3, 13)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("taskshared")
    sha = bundle_backbone_sha256(snrt.Bundle.open(snrt.default_bundle(), verify="size"))
    out = d / "shared.snrt"
    files = {}
    for k, (name, (tuners, n, seed)) in enumerate(TASKS.items()):
        tensors, meta = random_task(sha, name=name, tuners=tuners, tuned=TUNED,
                                    heads=("ti", "s"), variants=READY, scale=0.15, seed=seed,
                                    labels=tuple(f"c{j}" for j in range(n)))
        files[name] = write_task(d / f"{name}.safetensors", tensors, meta)
        add_task(backbone_bundle() if k == 0 else out, files[name],
                 out=out if k == 0 else None)
    bundle = snrt.Bundle.open(out)
    family = bundle.load_family()
    refs = {n: Reference(family, read_task_file(f, bundle=bundle)) for n, f in files.items()}
    return bundle, refs


def _want(setup, task, vid, img):
    bundle, refs = setup
    batch, _ = to_batch(img, bundle.preprocess)
    return refs[task].route(bundle.variant(vid), batch)[0]


def _check(setup, r, task):
    for img in SAMPLES:
        for vid in READY:
            got = r.run(img, task=task, variant=vid)
            assert (got.task, got.variant.id) == (task, vid)
            assert got.logits.shape == (TASKS[task][1],)
            assert float(np.abs(got.logits - _want(setup, task, vid, img)).max()) <= 1e-4


def test_pieces_placement_tasks_of_one_form_share_every_session(setup):
    """8 tuned blocks + 2 heads: the first task opens 10 sessions, a second of the same form
    none (heads of 3 and 5 classes share too), a task of another form its 8 blocks only."""
    bundle, _ = setup
    with snrt.Runtime(bundle, variants=READY, tasks=[], placement="pieces") as r:
        added = {}
        for name in TASKS:
            before = r._backend.session_count
            r.add_task(name)
            added[name] = r._backend.session_count - before
        assert added == {"one": 10, "two": 0, "other": 8}
        assert r._backend.task_session_count("two") == 0  # every session it uses is shared
        for name in TASKS:
            _check(setup, r, name)
        n = r._backend.session_count
        for _ in range(20):
            r.switch("s", task="one")
            r.switch("ti>s@5:6", task="two")
        assert r._backend.session_count == n
        # forgetting every variant releases the shared sessions with the last step using them
        shared = r._backend._shared
        for vid in READY[:-1]:
            r._backend.unload(bundle.variant(vid))
        assert len(shared.sessions) == 17  # ti>s@5:6 runs every tuned block, not the ti head
        r._backend.unload(bundle.variant(READY[-1]))
        assert not shared.sessions and not shared.steps


def test_a_task_adds_one_array_per_piece_over_its_file_not_state_per_variant(setup):
    """Piece by piece, a task added to a form already open brings one entry per piece it has
    (a tuned block: ONE array, a read-only view of task_<name>.bin, no copy), whatever the
    number of variants; the variants' chains are the form's, shared; nothing is kept per
    (variant, task)."""
    bundle, _ = setup
    t = bundle.task("two")
    mine = [p["id"] for p in t.pieces]
    blocks = [p["id"] for p in t.pieces if p["kind"] == "block"]
    states = {}
    for ready in (READY[:1], READY):
        with snrt.Runtime(bundle, variants=ready, tasks=["one"], placement="pieces") as r:
            be = r._backend
            chains = dict(be._form_chains)
            r.add_task("two")
            assert be._form_chains == chains  # the form's chains, one per variant, shared
            assert not [k for k in r._task_ex if k[1] == "two"]  # none per (variant, task)
            tf = be._shared.tasks["two"]
            assert tf.form == be._shared.tasks["one"].form
            assert sorted(tf.values) == sorted(p.split("@")[0] for p in mine)
            for pid in blocks:
                a = tf.values[pid.split("@")[0]]
                assert isinstance(a, np.ndarray) and a.ndim == 1 and not a.flags.writeable
                base = a
                while base.base is not None and not isinstance(base, np.memmap):
                    base = base.base
                assert isinstance(base, np.memmap) and str(base.filename).endswith("task_two.bin")
                assert np.shares_memory(a, base)  # a view of the mmapped file, no copy
            states[len(ready)] = (len(tf.values), sum(
                1 if isinstance(v, np.ndarray) else len(v) for v in tf.values.values()))
            for vid in ready:  # runs: bound per call, the torch reference's logits
                r.switch(vid, task="two")
                assert r.run(SAMPLES[0]).task == "two"
            if ready == READY:
                _check(setup, r, "two")
    # 8 tuned blocks (1 array each) + 2 heads (LayerNorm as 1 array, W, b): 14 arrays
    assert states[1] == states[len(READY)] == (10, 8 + 2 * 3)


def test_graphs_placement_one_chain_per_variant_for_every_task_of_a_form(setup):
    bundle, _ = setup
    with snrt.Runtime(bundle, variants=READY, tasks=["one"]) as r:
        assert r._backend.placement == "graphs"
        before = r._backend.session_count
        r.add_task("two")
        assert r._backend.session_count == before  # the chains "one" opened serve "two"
        r.add_task("other")
        assert r._backend.session_count == before + len(READY)
        for name in TASKS:
            _check(setup, r, name)


def test_old_mode_one_session_per_task_piece_still_matches(setup):
    bundle, _ = setup
    with snrt.Runtime(bundle, variants=READY, tasks=["one", "two"], placement="pieces",
                      share_tasks=False, merge_tasks=False) as r:
        assert r._backend.task_session_count("two") == 10
        _check(setup, r, "two")


def test_threads_on_shared_sessions_get_their_own_task(setup):
    """Two threads run tasks "one" and "two" (the same sessions, different tuners) at once:
    each always gets its own task's logits."""
    bundle, _ = setup
    with snrt.Runtime(bundle, variants=READY, tasks=["one", "two"], placement="pieces") as r:
        batch, _ = to_batch(SAMPLES[0], bundle.preprocess)
        want = {t: _want(setup, t, "ti>s@5:6", SAMPLES[0]) for t in ("one", "two")}
        errors = []

        def work(task):
            for _ in range(60):
                got = r.infer(batch, task=task, variant="ti>s@5:6")[0]
                if got.shape != want[task].shape or np.abs(got - want[task]).max() > 1e-4:
                    errors.append(task)

        ths = [threading.Thread(target=work, args=(t,)) for t in ("one", "two", "one")]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        assert not errors


def test_shared_graph_keys_inputs_and_errors(setup):
    bundle, _ = setup
    g = bundle.path / "graphs"
    sg = {t: shared_graph((g / f"t_{t}.s.block7.onnx").read_bytes(), f"task_{t}.bin",
                          flat=False) for t in TASKS}
    assert sg["one"].key == sg["two"].key != sg["other"].key
    assert sg["one"].model == sg["two"].model
    # every feed is a task tensor of the piece, in task_<name>.bin, at its stored shape
    ref = setup[1]["one"].task.block("s", 7)
    shapes = sorted(tuple(f.dims) for f in sg["one"].feeds)
    assert all(f.location == "task_one.bin" for f in sg["one"].feeds)
    # adapter down^T/up^T/biases; the prefix as key^T [1, H, d, L] and value [1, H, L, d]
    assert len(shapes) == 6 and (48, 4) in shapes and (4, 48) in shapes
    assert (1, 6, 8, 2) in shapes and (1, 6, 2, 8) in shapes
    assert ref["adapter.down.weight"].shape == (4, 48)
    # flat (the default): the block's 6 tensors lie back to back in the task file, so they are
    # one input spanning them, cut in the graph; still one graph for both tasks of the form
    flat = {t: shared_graph((g / f"t_{t}.s.block7.onnx").read_bytes(), f"task_{t}.bin")
            for t in TASKS}
    assert flat["one"].key == flat["two"].key != flat["other"].key
    for t in TASKS:
        (f,) = flat[t].feeds
        ends = [x.offset + 4 * int(np.prod(x.dims)) for x in sg[t].feeds]
        assert f.offset == min(x.offset for x in sg[t].feeds)
        assert f.dims == ((max(ends) - f.offset) // 4,)
    heads = [shared_graph((g / f"t_{t}.s.head.onnx").read_bytes(), f"task_{t}.bin")
             for t in ("one", "two")]
    assert heads[0].key == heads[1].key  # 3 and 5 classes: one session
    # the head's LayerNorm (2 x [48]) is one input; its class-sized W and b stay alone
    assert sorted(f.dims for f in heads[0].feeds) == [(3,), (48, 3), (96,)]
    with pytest.raises(ModelFileError, match="not a valid ONNX model"):
        shared_graph(b"\x08\x07\x12\xff\xff", "task_one.bin")


def test_gelu_form_rewrite_keeps_the_block_output(tmp_path):
    """The plain block of the decomposed form (Erf-GELU; the shipped bundle is in the standard
    form, Gelu-20, which the rewrite leaves alone) with its GELU as Div(x, sqrt 2): the same
    output (onnxruntime, fp32), and one Erf-GELU fewer kernel chain."""
    from exporters.regraph import regraph_bundle

    shipped = (snrt.default_bundle() / "graphs" / "p_b.block3.onnx").read_bytes()
    assert fuse_gelu_form(shipped) == shipped  # no Erf-GELU there
    regraph_bundle(snrt.default_bundle(), tmp_path / "dec.snrt", ops="decomposed")
    g = tmp_path / "dec.snrt" / "graphs"
    buf = (g / "p_b.block3.onnx").read_bytes()
    new = fuse_gelu_form(buf)
    assert new != buf and fuse_gelu_form(new) == new

    def run(model):
        so = ort.SessionOptions()
        so.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                    str(g))
        s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((2, 17, 96)).astype(np.float32)
        return s.run(None, {"tokens_in": x})[0]

    np.testing.assert_allclose(run(new), run(buf), rtol=0, atol=1e-5)

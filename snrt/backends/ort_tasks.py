"""Task pieces on shared sessions (onnxruntime backend): each task added brings only its arrays.

A task piece graph (a tuned block, a task head) run as its own session costs every task one
session per tuned block and head: for the default bundle's adapter tasks 39 sessions, +20 MB
per task against ~145 kB of tuner and head weights (benchmarks/task_bench.py). Here each piece
graph is rewritten by snrt.task_graphs.shared_graph (the task's tensors become graph inputs,
names canonical) and one session per distinct rewritten graph serves every task of that form
(same tuner kinds and shapes on that block; heads of any class count): its frozen weights are
loaded once and prepacked once (a fixed cost, paid by the first task of that form), and a task
brings its tensors as read-only views of its mmapped task_<name>.bin, fed on every run (no copy).

Piece by piece (the pieces placement, one session per task piece graph), a task's state is
O(pieces it touches), not O(variants x pieces): `SharedTaskSteps.prepare(task, ...)` rewrites
each of the task's pieces once and keeps, per piece, the task's arrays (`TaskFeeds.values`: one
flat view per tuned block, see snrt.task_graphs) and the task's *form* (which shared graph each
piece is). A variant's chain is built once per (variant, form) as a `FormChain` of plain steps
and `FormStep`s (one per shared session) and serves every task of that form; `TaskBound`
(chain + the task's feeds, made on each lookup, never stored) runs it for one task. No session
is created at switch time: the sessions are opened when the task is added.

Merged runs (the graphs placement, merge_tasks=True) keep one `TaskStep` per (run, task) and a
`TaskChainExecutor` per (variant, task): a merged run belongs to one variant's chain anyway.
Thread-safe: the feeds are read-only and each call builds its own feed dict.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from ..errors import BundleError
from ..task_graphs import shared_graph

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TaskStep:
    """A task piece: a shared session and the task's arrays it is fed with."""

    session: ort.InferenceSession
    input_name: str
    output_name: str
    feeds: dict[str, np.ndarray] = field(default_factory=dict)
    key: str = ""  # the shared graph's sha256 (which session)
    task: str = ""
    plan: tuple | None = None  # TaskChainExecutor's (run, outputs, input, feeds), made once


def _plan(step) -> tuple:
    """(run, outputs, input name, feeds or None) of a step, made once per step. A task step
    calls the session's C++ run (run(outputs, feeds, None)) directly: InferenceSession.run
    checks every feed name in Python first, ~6 us for a tuned block's 5 inputs (measured: 74 vs
    68 us per block of s, against 66 us for the plain block); the feeds are built here with the
    graph's own names."""
    task = isinstance(step, TaskStep)
    p = step.plan if task else getattr(step, "_plan", None)
    if p is not None:
        return p
    if task:
        inner = getattr(step.session, "_sess", None)
        run = inner.run if callable(getattr(inner, "run", None)) else step.session.run
        p = step.plan = (run, [step.output_name], step.input_name, step.feeds or {})
    else:  # a plain piece (snrt.backends.ort._Step)
        p = step._plan = (step.session.run, [step.output_name], step.input_name, None)
    return p


class TaskChainExecutor:
    """A variant with a task: a chain of plain steps and task steps (same interface as
    snrt.backends.ort.ChainExecutor). One per (variant, task): kept small (slots, tuples,
    one plan tuple per step shared by every executor that runs it)."""

    __slots__ = ("variant", "steps", "_plan")

    def __init__(self, variant, steps):
        self.variant = variant
        self.steps = tuple(steps)
        self._plan = tuple(_plan(s) for s in steps)

    def run(self, batch: np.ndarray) -> np.ndarray:
        h = batch
        for run, outs, name, feeds in self._plan:
            if feeds is None:
                h = run(outs, {name: h})[0]
            else:
                f = dict(feeds)
                f[name] = h
                h = run(outs, f, None)[0]
        return h


@dataclass(slots=True)
class FormStep:
    """A shared task piece session, for every task of its form: the task's arrays come from
    the task's `TaskFeeds` at `slot` on each run."""

    session: ort.InferenceSession
    input_name: str
    output_name: str
    key: str  # the shared graph's sha256
    feed_name: str | None  # the one task input (a flat block), or None: several (a dict)
    plan: tuple | None = None  # FormChain's plan entry, made once (shared by every chain)


@dataclass(slots=True)
class TaskFeeds:
    """A task's own state for running on shared sessions: per piece (slot = the frozen piece
    id it replaces, e.g. "b.block3") its arrays over the task file's mmap, and its form."""

    form: int  # tasks with equal forms run the same FormChains
    values: dict  # slot -> ndarray (one task input) or {input name: ndarray}


def _views(sg, mmap, path, where: str) -> dict[str, np.ndarray]:
    feeds = {}
    for f in sg.feeds:
        mm = mmap(path.parent / f.location)
        n = 4 * int(np.prod(f.dims, dtype=np.int64))
        if f.offset + n > len(mm):
            raise BundleError(f"{where}: a task tensor reads past the end of {f.location}; "
                              "re-export the task")
        # one read-only array over the task file's mmap (no copy, no intermediate view)
        feeds[sys.intern(f.input)] = np.ndarray(f.dims, np.float32, buffer=mm, offset=f.offset)
    return feeds


def _form_plan(step, slot: str | None) -> tuple:
    """(run, outputs, input name, the one task input or None, slot or None) of a step, made
    once per step: every chain through it shares the tuple (a chain is then one tuple of
    references per piece)."""
    if isinstance(step, FormStep):
        p = step.plan
        if p is None or p[4] != slot:
            inner = getattr(step.session, "_sess", None)  # the C++ run (see _plan)
            run = inner.run if callable(getattr(inner, "run", None)) else step.session.run
            p = (run, [step.output_name], step.input_name, step.feed_name, slot)
            if step.plan is None:
                step.plan = p
        return p
    p = getattr(step, "_form_plan", None)
    if p is None:  # a plain piece (snrt.backends.ort._Step)
        p = step._form_plan = (step.session.run, [step.output_name], step.input_name, None, None)
    return p


class FormChain:
    """A variant's chain for every task of one form: plain steps and FormSteps; run(batch,
    feeds) with a task's TaskFeeds.values."""

    __slots__ = ("variant", "steps", "_plan")

    def __init__(self, variant, steps, slots):
        self.variant = variant
        self.steps = tuple(steps)
        self._plan = tuple(_form_plan(st, slot) for st, slot in zip(steps, slots))

    def run(self, batch: np.ndarray, feeds: dict) -> np.ndarray:
        h = batch
        for run, outs, name, one, slot in self._plan:
            if slot is None:
                h = run(outs, {name: h})[0]
            elif one is not None:
                h = run(outs, {name: h, one: feeds[slot]}, None)[0]
            else:
                f = dict(feeds[slot])
                f[name] = h
                h = run(outs, f, None)[0]
        return h


class TaskBound:
    """A variant with a task: its form's chain and the task's feeds (made per lookup)."""

    __slots__ = ("chain", "feeds", "task")
    bound = True  # not to be cached per (variant, task) by the caller

    def __init__(self, chain: FormChain, feeds: TaskFeeds, task: str):
        self.chain, self.feeds, self.task = chain, feeds, task

    @property
    def variant(self):
        return self.chain.variant

    @property
    def steps(self):
        return self.chain.steps

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.chain.run(batch, self.feeds.values)


class SharedTaskSteps:
    """The shared sessions of task pieces, each task's feeds and form, and (merged runs) each
    task run's step over them."""

    def __init__(self, options, mmap):
        """options(): a fresh ort.SessionOptions for a shared session; mmap(path): the
        read-only uint8 memmap of a bundle data file (shared with the backend)."""
        self._options = options
        self._mmap = mmap
        self.sessions: dict[str, ort.InferenceSession] = {}  # shared graph sha256 -> session
        self.steps: dict[tuple[str, ...], TaskStep] = {}  # merged task runs -> their step
        self.forms: dict[str, FormStep] = {}  # shared graph sha256 -> its step
        self.tasks: dict[str, TaskFeeds] = {}  # task -> its feeds and form
        self.form_keys: list[dict[str, str]] = []  # form -> {slot: shared graph sha256}
        self._form_no: dict[tuple, int] = {}

    def prepare(self, task: str, pieces, location: str) -> TaskFeeds:
        """The task's feeds and form (made once): pieces = [(slot, piece graph path)] of every
        piece of the task. Opens no session."""
        tf = self.tasks.get(task)
        if tf is not None:
            return tf
        values, keys = {}, {}
        for slot, path in pieces:
            sg = shared_graph(path.read_bytes(), location, str(path))
            v = _views(sg, self._mmap, path, str(path))
            slot = sys.intern(slot)
            values[slot] = next(iter(v.values())) if len(v) == 1 else v
            keys[slot] = sg.key
        sig = tuple(sorted(keys.items()))
        form = self._form_no.get(sig)
        if form is None:
            form = self._form_no[sig] = len(self.form_keys)
            self.form_keys.append(keys)
        tf = self.tasks[task] = TaskFeeds(form, values)
        return tf

    def form_step(self, key: str, path, location: str) -> tuple[FormStep, bool]:
        """The shared step of graph `key` (path: a piece graph of that form, rewritten again to
        open the session the first time); True when this opened a new session."""
        st = self.forms.get(key)
        if st is not None:
            return st, False
        where = str(path)
        sg = shared_graph(path.read_bytes(), location, where)
        if sg.key != key:
            raise BundleError(f"{where}: its shared graph changed while the runtime ran; "
                              "reopen the bundle")
        sess = self.sessions.get(key)
        fresh = sess is None
        if fresh:
            sess = self.sessions[key] = self._open(sg, path, where)
        one = sys.intern(sg.feeds[0].input) if len(sg.feeds) == 1 else None
        st = self.forms[key] = FormStep(sess, sys.intern(sg.input), sys.intern(sg.output),
                                        sys.intern(key), one)
        return st, fresh

    def step(self, seg: tuple[str, ...], paths, location: str,
             task: str) -> tuple[TaskStep, bool]:
        """The step of the consecutive pieces `seg` of `task` (paths(): their graphs, chained
        into one model when several: snrt.onnx_compose; the task's tensors in `location`
        beside them); True when this opened a new session."""
        st = self.steps.get(seg)
        if st is not None:
            return st, False
        paths = paths()
        path = paths[0]
        where = str(path) if len(paths) == 1 else f"{path} .. {paths[-1].name}"
        if len(paths) == 1:
            buf = path.read_bytes()
        else:
            from ..onnx_compose import chain_models

            buf = chain_models([p.read_bytes() for p in paths], [str(p) for p in paths])
        sg = shared_graph(buf, location, where)
        feeds = _views(sg, self._mmap, path, where)
        sess = self.sessions.get(sg.key)
        fresh = sess is None
        if fresh:
            sess = self.sessions[sg.key] = self._open(sg, path, where)
        st = self.steps[seg] = TaskStep(sess, sys.intern(sg.input), sys.intern(sg.output),
                                        feeds, sys.intern(sg.key), task)
        return st, fresh

    def _open(self, sg, path, where: str) -> ort.InferenceSession:
        so = self._options()
        # the model is given as bytes: its frozen tensors' external data resolve from here
        so.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                    str(path.parent))
        try:
            return ort.InferenceSession(sg.model, so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises several types here
            raise BundleError(f"{where}: onnxruntime cannot load it as a shared task graph "
                              f"({type(e).__name__}: {str(e)[:200]}); re-export the task"
                              ) from None

    def own_sessions(self, task: str) -> int:
        """Open sessions only `task`'s pieces use."""
        users: dict[str, set[str]] = {}
        for st in self.steps.values():
            users.setdefault(st.key, set()).add(st.task)
        for name, tf in self.tasks.items():
            for k in self.form_keys[tf.form].values():
                if k in self.forms:
                    users.setdefault(k, set()).add(name)
        return sum(1 for ts in users.values() if ts == {task})

    def release(self, used_steps: set[int]) -> None:
        """Forget the steps not in `used_steps` (ids) and the sessions no step uses (a task's
        feeds stay: they are its own, kept while it is added)."""
        for pid in [p for p, s in self.steps.items() if id(s) not in used_steps]:
            del self.steps[pid]
        for k in [k for k, s in self.forms.items() if id(s) not in used_steps]:
            del self.forms[k]
        keys = {s.key for s in self.steps.values()} | set(self.forms)
        for k in [k for k in self.sessions if k not in keys]:
            del self.sessions[k]

    def clear(self) -> None:
        self.steps.clear()
        self.forms.clear()
        self.sessions.clear()
        self.tasks.clear()
        self.form_keys.clear()
        self._form_no.clear()


def warm(step, runs: int = 2, feeds=None) -> None:
    """Run a never-run step twice on zeros (its first runs page-fault arena and packed
    weights); feeds: a FormStep's task values (an array or a dict)."""
    shape = [1 if not isinstance(d, int) else d for d in step.session.get_inputs()[0].shape]
    if isinstance(step, FormStep):
        feeds = {step.feed_name: feeds} if step.feed_name is not None else dict(feeds)
    else:
        feeds = dict(getattr(step, "feeds", {}) or {})
    feeds[step.input_name] = np.zeros(shape, np.float32)
    for _ in range(runs):
        step.session.run([step.output_name], feeds)

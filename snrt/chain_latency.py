"""Latency of ANY elastic subnet: the sum of its pieces' measured latencies plus a GP correction.

A subnet runs as a chain of pieces (embedding, one piece per block, head; snrt.variants.subnets),
so, as nn-Meter predicts a model kernel by kernel, snrt measures every piece of the space once
(`snrt-profile B.snrt --pieces`: a few hundred sessions at most, against ~10^11 members) and
predicts a chain as

    latency(subnet) = sum of its pieces' latencies + g(sum, number of pieces)

where g is snrt.gp.GaussianProcessRegressor (a Bayesian linear part plus a GP) fitted on the
residuals of the subnets that were measured whole (`snrt-profile --variants/--sample`): the
per-call hop between sessions and what the sum misses (caches warm from the previous piece).
With 1 to MIN_MEASURED - 1 measured subnets the correction is one scale, the median of their
measured / sum (a chain runs 3-11% over its pieces' sum on the shipped elastic family: the hop
between sessions; the sum alone put 42% of held-out latencies within ±5%, the scale from 3
measured ones more, benchmarks/ufo_loop_bench.py); with none the prediction is the sum alone.
From MIN_MEASURED on, the scale or the GP, whichever predicts the measured subnets better held
out (k-fold on the measured ones only): a GP on 6 noisy timings can bend where a scale holds.

`snrt-profile B.snrt --pieces --sample N --rounds K` times every piece and the N subnets in the
same K shuffled round-robin rounds (`measure_together`): timed in separate passes, the load
on a shared machine shifted pieces and whole chains differently between the passes
(measured / sum of pieces 1.02-1.18 on quiet runs, 0.73-0.92 in one loaded run), which no
correction fitted on one pass can follow.

Piece latencies are kept in the lookup table's `bundles[<key>]["pieces"]["<backend>/<precision>/
<threads>"] = {piece id: {"p50_ms", "quiet_ms"}}` (the table's free-form bundle record, so the
controller, which reads entries only, never sees pieces as variants).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from .bundle import Bundle
from .errors import SnrtError
from .lookup_table import LookupTable, bundle_key

log = logging.getLogger(__name__)

MIN_MEASURED = 4


def config_key(backend: str, precision: str, threads: int) -> str:
    return f"{backend}/{precision}/{threads}"


def piece_latencies(table: LookupTable, key: str, backend: str = "onnxruntime",
                    precision: str = "fp32", threads: int = 1, stat: str = "quiet_ms"
                    ) -> dict[str, float]:
    rec = table.bundles.get(key, {}).get("pieces", {}).get(config_key(backend, precision,
                                                                      threads), {})
    return {pid: float(r[stat]) for pid, r in rec.items()}


STATS = {  # a piece's or a subnet's latency from its per-round bursts: (p50s, p10s) -> ms
    "quiet": lambda p50, p10: float(np.min(p10)),  # lowest burst p10 (snrt-profile's quiet_ms)
    "median_p10": lambda p50, p10: float(np.median(p10)),
    "median_p50": lambda p50, p10: float(np.median(p50)),
    "low_p10": lambda p50, p10: float(np.percentile(p10, 25)),
}


def round_stat(bursts: list[tuple[float, float]], stat: str = "quiet") -> float:
    """One latency (ms) from per-round (burst median, burst p10) pairs, by STATS[stat]."""
    a = np.asarray(bursts, dtype=np.float64)
    return STATS[stat](a[:, 0], a[:, 1])


def measure_together(bundle: Bundle, subnets: tuple[str, ...] | list[str] = (), *,
                     copies: int = 1, threads: int = 1, rounds: int = 20, burst_runs: int = 5,
                     timer: Callable[[], float] = time.perf_counter,
                     run_subnet: Callable[[str], None] | None = None, progress: bool = True
                     ) -> tuple[dict[str, list], dict[str, list[list]]]:
    """Every piece of the bundle's space and every subnet in `subnets` (whole, through the
    Runtime, `copies` times each as separate items), timed in the same `rounds` shuffled
    round-robin rounds in one process: each item gets one untimed run, then a burst of
    `burst_runs` timed runs, so pieces and whole chains see the same mix of quiet and busy
    stretches (drift between a pieces pass and a subnets pass was the larger error,
    benchmarks/ufo_loop_bench.py). Two copies of a subnet are two measurements in one run: how
    well they agree is the measurement's own repeatability. Returns ({piece id: [(burst p50,
    burst p10) per round]}, {subnet id: [[(p50, p10) per round] per copy]}) in ms."""
    from .backends.ort import open_session
    from .progress import Progress

    space = bundle.variant_space()
    pids = [p.id for p in space.all_pieces()] if hasattr(space, "all_pieces") else \
        [p.id for p in bundle.manifest.pieces]
    steps = {}
    rng = np.random.default_rng(0)
    for pid in pids:
        s = open_session(bundle.piece_path(pid), threads)
        info = bundle.piece(pid)
        shape = [1 if isinstance(d, str) else int(d) for d in info.input_shape]
        x = rng.standard_normal(shape).astype(np.float32)
        name, out = s.get_inputs()[0].name, s.get_outputs()[0].name
        for _ in range(2):
            s.run([out], {name: x})
        steps[pid] = (lambda s=s, name=name, out=out, x=x: s.run([out], {name: x}))
    rt = None
    if subnets and run_subnet is None:
        from .runtime import Runtime

        rt = Runtime(bundle, threads=threads, variants=list(dict.fromkeys(subnets)),
                     lazy=True, verify=False)
        shape = [1 if isinstance(d, str) else d for d in bundle.manifest.input["shape"]]
        xin = np.random.default_rng(0).standard_normal(shape).astype(np.float32)

        def run_subnet(vid):
            rt.run(xin, variant=vid)
    items = [("p", pid, 0) for pid in pids] + [("s", v, c) for v in dict.fromkeys(subnets)
                                               for c in range(copies)]
    for kind, vid, c in items:
        if kind == "s" and c == 0:
            for _ in range(2):
                run_subnet(vid)
    pieces: dict[str, list] = {p: [] for p in pids}
    whole: dict[str, list[list]] = {v: [[] for _ in range(copies)] for v in subnets}
    with Progress(rounds, "pieces and subnets", enabled=progress) as bar:
        for r in range(rounds):
            order = list(range(len(items)))
            np.random.default_rng([0x9C3E, r]).shuffle(order)
            for i in order:
                kind, key, c = items[i]
                call = steps[key] if kind == "p" else (lambda key=key: run_subnet(key))
                call()
                lat = []
                for _ in range(burst_runs):
                    t0 = timer()
                    call()
                    lat.append((timer() - t0) * 1e3)
                pair = (float(np.median(lat)), float(np.percentile(lat, 10)))
                (pieces[key] if kind == "p" else whole[key][c]).append(pair)
            bar.update()
    if rt is not None:
        rt.close()
    return pieces, whole


def measure_pieces(bundle: Bundle, *, threads: int = 1, rounds: int = 20, burst_runs: int = 5,
                   timer: Callable[[], float] = time.perf_counter, progress: bool = True
                   ) -> dict[str, dict]:
    """Every piece of the bundle's space, timed in `rounds` shuffled round-robin bursts in one
    process (the interleaved protocol of snrt.profile: drift hits every piece alike). Returns
    {piece id: {"p50_ms": lowest burst median, "quiet_ms": lowest burst p10}}."""
    pieces, _ = measure_together(bundle, threads=threads, rounds=rounds, burst_runs=burst_runs,
                                 timer=timer, progress=progress)
    return {pid: {"p50_ms": min(b[0] for b in bs), "quiet_ms": min(b[1] for b in bs)}
            for pid, bs in pieces.items()}


def store_pieces(table: LookupTable, bundle: Bundle, pieces: dict[str, dict], *,
                 backend: str = "onnxruntime", precision: str = "fp32", threads: int = 1
                 ) -> None:
    key = bundle_key(bundle)
    rec = table.bundles.setdefault(key, {"name": bundle.name, "variants": len(bundle.variants),
                                         "path": str(bundle.path)})
    rec.setdefault("pieces", {})[config_key(backend, precision, threads)] = {
        pid: {k: round(v, 6) for k, v in r.items()} for pid, r in pieces.items()}


class ChainLatencyModel:
    """Predict a subnet's latency from its pieces (module docstring). `piece_ms`: {piece id: ms};
    `pieces_of(id)`: the piece ids of a member (Bundle.variant(id).pieces)."""

    def __init__(self, piece_ms: dict[str, float], pieces_of: Callable[[str], list[str]]):
        if not piece_ms:
            raise SnrtError("no piece latencies: measure them with snrt-profile BUNDLE --pieces")
        self.piece_ms = dict(piece_ms)
        self.pieces_of = pieces_of
        self.gp = None
        self.scale, self.scale_sd, self.chosen = 1.0, float("nan"), "sum"
        self.trained_on = 0
        self.measured: dict[str, float] = {}

    def features(self, ids: list[str]) -> np.ndarray:
        rows = []
        for vid in ids:
            ps = self.pieces_of(vid)
            missing = [p for p in ps if p not in self.piece_ms]
            if missing:
                raise SnrtError(f"{vid}: no latency for pieces {missing[:3]}; measure them with "
                                "snrt-profile BUNDLE --pieces")
            rows.append([sum(self.piece_ms[p] for p in ps), len(ps)])
        return np.asarray(rows, dtype=np.float64)

    def fit(self, measured: dict[str, float]) -> ChainLatencyModel:
        """Fit the correction on {subnet id: measured ms} (module docstring): none without
        measured subnets, one scale below MIN_MEASURED, else the scale or the GP, whichever
        predicts the measured subnets better held out (k-fold, at most 10 folds, on the
        measured ones only)."""
        self.trained_on = len(measured)
        self.measured = dict(measured)
        self.scale, self.gp, self.scale_sd = 1.0, None, float("nan")
        self.chosen = "sum" if not measured else "scale"
        if not measured:
            return self
        ids = list(measured)
        X = self.features(ids)
        y = np.array([measured[i] for i in ids])
        self.scale = float(np.median(y / X[:, 0]))
        if len(ids) < MIN_MEASURED:
            return self
        folds = np.arange(len(ids)) % min(len(ids), 10)
        err = {"scale": [], "gp": []}
        for k in np.unique(folds):
            tr, te = folds != k, folds == k
            sc = float(np.median(y[tr] / X[tr, 0]))
            err["scale"] += list(X[te, 0] * sc / y[te] - 1)
            if tr.sum() >= MIN_MEASURED:
                gp = self._fit_gp(X[tr], y[tr])
                err["gp"] += list((X[te, 0] + gp.predict(X[te])[0]) / y[te] - 1)
            else:
                err["gp"] += [np.inf] * int(te.sum())
        score = {k: float(np.mean(np.abs(v))) for k, v in err.items()}
        self.held_out_error = score
        if score["gp"] < score["scale"]:
            self.chosen, self.gp = "gp", self._fit_gp(X, y)
        else:
            self.scale_sd = float(np.sqrt(np.mean(np.square(err["scale"]))))
        return self

    @staticmethod
    def _fit_gp(X: np.ndarray, y: np.ndarray):
        from .gp import GaussianProcessRegressor

        return GaussianProcessRegressor().fit(X, y - X[:, 0])

    def predict(self, ids: list[str], include_noise: bool = True
                ) -> tuple[np.ndarray, np.ndarray]:
        """(mean ms, 1-sigma ms) of `ids`; the sigma is nan below MIN_MEASURED measured."""
        X = self.features(ids)
        if self.gp is None:
            mean = X[:, 0] * self.scale
            return mean, mean * self.scale_sd
        corr, std = self.gp.predict(X, include_noise=include_noise)
        return X[:, 0] + corr, std


    def latency(self, ids: list[str]) -> np.ndarray:
        """What a lookup table holds for `ids` (ms): the measured latency of the subnets the
        model was fitted on, the prediction for the rest."""
        out = self.predict(ids)[0]
        return np.array([self.measured.get(v, m) for v, m in zip(ids, out)], dtype=float)


def model_from_table(table: LookupTable, bundle: Bundle, *, backend: str = "onnxruntime",
                     precision: str = "fp32", threads: int = 1, stat: str = "quiet_ms"
                     ) -> ChainLatencyModel:
    """The chain model of `bundle` from a table holding its pieces (and measured subnets)."""
    key = bundle_key(bundle)
    pieces = piece_latencies(table, key, backend, precision, threads, stat)
    m = ChainLatencyModel(pieces, lambda vid: bundle.variant(vid).pieces)
    measured = {}
    for e in table.select(key, backend, precision, threads, measured_only=True):
        v = getattr(e, stat) if getattr(e, stat) is not None else e.p50_ms
        measured[e.variant] = float(v)
    return m.fit(measured)

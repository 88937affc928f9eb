"""Search the predicted accuracy-latency Pareto front over a whole elastic space (UFO loop step 3).

The UFO ViT-B space has ~3·10^11 members, so nothing is enumerated: an evolutionary search
(NSGA-II's selection: non-dominated sorting, then crowding distance) over genomes of the
space's choices (POA: width, depth; UFO: depth and, per block position, heads and MLP ratio;
positions beyond the depth are carried but unused, so a later depth mutation can revive them),
with uniform crossover and per-gene mutation. Every member ever evaluated enters an archive, and
the result is the archive's non-dominated set under (higher predicted top-1, lower predicted
latency). Cost: population x generations predictions (default 64 x 60 = 3,840), each a
kernel row against the measured sample.

`write_front` puts the front into the device's lookup table, every entry marked: latency
`predicted` (pieces + GP, snrt.chain_latency) unless the member was profiled, accuracy in
`conditions.front` with `accuracy_status: "predicted"` and the search settings; `verify_front`
measures each front member's top-1 once (snrt.accuracy) and replaces the prediction
(`accuracy_status: "measured"`, n, 95% interval). `Controller.from_table` skips entries whose
accuracy is still predicted unless asked (`allow_predicted=True`): a predicted number never
reaches the user unchecked by default.

`refine_front` is what `--verify-front` runs: search, measure the front members not measured,
refit the accuracy predictor on everything measured, search again (measured members score
their measurement), until a search returns a front that is all measured, so a member that was
on the front only by its prediction is replaced by what the measurements show instead.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from .lookup_table import Entry, LookupTable, bundle_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchSettings:
    population: int = 64
    generations: int = 60
    mutation: float = 0.15  # per-gene probability
    seed: int = 0
    local_passes: int = 10  # Pareto local search rounds after the evolution (0: none)


# -- genomes -----------------------------------------------------------------------------------
def _choices(space) -> list[list]:
    """The values of each gene."""
    t = space.table
    if space.kind == "poa":
        return [list(t["widths"]), list(t["depths"])]
    heads = sorted(t["heads_codes"].values())
    mlps = sorted(t["mlp_codes"].values())
    return [sorted(t["depth_codes"].values())] + [heads, mlps] * t["max_depth"]


def genome_id(space, g: np.ndarray, choices: list[list]) -> str:
    vals = [choices[k][int(i)] for k, i in enumerate(g)]
    if space.kind == "poa":
        return space.subnet_id(width=vals[0], depth=vals[1])
    d = vals[0]
    return space.subnet_id(depth=d, heads=vals[1:1 + 2 * d:2], mlp=vals[2:2 + 2 * d:2])


def _genome_of(space, vid: str, choices: list[list]) -> np.ndarray:
    s = space.subnet(vid)
    if space.kind == "poa":
        return np.array([choices[0].index(s.width), choices[1].index(s.depth)])
    t = space.table
    g = [choices[0].index(s.depth)]
    for b in range(t["max_depth"]):
        if b < s.depth:
            ratio = s.hidden[b] / space.config.embed_dim
            m = min(range(len(choices[2])), key=lambda i: abs(choices[2][i] - ratio))
            g += [choices[1].index(s.heads[b]), m]
        else:
            g += [0, 0]
    return np.array(g)


# -- Pareto helpers ----------------------------------------------------------------------------
def pareto_mask(acc: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """True where no other point has latency <= and accuracy >= with one strict."""
    order = np.lexsort((-acc, lat))
    mask = np.zeros(len(acc), dtype=bool)
    best = -np.inf
    for i in order:
        if acc[i] > best:
            mask[i] = True
            best = acc[i]
    return mask


def _fronts(acc: np.ndarray, lat: np.ndarray) -> list[np.ndarray]:
    left = np.arange(len(acc))
    out = []
    while len(left):
        m = pareto_mask(acc[left], lat[left])
        out.append(left[m])
        left = left[~m]
    return out


def _crowding(acc: np.ndarray, lat: np.ndarray) -> np.ndarray:
    n = len(acc)
    d = np.zeros(n)
    for v in (acc, lat):
        o = np.argsort(v)
        d[o[0]] = d[o[-1]] = np.inf
        span = v[o[-1]] - v[o[0]] or 1.0
        d[o[1:-1]] += (v[o[2:]] - v[o[:-2]]) / span
    return d


def search_front(space, objectives: Callable[[list[str]], tuple[np.ndarray, np.ndarray]],
                 settings: SearchSettings = SearchSettings(), seed_ids: tuple[str, ...] = ()
                 ) -> tuple[list[str], dict[str, tuple[float, float]]]:
    """The non-dominated members found: (front ids sorted by latency, {id: (acc, lat)} of every
    member evaluated). `objectives(ids)` -> (predicted top-1, predicted latency ms)."""
    rng = np.random.default_rng(settings.seed)
    choices = _choices(space)
    sizes = np.array([len(c) for c in choices])
    seen: dict[str, tuple[float, float]] = {}

    def evaluate(genomes: list[np.ndarray]) -> list[str]:
        ids = [genome_id(space, g, choices) for g in genomes]
        new = [i for i in dict.fromkeys(ids) if i not in seen]
        if new:
            a, lt = objectives(new)
            seen.update({i: (float(x), float(y)) for i, x, y in zip(new, a, lt)})
        return ids

    pop = [_genome_of(space, v, choices) for v in (*space.extremes(), *seed_ids)]
    while len(pop) < settings.population:
        pop.append(rng.integers(0, sizes))
    ids = evaluate(pop)
    for _ in range(settings.generations):
        kids = []
        for _ in range(settings.population):
            a, b = rng.integers(0, len(pop), 2)
            child = np.where(rng.random(len(sizes)) < 0.5, pop[a], pop[b])
            flip = rng.random(len(sizes)) < settings.mutation
            child = np.where(flip, rng.integers(0, sizes), child)
            kids.append(child)
        kid_ids = evaluate(kids)
        allg = pop + kids
        alli = ids + kid_ids
        uniq: dict[str, np.ndarray] = {}
        for g, i in zip(allg, alli):
            uniq.setdefault(i, g)
        keys = list(uniq)
        acc = np.array([seen[k][0] for k in keys])
        lat = np.array([seen[k][1] for k in keys])
        keep: list[int] = []
        for f in _fronts(acc, lat):
            if len(keep) + len(f) <= settings.population:
                keep += f.tolist()
            else:
                cd = _crowding(acc[f], lat[f])
                keep += f[np.argsort(-cd)][:settings.population - len(keep)].tolist()
                break
        pop = [uniq[keys[k]] for k in keep]
        ids = [keys[k] for k in keep]
    genomes = dict(zip(ids, pop))
    groups = [(0,), (1,)] if space.kind == "poa" else \
        [(0,)] + [(1 + 2 * b, 2 + 2 * b) for b in range(space.table["max_depth"])]
    # Pareto local search: every single-gene neighbour of the archive's front, until the front
    # stops changing (evolution finds the region, this fills the gaps between its points)
    for _ in range(settings.local_passes):
        front = _archive_front(seen)
        nbrs = []
        for k in front:
            g = genomes.get(k)
            if g is None:
                g = genomes[k] = _genome_of(space, k, choices)
            for grp in groups:  # every other value of one choice (UFO: of one block)
                for vals in itertools.product(*(range(sizes[j]) for j in grp)):
                    n = g.copy()
                    n[list(grp)] = vals
                    if (n != g).any():
                        nbrs.append(n)
        for g, i in zip(nbrs, evaluate(nbrs)):
            genomes.setdefault(i, g)
        if _archive_front(seen) == front:
            break
    front = _archive_front(seen)
    return sorted(front, key=lambda k: seen[k][1]), seen


@dataclass
class RefinedFront:
    """What `refine_front` ends with: the front (ids by latency), every member's (top-1,
    latency) as the last search saw them, the top-1s measured (before and during the loop),
    the searches run, and whether every front member is measured (False: the round limit)."""
    front: list[str]
    seen: dict[str, tuple[float, float]]
    measured: dict[str, float]
    rounds: int
    complete: bool
    history: list[list[str]]  # the front of every search, in order


def refine_front(space, fit: Callable[[dict[str, float]], Callable],
                 measure: Callable[[str], float], measured: dict[str, float],
                 settings: SearchSettings = SearchSettings(), *, max_rounds: int = 5,
                 optimism: float = 0.0) -> RefinedFront:
    """Search, measure, refit, search again (`snrt-accuracy --front --verify-front`).

    `fit(measured)` -> objectives(ids) -> (predicted top-1, latency ms), the predictors
    refitted on {id: measured top-1}; `measure(id)` -> the member's measured top-1. Each round
    searches the front with the members already measured scoring their measured top-1 (and
    seeding the search), then measures the front members not yet measured. A member that was
    on the front only by its prediction and measures lower drops off the next front, which the
    refitted predictor also moves its neighbours on; the loop ends when a search returns a front
    whose members are all measured (`complete`), or after `max_rounds` searches: then the last
    front's members are measured too and the ones their measurements show dominated by another
    front member are dropped (`complete` False: a further search might still change it). Every
    member of the returned front is measured either way.

    `optimism` k > 0: when the objectives also return a 1-sigma of the top-1
    (`(top-1, latency, sigma)`), an unmeasured member scores top-1 + k sigma (an upper
    confidence bound, as in Pareto active learning, Zuluaga et al. 2013): a member the
    predictor under-rates by less than k sigma still reaches the front and gets measured, so
    at the end no unmeasured member beats the (measured) front even at its optimistic bound.
    With k = 0 a member predicted just below a measured one is never looked at (on the shipped
    elastic family: w80d10, predicted 92-93%, measured 94.4%; benchmarks/ufo_loop_bench.py)."""
    measured = dict(measured)
    history: list[list[str]] = []
    front: list[str] = []
    seen: dict[str, tuple[float, float]] = {}
    for r in range(1, max_rounds + 1):
        predict = fit(dict(measured))

        def objectives(ids, predict=predict):
            acc, lat, *sd = predict(ids)
            acc = np.asarray(acc, dtype=float)
            if sd and optimism:
                acc = acc + optimism * np.asarray(sd[0], dtype=float)
            acc = np.array([measured.get(v, a) for v, a in zip(ids, acc)], dtype=float)
            return acc, np.asarray(lat, dtype=float)

        seeds = tuple(v for v in measured if v not in space.extremes())
        front, seen = search_front(space, objectives, settings, seed_ids=seeds)
        history.append(front)
        todo = [v for v in front if v not in measured]
        log.info("front search %d: %d members, %d not measured", r, len(front), len(todo))
        if not todo:
            return RefinedFront(front, seen, measured, r, True, history)
        for v in todo:
            measured[v] = float(measure(v))
    for v in front:
        seen[v] = (measured[v], seen[v][1])
    acc = np.array([seen[v][0] for v in front])
    lat = np.array([seen[v][1] for v in front])
    front = [v for v, keep in zip(front, pareto_mask(acc, lat)) if keep]
    return RefinedFront(front, seen, measured, max_rounds, False, history)


def _archive_front(seen: dict[str, tuple[float, float]]) -> list[str]:
    keys = list(seen)
    acc = np.array([seen[k][0] for k in keys])
    lat = np.array([seen[k][1] for k in keys])
    return [keys[i] for i in np.flatnonzero(pareto_mask(acc, lat))]


# -- the lookup table --------------------------------------------------------------------------
def write_front(table: LookupTable, bundle, front: list[str], acc: dict[str, tuple[float, float]],
                lat: dict[str, tuple[float, float]], *, settings: SearchSettings,
                predictor: dict, backend: str = "onnxruntime", precision: str = "fp32",
                threads: int = 1) -> int:
    """Put the front into `table` (module docstring). `acc`/`lat`: {id: (mean, 1-sigma)}.
    Entries of this bundle that an earlier search wrote and that are not on this front are
    dropped. Returns the number of front entries written."""
    key = bundle_key(bundle)
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    table.entries = [e for e in table.entries
                     if not (e.bundle == key and "front" in (e.conditions or {})
                             and e.variant not in front)]
    prov = {"search": {"method": "NSGA-II selection over the space's choices",
                       **asdict(settings)}, "accuracy_model": predictor,
            "latency_model": "sum of measured pieces + GP correction (snrt.chain_latency)",
            "searched": stamp}
    for vid in front:
        a, sa = acc[vid]
        front_rec = {**prov, "accuracy_status": "predicted", "accuracy_uncertainty": float(sa)}
        old = table.get(key, vid, backend, precision, threads)
        if old is not None and not old.predicted and old.error is None:
            old.accuracy = float(a)
            old.conditions = {**old.conditions, "front": front_rec}
            continue
        v = bundle.variant(vid)
        m, s = lat[vid]
        table.put(Entry(bundle=key, variant=vid, cfg_id=v.cfg_id, backend=backend,
                        precision=precision, threads=threads, p50_ms=float(m), mean_ms=float(m),
                        quiet_ms=float(m), flops=v.flops, params=v.params, accuracy=float(a),
                        predicted=True,
                        uncertainty_ms=None if not np.isfinite(s) else float(s),
                        timestamp=stamp, conditions={"front": front_rec}))
    return len(front)


def front_entries(table: LookupTable, key: str, backend: str = "onnxruntime",
                  precision: str = "fp32", threads: int = 1) -> list[Entry]:
    return [e for e in table.select(key, backend, precision, threads)
            if "front" in (e.conditions or {})]


def verify_front(table: LookupTable, bundle, measure_one: Callable[[str], dict], *,
                 backend: str = "onnxruntime", precision: str = "fp32", threads: int = 1
                 ) -> int:
    """Measure the top-1 of every front entry whose accuracy is still predicted
    (`measure_one(id)` -> a snrt.accuracy `measured` record) and replace the prediction.
    Returns how many were measured."""
    n = 0
    for e in front_entries(table, bundle_key(bundle), backend, precision, threads):
        f = e.conditions["front"]
        if f.get("accuracy_status") == "measured":
            continue
        rec = measure_one(e.variant)
        f.update({"accuracy_status": "measured", "predicted_accuracy": e.accuracy,
                  "n": rec["n"], "ci95": rec["ci95"]})
        e.accuracy = float(rec["top1"])
        n += 1
    return n

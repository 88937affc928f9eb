"""UFO accuracy-ranking benchmark (issue 6): Kendall tau per task of predicted subnet ranks.

    python -m benchmarks.ufo_rank_bench [--data PATH] [--splits 20] [--save TAUS.json]
        [--compare-with OLD.json]

Data: ../shared/reference/ufo/CCF_UFO_train.json (500 ViT-B supernet subnets ranked on 8 tasks).
Rows, all fitted on the same training rows and scored on the same held-out rows:
- GP-NAS: PaddleSlim GPNAS(2,2) fast mode (`snrt.predict.GPNASBaseline`) on the baseline's
  arch encoding and raw ranks; README figures: 0.776 on first-400/last-100, ~0.769 over random
  splits.
- linear: `SubnetRankPredictor` restricted to its linear kernel (additive one-hot model on
  normal scores, noise chosen by leave-one-out) - an ablation.
- snrt GP: `SubnetRankPredictor` with its default grid on the one-hot encoding (linear +
  squared-exponential mix, lengthscale and noise chosen per task by leave-one-out CV on the
  400 training rows only) - the previous snrt method, kept as an ablation.
- snrt ens: `SubnetRankEnsemble` (the current method): mean of the snrt GP, the same GP on the
  GP-NAS encoding and `MultiTaskLinearGP` (all 8 tasks at once, learned task covariance) on
  the GP-NAS encoding. Each member chooses its settings on the training rows only; the
  composition was chosen on random splits with seeds 100..119, never on the seeds reported.
Splits: first 400 / last 100 in file order, then `--splits` random 400/100 splits
(numpy default_rng(seed).permutation(500), seeds 0..splits-1), reported as mean +- std over
splits (std of the per-split value). Wall time is the total fit + predict time of each method; the
whole run takes about 2 minutes on one core of a shared 2-core machine.

`--save` writes every tau (method x split x task) to a JSON file; `--compare-with` reads such a
file from an earlier run (another commit, other numerics) and prints the old and new average tau
per method side by side with the largest per-task difference. benchmarks/ufo_rank_numpy.json is
the run of the hand-written numerics (Kendall tau, ranks, normal ppf, L-BFGS) that scipy
replaced.

BLAS runs single-threaded unless OMP_NUM_THREADS / OPENBLAS_NUM_THREADS say otherwise: the
matrices are 400 x 400, and on a shared 2-core machine multi-threaded BLAS made the run 10x
slower in wall time.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy is imported

import argparse
import json
import time
from pathlib import Path

import numpy as np

from snrt.predict import (
    GPNASBaseline,
    MultiTaskLinearGP,
    SubnetRankEnsemble,
    SubnetRankPredictor,
    kendall_tau,
)
from snrt.subnets import encode_gpnas, encode_onehot, read_ufo_ranks

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "ufo" / \
    "CCF_UFO_train.json"


def fit_gpnas(G: np.ndarray, R: np.ndarray, tr: np.ndarray, te: np.ndarray) -> np.ndarray:
    return np.column_stack([GPNASBaseline().fit(G[tr], R[tr, t]).predict(G[te])
                            for t in range(R.shape[1])])


def fit_linear(X: np.ndarray, R: np.ndarray, tr: np.ndarray, te: np.ndarray) -> np.ndarray:
    return SubnetRankPredictor(linear_weights=(1.0,)).fit(X[tr], R[tr]).predict(X[te])


def fit_snrt(X: np.ndarray, R: np.ndarray, tr: np.ndarray, te: np.ndarray) -> np.ndarray:
    return SubnetRankPredictor().fit(X[tr], R[tr]).predict(X[te])


def fit_ensemble(A: np.ndarray, R: np.ndarray, tr: np.ndarray, te: np.ndarray) -> np.ndarray:
    return SubnetRankEnsemble().fit(A[tr], R[tr]).predict(A[te])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--splits", type=int, default=20)
    ap.add_argument("--save", type=Path, metavar="TAUS.json",
                    help="write every tau (method x split x task) to this file")
    ap.add_argument("--compare-with", type=Path, metavar="OLD.json",
                    help="a --save file of an earlier run: print old vs new tau side by side")
    args = ap.parse_args(argv)
    old = _load_taus(args.compare_with) if args.compare_with else None

    data = read_ufo_ranks(args.data)
    R = data.ranks
    n = len(R)
    onehot = encode_onehot(data.subnets)
    features = {"GP-NAS": encode_gpnas(data.subnets), "linear": onehot, "snrt GP": onehot,
                "snrt ens": np.asarray(data.archs)}
    methods = {"GP-NAS": fit_gpnas, "linear": fit_linear, "snrt GP": fit_snrt,
               "snrt ens": fit_ensemble}
    splits = [("first", np.arange(400), np.arange(400, n))]
    for seed in range(args.splits):
        perm = np.random.default_rng(seed).permutation(n)
        splits.append((f"seed{seed}", perm[:400], perm[400:]))

    taus = {m: [] for m in methods}  # per split: per-task tau
    seconds = dict.fromkeys(methods, 0.0)
    checks: list[tuple[np.ndarray, np.ndarray]] = []
    for _name, tr, te in splits:
        for m, fit in methods.items():
            t0 = time.perf_counter()
            P = fit(features[m], R, tr, te)
            seconds[m] += time.perf_counter() - t0
            taus[m].append([kendall_tau(P[:, t], R[te, t]) for t in range(R.shape[1])])
            checks.append((P, R[te]))

    tasks = list(data.tasks)
    split_names = [name for name, _, _ in splits]
    if args.save:
        args.save.write_text(json.dumps({"tasks": tasks, "splits": split_names, "taus": taus},
                                        indent=1) + "\n")
    print(f"UFO CCF 2022 ranking, {n} subnets, {len(tasks)} tasks; Kendall tau-b on the 100 "
          "held-out subnets\n")
    header = ["method", "split", *tasks, "average", "wall s"]
    rows = []
    for m in methods:
        first = np.array(taus[m][0])
        rows.append([m, "first400/last100", *(f"{v:.3f}" for v in first), f"{first.mean():.3f}",
                     ""])
    for m in methods:
        rnd = np.array(taus[m][1:])
        if not len(rnd):
            continue
        avg = rnd.mean(1)
        rows.append([m, f"{len(rnd)} random", *(f"{a:.3f}±{s:.3f}" for a, s in
                                                zip(rnd.mean(0), rnd.std(0))),
                     f"{avg.mean():.3f}±{avg.std():.3f}", f"{seconds[m]:.1f}"])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")
    print(f"\nwall s = fit + predict of all {len(splits)} splits x {len(tasks)} tasks "
          "(first split included)")

    if len(splits) > 1:
        avg = {m: np.array(taus[m][1:]).mean(1) for m in methods}
        for a, b in (("snrt ens", "GP-NAS"), ("snrt ens", "snrt GP")):
            gain = avg[a] - avg[b]
            print(f"{a} - {b}, average tau per random split: mean {gain.mean():+.4f}, "
                  f"min {gain.min():+.4f}, max {gain.max():+.4f}, "
                  f"better on {(gain > 0).sum()} of {len(gain)}")

    chosen = SubnetRankPredictor().fit(features["snrt GP"][:400], R[:400]).selected_
    print("\nsnrt GP settings chosen by leave-one-out on the first 400 "
          "(best of the 5 averaged: rho = linear weight, ell, noise ratio, LOO mse):")
    for t, sel in zip(tasks, chosen):
        s = sel[0]
        ell = "-" if s.linear_weight == 1 else f"{s.lengthscale:g}"  # unused by a linear kernel
        print(f"  {t:11s} rho={s.linear_weight:<4g} ell={ell:<4s} "
              f"noise={s.noise_ratio:.4f} loo_mse={s.loo_mse:.3f}")
    icm = MultiTaskLinearGP().fit(features["GP-NAS"][:400], R[:400])
    B = icm.task_covariance_
    corr = B / np.sqrt(np.outer(np.diag(B), np.diag(B)))
    print("\nMultiTaskLinearGP on the first 400: task correlation of the signal (from B) and "
          "signal share B_tt / (B_tt + noise_t)")
    print("  " + " " * 11 + " ".join(f"{t[:6]:>6s}" for t in tasks))
    for t, row in zip(tasks, corr):
        print(f"  {t:11s}" + " ".join(f"{v:6.2f}" for v in row))
    print(f"  {'share':11s}" + " ".join(
        f"{v:6.2f}" for v in np.diag(B) / (np.diag(B) + icm.noise_var_)))

    if old is not None:
        _print_comparison(old, taus, split_names, tasks, args.compare_with)

    try:
        from scipy.stats import kendalltau as scipy_tau
    except ImportError:
        print("\n(scipy not installed: Kendall tau cross-check skipped)")
        return
    worst = 0.0
    for P, Rt in checks:
        for t in range(Rt.shape[1]):
            ours, ref = kendall_tau(P[:, t], Rt[:, t]), scipy_tau(P[:, t], Rt[:, t])[0]
            worst = max(worst, abs(ours - ref))
    print(f"\nKendall tau cross-check against scipy.stats.kendalltau over {len(checks) * 8} "
          f"values: max |difference| = {worst:.1e}")


def _load_taus(path: Path) -> dict:
    try:
        saved = json.loads(path.read_text())
        saved["taus"] = {m: np.asarray(v, dtype=float) for m, v in saved["taus"].items()}
        return saved
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--compare-with {path}: not a file written by --save ({e})") from None


def _print_comparison(old: dict, taus: dict, split_names: list[str], tasks: list[str],
                      path: Path) -> None:
    """Old vs new tau per method on the splits both runs have (first split and random ones
    reported apart, as in the table)."""
    common = [s for s in split_names if s in old["splits"]]
    if old["tasks"] != tasks or not common:
        raise SystemExit(f"--compare-with {path}: other tasks or no split in common")
    print(f"\nold ({path.name}) vs new, tau on the {len(common)} splits both runs have:")
    header = ["method", "split", "old average", "new average", "new - old",
              "max |per-task diff|"]
    rows = []
    for m, new in taus.items():
        if m not in old["taus"]:
            continue
        a = old["taus"][m][[old["splits"].index(s) for s in common]]
        b = np.asarray(new)[[split_names.index(s) for s in common]]
        for label, sel in (("first400/last100", [0]), (f"{len(common) - 1} random",
                                                       slice(1, None))):
            if not len(a[sel]):
                continue
            oa, na = a[sel].mean(1).mean(), b[sel].mean(1).mean()
            rows.append([m, label, f"{oa:.4f}", f"{na:.4f}", f"{na - oa:+.4f}",
                         f"{np.abs(a[sel] - b[sel]).max():.4f}"])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")


if __name__ == "__main__":
    main()

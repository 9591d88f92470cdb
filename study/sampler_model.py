#!/usr/bin/env python
"""Why the planted proof fails or holds: the sampler's equilibrium, from measured rewards.

The planted study (``planted.py``) costs minutes of CPU per run; this costs seconds. It fits,
on the *uniform* arm's windows (where the draws are independent of the model), how the
reward over ``--reward_objectives mlm`` depends on what was drawn:

    r_w = sum_j alpha_j c_{w,j} + e_w,      e_w ~ N(0, sigma^2)

with c_{w,j} the number of draws of objective j in window w (K draws in all) and r_w MLM's
relative validation-loss drop over the window (Eq. 3 for one objective). Then it runs the
project's own :class:`~mometas_utils.samplers.MometasSampler` (meta length K, meta step size
beta, entropy temperature lambda, the default reward settings) against this synthetic
environment, many times, and reports what the planted proof measures: the average weight of
shuffled_mlm over the second half and the fraction of runs where it is below 0.10.

It answers which knob moves the outcome (K, beta, lambda, the number of updates) without
running the encoder. It prints the measured ``robust_mlm`` (lambda 3) and ``robust_mlm_lambda1``
arms beside the simulation, measured as ``planted.py`` measures them: where the simulated weight
at the study's setting does not match the measured one, the conclusions do not carry over.

    python study/sampler_model.py            # reads study/results/planted/uniform_seed*.json
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch

from common import RESULTS_DIR, read_json, write_json
from mometas_utils.samplers import build_sampler
from planted import OBJECTIVES, PLANTED, weight_between


def fit_windows(rows_per_run: list[list[dict]]) -> dict:
    """Least squares of MLM's relative drop on the window's draw counts (no intercept: counts sum to K)."""
    X, y = [], []
    for rows in rows_per_run:
        for before, after in zip(rows, rows[1:]):
            b, a = before["val_loss"]["mlm"], after["val_loss"]["mlm"]
            X.append([after["counts"][n] for n in OBJECTIVES])
            y.append((b - a) / b)
    X, y = np.asarray(X, float), np.asarray(y, float)
    alpha, *_ = np.linalg.lstsq(X, y, rcond=None)
    residual = y - X @ alpha
    sigma = float(residual.std(ddof=len(OBJECTIVES)))
    corr = float(np.corrcoef(X[:, OBJECTIVES.index(PLANTED)], y)[0, 1])
    return {"alpha": dict(zip(OBJECTIVES, alpha.tolist())), "sigma": sigma, "windows": len(y),
            "corr_planted_draws_reward": corr}


def simulate(fit: dict, *, meta_length: int, updates: int, meta_step_size: float, entropy_lambda: float,
             runs: int, seed: int) -> dict:
    """Second-half average p(shuffled_mlm) of ``runs`` sampler runs in the fitted environment."""
    alpha = np.array([fit["alpha"][n] for n in OBJECTIVES])
    rng = np.random.default_rng(seed)
    second_half = []
    for run in range(runs):
        sampler = build_sampler(
            "mometas", OBJECTIVES, meta_length=meta_length, meta_step_size=meta_step_size,
            entropy_lambda=entropy_lambda, reward_objectives=["mlm"], seed=seed * 100_003 + run,
        )
        loss = 5.0
        losses = {n: 1.0 for n in OBJECTIVES}
        sampler.update({**losses, "mlm": loss})
        trace = []
        for _ in range(updates):
            for _ in range(meta_length):
                sampler.sample()
            counts = np.bincount(sampler.rollout, minlength=len(OBJECTIVES))
            drop = float(counts @ alpha + fit["sigma"] * rng.standard_normal())
            loss = loss * (1.0 - drop)
            sampler.update({**losses, "mlm": loss})
            trace.append(sampler.probabilities[PLANTED])
        second_half.append(statistics.fmean(trace[updates // 2:]))
    return {"meta_length": meta_length, "updates": updates, "meta_step_size": meta_step_size,
            "entropy_lambda": entropy_lambda, "runs": runs,
            "second_half_mean": statistics.fmean(second_half), "second_half_std": statistics.stdev(second_half),
            "fraction_below_0.10": sum(p < 0.10 for p in second_half) / runs,
            "chance_4_of_5": _at_least(4, 5, sum(p < 0.10 for p in second_half) / runs)}


def _at_least(k: int, n: int, q: float) -> float:
    from math import comb
    return sum(comb(n, i) * q**i * (1 - q) ** (n - i) for i in range(k, n + 1))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=200, help="Simulated sampler runs per setting (at least 2).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default=str(RESULTS_DIR / "planted"), help="Folder of planted.py's per-run results.")
    p.add_argument("--output", default=str(RESULTS_DIR / "sampler_model.json"))
    args = p.parse_args(argv)
    if args.runs < 2:
        p.error(f"--runs: expected at least 2 (a standard deviation needs two runs), got {args.runs}")
    torch.set_num_threads(1)
    folder = Path(args.results)
    uniform = [read_json(path)["rows"] for path in sorted(folder.glob("uniform_seed*.json"))]
    if not uniform:
        raise SystemExit(f"error: no uniform runs in {folder}; run study/planted.py --arms uniform first")
    fit = fit_windows(uniform)
    print(f"fit on {fit['windows']} uniform windows: per-draw effect on MLM's relative drop "
          + ", ".join(f"{n} {a:+.2e}" for n, a in fit["alpha"].items())
          + f"; residual std {fit['sigma']:.2e}; corr(planted draws, reward) {fit['corr_planted_draws_reward']:+.2f}")
    # The real arms at the base setting (K = 8, 50 updates, beta = 0.1), by their lambda.
    real_arms = {"robust_mlm": 3.0, "robust_mlm_lambda1": 1.0}
    measured = {}
    for arm in real_arms:
        for path in sorted(folder.glob(f"{arm}_seed*.json")):
            rows = read_json(path)["rows"]
            end = rows[-1]["step"]
            measured.setdefault(arm, {})[path.stem] = weight_between(rows, PLANTED, end / 2, end)
    base = dict(meta_length=8, updates=50, meta_step_size=0.1, entropy_lambda=3.0)
    settings = [base]
    settings += [{**base, "entropy_lambda": v} for v in (2.0, 1.0, 0.0)]
    settings += [{**base, "meta_step_size": v} for v in (0.3, 1.0)]
    settings += [{**base, "updates": v} for v in (100, 200)]
    settings += [{**base, "meta_length": 16}, {**base, "meta_length": 25}, {**base, "meta_length": 100}]
    settings += [{**base, "meta_length": 16, "entropy_lambda": 1.0}]
    results = []
    print(f"{'K':>4} {'updates':>7} {'beta':>5} {'lambda':>6} {'2nd-half p':>14} {'P(p<0.10)':>9} {'P(4 of 5)':>9}")
    for setting in settings:
        r = simulate(fit, runs=args.runs, seed=args.seed, **setting)
        results.append(r)
        print(f"{r['meta_length']:>4} {r['updates']:>7} {r['meta_step_size']:>5} {r['entropy_lambda']:>6} "
              f"{r['second_half_mean']:.3f} ± {r['second_half_std']:.3f} {r['fraction_below_0.10']:>9.2f} "
              f"{r['chance_4_of_5']:>9.2f}")
    for arm, runs in measured.items():
        values = list(runs.values())
        print(f"measured {arm} (lambda {real_arms[arm]:g}), second-half p per seed: "
              + ", ".join(f"{v:.3f}" for v in values)
              + f"; mean {statistics.fmean(values):.3f}; below 0.10 in {sum(v < 0.10 for v in values)} of {len(values)}")
    write_json(Path(args.output), {"fit": fit, "measured": measured, "settings": results})


if __name__ == "__main__":
    main()

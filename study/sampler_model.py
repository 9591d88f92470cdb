#!/usr/bin/env python
"""The power analysis of the planted benchmark: how many sampler updates does a meta length K need?

A planted run costs 10 to 25 minutes of CPU; this model costs seconds. It describes, step by step,
how each objective's draws move MLM's validation loss, fits that description on the measured
windows of the planted benchmark (``study/results/benchmark/``), and then runs the project's own
:class:`~mometas_utils.samplers.MometasSampler` (the README's recipe: ``--reward_objectives mlm``,
default reward settings) against it, many times, for each K and number of updates.

The model. A step s on objective j moves MLM's log validation loss by ``-a_j u_s``, where u_s is
the step's learning rate over the peak rate: a draw matters as much as the step it takes. Part of
that move lasts and part recovers as later steps train MLM again:

    L(t) = -sum_{s <= t} a_{T_s} u_s g(t - s),      g(d) = c + (1 - c) exp(-d / tau)

so the relative drop that a meta-test at t_w measures over its window is
``r_w = L(t_{w-1}) - L(t_w) + e_w``. The noise e_w has the size ``sigma_w = s_0 + s_1 ubar_w``
(ubar_w the window's mean rate) and two parts: an innovation that stays in the loss, and an error
of the measurement itself that the next window's measurement takes back (``e_w = eta_w + eps_{w-1} -
eps_w``). The second part makes consecutive rewards anticorrelated: its share m of the variance is
minus the lag-1 correlation of the fit's residuals. Given (c, tau) the model is linear in a, so a is fitted by least
squares for each (c, tau) on a grid and the pair with the least residual is kept. The model the
study used before had c = 1 and u_s = 1 (every draw's effect permanent and the same all run long):
the K = 25 runs contradicted it.

Two things a fixed per-draw effect leaves out, which the fit measures:

* the learning rate decays linearly to 0, so the second half's draws move the loss less and the
  sampler has less to learn from just when the measure is taken;
* harm that later MLM steps undo within a window (c < 1, small tau) is invisible to a meta-test at
  the window's end: the longer the window, the more of a draw's effect is gone when it is measured.

The check comes first: the model fitted on the K = 25 windows must reproduce the K = 25 runs of the
recipe (their second-half planted weight and how many seeds fell below 0.10) before its K = 50 and
K = 100 predictions are printed. Then a fit on the K = 100 windows is checked the same way against
the K = 100 runs.

    python study/sampler_model.py            # reads study/results/benchmark/*.json, writes study/results/sampler_model.json
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import numpy as np
import torch

from common import RESULTS_DIR, read_json, write_json
from mometas_utils.samplers import build_sampler
from planted_analysis import DROPPED, KEPT, OBJECTIVES, PLANTED, weight_between

TAUS = (1, 2, 5, 10, 25, 50, 100, 200, 400)
PERSISTENT = (0.0, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)
#: The arms the model stands in for: the README's recipe at the default entropy temperature, and at 1.
ARMS = {"robust_mlm": 3.0, "robust_mlm_lambda1": 1.0}
UPDATES = (10, 20, 30, 50, 100, 200)
#: The one estimator change the benchmark tries: the recipe with λ following the learning rate.
CANDIDATE = ("robust_mlm_lr_lambda", "learning_rate")


def rate_factors(steps: int, warmup_ratio: float) -> np.ndarray:
    """u_s for s = 1..steps: the script's linear schedule (warm-up, then linear decay to 0) over its peak."""
    warmup = math.ceil(warmup_ratio * steps)
    before = np.arange(steps, dtype=float)  # the scheduler's count before step s
    up = before / max(1, warmup)
    down = np.maximum(0.0, (steps - before) / max(1, steps - warmup))
    return np.where(before < warmup, up, down)


def kernel_features(draws: np.ndarray, rates: np.ndarray, ends: list[int], c: float, tau: float) -> np.ndarray:
    """F[w, j] = sum over draws of j of u_s (g(t_w - s) - g(t_{w-1} - s)), the effect on window w's drop
    per unit of a_j (draws after t_{w-1} have g(t_{w-1} - s) = 0)."""
    steps = np.arange(1, len(draws) + 1)
    onehot = np.zeros((len(draws), len(OBJECTIVES)))
    onehot[np.arange(len(draws)), draws] = rates

    def level(t):
        d = t - steps[:t]
        g = c + (1.0 - c) * (np.exp(-d / tau) if math.isfinite(tau) else np.ones(len(d)))
        return g @ onehot[:t]

    levels = [level(t) if t > 0 else np.zeros(len(OBJECTIVES)) for t in ends]
    return np.array([after - before for before, after in zip(levels, levels[1:])])


def windows_of(run: dict) -> dict:
    """The draws (one index per step), the rate factors and, per meta-test window, the relative MLM drop."""
    rows = [r for r in run["rows"] if r.get("val_loss")]
    settings = run["settings"]
    draws = [OBJECTIVES.index(name) for row in run["rows"] for name in row.get("rollout") or []]
    ends = [row["step"] for row in rows]
    drops = [(b["val_loss"]["mlm"] - a["val_loss"]["mlm"]) / b["val_loss"]["mlm"] for b, a in zip(rows, rows[1:])]
    rates = rate_factors(settings["max_train_steps"], settings["warmup_ratio"])
    return {"draws": np.array(draws), "rates": rates, "ends": ends, "drops": np.array(drops),
            "mean_rates": np.array([rates[a:b].mean() for a, b in zip(ends, ends[1:])])}


def fit(runs: list[dict]) -> dict:
    """a, c, tau by least squares over the windows of ``runs``; the noise line sigma = s_0 + s_1 ubar."""
    data = [windows_of(run) for run in runs]
    y = np.concatenate([d["drops"] for d in data])
    best = None
    for c in PERSISTENT:
        for tau in TAUS if c < 1 else (math.inf,):
            X = np.concatenate([kernel_features(d["draws"], d["rates"], d["ends"], c, tau) for d in data])
            a, *_ = np.linalg.lstsq(X, y, rcond=None)
            sse = float(((y - X @ a) ** 2).sum())
            if best is None or sse < best["sse"]:
                best = {"c": c, "tau": tau, "a": a, "sse": sse, "X": X}
    residual = y - best["X"] @ best["a"]
    ubar = np.concatenate([d["mean_rates"] for d in data])
    # E|e| = sigma sqrt(2 / pi) for a normal e: a straight line through the absolute residuals.
    s1, s0 = np.polyfit(ubar, np.abs(residual) * math.sqrt(math.pi / 2), 1)
    planted = best["X"][:, OBJECTIVES.index(PLANTED)]
    pairs = [(e[i], e[i + 1]) for e in _split(residual, [len(d["drops"]) for d in data]) for i in range(len(e) - 1)]
    lag1 = float(np.corrcoef(np.array(pairs).T)[0, 1])
    return {"noise_lag1_correlation": lag1, "measurement_share": min(0.5, max(0.0, -lag1)),"persistent_share": best["c"], "recovery_steps": None if math.isinf(best["tau"]) else best["tau"],
            "effect_per_draw": dict(zip(OBJECTIVES, best["a"].tolist())), "noise": {"s0": float(s0), "s1": float(s1)},
            "windows": int(len(y)), "runs": len(runs), "residual_std": float(residual.std()),
            "r2": float(1 - (residual ** 2).sum() / ((y - y.mean()) ** 2).sum()),
            "start_mlm_loss": statistics.fmean(r["rows"][0]["val_loss"]["mlm"] for r in runs),
            "corr_planted_effect_drop": float(np.corrcoef(planted, y)[0, 1]) if planted.std() > 0 else None}


def _split(values: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    return np.split(values, np.cumsum(sizes)[:-1])


def simulate(model: dict, *, meta_length: int, updates: int, entropy_lambda: float, runs: int, seed: int,
             warmup_ratio: float = 0.06, entropy_lambda_schedule: str = "constant", fraction: float = 1.0) -> dict:
    """The recipe's sampler against the fitted model: its second-half planted weight per simulated run.

    ``fraction`` 0: the control, a planted objective whose draws move MLM's loss as MLM's own do (the
    share of runs that keep it at 0.15 or more is reported instead of the share below 0.10).
    ``entropy_lambda_schedule``: the sampler's, given the rate at each meta-test as the script gives it.
    """
    a = np.array([model["effect_per_draw"][n] for n in OBJECTIVES])
    if fraction == 0:
        a[OBJECTIVES.index(PLANTED)] = a[OBJECTIVES.index("mlm")]
    c, tau = model["persistent_share"], model["recovery_steps"] or math.inf
    s0, s1 = model["noise"]["s0"], model["noise"]["s1"]
    share = model["measurement_share"]
    rates = rate_factors(meta_length * updates, warmup_ratio)
    rng = np.random.default_rng(seed)
    planted, weights = OBJECTIVES.index(PLANTED), []
    decay = math.exp(-meta_length / tau) if math.isfinite(tau) else 1.0
    for run in range(runs):
        sampler = build_sampler("mometas", OBJECTIVES, meta_length=meta_length, entropy_lambda=entropy_lambda,
                                entropy_lambda_schedule=entropy_lambda_schedule, reward_objectives=["mlm"],
                                seed=seed * 100_003 + run)
        others = {n: 1.0 for n in OBJECTIVES}
        loss = model["start_mlm_loss"]  # the model's true loss; the meta-test measures it with an error
        sampler.update({**others, "mlm": loss}, learning_rate=0.0)
        lasting = recovering = 0.0  # the two parts of L(t), per unit of a, summed over objectives
        trace = []
        for w in range(updates):
            p = np.array([sampler.probabilities[n] for n in OBJECTIVES])
            draws = rng.choice(len(OBJECTIVES), size=meta_length, p=p / p.sum())
            sampler.rollout = draws.tolist()
            u = rates[w * meta_length:(w + 1) * meta_length]
            moved = a[draws] * u
            age = meta_length - np.arange(1, meta_length + 1)  # steps from each draw to the meta-test
            before = lasting + recovering
            lasting += c * moved.sum()
            recovering = recovering * decay + (1 - c) * (moved * (np.exp(-age / tau) if math.isfinite(tau) else 1.0)).sum()
            sigma = s0 + s1 * u.mean()
            loss *= 1.0 - ((lasting + recovering) - before + sigma * math.sqrt(1 - 2 * share) * rng.standard_normal())
            error = sigma * math.sqrt(share) * rng.standard_normal()
            trace.append(p[planted])
            sampler.update({**others, "mlm": loss * (1.0 - error)}, learning_rate=float(u[-1]))
        weights.append(statistics.fmean(trace[updates // 2:]))
    out = {"meta_length": meta_length, "updates": updates, "entropy_lambda": entropy_lambda, "runs": runs,
           "second_half_mean": statistics.fmean(weights), "second_half_std": statistics.stdev(weights)}
    if fraction == 0:
        kept = sum(w >= KEPT for w in weights) / runs
        return {**out, "fraction": 0.0, "share_at_least_0.15": kept, "chance_4_of_5": _at_least(4, 5, kept)}
    below = sum(w < DROPPED for w in weights) / runs
    return {**out, "share_below_0.10": below, "chance_4_of_5": _at_least(4, 5, below)}


def _at_least(k: int, n: int, q: float) -> float:
    return sum(math.comb(n, i) * q**i * (1 - q) ** (n - i) for i in range(k, n + 1))


def measured_arm(runs: list[dict]) -> dict | None:
    """What planted_analysis reads off the real runs: second-half weight per seed, seeds below 0.10 (and, for
    the f = 0 control, seeds at 0.15 or more)."""
    if not runs:
        return None
    runs = sorted(runs, key=lambda r: r["seed"])
    values = []
    for r in runs:
        steps = r["settings"]["max_train_steps"]
        values.append(weight_between(r["rows"], PLANTED, steps / 2, steps))
    return {"seeds": [r["seed"] for r in runs], "second_half_per_seed": values,
            "second_half_mean": statistics.fmean(values), "seeds_below_0.10": sum(v < DROPPED for v in values),
            "seeds_at_least_0.15": sum(v >= KEPT for v in values)}


def reproduces(sim: dict, real: dict) -> bool:
    """The simulated mean within two standard errors of the measured seeds' mean, and the measured count of
    seeds below 0.10 not improbable (at least 5% under the simulated share)."""
    n = len(real["second_half_per_seed"])
    se = sim["second_half_std"] / math.sqrt(n)
    q = sim["share_below_0.10"]
    k = real["seeds_below_0.10"]
    chance_of_k = math.comb(n, k) * q**k * (1 - q) ** (n - k)
    return abs(sim["second_half_mean"] - real["second_half_mean"]) <= 2 * se and chance_of_k >= 0.05


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=200, help="Simulated sampler runs per setting (at least 2).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default=str(RESULTS_DIR / "benchmark"), help="Folder of planted.py's per-run results.")
    p.add_argument("--output", default=str(RESULTS_DIR / "sampler_model.json"))
    p.add_argument("--fits", default="25:minilm,100:minilm2k",
                   help="K:testbed pairs: each K's model is fitted on that testbed's f = 1 runs at that K.")
    args = p.parse_args(argv)
    if args.runs < 2:
        p.error(f"--runs: expected at least 2 (a standard deviation needs two runs), got {args.runs}")
    torch.set_num_threads(1)
    results = [read_json(path) for path in sorted(Path(args.results).glob("*.json"))]
    try:
        testbeds = {int(k): testbed for k, testbed in (pair.split(":") for pair in args.fits.split(","))}
    except ValueError:
        p.error(f"--fits: expected K:testbed pairs such as 25:minilm,100:minilm2k, got {args.fits!r}")
    report = {"fits": {}, "checks": [], "table": []}
    for k, testbed in testbeds.items():
        # Every f = 1 run with the planted objective, whatever its sampler: the draws move the loss alike.
        runs = [r for r in results if (r["testbed"], r["meta_length"], r["fraction"]) == (testbed, k, 1.0)
                and PLANTED in r["objectives"]]
        if not runs:
            print(f"K = {k}: no {testbed} f = 1 runs in {args.results}; no fit")
            continue
        model = fit(runs)
        report["fits"][f"K{k}"] = model
        print(f"K = {k}: {model['windows']} windows of {model['runs']} runs; persistent share c = "
              f"{model['persistent_share']}, recovery tau = {model['recovery_steps']} steps; per-draw effect x 1e4: "
              + ", ".join(f"{n} {v * 1e4:+.1f}" for n, v in model["effect_per_draw"].items())
              + f"; noise {model['noise']['s0']:.4f} + {model['noise']['s1']:.4f} u, lag-1 correlation "
              f"{model['noise_lag1_correlation']:+.2f}; R^2 {model['r2']:.2f}")
        steps = runs[0]["settings"]["max_train_steps"]
        for arm, lam in ARMS.items():
            real = measured_arm([r for r in runs if r["arm"] == arm])
            if real is None:
                continue
            sim = simulate(model, meta_length=k, updates=steps // k, entropy_lambda=lam, runs=args.runs, seed=args.seed)
            check = {"fit": f"K{k}", "arm": arm, "meta_length": k, "updates": steps // k, "simulated": sim,
                     "measured": real, "reproduces": reproduces(sim, real)}
            report["checks"].append(check)
            print(f"  check {arm} (lambda {lam:g}), {steps // k} updates: simulated {sim['second_half_mean']:.3f} ± "
                  f"{sim['second_half_std']:.3f}, share < 0.10 {sim['share_below_0.10']:.2f}; measured "
                  f"{real['second_half_mean']:.3f}, {real['seeds_below_0.10']} of {len(real['seeds'])} below 0.10: "
                  + ("reproduced" if check["reproduces"] else "NOT reproduced"))
    # Predictions only from a fit that reproduced every arm it was checked against, at every K.
    trusted = {c["fit"] for c in report["checks"]} - {c["fit"] for c in report["checks"] if not c["reproduces"]}
    for name in sorted(trusted):
        model = report["fits"][name]
        for k in (25, 50, 100):
            for updates in UPDATES:
                sim = simulate(model, meta_length=k, updates=updates, entropy_lambda=3.0, runs=args.runs, seed=args.seed)
                measured = next((c["measured"] for c in report["checks"] if c["arm"] == "robust_mlm"
                                 and (c["meta_length"], c["updates"]) == (k, updates)), None)
                report["table"].append({"fit": name, **sim, "measured": measured})
    if not report["fits"]:
        raise SystemExit(f"error: no planted runs to fit in {args.results}; run study/planted.py first")
    # The estimator change, by the model first: the recipe and the candidate on the K = 25 testbed, f = 1 and
    # f = 0, with the runs of each that exist.
    report["candidate"] = []
    if "K25" in trusted:
        steps = next(r["settings"]["max_train_steps"] for r in results if (r["testbed"], r["meta_length"]) == ("minilm", 25))
        for arm, schedule in (("robust_mlm", "constant"), CANDIDATE):
            for fraction in (1.0, 0.0):
                sim = simulate(report["fits"]["K25"], meta_length=25, updates=steps // 25, entropy_lambda=3.0,
                               runs=args.runs, seed=args.seed, entropy_lambda_schedule=schedule, fraction=fraction)
                real = measured_arm([r for r in results if (r["testbed"], r["meta_length"], r["fraction"], r["arm"])
                                     == ("minilm", 25, fraction, arm)])
                report["candidate"].append({"fit": "K25", "arm": arm, "fraction": fraction, "simulated": sim,
                                            "measured": real})
    report["trusted_fits"] = sorted(trusted)
    print(power_table(report))
    write_json(Path(args.output), report)
    if Path(args.output) == RESULTS_DIR / "sampler_model.json":  # the committed analysis: the docs follow it
        from common import write_generated_block
        from planted import generated_blocks

        for (doc, name), text in generated_blocks().items():
            write_generated_block(doc, name, text)


def needed_updates(report: dict, fit_name: str, k: int) -> int | None:
    """The fewest updates in the table at which 4 of 5 seeds fall below 0.10 with probability >= 0.8."""
    rows = [r for r in report["table"] if r["fit"] == fit_name and r["meta_length"] == k]
    return next((r["updates"] for r in sorted(rows, key=lambda r: r["updates"]) if r["chance_4_of_5"] >= 0.8), None)


def power_table(report: dict) -> str:
    """The table of docs/study.md: K, updates, predicted share of seeds below 0.10, and what was measured."""
    fits = ["| fit | windows (runs) | lasting share c | recovery tau (steps) | per-draw effect x 1e4: planted, MLM, "
            "CSE, ATD, DTD | noise lag-1 corr. | R² |", "|---|---|---|---|---|---|---|"]
    for name, m in report["fits"].items():
        effect = ", ".join(f"{m['effect_per_draw'][n] * 1e4:+.0f}" for n in (PLANTED, "mlm", "cse", "atd", "dtd"))
        fits.append(f"| {name} | {m['windows']} ({m['runs']}) | {m['persistent_share']:g} | {m['recovery_steps']} | "
                    f"{effect} | {m['noise_lag1_correlation']:+.2f} | {m['r2']:.2f} |")
    checks = ["", "| fit | arm | K | updates | simulated 2nd-half p(planted) | simulated share < 0.10 | measured | "
              "reproduced |", "|---|---|---|---|---|---|---|---|"]
    for c in report["checks"]:
        m, sim = c["measured"], c["simulated"]
        checks.append(f"| {c['fit']} | {c['arm']} | {c['meta_length']} | {c['updates']} | {sim['second_half_mean']:.3f} ± "
                      f"{sim['second_half_std']:.3f} | {sim['share_below_0.10']:.2f} | {m['second_half_mean']:.3f} "
                      f"({m['seeds_below_0.10']} of {len(m['seeds'])} < 0.10) | {'yes' if c['reproduces'] else 'no'} |")
    head = "\n".join(fits + checks) + "\n\n"
    if not report["table"]:
        return head + "No fit reproduced its own runs, so the model predicts nothing."
    lines = ["| fit | K | updates | predicted 2nd-half p(planted) | predicted share of seeds < 0.10 | "
             "P(4 of 5 seeds < 0.10) | measured (seeds < 0.10) |", "|---|---|---|---|---|---|---|"]
    for r in report["table"]:
        m = r["measured"]
        measured = "–" if m is None else (f"{m['second_half_mean']:.3f} ({m['seeds_below_0.10']} of "
                                          f"{len(m['seeds'])})")
        lines.append(f"| {r['fit']} | {r['meta_length']} | {r['updates']} | {r['second_half_mean']:.3f} ± "
                     f"{r['second_half_std']:.3f} | {r['share_below_0.10']:.2f} | {r['chance_4_of_5']:.2f} | {measured} |")
    needs = []
    for name in report["trusted_fits"]:
        for k in (25, 50, 100):
            n = needed_updates(report, name, k)
            needs.append(f"{name} fit, K = {k}: " + (f"{n} updates" if n else f"more than {max(UPDATES)} updates"))
    return (head + "\n".join(lines) + "\n\nUpdates needed for 4 of 5 seeds below 0.10 with probability 0.8: "
            + "; ".join(needs) + "." + candidate_table(report))


def candidate_table(report: dict) -> str:
    """The recipe against the estimator change, simulated by the K = 25 fit and measured where runs exist."""
    if not report.get("candidate"):
        return ""
    lines = ["", "", "| fit | arm | f | simulated 2nd-half p(planted) | simulated share of seeds past the bar | "
             "measured (seeds past the bar) |", "|---|---|---|---|---|---|"]
    for c in report["candidate"]:
        sim, m, control = c["simulated"], c["measured"], c["fraction"] == 0
        share = sim["share_at_least_0.15"] if control else sim["share_below_0.10"]
        passed = None if m is None else m["seeds_at_least_0.15" if control else "seeds_below_0.10"]
        measured = "–" if m is None else f"{m['second_half_mean']:.3f} ({passed} of {len(m['seeds'])})"
        lines.append(f"| {c['fit']} | {c['arm']} | {c['fraction']:g} | {sim['second_half_mean']:.3f} ± "
                     f"{sim['second_half_std']:.3f} | {share:.2f} | {measured} |")
    return "\n".join(lines) + ("\n\nThe bar: below 0.10 at f = 1 (the harmful objective dropped), at least 0.15 at "
                               "f = 0 (the useful duplicate kept).")


if __name__ == "__main__":
    main()

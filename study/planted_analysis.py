"""The planted benchmark's measures, tables and figures, computed from the per-run result files alone.

For each group of runs (testbed, meta length K, corruption fraction f, arm), over its seeds:

* the planted objective's weight over the second half of training (time-weighted), and the
  seeds in which it is below 0.10 (half of uniform's 0.20);
* the time to drop: the first step after which the weight stays below 0.10 to the end (none if
  it never does);
* the final MLM validation loss, its difference from uniform's (same testbed, K, f, paired by
  seed) and the regret: minus the oracle's (same testbed, paired by seed). The oracle trains
  uniformly on the objectives without the planted one; its training does not depend on K;
* how visible the harm was: per meta-test window, the correlation of the planted objective's
  draws with the change of MLM's validation loss (harm > 0) and with the reward R;
* what the sampler had to learn from, per half of training: the mean |advantage| and the share of
  updates whose reward was exactly 0 (every term inside ``--reward_dead_zone``), and the planted
  weight's lowest point against its last (a weight that drifts back up once the signal fades).

The bar (``_bar`` judges every K that has 5 seeds, so the recipe at K = 25 on MiniLM
too): at K = 100, f = 1, a MOMETAS arm with a robust reward
keeps the planted weight below 0.10 in at least 4 of 5 seeds with an MLM loss no worse than
uniform's, and at f = 0 the same arm keeps the useful duplicate at or above 0.15 in at least 4
of 5 seeds.
"""

from __future__ import annotations

import statistics

PLANTED = "shuffled_mlm"
OBJECTIVES = ["mlm", "cse", "atd", "dtd", PLANTED]
DROPPED = 0.10
KEPT = 0.15
ROBUST = ("robust_all", "robust_mlm")


def weight_between(rows, name, start, end):
    """Time-weighted average probability of ``name`` over steps [start, end)."""
    rows = [r for r in rows if r.get("probabilities")]
    total = covered = 0.0
    for row, nxt in zip(rows, rows[1:] + [None]):
        a = max(row["step"], start)
        b = min(nxt["step"] if nxt else end, end)
        if b > a:
            total += (b - a) * row["probabilities"][name]
            covered += b - a
    return total / covered if covered else None


def time_to_drop(rows, name=PLANTED, threshold=DROPPED):
    """The step of the first row from which the weight of ``name`` stays below ``threshold`` (None: never)."""
    rows = [r for r in rows if r.get("probabilities")]
    dropped = None
    for row in rows:
        if row["probabilities"][name] < threshold:
            dropped = row["step"] if dropped is None else dropped
        else:
            dropped = None
    return dropped


def _corr(xs, ys):
    if len(xs) < 3 or statistics.pstdev(xs) == 0 or statistics.pstdev(ys) == 0:
        return None
    return statistics.correlation(xs, ys)


def window_correlations(rows):
    """Per meta-test window: corr(draws of the planted objective, change of MLM's validation loss) and
    corr(draws, R). Harm shows as a positive first number; a reward that sees it, as a negative second."""
    draws, harm, reward = [], [], []
    for before, row in zip(rows, rows[1:]):
        if not (row.get("counts") and row.get("val_loss") and before.get("val_loss")):
            continue
        draws.append(row["counts"].get(PLANTED, 0))
        harm.append(row["val_loss"]["mlm"] - before["val_loss"]["mlm"])
        reward.append(row["reward"] if row.get("reward") is not None else 0.0)
    return {"draws_vs_mlm_loss_change": _corr(draws, harm), "draws_vs_reward": _corr(draws, reward)}


def signal_by_half(rows, steps):
    """Mean |advantage| and the share of zero rewards among the updates of each half of training."""
    out = {}
    for half, (a, b) in {"first": (0, steps / 2), "second": (steps / 2, steps + 1)}.items():
        updates = [r for r in rows if r.get("reward") is not None and a < r["step"] <= b]
        advantages = [abs(r["advantage"]) for r in updates if r.get("advantage") is not None]
        zeros = sum(r["reward"] == 0.0 for r in updates)
        out[half] = {"mean_abs_advantage": statistics.fmean(advantages) if advantages else None,
                     "zero_reward_share": zeros / len(updates) if updates else None}
    return out


def low_and_last(rows, name=PLANTED):
    """The lowest weight of ``name`` over the run and its weight at the last row."""
    weights = [r["probabilities"][name] for r in rows if r.get("probabilities")]
    return {"lowest": min(weights), "last": weights[-1]} if weights else None


def mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"mean": statistics.fmean(xs), "std": statistics.pstdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def group_key(run):
    return f"{run['testbed']}/K{run['meta_length']}/f{run['fraction']:g}/{run['arm']}"


def analyse(results):
    """Per group: the measures above, keyed ``testbed/K<k>/f<f>/arm``."""
    runs_of = {}
    for run in results:
        runs_of.setdefault(group_key(run), []).append(run)
    oracle = {(r["testbed"], r["seed"]): r["final_val_loss"]["mlm"] for r in results if r["arm"] == "oracle"}
    uniform = {(r["testbed"], r["meta_length"], r["fraction"], r["seed"]): r["final_val_loss"]["mlm"]
               for r in results if r["arm"] == "uniform"}
    groups = {}
    for key, runs in sorted(runs_of.items()):
        runs.sort(key=lambda r: r["seed"])
        first = runs[0]
        steps = first["settings"]["max_train_steps"]
        planted = PLANTED in first["objectives"]
        second = [weight_between(r["rows"], PLANTED, steps / 2, steps) if planted else None for r in runs]
        drops = [time_to_drop(r["rows"]) if planted else None for r in runs]
        mlm = [r["final_val_loss"]["mlm"] for r in runs]
        paired = [r["final_val_loss"]["mlm"] - uniform[(r["testbed"], r["meta_length"], r["fraction"], r["seed"])]
                  for r in runs if (r["testbed"], r["meta_length"], r["fraction"], r["seed"]) in uniform]
        regret = [r["final_val_loss"]["mlm"] - oracle[(r["testbed"], r["seed"])]
                  for r in runs if (r["testbed"], r["seed"]) in oracle]
        correlations = [window_correlations(r["rows"]) for r in runs]
        signal = [signal_by_half(r["rows"], steps) for r in runs]
        groups[key] = {
            "testbed": first["testbed"], "meta_length": first["meta_length"], "fraction": first["fraction"],
            "arm": first["arm"], "seeds": [r["seed"] for r in runs], "updates": steps // first["meta_length"],
            "seconds_per_run": mean_std([r.get("seconds") for r in runs]),
            "cpu_seconds_per_run": mean_std([r.get("cpu_seconds") for r in runs]),
            "second_half_weight": mean_std(second), "second_half_weight_per_seed": second,
            "seeds_below_0.10": sum(w is not None and w < DROPPED for w in second) if planted else None,
            "seeds_at_least_0.15": sum(w is not None and w >= KEPT for w in second) if planted else None,
            "time_to_drop_per_seed": drops,
            "final_mlm_loss": mean_std(mlm), "final_mlm_loss_per_seed": mlm,
            "mlm_loss_minus_uniform": mean_std(paired) if paired else None,
            "mlm_loss_minus_uniform_per_seed": paired,
            "regret": mean_std(regret) if regret else None,
            "harm_correlation_per_seed": [c["draws_vs_mlm_loss_change"] for c in correlations],
            "window_correlations": {k: mean_std([c[k] for c in correlations])
                                    for k in ("draws_vs_mlm_loss_change", "draws_vs_reward")},
            "signal_by_half": {half: {k: mean_std([s[half][k] for s in signal])
                                      for k in ("mean_abs_advantage", "zero_reward_share")}
                               for half in ("first", "second")},
            "planted_lowest_and_last_per_seed": [low_and_last(r["rows"]) if planted else None for r in runs],
        }
    for key, g in groups.items():
        g["bar"] = _bar(g, groups)
    return groups


def _bar(g, groups):
    """The issue's bar for a robust MOMETAS arm at f = 1 (None where it does not apply)."""
    if g["arm"] not in ROBUST or g["fraction"] != 1.0 or len(g["seeds"]) < 5:
        return None
    uniform = groups.get(f"{g['testbed']}/K{g['meta_length']}/f1/uniform")
    control = groups.get(f"{g['testbed']}/K{g['meta_length']}/f0/{g['arm']}")
    dropped = g["seeds_below_0.10"] >= 4
    no_worse = uniform is not None and g["final_mlm_loss"]["mean"] <= uniform["final_mlm_loss"]["mean"]
    kept = None if control is None else control["seeds_at_least_0.15"] >= 4
    return {"dropped_in_4_of_5": dropped, "mlm_no_worse_than_uniform": no_worse, "duplicate_kept_in_4_of_5": kept,
            "holds": dropped and no_worse and kept is not False}


def _ms(d, digits=3):
    return "–" if d is None else f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}"


def _drops(g):
    drops = g["time_to_drop_per_seed"]
    if g["seeds_below_0.10"] is None:
        return "–"
    made = sorted(d for d in drops if d is not None)
    if not made:
        return "never"
    return f"{len(made)}/{len(drops)} (median {statistics.median(made):g})"


def markdown(groups) -> str:
    """One table per (testbed, K, f), the arms as rows."""
    lines = []
    tables = sorted({(g["testbed"], g["meta_length"], g["fraction"]) for g in groups.values()},
                    key=lambda t: (t[0] != "minilm2k", t[0], -t[1], -t[2]))
    for testbed, k, f in tables:
        rows = [g for g in groups.values() if (g["testbed"], g["meta_length"], g["fraction"]) == (testbed, k, f)]
        updates = rows[0]["updates"]
        lines += ["", f"**{testbed}, K = {k} ({updates} updates), f = {f:g}**", "",
                  "| arm | 2nd-half p(planted) | seeds < 0.10 | time to drop | final MLM val loss | Δ vs uniform "
                  "(paired) | regret vs oracle | harm corr. | bar |", "|---|---|---|---|---|---|---|---|---|"]
        order = ["uniform", "gradient", "loss", "exp3", "paper", "robust_all", "robust_mlm", "robust_mlm_lambda1",
                 "oracle"]
        for g in sorted(rows, key=lambda g: order.index(g["arm"]) if g["arm"] in order else 99):
            below = "–" if g["seeds_below_0.10"] is None else f"{g['seeds_below_0.10']}/{len(g['seeds'])}"
            bar = "–" if g["bar"] is None else ("holds" if g["bar"]["holds"] else "fails")
            lines.append(f"| {g['arm']} | {_ms(g['second_half_weight'])} | {below} | {_drops(g)} | "
                         f"{_ms(g['final_mlm_loss'], 3)} | {_ms(g['mlm_loss_minus_uniform'], 3)} | "
                         f"{_ms(g['regret'], 3)} | {_ms(g['window_correlations']['draws_vs_mlm_loss_change'], 2)} "
                         f"| {bar} |")
    return "\n".join(lines).strip()


def _default_testbed(testbeds):
    testbeds = sorted(set(testbeds))
    return "minilm2k" if "minilm2k" in testbeds else (testbeds[0] if testbeds else None)


def plot_weights(results, path, testbed=None, k=None, fraction=1.0):
    """The planted weight over time for every sampler of one (testbed, K, f), mean ± std over seeds;
    K is the largest one run (the paper's 100 in the benchmark)."""
    import numpy as np
    from matplotlib.figure import Figure

    testbed = testbed or _default_testbed(r["testbed"] for r in results)
    chosen = [r for r in results if (r["testbed"], r["fraction"]) == (testbed, fraction) and PLANTED in r["objectives"]]
    k = k or max((r["meta_length"] for r in chosen), default=None)
    chosen = [r for r in chosen if r["meta_length"] == k]
    if not chosen:
        return None
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.subplots()
    for arm in sorted({r["arm"] for r in chosen}):
        runs = [r for r in chosen if r["arm"] == arm]
        steps = [row["step"] for row in runs[0]["rows"] if row.get("probabilities")]
        series = np.array([[row["probabilities"][PLANTED] for row in r["rows"] if row.get("probabilities")]
                           for r in runs])
        mean, std = series.mean(0), series.std(0)
        ax.plot(steps, mean, label=f"{arm} ({len(runs)} seeds)")
        ax.fill_between(steps, mean - std, mean + std, alpha=0.15)
    ax.axhline(DROPPED, color="grey", linestyle=":", label="0.10")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"p({PLANTED})")
    ax.set_title(f"Planted objective's weight, {testbed} testbed, K = {k}, f = {fraction:g} (mean ± std)")
    ax.legend(fontsize=8, ncol=2)
    fig.savefig(path, dpi=110)
    return path


def plot_power(groups, path, testbed=None, k=None):
    """The power curve: second-half weight of the planted objective against its corruption fraction f
    (at the largest K run with more than one f)."""
    from matplotlib.figure import Figure

    testbed = testbed or _default_testbed(g["testbed"] for g in groups.values())
    fractions = {}
    for g in groups.values():
        if g["testbed"] == testbed and g["second_half_weight"] is not None:
            fractions.setdefault(g["meta_length"], set()).add(g["fraction"])
    k = k or max((kk for kk, fs in fractions.items() if len(fs) > 1), default=None)
    by_arm = {}
    for g in groups.values():
        if g["testbed"] == testbed and g["meta_length"] == k and g["second_half_weight"] is not None:
            by_arm.setdefault(g["arm"], []).append(g)
    curves = {arm: sorted(gs, key=lambda g: g["fraction"]) for arm, gs in by_arm.items() if len(gs) > 1}
    if not curves:
        return None
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for arm, gs in sorted(curves.items()):
        xs = [g["fraction"] for g in gs]
        ax.errorbar(xs, [g["second_half_weight"]["mean"] for g in gs], yerr=[g["second_half_weight"]["std"] for g in gs],
                    marker="o", capsize=3, label=arm)
    ax.axhline(DROPPED, color="grey", linestyle=":", label="0.10 (dropped)")
    ax.axhline(KEPT, color="grey", linestyle="--", label="0.15 (kept)")
    ax.set_xlabel("corruption fraction f of the planted objective")
    ax.set_ylabel("2nd-half p(planted)")
    ax.set_title(f"Power curve, {testbed} testbed, K = {k}")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path

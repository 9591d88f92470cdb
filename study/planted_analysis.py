"""The planted benchmark's measures, tables and figures, computed from the per-run result files alone.

Every weight is what the run's draws were made from: a row's ``mean_probabilities`` (the mean
distribution over the window that ends at the row), or, in rows written before the runs recorded
it, the previous row's ``probabilities``, which is the same thing for every sampler that changes
only at meta-tests (all but exp3, whose runs all record it).

For each group of runs (testbed, meta length K, corruption fraction f, arm), over its seeds:

* the planted objective's weight over the second half of training (time-weighted), and the
  seeds in which it is below 0.10 (half of uniform's 0.20);
* **discrimination**: that weight minus the mean second-half weight of CSE, ATD and DTD. Below 0
  the sampler told the planted objective apart from the merely unhelpful ones; a sampler that
  only favours the rewarded objective pushes all four down alike (about 0);
* at f = 0, where the planted objective is a plain duplicate of MLM, its weight minus MLM's own
  (about 0 for a sampler that judges objectives by what they do);
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

Every mean carries its ``n``; a paired measure with fewer pairs than the arm has seeds is printed
as "–": a missing control is a missing result, never a pass.

The bar, judged at every K that has 5 seeds: at f = 1 a MOMETAS arm with a robust reward keeps the
planted weight below 0.10 in at least 4 of 5 seeds with an MLM loss no worse than uniform's, and at
f = 0 the same arm keeps the useful duplicate at or above 0.15 in at least 4 of 5 seeds.
"""

from __future__ import annotations

import statistics

PLANTED = "shuffled_mlm"
OBJECTIVES = ["mlm", "cse", "atd", "dtd", PLANTED]
UNHELPFUL = ["cse", "atd", "dtd"]
DROPPED = 0.10
KEPT = 0.15
ROBUST = ("robust_all", "robust_mlm", "robust_mlm_lr_lambda")


def drawn_weights(rows):
    """(start, end, {objective: p}) per window: the mean distribution the window's draws were made from."""
    windows = []
    for before, row in zip(rows, rows[1:]):
        mean = row.get("mean_probabilities") or (before.get("probabilities") if "mean_probabilities" not in row
                                                 else None)
        if mean and row["step"] > before["step"]:
            windows.append((before["step"], row["step"], mean))
    return windows


def weight_between(rows, name, start, end):
    """Time-weighted average probability that ``name`` was drawn with over steps [start, end)."""
    total = covered = 0.0
    for a, b, mean in drawn_weights(rows):
        a, b = max(a, start), min(b, end)
        if b > a:
            total += (b - a) * mean.get(name, 0.0)
            covered += b - a
    return total / covered if covered else None


def time_to_drop(rows, name=PLANTED, threshold=DROPPED):
    """The first step from which ``name`` is drawn with a weight below ``threshold`` to the end (None: never)."""
    dropped = None
    for start, _, mean in drawn_weights(rows):
        if mean.get(name, 0.0) < threshold:
            dropped = start if dropped is None else dropped
        else:
            dropped = None
    return dropped


def second_half(rows, steps, name):
    return weight_between(rows, name, steps / 2, steps)


def discrimination(rows, steps):
    """Second-half weight of the planted objective minus the mean of CSE's, ATD's and DTD's."""
    drawn = {name for _, _, mean in drawn_weights(rows) for name in mean}
    if not {PLANTED, *UNHELPFUL} <= drawn:  # a run without one of them has nothing to compare
        return None
    planted = second_half(rows, steps, PLANTED)
    others = [second_half(rows, steps, n) for n in UNHELPFUL]
    if planted is None or None in others:
        return None
    return planted - statistics.fmean(others)


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
    """The lowest window weight of ``name`` over the run and that of its last window."""
    weights = [mean.get(name, 0.0) for _, _, mean in drawn_weights(rows)]
    return {"lowest": min(weights), "last": weights[-1]} if weights else None


def mean_std(xs, expected=None):
    """Mean, std and n of the values that exist; None when there are none, or fewer than ``expected``
    (a paired measure whose partner runs are missing for some seeds)."""
    xs = [x for x in xs if x is not None]
    if not xs or (expected is not None and len(xs) < expected):
        return None
    return {"mean": statistics.fmean(xs), "std": statistics.pstdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def group_key(run):
    return f"{run['testbed']}/K{run['meta_length']}/f{run['fraction']:g}/{run['arm']}"


def analyse(results):
    """Per group: the measures above, keyed ``testbed/K<k>/f<f>/arm``. Per-seed lists follow ``seeds``."""
    runs_of = {}
    for run in results:
        runs_of.setdefault(group_key(run), []).append(run)
    oracle = {(r["testbed"], r["seed"]): r["final_val_loss"]["mlm"] for r in results if r["arm"] == "oracle"}
    uniform = {(r["testbed"], r["meta_length"], r["fraction"], r["seed"]): r["final_val_loss"]["mlm"]
               for r in results if r["arm"] == "uniform"}
    groups = {}
    for key, runs in sorted(runs_of.items()):
        runs.sort(key=lambda r: r["seed"])
        first, n = runs[0], len(runs)
        steps = first["settings"]["max_train_steps"]
        planted = PLANTED in first["objectives"]
        weights = {name: [second_half(r["rows"], steps, name) for r in runs] for name in first["objectives"]}
        second = weights.get(PLANTED, [None] * n)
        told_apart = [discrimination(r["rows"], steps) if planted else None for r in runs]
        mlm = [r["final_val_loss"]["mlm"] for r in runs]
        paired = [r["final_val_loss"]["mlm"] - uniform[u] if (u := (r["testbed"], r["meta_length"], r["fraction"],
                                                                     r["seed"])) in uniform else None for r in runs]
        regret = [r["final_val_loss"]["mlm"] - oracle[o] if (o := (r["testbed"], r["seed"])) in oracle else None
                  for r in runs]
        correlations = [window_correlations(r["rows"]) for r in runs]
        signal = [signal_by_half(r["rows"], steps) for r in runs]
        group = {
            "testbed": first["testbed"], "meta_length": first["meta_length"], "fraction": first["fraction"],
            "arm": first["arm"], "seeds": [r["seed"] for r in runs], "updates": steps // first["meta_length"],
            "seconds_per_run": mean_std([r.get("seconds") for r in runs]),
            "cpu_seconds_per_run": mean_std([r.get("cpu_seconds") for r in runs]),
            "second_half_weights": {name: mean_std(ws) for name, ws in weights.items()},
            "second_half_weight": mean_std(second), "second_half_weight_per_seed": second,
            "seeds_below_0.10": sum(w is not None and w < DROPPED for w in second) if planted else None,
            "seeds_at_least_0.15": sum(w is not None and w >= KEPT for w in second) if planted else None,
            "discrimination": mean_std(told_apart), "discrimination_per_seed": told_apart,
            "time_to_drop_per_seed": [time_to_drop(r["rows"]) if planted else None for r in runs],
            "final_mlm_loss": mean_std(mlm), "final_mlm_loss_per_seed": mlm,
            "mlm_loss_minus_uniform": mean_std(paired, expected=n), "mlm_loss_minus_uniform_per_seed": paired,
            "regret": mean_std(regret, expected=n), "regret_per_seed": regret,
            "harm_correlation_per_seed": [c["draws_vs_mlm_loss_change"] for c in correlations],
            "window_correlations": {k: mean_std([c[k] for c in correlations])
                                    for k in ("draws_vs_mlm_loss_change", "draws_vs_reward")},
            "signal_by_half": {half: {k: mean_std([s[half][k] for s in signal])
                                      for k in ("mean_abs_advantage", "zero_reward_share")}
                               for half in ("first", "second")},
            "planted_lowest_and_last_per_seed": [low_and_last(r["rows"]) if planted else None for r in runs],
        }
        if planted and first["fraction"] == 0:
            duplicate = [d - m if None not in (d, m) else None for d, m in zip(second, weights["mlm"])]
            group.update(duplicate_minus_mlm=mean_std(duplicate), duplicate_minus_mlm_per_seed=duplicate)
        groups[key] = group
    for key, g in groups.items():
        g["bar"] = _bar(g, groups)
    return groups


def _most(count, n):
    """At least 4 of 5 seeds (the same share of another n)."""
    return n >= 5 and count >= 0.8 * n


def _bar(g, groups):
    """The bar for a robust MOMETAS arm at f = 1 (None where it does not apply; ``holds`` None without the
    f = 0 control, which is a missing result, not a pass)."""
    if g["arm"] not in ROBUST or g["fraction"] != 1.0 or len(g["seeds"]) < 5:
        return None
    uniform = groups.get(f"{g['testbed']}/K{g['meta_length']}/f1/uniform")
    control = groups.get(f"{g['testbed']}/K{g['meta_length']}/f0/{g['arm']}")
    dropped = g["seeds_below_0.10"] >= 4
    no_worse = uniform is not None and g["final_mlm_loss"]["mean"] <= uniform["final_mlm_loss"]["mean"]
    kept = None if control is None or len(control["seeds"]) < 5 else control["seeds_at_least_0.15"] >= 4
    holds = False if not (dropped and no_worse) or kept is False else (None if kept is None else True)
    return {"dropped_in_4_of_5": dropped, "mlm_no_worse_than_uniform": no_worse, "duplicate_kept_in_4_of_5": kept,
            "holds": holds}


def verdicts(groups):
    """Per (testbed, K, arm) that learns: does it detect harm, or only favour what it is rewarded for?

    It detects harm when, at f = 1, the planted objective's discrimination is below 0 in at least 4 of 5
    seeds and, at f = 0, the duplicate keeps a weight of at least 0.15 in at least 4 of 5 seeds. A sampler
    that pushes the duplicate down too favours the rewarded objective. One that does not set the planted
    objective apart at f = 1 detects nothing, and needs no control to say so; one that does, without its
    f = 0 runs, is not concluded. Fewer than 5 seeds conclude nothing.
    """
    out = {}
    for g in groups.values():
        if g["fraction"] != 1.0 or g["arm"] in ("uniform", "oracle") or g["seeds_below_0.10"] is None:
            continue
        control = groups.get(f"{g['testbed']}/K{g['meta_length']}/f0/{g['arm']}")
        n = len(g["seeds"])
        apart = sum(d is not None and d < 0 for d in g["discrimination_per_seed"])
        kept = None if control is None else control["seeds_at_least_0.15"]
        if n < 5 or sum(d is not None for d in g["discrimination_per_seed"]) < n:
            verdict = f"not concluded: {n} of 5 seeds at f = 1" if n < 5 else "not concluded: no discrimination measured"
        elif control is None:
            verdict = ("does not tell the harm apart" if not _most(apart, n)
                       else "not concluded: sets the harm apart, but has no f = 0 control")
        elif len(control["seeds"]) < 5:
            verdict = f"not concluded: {n} of 5 seeds at f = 1, {len(control['seeds'])} of 5 at f = 0"
        elif not _most(kept, len(control["seeds"])):
            verdict = "favours the rewarded objective (the useful duplicate is pushed down too)"
        elif _most(apart, n):
            verdict = "detects harm"
        else:
            verdict = "keeps the duplicate but does not tell the harm apart"
        out[f"{g['testbed']}/K{g['meta_length']}/{g['arm']}"] = {
            "testbed": g["testbed"], "meta_length": g["meta_length"], "arm": g["arm"], "seeds": n,
            "discrimination_negative_seeds": apart, "duplicate_kept_seeds": kept,
            "control_seeds": None if control is None else len(control["seeds"]), "verdict": verdict}
    return out


def _ms(d, digits=3):
    if d is None:
        return "–"
    spread = f" ± {d['std']:.{digits}f}" if d["n"] > 1 else ""  # one seed has no spread
    return f"{d['mean']:.{digits}f}{spread} (n={d['n']})"


def _drops(g):
    drops = g["time_to_drop_per_seed"]
    if g["seeds_below_0.10"] is None:
        return "–"
    made = sorted(d for d in drops if d is not None)
    if not made:
        return "never"
    return f"{len(made)}/{len(drops)} (median {statistics.median(made):g})"


ORDER = ["uniform", "gradient", "loss", "exp3", "exp3_raw", "paper", "robust_all", "robust_mlm", "robust_mlm_lambda1",
         "robust_mlm_lr_lambda", "oracle"]


def markdown(groups) -> str:
    """One table per (testbed, K, f), the arms as rows; then the verdicts."""
    lines = []
    tables = sorted({(g["testbed"], g["meta_length"], g["fraction"]) for g in groups.values()},
                    key=lambda t: (t[0] != "minilm2k", t[0], -t[1], -t[2]))
    for testbed, k, f in tables:
        rows = [g for g in groups.values() if (g["testbed"], g["meta_length"], g["fraction"]) == (testbed, k, f)]
        rows.sort(key=lambda g: ORDER.index(g["arm"]) if g["arm"] in ORDER else 99)
        lines += ["", f"**{testbed}, K = {k} ({rows[0]['updates']} updates), f = {f:g}**", ""]
        if f == 0:
            lines += ["| arm | seeds | 2nd-half p(duplicate) | p(mlm) | duplicate − MLM | discrimination | "
                      "seeds ≥ 0.15 | final MLM val loss | Δ vs uniform (paired) |", "|---|---|---|---|---|---|---|---|---|"]
            for g in rows:
                kept = "–" if g["seeds_at_least_0.15"] is None else f"{g['seeds_at_least_0.15']}/{len(g['seeds'])}"
                lines.append(f"| {g['arm']} | {len(g['seeds'])} | {_ms(g['second_half_weight'])} | "
                             f"{_ms(g['second_half_weights'].get('mlm'))} | {_ms(g.get('duplicate_minus_mlm'))} | "
                             f"{_ms(g['discrimination'])} | {kept} | {_ms(g['final_mlm_loss'])} | "
                             f"{_ms(g['mlm_loss_minus_uniform'])} |")
            continue
        lines += ["| arm | seeds | 2nd-half p(planted) | discrimination | seeds < 0.10 | time to drop | final MLM val loss "
                  "| Δ vs uniform (paired) | regret vs oracle (paired) | harm corr. | bar |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for g in rows:
            below = "–" if g["seeds_below_0.10"] is None else f"{g['seeds_below_0.10']}/{len(g['seeds'])}"
            bar = "–" if g["bar"] is None else {True: "holds", False: "fails", None: "no control"}[g["bar"]["holds"]]
            lines.append(f"| {g['arm']} | {len(g['seeds'])} | {_ms(g['second_half_weight'])} | "
                         f"{_ms(g['discrimination'])} | {below} | {_drops(g)} | {_ms(g['final_mlm_loss'])} | "
                         f"{_ms(g['mlm_loss_minus_uniform'])} | {_ms(g['regret'])} | "
                         f"{_ms(g['window_correlations']['draws_vs_mlm_loss_change'], 2)} | {bar} |")
    found = verdicts(groups)
    if found:
        lines += ["", "**Verdicts** (discrimination < 0 at f = 1, and the duplicate at ≥ 0.15 at f = 0, in 4 of 5 seeds)",
                  "", "| testbed | K | arm | seeds with discrimination < 0 | duplicate kept (f = 0) | verdict |",
                  "|---|---|---|---|---|---|"]
        for v in sorted(found.values(), key=lambda v: (v["testbed"], v["meta_length"],
                                                       ORDER.index(v["arm"]) if v["arm"] in ORDER else 99)):
            kept = "–" if v["control_seeds"] is None else f"{v['duplicate_kept_seeds']}/{v['control_seeds']}"
            lines.append(f"| {v['testbed']} | {v['meta_length']} | {v['arm']} | "
                         f"{v['discrimination_negative_seeds']}/{v['seeds']} | {kept} | {v['verdict']} |")
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
        steps = [end for _, end, _ in drawn_weights(runs[0]["rows"])]
        series = np.array([[mean.get(PLANTED, 0.0) for _, _, mean in drawn_weights(r["rows"])] for r in runs])
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

"""The planted benchmark's words: the verdict paragraph of docs/study.md and the README's lines, written from
``study/results/benchmark.json`` and ``study/results/sampler_model.json`` alone.

Every number they print is read from those files, so the text changes when more runs land
(``python study/planted.py --report_only --grid benchmark`` rewrites both blocks). A cell with fewer
than 5 seeds, or an arm without its f = 0 control, is said to be missing, never passed.
"""

from __future__ import annotations

import statistics

from planted_analysis import ORDER

RECIPE = "robust_mlm"
#: The one estimator change the benchmark tries (study/planted.py's arm of that name).
CANDIDATE = "robust_mlm_lr_lambda"
#: What each arm is, in the words of the docs.
ARM_NAMES = {
    "uniform": "uniform (Ub)", "gradient": "Gb", "loss": "Lb", "paper": "the literal paper (`--paper_reward`)",
    "robust_all": "MOMETAS, default reward", "robust_mlm": "the recipe (`--reward_objectives mlm`, λ = 3)",
    "robust_mlm_lambda1": "the recipe at λ = 1",
    "robust_mlm_lr_lambda": "the recipe with λ following the learning rate", "exp3": "EXP3 on scale-free losses",
    "exp3_raw": "EXP3 on raw losses (ODM)", "oracle": "the oracle",
}


def _mean(d, digits=3, sign=""):
    """mean ± std (n = …); one value has no spread to print."""
    if d is None:
        return "missing"
    spread = f" ± {d['std']:.{digits}f}" if d["n"] > 1 else ""
    return f"{d['mean']:{sign}.{digits}f}{spread} (n = {d['n']})"


def _seeds(n):
    return f"{n} shared seed{'s' if n != 1 else ''}"


def _spread(diffs):
    """mean, std and n of per-seed differences (None without any)."""
    if not diffs:
        return None
    return {"mean": statistics.fmean(diffs), "std": statistics.pstdev(diffs) if len(diffs) > 1 else 0.0, "n": len(diffs)}


def _paired(a, b):
    """Per shared seed: final MLM loss of group a minus group b; with the number of shared seeds."""
    if a is None or b is None:
        return None
    diffs, _ = _per_seed_difference(a, b, "final_mlm_loss_per_seed")
    return None if not diffs else {**_spread(diffs), "better": sum(d < 0 for d in diffs)}


def _per_seed_difference(a, b, key):
    """a's per-seed ``key`` minus b's, on the seeds both have: (differences, seeds)."""
    theirs = dict(zip(b["seeds"], b[key]))
    pairs = [(x - theirs[s], s) for s, x in zip(a["seeds"], a[key]) if x is not None and theirs.get(s) is not None]
    return [d for d, _ in pairs], [s for _, s in pairs]


def candidate_decision(groups) -> dict | None:
    """The estimator change against the recipe on the same seeds, in the (testbed, K) it ran at (None: it has
    not run): discrimination at f = 1 (lower is better) and the duplicate's weight at f = 0 (higher is
    better). It becomes the default only if both improve on average over 5 shared seeds each."""
    ran = sorted({(g["testbed"], g["meta_length"]) for g in groups.values() if g["arm"] == CANDIDATE})
    if not ran:
        return None
    testbed, k = ran[0]
    cell = {f: {arm: groups.get(f"{testbed}/K{k}/f{f:g}/{arm}") for arm in (RECIPE, CANDIDATE)} for f in (1.0, 0.0)}
    out = {"testbed": testbed, "meta_length": k, "arm": CANDIDATE, "against": RECIPE}
    for f, key, name in ((1.0, "discrimination_per_seed", "discrimination"),
                         (0.0, "second_half_weight_per_seed", "duplicate_weight")):
        mine, recipe = cell[f][CANDIDATE], cell[f][RECIPE]
        diffs, seeds = _per_seed_difference(mine, recipe, key) if mine and recipe else ([], [])
        out[f"{name}_minus_recipe_per_seed"] = diffs
        out[f"{name}_seeds"] = seeds
        out[f"{name}_minus_recipe"] = _spread(diffs)
    d, w = out["discrimination_minus_recipe"], out["duplicate_weight_minus_recipe"]
    if d is None or w is None or d["n"] < 5 or w["n"] < 5:
        out["decision"] = "not concluded: fewer than 5 shared seeds at f = 1 or f = 0"
    elif d["mean"] < 0 and w["mean"] > 0:
        out["decision"] = "improves both: make it the default"
    else:
        out["decision"] = "does not improve both: the defaults stay"
    return out


def _cells(groups):
    return sorted({(g["testbed"], g["meta_length"]) for g in groups.values()
                   if g["testbed"] in ("minilm", "minilm2k")}, key=lambda c: c[1])


def verdict_markdown(summary: dict, power: dict | None) -> str:
    """docs/study.md's reading of the planted benchmark: control, rivals, K = 100 and the power analysis."""
    groups, verdicts = summary["groups"], summary.get("verdicts", {})
    lines = []
    for testbed, k in _cells(groups):
        at = {(g["fraction"], g["arm"]): g for g in groups.values() if (g["testbed"], g["meta_length"]) == (testbed, k)}
        recipe, uniform = at.get((1.0, RECIPE)), at.get((1.0, "uniform"))
        lines.append(f"**{testbed}, K = {k}.**")
        controls = sorted((arm for f, arm in at if f == 0.0), key=lambda a: ORDER.index(a) if a in ORDER else 99)
        if controls:
            lines.append("")
            lines.append("* **The f = 0 control** (the planted objective a plain duplicate of MLM): "
                         + "; ".join(f"{ARM_NAMES.get(arm, arm)} gave the duplicate "
                                     f"{_mean(at[(0.0, arm)]['second_half_weight'])} against MLM's "
                                     f"{_mean(at[(0.0, arm)]['second_half_weights'].get('mlm'))}, at least 0.15 in "
                                     f"{at[(0.0, arm)]['seeds_at_least_0.15']} of {len(at[(0.0, arm)]['seeds'])} seeds"
                                     for arm in controls) + ".")
        else:
            lines += ["", "* **The f = 0 control was not run here**: nothing below can tell detecting harm from "
                      "favouring the rewarded objective."]
        for (f, arm), g in sorted(at.items(), key=lambda x: ORDER.index(x[0][1]) if x[0][1] in ORDER else 99):
            if f != 1.0 or arm in ("uniform", "oracle") or g["second_half_weight"] is None:
                continue
            vs_recipe = _paired(g, recipe) if arm != RECIPE else None
            text = (f"* {ARM_NAMES.get(arm, arm)}: planted weight {_mean(g['second_half_weight'])}, below 0.10 in "
                    f"{g['seeds_below_0.10']} of {len(g['seeds'])} seeds; discrimination "
                    f"{_mean(g['discrimination'])}; final MLM loss minus uniform's "
                    f"{_mean(g['mlm_loss_minus_uniform'])}")
            if vs_recipe is not None:
                text += (f"; minus the recipe's {_mean(vs_recipe, sign='+')} on {_seeds(vs_recipe['n'])} "
                         f"(lower in {vs_recipe['better']})")
            verdict = verdicts.get(f"{testbed}/K{k}/{arm}")
            lines.append(text + (f". Verdict: **{verdict['verdict']}**." if verdict else "."))
        oracle = at.get((1.0, "oracle"))
        if oracle is not None and uniform is not None:
            gap = _paired(uniform, oracle)
            if gap is not None:
                lines.append(f"* What the harm costs: uniform's final MLM loss minus the oracle's "
                             f"{_mean(gap, sign='+')} on {_seeds(gap['n'])}; the recipe's regret "
                             f"{_mean(recipe['regret']) if recipe else 'missing'}.")
        lines.append("")
    change = summary.get("candidate")
    if change:
        d, w = change["discrimination_minus_recipe"], change["duplicate_weight_minus_recipe"]
        lines += [f"**The one estimator change** ({ARM_NAMES[CANDIDATE]}, `--entropy_lambda_schedule learning_rate`, "
                  f"K = {change['meta_length']}), against the recipe on the same seeds: discrimination "
                  + ("missing" if d is None else f"{_mean(d, sign='+')} (lower in "
                     f"{sum(x < 0 for x in change['discrimination_minus_recipe_per_seed'])})")
                  + ", the duplicate's weight at f = 0 "
                  + ("missing" if w is None else f"{_mean(w, sign='+')} (higher in "
                     f"{sum(x > 0 for x in change['duplicate_weight_minus_recipe_per_seed'])})")
                  + f". Decision: **{change['decision']}**.", ""]
    if power:
        lines.append(power_sentence(power))
    return "\n".join(lines).strip()


def power_sentence(power: dict) -> str:
    """What the paper's K needs, by the power analysis; or why it predicts nothing."""
    from sampler_model import needed_updates

    checks = ". ".join(f"The K = {c['meta_length']} fit {'reproduces' if c['reproduces'] else 'does not reproduce'} "
                       f"{ARM_NAMES.get(c['arm'], c['arm'])} ({c['simulated']['second_half_mean']:.3f} simulated, "
                       f"{c['measured']['second_half_mean']:.3f} measured over {len(c['measured']['seeds'])} seeds)"
                       for c in power["checks"])
    if not power["trusted_fits"]:
        return f"**Power analysis.** {checks}: no fit reproduced its own runs, so the model predicts nothing."
    needs = []
    for name in power["trusted_fits"]:
        at = ", ".join(f"{needed_updates(power, name, k) or 'more than 200'} at K = {k}" for k in (25, 50, 100))
        needs.append(f"by the {name.replace('K', 'K = ')} fit, {at}")
    return (f"**Power analysis.** {checks}. Updates needed for the planted weight to fall below 0.10 in 4 of 5 "
            f"seeds with probability 0.8: " + "; ".join(needs) + ".")


SECTION3 = "docs/study.md#3-the-planted-benchmark-the-control-the-rivals-and-the-papers-k"


def _short(d):
    return "missing" if d is None else f"{d['mean']:.3f} (n = {d['n']})"


def readme_lines(summary: dict, power: dict | None) -> str:
    """At most 8 lines for the README: what the sampler does and does not detect, with numbers."""
    groups, verdicts = summary["groups"], summary.get("verdicts", {})
    recipe = groups.get(f"minilm/K25/f1/{RECIPE}")
    control = groups.get(f"minilm/K25/f0/{RECIPE}")
    uniform0 = groups.get("minilm/K25/f0/uniform")
    lines = [f"- The planted benchmark ([§2–3]({SECTION3})): a harmful objective (MLM on another row's targets) "
             "beside MLM, CSE, ATD and DTD, on MiniLM."]
    if recipe:
        lines.append(f"- At K = 25 the recipe (`--reward_objectives mlm`) drew it with weight "
                     f"{_short(recipe['second_half_weight'])} over the second half (uniform 0.20), below 0.10 in "
                     f"{recipe['seeds_below_0.10']} of {len(recipe['seeds'])} seeds; final MLM loss minus uniform's "
                     f"{_short(recipe['mlm_loss_minus_uniform'])}.")
    if control:
        lines.append(f"- Control, the same objective as a useful duplicate of MLM: the recipe kept it at "
                     f"{_short(control['second_half_weight'])}, MLM at "
                     f"{_short(control['second_half_weights'].get('mlm'))}"
                     + (f" (uniform: {_short(uniform0['second_half_weight'])})" if uniform0 else "") + ".")
    else:
        lines.append("- Its control (a useful duplicate of MLM in its place) has not run, so harm detection is not "
                     "yet told apart from favouring the rewarded objective.")
    rivals = [g for g in groups.values() if (g["testbed"], g["meta_length"], g["fraction"]) == ("minilm", 25, 1.0)
              and g["arm"] in ("exp3", "exp3_raw", "gradient", "loss", "paper")]
    if rivals:
        lines.append("- Rivals at K = 25, planted weight: " + "; ".join(
            f"{ARM_NAMES.get(g['arm'], g['arm'])} {_short(g['second_half_weight'])}"
            for g in sorted(rivals, key=lambda g: ORDER.index(g["arm"]))) + ".")
    concluded = [v for v in verdicts.values() if not v["verdict"].startswith("not concluded")]
    def evidence(v):
        kept = "" if v["duplicate_kept_seeds"] is None else (
            f", the duplicate at 0.15 or more in {v['duplicate_kept_seeds']} of {v['control_seeds']}")
        return f"discrimination below 0 in {v['discrimination_negative_seeds']} of {v['seeds']} seeds{kept}"

    lines.append("- Verdicts: " + ("; ".join(f"{ARM_NAMES.get(v['arm'], v['arm'])} at K = {v['meta_length']} "
                                             f"{v['verdict']} ({evidence(v)})" for v in concluded) + "."
                                   if concluded else "none yet (an arm needs 5 seeds at f = 1 and at f = 0)."))
    if power and power.get("trusted_fits"):
        from sampler_model import needed_updates

        fit = "K100" if "K100" in power["trusted_fits"] else power["trusted_fits"][0]
        n = needed_updates(power, fit, 100)
        testbed = next((g["updates"] for g in groups.values() if (g["testbed"], g["meta_length"]) == ("minilm2k", 100)),
                       None)
        lines.append(f"- At the paper's K = 100 a model checked against these runs needs "
                     f"{n if n else 'more than 200'} updates for 4 of 5 seeds below 0.10"
                     + (f"; the K = 100 testbed has {testbed}." if testbed else "."))
    return "\n".join(lines[:8])


def k8_markdown(folder) -> str:
    """Section 2's table: the K = 8 study's runs (``study/results/planted/``), measured as the benchmark's."""
    from pathlib import Path

    from common import read_json
    from planted_analysis import OBJECTIVES, analyse, markdown

    runs = []
    for path in sorted(Path(folder).glob("*.json")):
        run = read_json(path)
        # Those runs predate the benchmark's file format: their settings are the study's (400 steps, K = 8, f = 1).
        runs.append({**run, "testbed": "minilm", "meta_length": 8, "fraction": 1.0,
                     "objectives": run["rows"][0].get("objectives", OBJECTIVES), "settings": {"max_train_steps": 400}})
    return markdown(analyse(runs)) if runs else "No runs."

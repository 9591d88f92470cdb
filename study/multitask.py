#!/usr/bin/env python
"""Tasks as objectives: MOMETAS against uniform and size-proportional task sampling in multi-task GLUE fine-tuning.

    python study/multitask.py                 # 3 samplers x 2 seeds on MiniLM; see docs/multitask.md for the cost
    python study/multitask.py --report_only   # the table and figure from the cached runs, and docs/multitask.md's block

Every run is ``examples/multitask_glue.py`` on the offline MiniLM with the shared slices of SST-2,
MRPC, RTE, CoLA and STS-B, with the same steps, batches and learning rate; only ``--sampler`` and
``--seed`` change. Uniform and proportional runs meta-test too (``--baseline_meta_test``: it does
not change their training), so the three reward curves can be compared.

* ``uniform``: p_i = 1/5.
* ``proportional``: p_i ∝ n_i^(1/T), T = 2, with n_i the size of the task's full GLUE training
  set (``--task_sizes glue``). The slices hold 2000 training rows per task, so their own sizes
  would give exactly the uniform distribution (and, with the same seed, the very same run).
* ``mometas``: the meta-learned sampler, reward the summed relative drop of the five tasks'
  validation losses on rows held out of each task's TRAIN split.

Each finished run is cached as ``study/results/multitask/<sampler>_seed<seed>.json`` (settings,
dev metrics, history rows; no absolute paths) and skipped when the command runs again; a run
killed half way is started again. Models live in ``study/cache/multitask/`` (git-ignored).
Outputs: ``study/results/multitask.json`` (summary), ``multitask.md`` (table),
``multitask_weights.png`` (MOMETAS's task weights over time, and the cumulative rewards).
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS_DIR, ROOT, STUDY_DIR, data_dir, log, minilm_path, read_json, write_generated_blocks, write_json

SCRIPT = "examples/multitask_glue.py"
TASKS = ["sst2", "mrpc", "rte", "cola", "stsb"]
LABELS = {"sst2": "SST-2 (Acc)", "mrpc": "MRPC (Acc)", "rte": "RTE (Acc)", "cola": "CoLA (MCC)", "stsb": "STS-B (Spc)"}
# Reported beside the primary metrics (docs/finetuning_baselines.md gives both for these tasks).
SECONDARY = {"mrpc": ("f1", "MRPC (F1)"), "stsb": ("pearson", "STS-B (Pearson)")}
SAMPLERS = {
    "uniform": ["--sampler", "uniform", "--baseline_meta_test"],
    "proportional": ["--sampler", "proportional", "--temperature", "2", "--task_sizes", "glue", "--baseline_meta_test"],
    "mometas": ["--sampler", "mometas", "--meta_step_size", "0.1", "--entropy_lambda", "3"],
}
# The sizing (docs/multitask.md): 500 steps of 16 examples (about 100 per task, 0.8 epoch of each
# 1968-row slice), K = 20 -> 25 sampler updates, 32 held-out rows per task for the meta-test. The
# learning rate is 1e-4: in a uniform pilot at 5e-5 CoLA's held-out loss rose for 500 steps.
SETTINGS = ["--tasks", ",".join(TASKS), "--max_train_steps", "500", "--meta_length", "20",
            "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "64", "--learning_rate", "1e-4",
            "--max_seq_length", "128", "--warmup_ratio", "0.06", "--meta_test_examples", "32", "--logging_steps", "50"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samplers", default=",".join(SAMPLERS))
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--model_name_or_path", default=None, help="Default: the offline MiniLM.")
    p.add_argument("--data_dir", default=None, help="Default: $MOMETAS_DATA_DIR/glue.")
    p.add_argument("--name", default="multitask", help="Results name: study/results/<name>{.json,.md,_weights.png}.")
    p.add_argument("--results_dir", default=None, help="Default: study/results.")
    p.add_argument("--cache_dir", default=None, help="Models and logs; default: study/cache/<name> (git-ignored).")
    p.add_argument("--extra", default="", help="Extra flags for every run (quoted); they win over the settings.")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run.")
    p.add_argument("--report_only", action="store_true")
    args = p.parse_args(argv)
    args.samplers = [s for s in args.samplers.split(",") if s]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    if unknown := [s for s in args.samplers if s not in SAMPLERS]:
        p.error(f"--samplers: unknown {unknown}; choose from {list(SAMPLERS)}")
    if not args.seeds:
        p.error("--seeds: give at least one seed")
    return args


class Paths:
    """What the study writes, and how a path is written in a results file: never absolute."""

    def __init__(self, args):
        self.model = args.model_name_or_path or minilm_path()
        self.data = Path(args.data_dir) if args.data_dir else data_dir() / "glue"
        self.results = Path(args.results_dir) if args.results_dir else RESULTS_DIR
        self.runs = self.results / args.name
        self.cache = Path(args.cache_dir) if args.cache_dir else STUDY_DIR / "cache" / args.name

    def portable(self, value: str) -> str:
        text = str(value)
        if text == str(self.model):
            return "$MODEL"
        if text == str(self.data) or text.startswith(str(self.data) + os.sep):
            return "$MOMETAS_DATA_DIR/glue" + text[len(str(self.data)):]
        if os.path.isabs(text):
            try:
                return str(Path(text).resolve().relative_to(ROOT))
            except ValueError:
                return "$TMP/" + Path(text).name
        return text


def run_one(args, paths, sampler, seed, index, total):
    result_path = paths.runs / f"{sampler}_seed{seed}.json"
    if result_path.is_file():
        cached = read_json(result_path)
        log(f"[{index}/{total}] {sampler} seed {seed}: cached (average {100 * cached['average']:.1f})")
        return cached
    out = paths.cache / f"{sampler}_seed{seed}"
    command = [sys.executable, SCRIPT, "--model_name_or_path", str(paths.model), "--data_dir", str(paths.data),
               *SETTINGS, *SAMPLERS[sampler], "--seed", str(seed), "--output_dir", str(out),
               "--overwrite_output_dir", *shlex.split(args.extra)]
    log(f"[{index}/{total}] {sampler} seed {seed}: running (log {paths.portable(paths.cache / 'logs')}/"
        f"{sampler}_seed{seed}.log)")
    log_path = paths.cache / "logs" / f"{sampler}_seed{seed}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    tic = time.time()
    with open(log_path, "w") as f:
        done = subprocess.run(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise SystemExit(f"error: {sampler} seed {seed} failed (exit {done.returncode}); log {log_path}:\n{tail}")
    from mometas_utils.history import read_history

    metrics = read_json(out / "all_results.json")
    result = {
        "sampler": sampler, "seed": seed, "command": [paths.portable(c) for c in command[1:]],
        "dev": metrics["dev"], "primary_metric": metrics["primary_metric"], "primary": metrics["primary"],
        "average": metrics["average"], "steps_per_task": metrics["steps_per_task"],
        "train_rows": metrics["train_rows"], "meta_test_rows": metrics["meta_test_rows"], "dev_rows": metrics["dev_rows"],
        "final_probabilities": metrics["final_probabilities"], "wall_seconds": time.time() - tic,
        "cpu_seconds": metrics.get("cpu_seconds"), "rows": read_history(out),
    }
    write_json(result_path, result)
    log(f"[{index}/{total}] {sampler} seed {seed}: done in {result['wall_seconds'] / 60:.1f} min wall, "
        f"{(result['cpu_seconds'] or 0) / 60:.1f} min CPU; average {100 * result['average']:.1f}")
    return result


# ------------------------------------------------------------------------------- report


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    # Population std, as study/run_study.py: with 2 seeds it is half their distance.
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "values": values}


def summarize(args, runs):
    from mometas_utils.history import average_distribution, cumulative_reward

    tasks = [t for t in TASKS if all(t in r["primary"] for r in runs)] if runs else TASKS
    table, secondary, weights, rewards, terms, final_loss = {}, {}, {}, {}, {}, {}
    for sampler in args.samplers:
        mine = sorted((r for r in runs if r["sampler"] == sampler), key=lambda r: r["seed"])
        if not mine:
            continue
        row = {t: mean_std([100 * r["primary"][t] if r["primary"][t] is not None else None for r in mine])
               for t in tasks}
        row["average"] = mean_std([100 * r["average"] if r["average"] is not None else None for r in mine])
        row["seeds"] = [r["seed"] for r in mine]
        table[sampler] = row
        secondary[sampler] = {t: mean_std([100 * r["dev"][t][key] if r["dev"][t].get(key) is not None else None
                                           for r in mine]) for t, (key, _) in SECONDARY.items() if t in tasks}
        weights[sampler] = {
            "average": {r["seed"]: average_distribution(r["rows"], total_steps=sum(r["steps_per_task"].values()))
                        for r in mine},
            "final": {r["seed"]: r["final_probabilities"] for r in mine},
            "steps_per_task": {r["seed"]: r["steps_per_task"] for r in mine},
        }
        rewards[sampler] = {r["seed"]: cumulative_reward(r["rows"]) for r in mine}
        # What the reward was made of: each task's relative-drop terms summed over the meta-tests.
        final_loss[sampler] = {r["seed"]: next((row["val_loss"] for row in reversed(r["rows"]) if row.get("val_loss")), None)
                               for r in mine}
        terms[sampler] = {r["seed"]: {t: sum((row.get("reward_terms") or {}).get(t) or 0.0 for row in r["rows"])
                                      for t in tasks} for r in mine}
    comparison = compare_to_uniform(table, tasks, runs)
    cost = {f"{r['sampler']}_seed{r['seed']}": {"wall_seconds": r["wall_seconds"], "cpu_seconds": r["cpu_seconds"]}
            for r in runs}
    return {"tasks": tasks, "table": table, "secondary": secondary, "against_uniform": comparison,
            "weights": weights, "cumulative_reward": rewards, "reward_terms_total": terms,
            "final_heldout_loss": final_loss, "cost": cost,
            "cpu_hours": sum((r["cpu_seconds"] or 0) for r in runs) / 3600,
            "wall_hours": sum(r["wall_seconds"] for r in runs) / 3600}


def compare_to_uniform(table, tasks, runs):
    """Per sampler and task: mean difference from uniform, whether it lies within the seeds' spread (the larger of
    the two stds, as study/run_study.py), and the paired per-seed differences (the same seed shares held-out rows
    and each task's batch order)."""
    reference = table.get("uniform")
    out = {}
    if not reference:
        return out
    by_key = {(r["sampler"], r["seed"]): r for r in runs}
    for sampler, row in table.items():
        if sampler == "uniform":
            continue
        cells = {}
        for key in [*tasks, "average"]:
            a, b = row.get(key), reference.get(key)
            if a is None or b is None:
                continue
            diff, spread = a["mean"] - b["mean"], max(a["std"], b["std"])
            paired = []
            for seed in row["seeds"]:
                mine, base = by_key.get((sampler, seed)), by_key.get(("uniform", seed))
                if mine and base:
                    x = mine["average"] if key == "average" else mine["primary"][key]
                    y = base["average"] if key == "average" else base["primary"][key]
                    if x is not None and y is not None:
                        paired.append(100 * (x - y))
            cells[key] = {"difference": diff, "spread": spread, "within_spread": abs(diff) <= spread,
                          "paired_differences": paired}
        out[sampler] = cells
    return out


def markdown(summary) -> str:
    tasks = summary["tasks"]

    def cell(d):
        return "–" if d is None else f"{d['mean']:.1f} ± {d['std']:.1f}"

    sec = [t for t in SECONDARY if t in tasks]
    lines = ["| sampler | " + " | ".join(LABELS[t] for t in tasks) + " | **Avg** | "
             + " | ".join(SECONDARY[t][1] for t in sec) + " |",
             "|---" * (len(tasks) + 2 + len(sec)) + "|"]
    for sampler, row in summary["table"].items():
        lines.append(f"| {sampler} | " + " | ".join(cell(row[t]) for t in tasks) + f" | **{cell(row['average'])}** | "
                     + " | ".join(cell(summary["secondary"][sampler].get(t)) for t in sec) + " |")
    lines += ["", "Mean ± std over seeds " + ", ".join(map(str, next(iter(summary["table"].values()))["seeds"]))
              + " (population std: half the distance of 2 seeds); dev sets, × 100 (MCC too). Avg: mean of the five "
              "primary metrics.", ""]
    if summary["against_uniform"]:
        lines += ["Against uniform (within the spread: |difference| ≤ the larger of the two stds; "
                  "in brackets the paired per-seed differences):", ""]
        for sampler, cells in summary["against_uniform"].items():
            parts = []
            for key, c in cells.items():
                label = "Avg" if key == "average" else LABELS[key]
                paired = ", ".join(f"{d:+.1f}" for d in c["paired_differences"])
                parts.append(f"{label} {c['difference']:+.1f} ({'within' if c['within_spread'] else 'beyond'}; "
                             f"{paired})")
            lines.append(f"- {sampler}: " + "; ".join(parts))
    lines += ["", "Task weights: average over training (final) per seed, and steps trained per task:", "",
              "| sampler | seed | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 2) + "|"]
    for sampler, w in summary["weights"].items():
        for seed, avg in w["average"].items():
            final = w["final"][seed]
            steps = w["steps_per_task"][seed]
            lines.append(f"| {sampler} | {seed} | " + " | ".join(
                f"{avg.get(t, 0):.3f} ({final.get(t, 0):.3f}), {steps.get(t, 0)} steps" for t in tasks) + " |")
    lines += ["", "Reward terms summed over the meta-tests, per task (the summed relative drop of its held-out loss):", "",
              "| sampler | seed | " + " | ".join(tasks) + " | total |", "|---" * (len(tasks) + 3) + "|"]
    for sampler, per_seed in summary["reward_terms_total"].items():
        for seed, by_task in per_seed.items():
            lines.append(f"| {sampler} | {seed} | " + " | ".join(f"{by_task[t]:+.3f}" for t in tasks)
                         + f" | {sum(by_task.values()):+.3f} |")
    lines += ["", "Held-out (meta-test) loss per task at the last meta-test (STS-B: MSE):", "",
              "| sampler | seed | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 2) + "|"]
    for sampler, per_seed in summary["final_heldout_loss"].items():
        for seed, losses in per_seed.items():
            if losses:
                lines.append(f"| {sampler} | {seed} | " + " | ".join(f"{losses[t]:.3f}" for t in tasks) + " |")
    lines += ["", f"Cost: {summary['cpu_hours']:.2f} CPU hours ({summary['wall_hours']:.2f} h wall) for "
              f"{len(summary['cost'])} runs; per run: " + ", ".join(
                  f"{name} {c['cpu_seconds'] / 60:.1f} min CPU ({c['wall_seconds'] / 60:.1f} wall)"
                  for name, c in summary["cost"].items() if c["cpu_seconds"] is not None)]
    return "\n".join(lines)


def plot(summary, path: Path):
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    tasks = summary["tasks"]
    colors = {t: colormaps["tab10"](i) for i, t in enumerate(tasks)}
    runs = summary.get("mometas_rows", {})
    fig = Figure(figsize=(10, 7), layout="constrained")
    grid = fig.subplot_mosaic([[f"seed{s}" for s in runs] or ["none"], ["reward"] * max(1, len(runs))])
    for seed, rows in runs.items():
        ax = grid[f"seed{seed}"]
        with_p = [r for r in rows if r.get("probabilities")]
        steps = [r["step"] for r in with_p]
        for t in tasks:
            ax.step(steps, [r["probabilities"][t] for r in with_p], where="post", label=t, color=colors[t])
        ax.axhline(1 / len(tasks), color="gray", linestyle="--", linewidth=1)
        ax.set_title(f"MOMETAS task weights, seed {seed}")
        ax.set_xlabel("training step")
        ax.set_ylabel("sampling probability")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    top = max((p for rows in runs.values() for r in rows if r.get("probabilities") for p in r["probabilities"].values()),
              default=1.0)
    for seed in runs:  # one scale for every seed's panel
        grid[f"seed{seed}"].set_ylim(0, min(1.0, top * 1.08))
    ax = grid["reward"]
    styles = ["-", "--", ":", "-."]
    for i, (sampler, curves) in enumerate(summary["cumulative_reward"].items()):
        for j, (seed, (steps, cum)) in enumerate(curves.items()):
            if steps:
                ax.plot(steps, cum, color=f"C{i}", linestyle=styles[j % len(styles)], label=f"{sampler} seed {seed}")
    ax.set_title("Cumulative reward ΣR(τ), all samplers (only MOMETAS learns from it)")
    ax.set_xlabel("training step")
    ax.set_ylabel("cumulative reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=3)
    fig.savefig(path, dpi=100)


def generated_blocks(results=RESULTS_DIR / "multitask.json") -> dict:
    """The blocks of the docs that quote ``study/results/multitask.json``: {(doc, block name): text}."""
    return {("docs/multitask.md", "multitask-results"): markdown(read_json(results))}


def main(argv=None):
    args = parse_args(argv)
    paths = Paths(args)
    jobs = [(sampler, seed) for seed in args.seeds for sampler in args.samplers]
    if args.report_only:
        runs = [r for s, seed in jobs if (r := read_json(paths.runs / f"{s}_seed{seed}.json"))]
    else:
        log(f"{len(jobs)} runs ({', '.join(args.samplers)} x seeds {args.seeds}), {args.threads} thread(s) each")
        runs = [run_one(args, paths, s, seed, i, len(jobs)) for i, (s, seed) in enumerate(jobs, 1)]
    if not runs:
        raise SystemExit("error: no finished runs to report")
    summary = summarize(args, runs)
    write_json(paths.results / f"{args.name}.json", {
        "script": SCRIPT, "settings": SETTINGS, "samplers": {s: SAMPLERS[s] for s in args.samplers},
        "extra": args.extra, "seeds": args.seeds, "model": "$MODEL (the offline MiniLM unless --model_name_or_path)",
        "data": "$MOMETAS_DATA_DIR/glue", "runs": [f"{args.name}/{r['sampler']}_seed{r['seed']}.json" for r in runs],
        **summary,
    })
    summary["mometas_rows"] = {r["seed"]: r["rows"] for r in runs if r["sampler"] == "mometas"}
    plot(summary, paths.results / f"{args.name}_weights.png")
    text = markdown(summary)
    (paths.results / f"{args.name}.md").write_text(text + "\n")
    print(text)
    if args.name == "multitask" and paths.results.resolve() == RESULTS_DIR.resolve():
        write_generated_blocks(generated_blocks())
    log(f"done: {len(runs)} runs, {summary['cpu_hours']:.2f} CPU hours")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""A small-scale Table 2 with seeds: Ub, Gb, Lb and MOMETAS, pre-trained and then fine-tuned.

    python study/run_study.py --preset cpu-small          # 2.4 h on one core of a shared 2-core machine
    python study/run_study.py --preset gpu-base --dataset_name allenai/c4 --dataset_config_name en \\
        --launcher "accelerate launch"                    # the paper's scale (Table 6), 8 GPUs

1. Pre-training: every sampler continually pre-trains the same checkpoint on the same corpus,
   with the same number of steps and sequences, for each seed, with ``run_mometas_pretraining.py``.
   Every run meta-tests every K steps (``--baseline_meta_test`` for the rule-based samplers), so
   the reward curves of Figure 3 can be compared.
2. Fine-tuning: every pre-trained model and the untouched checkpoint are fine-tuned on each task
   with the project's own scripts, one seed, the same hyperparameters for all.
3. Report: ``study/results/study_<preset>.json`` (every number), ``study_<preset>_weights.png``
   (Figure 2), ``study_<preset>_reward.png`` (Figure 3) and the Table 2 layout printed as Markdown.

Each finished run is cached in ``study/results/study_<preset>/`` and skipped when the command runs
again, so the study can be stopped and continued; a run killed half way is started again (or
resumed from its latest checkpoint when it has one). Pre-trained models live in ``study/cache/``
and are deleted once all their fine-tuning runs are done: the study keeps numbers, not models.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import (RESULTS_DIR, ROOT, STUDY_DIR, data_dir, log, minilm_path, portable, read_json, wiki_corpus,
                    write_generated_blocks, write_json)

SAMPLERS = ["uniform", "gradient", "loss", "mometas"]
LABELS = {"base": "MiniLM (no continual pre-training)", "uniform": "Ub", "gradient": "Gb", "loss": "Lb",
          "mometas": "MOMETAS"}


def _glue(task, folder):
    return lambda d: ["run_glue.py", "--task_name", task, "--train_file", str(d / "glue" / folder / "train.tsv"),
                      "--validation_file", str(d / "glue" / folder / "dev.tsv")]


# Per task: the command (script and data flags), the metric keys to read (first found), the label.
TASKS = {
    "sst2": (_glue("sst2", "sst2"), ["eval_accuracy"], "SST-2 (Acc)"),
    "mrpc": (_glue("mrpc", "mrpc"), ["eval_accuracy"], "MRPC (Acc)"),
    "stsb": (_glue("stsb", "stsb"), ["eval_spearmanr", "eval_spearman"], "STS-B (Spc)"),
    "conll2003": (lambda d: ["run_ner.py", "--train_file", str(d / "conll2003" / "train.txt"),
                             "--validation_file", str(d / "conll2003" / "valid.txt")],
                  ["eval_f1", "eval_overall_f1"], "CoNLL (F1)"),
}

PRESETS = {
    "cpu-small": dict(
        # Measured 2.4 h on one core of the shared 2-core machine (2026-11-27): 12 pre-training runs of
        # 200 steps x 8 x 64 tokens (K = 10: 20 sampler updates) and 52 fine-tuning runs of 1000 examples.
        model=None,  # the offline MiniLM
        train_documents=4_000, validation_documents=200,
        pretrain=["--max_seq_length", "64", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size",
                  "32", "--max_train_steps", "200", "--meta_length", "10", "--learning_rate", "5e-5",
                  "--entity_tagger", "spacy", "--logging_steps", "20"],
        seeds=[1, 2, 3],
        finetune=["--per_device_train_batch_size", "32", "--per_device_eval_batch_size", "64", "--learning_rate",
                  "5e-5", "--max_length", "64", "--warmup_ratio", "0.06", "--num_train_epochs", "2",
                  "--max_train_samples", "1000", "--seed", "42"],
        tasks=["sst2", "mrpc", "stsb", "conll2003"],
    ),
    "gpu-base": dict(
        model="bert-base-uncased",
        train_documents=None, validation_documents=None,  # --dataset_name; validation split of the script
        pretrain=["--max_seq_length", "256", "--per_device_train_batch_size", "64", "--per_device_eval_batch_size",
                  "128", "--max_train_steps", "50000", "--meta_length", "100", "--learning_rate", "5e-5",
                  "--entity_tagger", "stanza", "--logging_steps", "100", "--checkpointing_steps", "5000",
                  "--preprocessing_num_workers", "16"],
        seeds=[1, 2, 3],
        finetune=["--hparams", "paper", "--seed", "42"],
        tasks=["sst2", "mrpc", "stsb", "conll2003"],
    ),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    p.add_argument("--model_name_or_path", default=None, help="Override the preset's checkpoint.")
    p.add_argument("--dataset_name", default=None, help="A Hub corpus (gpu-base), instead of the Wikipedia sample.")
    p.add_argument("--train_file", default=None, help="A local corpus (one document per line) instead of the sample.")
    p.add_argument("--dataset_config_name", default=None)
    p.add_argument("--samplers", default=",".join(SAMPLERS))
    p.add_argument("--seeds", default=None, help="Comma-separated; default: the preset's.")
    p.add_argument("--tasks", default=None, help="Comma-separated; default: the preset's.")
    p.add_argument("--launcher", default=None, help='How to start the pre-training script, e.g. "accelerate launch".')
    p.add_argument("--extra_pretrain", default="", help="Extra pre-training flags (quoted); they win.")
    p.add_argument("--extra_finetune", default="", help="Extra fine-tuning flags (quoted); they win.")
    p.add_argument("--train_documents", type=int, default=None, help="Override the preset's corpus size.")
    p.add_argument("--validation_documents", type=int, default=None)
    p.add_argument("--name", default=None, help="Results name (default: study_<preset>).")
    p.add_argument("--keep_models", action="store_true", help="Keep the pre-trained models in study/cache.")
    p.add_argument("--report_only", action="store_true")
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    args.seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else preset["seeds"]
    args.tasks = args.tasks.split(",") if args.tasks else preset["tasks"]
    args.samplers = [s for s in args.samplers.split(",") if s]
    for name, values, known in (("--samplers", args.samplers, SAMPLERS), ("--tasks", args.tasks, TASKS)):
        if unknown := [v for v in values if v not in known]:
            p.error(f"{name}: unknown {unknown}; choose from {list(known)}")
    args.name = args.name or f"study_{args.preset}"
    for key in ("train_documents", "validation_documents"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    return args


# ------------------------------------------------------------------------------- stages


def corpus_flags(args, preset, cache: Path) -> list[str]:
    """Local train/validation files split once (so every run and seed shares one cached, tagged corpus)."""
    if args.dataset_name:
        flags = ["--dataset_name", args.dataset_name, "--streaming"]
        return flags + (["--dataset_config_name", args.dataset_config_name] if args.dataset_config_name else [])
    train, validation = cache / "corpus" / "train.txt", cache / "corpus" / "validation.txt"
    if not validation.is_file():
        source = Path(args.train_file) if args.train_file else wiki_corpus()
        documents = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
        # Every 50th document is held out; the split does not depend on any run's seed.
        held = documents[::50][: args.validation_documents]
        kept = [d for i, d in enumerate(documents) if i % 50][: args.train_documents]
        train.parent.mkdir(parents=True, exist_ok=True)
        for path, lines in ((train, kept), (validation, held)):
            tmp = path.with_suffix(".tmp")
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
            os.replace(tmp, path)
    return ["--train_file", str(train), "--validation_file", str(validation)]


def run(command, log_path: Path, env=None):
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as out:
        done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})})
    if done.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise SystemExit(f"error: {' '.join(command[:3])} ... failed (exit {done.returncode}); log {log_path}:\n"
                         + "\n".join(tail))


def has_checkpoint(folder: Path) -> bool:
    return any((p / marker).is_file() for p in folder.glob("step_*") if p.is_dir()
               for marker in ("mometas_checkpoint.json", "mometas_state.json"))


def pretrain(args, preset, cache, results, sampler, seed, corpus, index, total):
    result_path = results / f"pretrain_{sampler}_seed{seed}.json"
    if result_path.is_file():
        return read_json(result_path)
    out = cache / "models" / f"{sampler}_seed{seed}"
    resume = ["--resume_from_checkpoint", "latest"] if has_checkpoint(out) else ["--overwrite_output_dir"]
    log(f"[pretrain {index}/{total}] {LABELS[sampler]} seed {seed}{' (resuming)' if resume[0] != '--overwrite_output_dir' else ''}")
    launcher = shlex.split(args.launcher) if args.launcher else [sys.executable]
    command = [*launcher, "run_mometas_pretraining.py", "--model_name_or_path", args.model, *corpus,
               "--objectives", "mlm,cse,atd,dtd,emlm", "--sampler", sampler, "--baseline_meta_test",
               *preset["pretrain"], "--seed", str(seed), "--output_dir", str(out), *resume,
               *shlex.split(args.extra_pretrain)]
    tic = time.time()
    run(command, cache / "logs" / f"pretrain_{sampler}_seed{seed}.log")
    from mometas_utils.history import read_history

    result = {"sampler": sampler, "seed": seed, "rows": read_history(out), "seconds": time.time() - tic,
              "command": portable([str(c) for c in command])}
    write_json(result_path, result)
    return result


def finetune(args, preset, cache, results, model_name, model_path, task, index, total):
    result_path = results / f"finetune_{model_name}_{task}.json"
    if result_path.is_file():
        return read_json(result_path)
    make, keys, _ = TASKS[task]
    out = cache / "finetune" / f"{model_name}_{task}"
    log(f"[finetune {index}/{total}] {model_name} on {task}")
    script, *data = make(data_dir())
    # Scripts that guard their output folder need to be told that a restarted run may replace it.
    overwrite = ["--overwrite_output_dir"] if "--overwrite_output_dir" in (ROOT / script).read_text() else []
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, script, "--model_name_or_path", str(model_path), *data, *preset["finetune"],
               "--output_dir", str(out), *overwrite, *shlex.split(args.extra_finetune)]
    tic = time.time()
    run(command, cache / "logs" / f"finetune_{model_name}_{task}.log")
    metrics = read_json(out / "all_results.json")
    score = next((metrics[k] for k in keys if metrics.get(k) is not None), None)
    result = {"model": model_name, "task": task, "score": score, "metrics": metrics, "seconds": time.time() - tic,
              "command": portable([str(c) for c in command])}
    write_json(result_path, result)
    shutil.rmtree(out, ignore_errors=True)
    return result


# ------------------------------------------------------------------------------- report


def _mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"mean": statistics.fmean(xs), "std": statistics.pstdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def report(args, pretrained, finetuned):
    from mometas_utils.history import average_distribution, cumulative_reward

    table = {}
    for model in ["base", *args.samplers]:
        row = {}
        for task in args.tasks:
            scores = [100 * f["score"] for f in finetuned if f["task"] == task and f["score"] is not None
                      and (f["model"] == "base" if model == "base" else f["model"].startswith(model + "_seed"))]
            row[task] = _mean_std(scores)
        per_seed_avg = []
        seeds = [None] if model == "base" else args.seeds
        for seed in seeds:
            name = "base" if model == "base" else f"{model}_seed{seed}"
            scores = [100 * f["score"] for f in finetuned if f["model"] == name and f["score"] is not None]
            if len(scores) == len(args.tasks):
                per_seed_avg.append(statistics.fmean(scores))
        row["average"] = _mean_std(per_seed_avg)
        table[model] = row
    weights = {s: _mean_std_dict([average_distribution(p["rows"]) for p in pretrained if p["sampler"] == s])
               for s in args.samplers}
    rewards = {s: [cumulative_reward(p["rows"]) for p in pretrained if p["sampler"] == s] for s in args.samplers}
    final_val = {s: _mean_std_dict([p["rows"][-1]["val_loss"] for p in pretrained if p["sampler"] == s
                                    and p["rows"][-1].get("val_loss")]) for s in args.samplers}
    return {"table": table, "average_weights": weights, "cumulative_reward": rewards, "final_val_loss": final_val}


def _mean_std_dict(dicts):
    dicts = [d for d in dicts if d]
    if not dicts:
        return {}
    return {k: _mean_std([d.get(k) for d in dicts]) for k in dicts[0]}


def markdown(args, summary) -> str:
    def cell(d):
        return "–" if d is None else f"{d['mean']:.1f} ({d['std']:.1f})"

    head = "| model | " + " | ".join(TASKS[t][2] for t in args.tasks) + " | Avg |"
    lines = [head, "|---" * (len(args.tasks) + 2) + "|"]
    for model, row in summary["table"].items():
        lines.append(f"| {LABELS[model]} | " + " | ".join(cell(row[t]) for t in args.tasks)
                     + f" | {cell(row['average'])} |")
    lines += ["", "Against Ub (a difference counts when it exceeds the larger of the two stds):", ""]
    lines += [f"- {line}" for line in compare_to_uniform(args, summary)]
    lines += ["", "Average sampling weights (mean over seeds):", "",
              "| sampler | " + " | ".join(OBJECTIVE_ORDER) + " |", "|---" * (len(OBJECTIVE_ORDER) + 1) + "|"]
    for sampler, weights in summary["average_weights"].items():
        lines.append(f"| {LABELS[sampler]} | " + " | ".join(
            f"{weights[o]['mean']:.3f} ± {weights[o]['std']:.3f}" if o in weights else "–" for o in OBJECTIVE_ORDER)
            + " |")
    return "\n".join(lines)


def compare_to_uniform(args, summary) -> list[str]:
    """Per sampler and task: the difference from Ub, and whether it lies within one standard deviation."""
    table, out = summary["table"], []
    reference = table.get("uniform")
    if not reference:
        return ["no Ub runs to compare with"]
    for model, row in table.items():
        if model == "uniform":
            continue
        cells = []
        for key in [*args.tasks, "average"]:
            a, b = row.get(key), reference.get(key)
            if a is None or b is None:
                continue
            diff, spread = a["mean"] - b["mean"], max(a["std"], b["std"])
            label = "Avg" if key == "average" else TASKS[key][2]
            cells.append(f"{label} {diff:+.1f} ({'within' if abs(diff) <= spread else 'beyond'} 1 std)")
        out.append(f"{LABELS[model]}: " + ", ".join(cells))
    return out


OBJECTIVE_ORDER = ["mlm", "cse", "atd", "dtd", "emlm"]


def plot(args, pretrained, summary, prefix: Path):
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4), layout="constrained")
    ax = fig.subplots()
    runs = [p for p in pretrained if p["sampler"] == "mometas"]
    if runs:
        steps = [r["step"] for r in runs[0]["rows"] if r.get("probabilities")]
        for name in OBJECTIVE_ORDER:
            series = np.array([[r["probabilities"][name] for r in run["rows"] if r.get("probabilities")]
                               for run in runs])
            mean, std = series.mean(0), series.std(0)
            ax.plot(steps, mean, label=name)
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
        ax.set_title(f"MOMETAS sampling weights (mean ± std over {len(runs)} seeds)")
        ax.set_xlabel("training step")
        ax.set_ylabel("probability")
        ax.legend(fontsize=8)
        fig.savefig(f"{prefix}_weights.png", dpi=110)

    fig = Figure(figsize=(7.5, 4), layout="constrained")
    ax = fig.subplots()
    for sampler in args.samplers:
        curves = [c for c in summary["cumulative_reward"][sampler] if c[0]]
        if not curves:
            continue
        n = min(len(c[0]) for c in curves)
        values = np.array([c[1][:n] for c in curves])
        ax.plot(curves[0][0][:n], values.mean(0), label=f"{LABELS[sampler]} ({len(curves)} seeds)")
        ax.fill_between(curves[0][0][:n], values.mean(0) - values.std(0), values.mean(0) + values.std(0), alpha=0.2)
    ax.set_title("Cumulative reward R(τ) at each meta-test (mean ± std over seeds)")
    ax.set_xlabel("training step")
    ax.set_ylabel("cumulative reward")
    ax.legend(fontsize=8)
    fig.savefig(f"{prefix}_reward.png", dpi=110)


# ------------------------------------------------------------------------------- the docs' blocks

# The results that docs/study.md quotes: name -> (block, the results it is compared with).
DOC_BLOCKS = {"study_cpu-small": "study-cpu-small", "study_cpu-small_headwarmup": "study-cpu-small-headwarmup"}


def _committed(name):
    summary = read_json(RESULTS_DIR / f"{name}.json")
    runs = {p.stem: read_json(p) for p in sorted((RESULTS_DIR / name).glob("*.json"))}
    return summary, runs


def _cpu_small_block() -> str:
    summary, runs = _committed("study_cpu-small")
    args = argparse.Namespace(tasks=summary["tasks"], samplers=[m for m in summary["summary"]["table"] if m != "base"])
    lines = [markdown(args, summary["summary"]), ""]
    updates = {}
    for run in runs.values():
        if run.get("task") and run.get("metrics"):
            updates.setdefault(run["task"], set()).add(run["metrics"].get("train_steps"))
    lines.append("Fine-tuning updates per run (batch 32, the first 1,000 training examples, 2 epochs): "
                 + ", ".join(f"{TASKS[t][2].split(' (')[0]} {'/'.join(map(str, sorted(updates[t])))}"
                             for t in args.tasks if t in updates) + ".")
    final = summary["summary"]["final_val_loss"]
    lines.append("Final MLM validation loss (mean ± std over seeds; every sampler meta-tests the same fixed batches): "
                 + ", ".join(f"{final[s]['mlm']['mean']:.3f} ± {final[s]['mlm']['std']:.3f} ({LABELS[s]})"
                             for s in args.samplers if final.get(s, {}).get("mlm")) + ".")
    last = []
    for s in args.samplers:
        ends = [f"{curve[1][-1]:.2f}" for curve in summary["summary"]["cumulative_reward"][s] if curve[1]]
        last.append(f"{LABELS[s]} {', '.join(ends)}")
    step = max(curve[0][-1] for s in args.samplers for curve in summary["summary"]["cumulative_reward"][s] if curve[0])
    lines.append(f"Cumulative reward at step {step}, per seed: " + "; ".join(last) + ".")
    lines.append(f"Run time: {summary['run_seconds'] / 3600:.2f} h of runs on one core.")
    return "\n".join(lines)


def _headwarmup_block() -> str:
    plain, _ = _committed("study_cpu-small")
    warm, _ = _committed("study_cpu-small_headwarmup")
    tasks, seeds = warm["tasks"], warm["seeds"]
    samplers = [m for m in warm["summary"]["table"] if m != "base"]

    def row(label, scores, models):
        per_task = {t: [100 * scores[f"{m}/{t}"] for m in models if scores.get(f"{m}/{t}") is not None] for t in tasks}
        averages = [statistics.fmean(100 * scores[f"{m}/{t}"] for t in tasks) for m in models
                    if all(scores.get(f"{m}/{t}") is not None for t in tasks)]

        def cell(xs, bold=False):
            if not xs:
                return "–"
            text = f"{statistics.fmean(xs):.1f}" if len(models) == 1 else \
                f"{statistics.fmean(xs):.1f} ({statistics.pstdev(xs):.1f})"
            return f"**{text}**" if bold else text

        return f"| {label} | " + " | ".join(cell(per_task[t]) for t in tasks) + f" | {cell(averages, bold=label.endswith('`'))} |"

    warmup = warm["extra_pretrain"].split("--head_warmup_steps")[1].split()[0]
    lines = ["| model | " + " | ".join(TASKS[t][2] for t in tasks) + " | Avg |", "|---" * (len(tasks) + 2) + "|",
             row(LABELS["base"], plain["finetune_scores"], ["base"])]
    for s in samplers:
        lines.append(row(f"{LABELS[s]}, no warm-up", plain["finetune_scores"], [f"{s}_seed{seed}" for seed in seeds]))
    for s in samplers:
        lines.append(row(f"{LABELS[s]}, `--head_warmup_steps {warmup}`", warm["finetune_scores"],
                         [f"{s}_seed{seed}" for seed in seeds]))
    lines += ["", f"Mean (std) over seeds {', '.join(map(str, seeds))}; the rows without warm-up are those seeds of "
              f"`study_cpu-small`. Run time: {warm['run_seconds'] / 3600:.2f} h of runs on one core."]
    return "\n".join(lines)


def generated_blocks() -> dict:
    """The blocks of the docs that quote the committed study results: {(doc, block name): text}."""
    return {("docs/study.md", DOC_BLOCKS["study_cpu-small"]): _cpu_small_block(),
            ("docs/study.md", DOC_BLOCKS["study_cpu-small_headwarmup"]): _headwarmup_block()}


def main(argv=None):
    args = parse_args(argv)
    preset = PRESETS[args.preset]
    args.model = args.model_name_or_path or preset["model"] or minilm_path()
    cache = STUDY_DIR / "cache" / args.name
    results = RESULTS_DIR / args.name
    pretrained, finetuned = [], []
    jobs = [(s, seed) for seed in args.seeds for s in args.samplers]
    models = [("base", args.model)] + [(f"{s}_seed{seed}", cache / "models" / f"{s}_seed{seed}") for s, seed in jobs]
    started = time.time()
    if not args.report_only:
        corpus = corpus_flags(args, preset, cache)
        for i, (sampler, seed) in enumerate(jobs, 1):
            pretrained.append(pretrain(args, preset, cache, results, sampler, seed, corpus, i, len(jobs)))
        total = len(models) * len(args.tasks)
        index = 0
        for name, path in models:
            for task in args.tasks:
                index += 1
                finetuned.append(finetune(args, preset, cache, results, name, path, task, index, total))
            if name != "base" and not args.keep_models:
                shutil.rmtree(path, ignore_errors=True)
    else:
        pretrained = [r for s, seed in jobs if (r := read_json(results / f"pretrain_{s}_seed{seed}.json"))]
        finetuned = [r for name, _ in models for t in args.tasks
                     if (r := read_json(results / f"finetune_{name}_{t}.json"))]
    summary = report(args, pretrained, finetuned)
    seconds = sum(r.get("seconds", 0) for r in pretrained + finetuned)
    write_json(RESULTS_DIR / f"{args.name}.json", {
        "preset": args.preset, "settings": PRESETS[args.preset], "extra_pretrain": args.extra_pretrain,
        "extra_finetune": args.extra_finetune, "seeds": args.seeds, "tasks": args.tasks,
        "summary": summary, "run_seconds": seconds, "wall_seconds_this_call": time.time() - started,
        "finetune_scores": {f"{f['model']}/{f['task']}": f["score"] for f in finetuned},
    })
    plot(args, pretrained, summary, RESULTS_DIR / args.name)
    print(markdown(args, summary))
    if args.name in DOC_BLOCKS:
        write_generated_blocks(generated_blocks())
    log(f"done: {len(pretrained)} pre-training and {len(finetuned)} fine-tuning runs, {seconds / 3600:.2f} h of runs")
    return 0 if math.isfinite(seconds) else 1


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""The planted-objective proof: does the sampler learn to drop an objective that does harm?

Pre-trains MiniLM on ``mlm,cse,atd,dtd,shuffled_mlm`` (see ``shuffled_mlm.py``: MLM with the
targets of another row) with ``run_mometas_pretraining.py`` itself, in five arms x 5 seeds:

  uniform        Ub, with --baseline_meta_test for its validation curves
  paper          MOMETAS with --paper_reward (Eqs. 2-4 literally)
  robust_all     MOMETAS with the project's default reward, over all objectives
  robust_named   MOMETAS with the default reward over --reward_objectives mlm,cse,atd,dtd
  robust_mlm     MOMETAS with the default reward over --reward_objectives mlm
  robust_mlm_lambda1  the same with --entropy_lambda 1 (the low end of the paper's 1-3)
  robust_mlm_lambda1_4b  the same meta-tested on 4 fixed batches (--meta_eval_batches 4)

Each run trains 400 steps of 8 x 64-token sequences with K = 8: 50 sampler updates, each on one
fixed meta-test batch of 32 sequences per objective. Every arm starts from a *warm* MiniLM whose MLM head was first trained with plain MLM
(``--warm_steps``; one run shared by all arms). The MiniLM checkpoint ships without an MLM
head, and a first attempt from the raw checkpoint showed why that matters: with a random head,
MLM spends the whole run learning unigram frequencies, which shuffled_mlm teaches just as
well, so the planted objective was not harmful in any window the sampler could see
(results in ``study/results/planted_coldstart/``).

then measures each final model's validation losses on 8 fixed batches. The proof holds for
an arm when (a) in at least 4 of 5 seeds the average weight of shuffled_mlm over the second
half of training is below 0.10 (half of uniform's 0.20), and (b) the mean final MLM
validation loss is not worse than uniform's.

    python study/planted.py --arms uniform,paper,robust_all,robust_named   # cached per run, resumable
    python study/planted.py --jobs 2        # two runs at a time, one thread each
    python study/planted.py --report_only   # tables and plot from the cached runs

Writes ``study/results/planted/<arm>_seed<k>.json``, ``study/results/planted.json`` and
``study/results/planted_probability.png``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from datasets.fingerprint import Hasher

from common import RESULTS_DIR, ROOT, STUDY_DIR, log, minilm_path, read_json, wiki_corpus, write_json

PLANTED = "shuffled_mlm"
OBJECTIVES = ["mlm", "cse", "atd", "dtd", PLANTED]
ARMS = {
    "uniform": ["--sampler", "uniform", "--baseline_meta_test"],
    "paper": ["--sampler", "mometas", "--paper_reward"],
    "robust_all": ["--sampler", "mometas"],
    "robust_named": ["--sampler", "mometas", "--reward_objectives", "mlm,cse,atd,dtd"],
    "robust_mlm": ["--sampler", "mometas", "--reward_objectives", "mlm"],
    # lambda = 1, the low end of the paper's 1-3: the entropy bonus enters once per update while
    # the REINFORCE term sums K draws, so at K = 8 lambda = 3 holds P_D near uniform (sampler_model.py).
    "robust_mlm_lambda1": ["--sampler", "mometas", "--reward_objectives", "mlm", "--entropy_lambda", "1"],
    # The same meta-tested on 4 fixed batches instead of 1: a probe of whether one batch hid the harm.
    "robust_mlm_lambda1_4b": ["--sampler", "mometas", "--reward_objectives", "mlm", "--entropy_lambda", "1",
                              "--meta_eval_batches", "4"],
}
CACHE = STUDY_DIR / "cache" / "planted"
FINAL_EVAL_LOCK = threading.Lock()
OUT = RESULTS_DIR / "planted"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", default=",".join(ARMS), help="Comma-separated arms to run.")
    p.add_argument("--seeds", default="1,2,3,4,5")
    p.add_argument("--max_train_steps", type=int, default=400)
    p.add_argument("--meta_length", type=int, default=8)
    p.add_argument("--max_seq_length", type=int, default=64)
    p.add_argument("--per_device_train_batch_size", type=int, default=8)
    p.add_argument("--per_device_eval_batch_size", type=int, default=32, help="Meta-test and final-evaluation batch.")
    p.add_argument("--warm_batch_size", type=int, default=16, help="Training batch of the warm start.")
    p.add_argument("--final_eval_batches", type=int, default=8)
    p.add_argument("--warm_steps", type=int, default=800, help="Plain-MLM steps that train the MLM head first.")
    p.add_argument("--warm_learning_rate", type=float, default=1e-4)
    p.add_argument("--model_name_or_path", default=None, help="Default: the offline MiniLM checkpoint.")
    p.add_argument("--train_file", default=None, help="Default: the shared Wikipedia sample.")
    p.add_argument("--extra", default="", help="Extra flags for every run (quoted), e.g. for a tiny test.")
    p.add_argument("--jobs", type=int, default=1, help="Runs at a time (each gets cores / jobs threads).")
    p.add_argument("--threads", type=int, default=None, help="Threads per run (default: cores / jobs), e.g. 1 beside another study.")
    p.add_argument("--report_only", action="store_true")
    p.add_argument("--results", default=str(OUT), help="Folder of the per-run results.")
    args = p.parse_args(argv)
    # Models live beside other results' models only for the default results folder.
    args.cache = CACHE if Path(args.results) == OUT else Path(f"{args.results}_cache")
    return args


def common_args(args, batch_size=None):
    return ["--train_file", args.train_file or str(wiki_corpus()), "--max_seq_length", str(args.max_seq_length),
            "--per_device_train_batch_size", str(batch_size or args.per_device_train_batch_size),
            "--per_device_eval_batch_size", str(args.per_device_eval_batch_size), "--logging_steps", "50"]


def warm_start(args, threads):
    """The shared starting point: MiniLM after ``--warm_steps`` of plain MLM (cached)."""
    key = Hasher.hash((args.model_name_or_path or minilm_path(), args.train_file, args.warm_steps,
                       args.warm_learning_rate, args.max_seq_length, args.warm_batch_size, args.extra))
    folder = args.cache / f"warm_{key[:12]}"
    if (folder / "warm.done").is_file():
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    log(f"planted: warm start, {args.warm_steps} steps of plain MLM ...")
    command = [sys.executable, "run_mometas_pretraining.py", "--model_name_or_path",
               args.model_name_or_path or minilm_path(), *common_args(args, args.warm_batch_size), "--objectives", "mlm", "--sampler",
               "uniform", "--max_train_steps", str(args.warm_steps), "--meta_length", str(args.warm_steps),
               "--learning_rate", str(args.warm_learning_rate), "--seed", "0", "--output_dir", str(folder),
               *args.extra.split()]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"warm start failed:\n{done.stderr[-3000:]}")
    (folder / "warm.done").write_text("ok\n")
    return folder


def script_args(args, arm, seed, output_dir):
    return [
        "--model_name_or_path", str(args.warm_model),
        *common_args(args), "--objectives", ",".join(OBJECTIVES), *ARMS[arm],
        "--meta_length", str(args.meta_length), "--max_train_steps", str(args.max_train_steps),
        "--seed", str(seed), "--output_dir", str(output_dir), "--overwrite_output_dir",
        *args.extra.split(),
    ]


def run_one(args, arm, seed, threads):
    result_path = Path(args.results) / f"{arm}_seed{seed}.json"
    if result_path.is_file():
        return read_json(result_path)
    from mometas_utils.history import read_history

    output_dir = args.cache / f"{arm}_seed{seed}"
    rows = read_history(output_dir) if (output_dir / "model.safetensors").is_file() else []
    if not rows or rows[-1]["step"] != args.max_train_steps:
        if output_dir.exists():  # a killed run: start it again from scratch
            shutil.rmtree(output_dir)
        log(f"planted: {arm} seed {seed} ...")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
        command = [sys.executable, __file__, "_pretrain", *script_args(args, arm, seed, output_dir)]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{arm} seed {seed} failed:\n{done.stderr[-3000:]}")
        rows = read_history(output_dir)
    # from_pretrained builds the model under a process-wide meta-device context: two threads
    # loading at once put each other's tensors on "meta".
    with FINAL_EVAL_LOCK:
        final = final_losses(output_dir, args, seed)
    result = {"arm": arm, "seed": seed, "rows": rows, "final_val_loss": final}
    write_json(result_path, result)
    shutil.rmtree(output_dir)  # the model is not kept: the study commits numbers, never checkpoints
    log(f"planted: {arm} seed {seed} done, final MLM loss {final['mlm']:.4f}")
    return result


def final_losses(output_dir, args, seed):
    """Every objective's validation loss of the final model on fixed batches of the run's own split."""
    import torch
    from transformers import AutoTokenizer

    import shuffled_mlm  # noqa: F401  (registers the objective)
    from common import prepare_corpus
    from mometas_utils.meta_test import meta_test, meta_test_batches
    from mometas_utils.modeling_mometas import MometasForPreTraining
    from mometas_utils.objectives import PadCollator, build_objectives

    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    model = MometasForPreTraining.from_pretrained(output_dir)
    splits = prepare_corpus(args.train_file or wiki_corpus(), tokenizer, objectives=OBJECTIVES,
                            max_seq_length=args.max_seq_length, seed=seed)
    pad = PadCollator(tokenizer.pad_token_id)
    batches = meta_test_batches(splits["validation"], batch_size=args.per_device_eval_batch_size,
                                num_batches=args.final_eval_batches, seed=1234, step=0, process_index=0, pad=pad,
                                fixed=True)
    collators = build_objectives(OBJECTIVES, tokenizer, seed=1234, max_length=args.max_seq_length)
    with torch.no_grad():
        return meta_test(model, batches, collators, seed=1234, device="cpu")


# ------------------------------------------------------------------------------ analysis


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


def analyse(results, max_steps):
    arms = {}
    uniform_mlm = {r["seed"]: r["final_val_loss"]["mlm"] for r in results if r["arm"] == "uniform"}
    for arm in ARMS:
        runs = sorted((r for r in results if r["arm"] == arm), key=lambda r: r["seed"])
        if not runs:
            continue
        avg = [weight_between(r["rows"], PLANTED, 0, max_steps) for r in runs]
        second = [weight_between(r["rows"], PLANTED, max_steps / 2, max_steps) for r in runs]
        final = [r["rows"][-1]["probabilities"][PLANTED] for r in runs]
        mlm = [r["final_val_loss"]["mlm"] for r in runs]
        correlations = [window_correlations(r["rows"]) for r in runs]
        paired = [r["final_val_loss"]["mlm"] - uniform_mlm[r["seed"]] for r in runs if r["seed"] in uniform_mlm]
        arms[arm] = {
            "seeds": [r["seed"] for r in runs],
            "average_weight": _mean_std(avg), "second_half_weight": _mean_std(second),
            "second_half_weight_per_seed": second, "final_weight": _mean_std(final),
            # How visible the harm was in each run's meta-test windows.
            "harm_correlation_per_seed": [c["draws_vs_mlm_loss_change"] for c in correlations],
            "seeds_below_0.10": sum(w < 0.10 for w in second),
            "final_mlm_loss": _mean_std(mlm), "mlm_loss_minus_uniform": _mean_std(paired) if paired else None,
            "final_val_loss_mean": {o: statistics.fmean(r["final_val_loss"][o] for r in runs) for o in OBJECTIVES},
            "window_correlations": {k: _mean_std([c[k] for c in correlations])
                                    for k in ("draws_vs_mlm_loss_change", "draws_vs_reward", "draws_vs_mlm_term")},
            "min_probability": min(min(p for row in r["rows"] if row.get("probabilities")
                                       for p in row["probabilities"].values()) for r in runs),
        }
        mean_mlm = arms[arm]["final_mlm_loss"]["mean"]
        uniform_mean = statistics.fmean(uniform_mlm.values()) if uniform_mlm else None
        arms[arm]["proof_holds"] = (arm != "uniform" and len(runs) >= 5 and arms[arm]["seeds_below_0.10"] >= 4
                                    and uniform_mean is not None and mean_mlm <= uniform_mean)
    return arms


def _corr(xs, ys):
    if len(xs) < 3 or statistics.pstdev(xs) == 0 or statistics.pstdev(ys) == 0:
        return None
    return statistics.correlation(xs, ys)


def window_correlations(rows):
    """Per meta-test window: corr(draws of the planted objective, change of MLM's validation loss),
    corr(draws, R) and corr(draws, MLM's own reward term). Harm shows as a positive first number;
    a reward that sees it, as negative second and third ones."""
    draws, harm, reward, mlm_term = [], [], [], []
    for before, r in zip(rows, rows[1:]):
        if not (r.get("counts") and r.get("reward_terms")):
            continue
        draws.append(r["counts"].get(PLANTED, 0))
        harm.append(r["val_loss"]["mlm"] - before["val_loss"]["mlm"])
        reward.append(r["reward"])
        mlm_term.append(r["reward_terms"]["mlm"])
    return {"draws_vs_mlm_loss_change": _corr(draws, harm), "draws_vs_reward": _corr(draws, reward),
            "draws_vs_mlm_term": _corr(draws, mlm_term)}


def _mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"mean": statistics.fmean(xs), "std": statistics.pstdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def plot(results, path):
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4), layout="constrained")
    ax = fig.subplots()
    for arm in ARMS:
        runs = [r for r in results if r["arm"] == arm]
        if not runs:
            continue
        steps = [row["step"] for row in runs[0]["rows"] if row.get("probabilities")]
        series = np.array([[row["probabilities"][PLANTED] for row in r["rows"] if row.get("probabilities")]
                           for r in runs])
        mean, std = series.mean(0), series.std(0)
        ax.plot(steps, mean, label=f"{arm} ({len(runs)} seeds)")
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.axhline(0.10, color="grey", linestyle=":", label="0.10 (half of uniform)")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"p({PLANTED})")
    ax.set_title("Weight of the planted harmful objective (mean ± std over seeds)")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


def markdown(arms) -> str:
    def ms(d, digits=3):
        return "–" if d is None else f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}"

    lines = ["| arm | avg p(shuffled_mlm) | 2nd-half avg | final | seeds < 0.10 | final MLM val loss | Δ vs uniform "
             "(paired) | smallest p | proof |", "|---|---|---|---|---|---|---|---|---|"]
    for arm, a in arms.items():
        proof = "–" if arm == "uniform" else ("holds" if a["proof_holds"] else "fails")
        lines.append(f"| {arm} | {ms(a['average_weight'])} | {ms(a['second_half_weight'])} | {ms(a['final_weight'])} "
                     f"| {a['seeds_below_0.10']}/{len(a['seeds'])} | {ms(a['final_mlm_loss'], 4)} | "
                     f"{ms(a['mlm_loss_minus_uniform'], 4)} | {a['min_probability']:.3f} | {proof} |")
    lines += ["", "Per meta-test window, correlation of the planted objective's draws with (mean ± std over seeds):", "",
              "| arm | MLM val-loss change (harm > 0) | reward R | MLM's reward term |", "|---|---|---|---|"]
    for arm, a in arms.items():
        c = a["window_correlations"]
        lines.append(f"| {arm} | {ms(c['draws_vs_mlm_loss_change'], 2)} | {ms(c['draws_vs_reward'], 2)} | "
                     f"{ms(c['draws_vs_mlm_term'], 2)} |")
    seeds = sorted({seed for a in arms.values() for seed in a["seeds"]})
    lines += ["", "Per seed: second-half weight of the planted objective / corr(its draws, MLM val-loss change):", "",
              "| arm | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---" * (len(seeds) + 1) + "|"]
    for arm, a in arms.items():
        cells = dict(zip(a["seeds"], zip(a["second_half_weight_per_seed"], a["harm_correlation_per_seed"])))
        lines.append(f"| {arm} | " + " | ".join(
            "–" if s not in cells else f"{cells[s][0]:.3f} / {_fmt(cells[s][1])}" for s in seeds) + " |")
    return "\n".join(lines)


def _fmt(x):
    return "–" if x is None else f"{x:+.2f}"


def pretrain(argv):
    """Run the pre-training script with the planted objective registered (one subprocess per run)."""
    sys.path.insert(0, str(STUDY_DIR))
    import shuffled_mlm  # noqa: F401

    spec = importlib.util.spec_from_file_location("run_mometas_pretraining", ROOT / "run_mometas_pretraining.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_pretrain"]:
        return pretrain(argv[1:])
    args = parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        sys.exit(f"error: --arms: unknown arm(s) {unknown}; choose from {list(ARMS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    jobs = [(arm, seed) for seed in seeds for arm in arms]
    if not args.report_only:
        threads = args.threads or max(1, (os.cpu_count() or 2) // args.jobs)
        args.warm_model = warm_start(args, os.cpu_count() or 2)
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda job: run_one(args, *job, threads), jobs))
    results = [r for arm, seed in jobs if (r := read_json(Path(args.results) / f"{arm}_seed{seed}.json"))]
    if not results:
        sys.exit("error: no finished runs to report")
    arms_report = analyse(results, args.max_train_steps)
    summary_path = Path(args.results).with_suffix(".json")
    write_json(summary_path, {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                                           if k != "report_only"},
                              "arms": arms_report})
    plot(results, Path(args.results).with_name("planted_probability.png"))
    print(markdown(arms_report))


if __name__ == "__main__":
    main()

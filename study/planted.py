#!/usr/bin/env python
"""The planted benchmark: does a sampler drop an objective that does harm, and how fast?

Every run pre-trains with ``run_mometas_pretraining.py`` itself on ``mlm,cse,atd,dtd`` plus a
planted objective, ``shuffled_mlm`` (``shuffled_mlm.py``): MLM whose targets at a share f of the
masked positions are another row's tokens. f is a dial on the harm: f = 0 is a useful duplicate
of MLM that a sampler must keep, f = 1 replaces every target.

The testbeds (``--testbed``) start from a *warm* model that plain MLM trained first (a model still
learning unigram frequencies is not hurt by shuffled targets; see docs/study.md):

  minilm    the offline MiniLM (6 layers, hidden 384) after 800 steps of plain MLM (16 x 64, cached):
            750 steps of 8 x 64, K = 25 (30 updates), about 10 minutes of one core a run
  minilm2k  the same warm start, 2,000 steps, the paper's K = 100 (20 updates), about 25 minutes
  scratch, cut2, frozen32
            the cheap testbeds tried first for K = 100 with 50 updates (a 2 x 128 BERT from scratch,
            MiniLM's first 2 layers, MiniLM on 32 tokens with frozen word embeddings). In none of them
            did a window's planted draws move MLM's validation loss, so none can carry the proof; they
            are kept to reproduce that finding (docs/study.md, "The planted benchmark").

The arms (``ARMS``): Ub, Gb, Lb, MOMETAS with --paper_reward, with the default reward and with
--reward_objectives mlm (the README's recipe), ODM's EXP3 bandit (--sampler exp3, on scale-free
losses; exp3_raw on raw ones), the oracle, uniform over the four objectives without the planted one
(the MLM loss a perfect sampler could reach), and the one estimator change tried, the recipe with λ
following the learning rate (robust_mlm_lr_lambda). Every arm meta-tests every K steps, so every run
records its validation curves.

    python study/planted.py --grid benchmark --jobs 2     # the whole grid (~15 h of one core)
    python study/planted.py --testbed minilm2k --arms uniform,robust_mlm --seeds 1,2
    python study/planted.py --report_only --grid benchmark  # tables, figures, summary from the cached runs
    python study/planted.py --demo                        # uniform against the recipe, minilm, K = 25

Each finished run is one file, ``study/results/benchmark/<testbed>_K<k>_f<f>_<arm>_seed<s>.json``:
its settings and its ``sampler_history.jsonl`` rows, so every number can be recomputed. A run that
is found there is not run again; a killed run starts again from scratch. The summary is
``study/results/benchmark.json`` (measures: ``planted_analysis.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from datasets.fingerprint import Hasher

from common import (RESULTS_DIR, ROOT, STUDY_DIR, log, minilm_path, portable, read_json, wiki_corpus,
                    write_generated_block, write_json)
from planted_analysis import OBJECTIVES, PLANTED, analyse, markdown, plot_power, plot_weights, verdicts, weight_between

__all__ = ["ARMS", "OBJECTIVES", "PLANTED", "TESTBEDS", "weight_between"]

BASE = ["mlm", "cse", "atd", "dtd"]
ARMS = {
    "uniform": ["--sampler", "uniform"],
    "gradient": ["--sampler", "gradient"],
    "loss": ["--sampler", "loss"],
    "paper": ["--sampler", "mometas", "--paper_reward"],
    "robust_all": ["--sampler", "mometas"],
    "robust_mlm": ["--sampler", "mometas", "--reward_objectives", "mlm"],
    "exp3": ["--sampler", "exp3"],  # each training loss over its objective's first one
    "exp3_raw": ["--sampler", "exp3", "--exp3_loss_scaling", "none"],  # ODM's raw loss: the scales decide
    "oracle": ["--sampler", "uniform"],  # without the planted objective: see objectives_of()
    # Arms of the earlier K = 8 study on MiniLM (study/results/planted/), kept to reproduce it.
    "robust_named": ["--sampler", "mometas", "--reward_objectives", "mlm,cse,atd,dtd"],
    "robust_mlm_lambda1": ["--sampler", "mometas", "--reward_objectives", "mlm", "--entropy_lambda", "1"],
    # The one estimator change the benchmark tries (docs/study.md §3): λ follows the learning rate.
    "robust_mlm_lr_lambda": ["--sampler", "mometas", "--reward_objectives", "mlm", "--entropy_lambda_schedule",
                             "learning_rate"],
}

#: The two testbeds; every value can be overridden by the flag of the same name.
TESTBEDS = {
    # The paper's K = 100 on MiniLM: the MiniLM testbed's warm start and steps, 2,000 of them (20 updates). The
    # cheaper testbeds below were tried first: in none of them did a window's planted draws move MLM's loss.
    "minilm2k": dict(base="minilm", max_train_steps=2000, learning_rate=5e-5, per_device_train_batch_size=8,
                     max_seq_length=64, per_device_eval_batch_size=32, final_eval_batches=8, meta_lengths="100",
                     warmup_ratio=0.06),
    # The MiniLM testbed on 32-token sequences with frozen word embeddings (2.5x cheaper a step; tried third).
    "frozen32": dict(base="minilm", freeze_embeddings=True, max_train_steps=5000, learning_rate=5e-5,
                     per_device_train_batch_size=8, max_seq_length=32, per_device_eval_batch_size=32,
                     final_eval_batches=8, meta_lengths="100", warmup_ratio=0.06),
    # MiniLM cut to its first 2 layers, its MLM head warmed up on them first (tried second).
    "cut2": dict(layers=2, warm_steps=500, warm_batch_size=16, warm_learning_rate=1e-4, warm_scheduler="linear",
                 head_warmup_steps=200, max_train_steps=5000, learning_rate=1e-4, per_device_train_batch_size=8,
                 max_seq_length=32, per_device_eval_batch_size=32, final_eval_batches=8, meta_lengths="100",
                 warmup_ratio=0.06),
    # A 2-layer BERT of hidden size 128 trained from scratch (tried first), kept to reproduce why it was set
    # aside: after 8,000 warm steps its MLM sat 0.7 nats below unigram statistics, uniform training did not
    # lower it, and the planted draws did not move it window by window. Constant warm rate, lower arm rate.
    "scratch": dict(layers=2, hidden_size=128, heads=2, warm_steps=8000, warm_batch_size=32, warm_learning_rate=2e-3,
                    warm_scheduler="constant_with_warmup", max_train_steps=5000, learning_rate=5e-4,
                    per_device_train_batch_size=8, max_seq_length=64, per_device_eval_batch_size=32, final_eval_batches=8,
                    meta_lengths="100", warmup_ratio=0.06),
    # The earlier K = 8 study's warm start (800 steps of 16 x 64, lr 1e-4, linear decay).
    "minilm": dict(warm_steps=800, warm_batch_size=16, warm_learning_rate=1e-4, warm_scheduler="linear",
                   max_train_steps=750, learning_rate=5e-5, per_device_train_batch_size=8, max_seq_length=64,
                   per_device_eval_batch_size=32, final_eval_batches=8, meta_lengths="25", warmup_ratio=0.06),
}

#: ``--grid benchmark``: (testbed, K, f, arms), in the order they run, so that a grid stopped half-way has the
#: most decisive cells done: the f = 0 control of the README's recipe at K = 25 (does the sampler keep a useful
#: duplicate, or push down everything that is not MLM?), the rivals at K = 25, then the paper's K = 100; last, the
#: one estimator change tried, on the recipe's seeds at f = 1 and f = 0.
BENCHMARK = [
    ("minilm", 25, 0.0, ["uniform", "robust_mlm", "robust_mlm_lambda1", "exp3"]),
    ("minilm", 25, 1.0, ["exp3", "oracle", "paper", "robust_all", "gradient", "loss", "exp3_raw"]),
    ("minilm2k", 100, 1.0, ["uniform", "robust_mlm", "exp3", "oracle"]),
    ("minilm", 25, 1.0, ["robust_mlm_lr_lambda"]),
    ("minilm", 25, 0.0, ["robust_mlm_lr_lambda"]),
]
CACHE = STUDY_DIR / "cache" / "benchmark"
OUT = RESULTS_DIR / "benchmark"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--testbed", choices=sorted(TESTBEDS), default="minilm")
    p.add_argument("--grid", choices=["benchmark"], default=None,
                   help="Run the benchmark's whole grid (both testbeds) instead of --arms x --meta_lengths x --fractions.")
    p.add_argument("--arms", default="uniform,robust_all,robust_mlm", help=f"Comma-separated, from {list(ARMS)}.")
    p.add_argument("--seeds", default="1,2,3,4,5")
    p.add_argument("--meta_lengths", default=None, help="Comma-separated K values (testbed default).")
    p.add_argument("--fractions", default="1", help="Comma-separated corruption fractions f of the planted objective.")
    for name in ("max_train_steps", "per_device_train_batch_size", "max_seq_length", "per_device_eval_batch_size",
                 "final_eval_batches", "warm_steps", "warm_batch_size", "layers", "hidden_size", "heads",
                 "head_warmup_steps"):
        p.add_argument(f"--{name}", type=int, default=None, help="Testbed default when not given.")
    for name in ("learning_rate", "warm_learning_rate", "warmup_ratio"):
        p.add_argument(f"--{name}", type=float, default=None, help="Testbed default when not given.")
    p.add_argument("--model_name_or_path", default=None,
                   help="MiniLM testbeds: the checkpoint (default: the offline MiniLM). scratch: a tokenizer.")
    p.add_argument("--train_file", default=None, help="Default: the shared Wikipedia sample.")
    p.add_argument("--extra", default="", help="Extra flags for every pre-training run (quoted), e.g. for a tiny test.")
    p.add_argument("--jobs", type=int, default=1, help="Runs at a time.")
    p.add_argument("--threads", type=int, default=1, help="Threads per run.")
    p.add_argument("--report_only", action="store_true", help="Only analyse the runs already in --results.")
    p.add_argument("--demo", action="store_true",
                   help="Uniform against MOMETAS (--reward_objectives mlm) on the minilm testbed, K = 25, f = 1, one "
                   "seed, both at once (about half an hour on 2 cores; no cheap testbed showed the harm): prints "
                   "the planted objective's weight and writes the curves.")
    p.add_argument("--results", default=str(OUT), help="Folder of the per-run results.")
    args = p.parse_args(argv)
    args.cache = CACHE if Path(args.results) == OUT else Path(f"{args.results}_cache")
    return args


def settings_for(args, testbed, overrides=True):
    """The testbed's settings with every flag the user gave on top (``overrides``)."""
    settings = dict(TESTBEDS[testbed])
    for key in settings:
        if overrides and getattr(args, key, None) is not None:
            settings[key] = getattr(args, key)
    settings["train_file"] = args.train_file or str(wiki_corpus())
    settings["tokenizer"] = args.model_name_or_path or minilm_path()
    return settings


# ------------------------------------------------------------------------------ running


def common_args(settings, batch_size):
    return ["--train_file", settings["train_file"], "--max_seq_length", str(settings["max_seq_length"]),
            "--per_device_train_batch_size", str(batch_size),
            "--per_device_eval_batch_size", str(settings["per_device_eval_batch_size"]), "--logging_steps", "100",
            # On a CPU, torch's default AdamW takes a per-tensor path 9x slower than the fused kernel (40 vs 4.5 ms
            # a step for the small testbed's embedding): half of a step's time.
            "--fused_adamw"]


def small_config(settings, folder):
    """A BERT config of the small testbed's size with the tokenizer's vocabulary (written once)."""
    from transformers import AutoTokenizer, BertConfig

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(settings["tokenizer"])
    BertConfig(vocab_size=len(tokenizer), hidden_size=settings["hidden_size"], num_hidden_layers=settings["layers"],
               num_attention_heads=settings["heads"], intermediate_size=4 * settings["hidden_size"],
               max_position_embeddings=2 * settings["max_seq_length"]).save_pretrained(folder)
    return folder


def cut_minilm(settings, folder):
    """MiniLM with only its first ``layers`` layers (written once)."""
    from transformers import AutoTokenizer, BertModel

    if not (folder / "config.json").is_file():
        model = BertModel.from_pretrained(settings["tokenizer"], num_hidden_layers=settings["layers"])
        model.save_pretrained(folder)
        AutoTokenizer.from_pretrained(settings["tokenizer"]).save_pretrained(folder)
    return folder


def warm_start(args, testbed, settings):
    """The testbed's starting point: ``warm_steps`` of plain MLM (cached, shared by every arm and seed)."""
    keys = ("warm_steps", "warm_learning_rate", "warm_scheduler", "max_seq_length", "warm_batch_size", "train_file",
            "tokenizer")
    if "base" in settings:  # a testbed that starts from another one's warm start
        return warm_start(args, settings["base"], settings_for(args, settings["base"], overrides=False))
    shape = {"scratch": ("layers", "hidden_size", "heads"), "cut2": ("layers", "head_warmup_steps")}.get(testbed, ())
    key = Hasher.hash((testbed, [settings[k] for k in keys + shape], args.extra))
    folder = args.cache / f"warm_{testbed}_{key[:12]}"
    if (folder / "warm.done").is_file():
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    log(f"planted: {testbed} warm start, {settings['warm_steps']} steps of plain MLM ...")
    if testbed == "scratch":
        model = ["--config_name", str(small_config(settings, args.cache / f"config_{key[:12]}")),
                 "--tokenizer_name", settings["tokenizer"]]
    elif testbed == "cut2":
        # The MLM head MiniLM lacks is warmed up first on the frozen layers, then everything trains.
        model = ["--model_name_or_path", str(cut_minilm(settings, args.cache / f"minilm_{settings['layers']}layers")),
                 "--head_warmup_steps", str(settings["head_warmup_steps"])]
    else:
        model = ["--model_name_or_path", settings["tokenizer"]]
    command = [sys.executable, "run_mometas_pretraining.py", *model,
               *common_args(settings, settings["warm_batch_size"]), "--objectives", "mlm", "--sampler", "uniform",
               # Its MLM validation loss every 500 steps: how far past unigram statistics the start is.
               "--baseline_meta_test", "--meta_length", str(min(500, settings["warm_steps"])),
               "--max_train_steps", str(settings["warm_steps"]), "--learning_rate", str(settings["warm_learning_rate"]),
               "--lr_scheduler_type", settings["warm_scheduler"], "--seed", "0", "--output_dir", str(folder),
               *args.extra.split()]
    _run_logged(command, args, folder.with_suffix(".log"), f"{testbed} warm start")
    (folder / "warm.done").write_text("ok\n")
    return folder


def objectives_of(arm):
    return BASE if arm == "oracle" else BASE + [PLANTED]


def run_name(testbed, k, f, arm, seed):
    return f"{testbed}_K{k}_f{f:g}_{arm}_seed{seed}"


def run_one(args, job):
    testbed, k, f, arm, seed = job
    settings = args.settings[testbed]
    name = run_name(*job)
    result_path = Path(args.results) / f"{name}.json"
    if result_path.is_file():
        return read_json(result_path)
    output_dir = args.cache / name
    if output_dir.exists():  # a killed run: start it again from scratch
        shutil.rmtree(output_dir)
    log(f"planted: {name} ...")
    script = ["--model_name_or_path", str(args.warm[testbed]), *common_args(settings, settings["per_device_train_batch_size"]),
              "--objectives", ",".join(objectives_of(arm)), *ARMS[arm], "--meta_length", str(k),
              "--max_train_steps", str(settings["max_train_steps"]), "--learning_rate", str(settings["learning_rate"]),
              "--warmup_ratio", str(settings["warmup_ratio"]), "--seed", str(seed), "--output_dir", str(output_dir),
              *args.extra.split()]
    if arm not in ("paper", "robust_all", "robust_mlm", "robust_named", "robust_mlm_lambda1", "robust_mlm_lr_lambda"):
        script.append("--baseline_meta_test")  # validation curves for the samplers that do not need them
    tic = time.perf_counter()
    freeze = "1" if settings.get("freeze_embeddings") else "0"
    command = [sys.executable, __file__, "_pretrain", str(f), str(settings["final_eval_batches"]), freeze, *script]
    _run_logged(command, args, output_dir.with_suffix(".log"), name)
    from mometas_utils.history import read_history

    result = {
        "name": name, "testbed": testbed, "meta_length": k, "fraction": f, "arm": arm, "seed": seed,
        "objectives": objectives_of(arm), "arm_flags": ARMS[arm], "seconds": round(time.perf_counter() - tic, 1),
        "cpu_seconds": round(json.loads((output_dir / "cpu_seconds.json").read_text()), 1),
        "settings": portable({key: str(v) if isinstance(v, Path) else v for key, v in settings.items()}),
        "final_val_loss": json.loads((output_dir / "final_val_loss.json").read_text()),
        "rows": read_history(output_dir),
    }
    write_json(result_path, result, compact=True)
    shutil.rmtree(output_dir)  # the model is not kept: the study commits numbers, never checkpoints
    log(f"planted: {name} done in {result['seconds']:.0f} s ({result['cpu_seconds']:.0f} CPU s), final MLM loss {result['final_val_loss']['mlm']:.4f}")
    return result


def _run_logged(command, args, log_path, what):
    """Run one subprocess with its output in ``log_path`` (the progress of a long run can be followed there)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as out:
        done = subprocess.run(command, cwd=ROOT, env=_env(args.threads), stdout=out, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed (log: {log_path}):\n{log_path.read_text()[-3000:]}")
    log_path.unlink()


def _env(threads):
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false", "PYTHONHASHSEED": "0"}


def pretrain(argv):
    """In a subprocess: register the planted objective with fraction f, run the script, measure the final model."""
    sys.path.insert(0, str(STUDY_DIR))
    import shuffled_mlm

    fraction, final_batches, freeze, script_argv = float(argv[0]), int(argv[1]), argv[2] == "1", argv[3:]
    shuffled_mlm.register(fraction)
    spec = importlib.util.spec_from_file_location("run_mometas_pretraining", ROOT / "run_mometas_pretraining.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    if freeze:
        load_model = script.load_model

        def load_frozen(args, config):
            # The word embeddings are the tied MLM decoder: frozen, a step no longer computes and updates a
            # dense vocabulary x hidden gradient (about 60% of an MLM step on MiniLM at 32 tokens).
            model, lacking = load_model(args, config)
            model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
            return model, lacking

        script.load_model = load_frozen
    script.main(script_argv)
    args = script.parse_args(script_argv)
    output_dir = Path(args.output_dir)
    losses = final_losses(output_dir, args, final_batches)
    (output_dir / "final_val_loss.json").write_text(json.dumps(losses))
    # CPU seconds, not wall-clock: the cost of a run on one core, whatever else shares the machine.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    (output_dir / "cpu_seconds.json").write_text(json.dumps(usage.ru_utime + usage.ru_stime))


def final_losses(output_dir, args, num_batches):
    """Every objective's validation loss of the final model on fixed batches of the run's own split."""
    import torch
    from transformers import AutoTokenizer

    from common import prepare_corpus
    from mometas_utils.meta_test import meta_test, meta_test_batches
    from mometas_utils.modeling_mometas import MometasForPreTraining
    from mometas_utils.objectives import PadCollator, build_objectives

    objectives = args.objectives.split(",")
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    model = MometasForPreTraining.from_pretrained(output_dir)
    splits = prepare_corpus(Path(args.train_file), tokenizer, objectives=objectives,
                            max_seq_length=args.max_seq_length, seed=args.seed)
    batches = meta_test_batches(splits["validation"], batch_size=args.per_device_eval_batch_size,
                                num_batches=num_batches, seed=1234, step=0, process_index=0,
                                pad=PadCollator(tokenizer.pad_token_id), fixed=True)
    collators = build_objectives(objectives, tokenizer, seed=1234, max_length=args.max_seq_length)
    with torch.no_grad():
        return meta_test(model, batches, collators, seed=1234, device="cpu")


# ------------------------------------------------------------------------------ main


def jobs_of(args):
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if args.demo:
        return [("minilm", 25, 1.0, arm, seeds[0]) for arm in ("uniform", "robust_mlm")]
    if args.grid == "benchmark":
        grid = BENCHMARK
    else:
        arms = [a for a in args.arms.split(",") if a]
        unknown = [a for a in arms if a not in ARMS]
        if unknown:
            sys.exit(f"error: --arms: unknown arm(s) {unknown}; choose from {list(ARMS)}")
        ks = [int(k) for k in (args.meta_lengths or TESTBEDS[args.testbed]["meta_lengths"]).split(",")]
        fractions = [float(f) for f in args.fractions.split(",")]
        if any(not 0 <= f <= 1 for f in fractions):
            sys.exit(f"error: --fractions: expected fractions in [0, 1], got {args.fractions}")
        grid = [(args.testbed, k, f, arms) for k in ks for f in fractions]
    # Seed by seed, so that a grid stopped half-way has every arm on the same seeds.
    return [(testbed, k, f, arm, seed) for testbed, k, f, arms in grid for seed in seeds for arm in arms]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_pretrain"]:
        return pretrain(argv[1:])
    args = parse_args(argv)
    if args.demo:
        # A newcomer's run is not a result of the benchmark: it goes where the demos go.
        args.results = str(ROOT / "out" / "planted_demo") if Path(args.results) == OUT else args.results
        args.cache = Path(f"{args.results}_cache")
        args.jobs = max(args.jobs, 2)
    jobs = jobs_of(args)
    testbeds = sorted({job[0] for job in jobs})
    args.settings = {t: settings_for(args, t) for t in testbeds}
    if not args.report_only:
        args.warm = {t: warm_start(args, t, args.settings[t]) for t in testbeds}
        done = sum((Path(args.results) / f"{run_name(*job)}.json").is_file() for job in jobs)
        log(f"planted: {len(jobs)} runs, {done} already done, {args.jobs} at a time")
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda job: run_one(args, job), jobs))
    # Every run in the folder, not only this call's: the arms and testbeds run outside the grid (the
    # calibrations, the arms the evidence pointed to) belong in the same summary.
    results = [r for path in sorted(Path(args.results).glob("*.json")) if (r := read_json(path))]
    if not results:
        sys.exit("error: no finished runs to report")
    report = analyse(results)
    folder = Path(args.results)
    from planted_report import candidate_decision

    write_json(folder.with_suffix(".json"), {"runs": len(results), "groups": report, "verdicts": verdicts(report),
                                             "candidate": candidate_decision(report)})
    plot_weights(results, folder.with_name(f"{folder.name}_weights.png"))  # the largest K: the paper's 100
    learned = {(r["testbed"], r["meta_length"]) for r in results if r["arm"] not in ("uniform", "oracle")}
    for testbed, k in sorted(learned - {("minilm2k", 100)}):  # a figure of flat lines says nothing
        plot_weights(results, folder.with_name(f"{folder.name}_weights_{testbed}_K{k}.png"), testbed=testbed, k=k)
    for testbed, k in sorted({(r["testbed"], r["meta_length"]) for r in results if r["fraction"] == 0}):
        plot_weights(results, folder.with_name(f"{folder.name}_weights_{testbed}_K{k}_f0.png"), testbed=testbed, k=k,
                     fraction=0.0)
    plot_power(report, folder.with_name(f"{folder.name}_power.png"))
    print(markdown(report))
    if folder == OUT:  # the committed benchmark: the docs' blocks follow it
        for (doc, name), text in generated_blocks().items():
            write_generated_block(doc, name, text)


def generated_blocks():
    """The blocks of docs/study.md and the README that quote the planted benchmark, from the committed
    ``benchmark.json``, ``sampler_model.json`` and the K = 8 study's runs."""
    from planted_report import k8_markdown, readme_lines, verdict_markdown
    from sampler_model import power_table

    summary, power = read_json(OUT.with_suffix(".json")), read_json(RESULTS_DIR / "sampler_model.json")
    blocks = {("docs/study.md", "planted-k8"): k8_markdown(RESULTS_DIR / "planted"),
              ("docs/study.md", "planted-benchmark"): markdown(summary["groups"]),
              ("docs/study.md", "planted-verdict"): verdict_markdown(summary, power),
              ("README.md", "readme-planted"): readme_lines(summary, power)}
    if power is not None:
        blocks[("docs/study.md", "planted-power")] = power_table(power)
    return blocks

if __name__ == "__main__":
    main()

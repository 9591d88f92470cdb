#!/usr/bin/env python
"""The reward's noise floor: how large is R(tau) for a model that did not change?

Trains MiniLM with the demo's setting (16 x 128, five objectives, uniform draws) and, every K
steps, runs the meta-test of ``run_mometas_pretraining.py`` (the same library functions, seeds
and batches) in four ways: redrawn batches and one fixed set (``--eval_batches`` each; the
1-batch configurations use the first), and a second redrawn stream and a second fixed set of
one batch (streams B). Then it freezes the model and runs ``--null_pairs + 1`` consecutive
meta-tests on it, exactly as the loop would (redrawn batches; the fixed set is measured twice,
which is enough: it gives the same losses every time). From the recorded per-batch losses it
computes, for each reward configuration:

* null std: the standard deviation of R between consecutive meta-tests of the frozen model;
* train |R|: the mean |R| the same configuration sees during training;
* A-B noise: std(R_A - R_B) / sqrt(2) during training, two independent batch streams (or two
  fixed sets) measuring the same model changes; this is the noise a fixed set does not remove.

    python study/reward_noise.py                  # about an hour on 2 free CPU cores
    python study/reward_noise.py --tiny           # seconds, for the tests
    python study/reward_noise.py --report_only    # the table in docs/study.md from the committed JSON

Writes ``study/results/reward_noise.json``, prints the table and writes it into ``docs/study.md``
(block ``study-reward-noise``) when the results are the committed ones.
It saves its state at every meta-test (``study/cache/reward_noise/``): run again, it continues
from the last one (the later training batches are then drawn anew, which the statistics do not
mind).
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import torch

from common import RESULTS_DIR, log, minilm_path, prepare_corpus, read_json, write_generated_blocks, write_json

OBJECTIVES = ["mlm", "cse", "atd", "dtd", "emlm"]
# stream: (fixed set?, seed offset, batches: None = --eval_batches)
STREAMS = {"redrawn": (False, 0, None), "fixed": (True, 0, None), "redrawn_b": (False, 1, 1), "fixed_b": (True, 1, 1)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_name_or_path", default=None, help="Default: the offline MiniLM checkpoint.")
    p.add_argument("--train_file", default=None, help="Default: the demo corpus (Python reference prose).")
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--per_device_train_batch_size", type=int, default=16)
    p.add_argument("--per_device_eval_batch_size", type=int, default=32)
    p.add_argument("--max_train_steps", type=int, default=400)
    p.add_argument("--meta_length", type=int, default=50)
    p.add_argument("--eval_batches", type=int, default=4, help="Batches per stream; configs use 1 and this many.")
    p.add_argument("--null_pairs", type=int, default=20)
    p.add_argument("--learning_rate", type=float, default=5e-5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--output", default=str(RESULTS_DIR / "reward_noise.json"))
    p.add_argument("--state", default=None, help="Resumable state (default: study/cache/<output name>.pt).")
    p.add_argument("--tiny", action="store_true", help="A tiny random BERT and a few steps (tests).")
    p.add_argument("--report_only", action="store_true",
                   help="Measure nothing: print the table of --output and write it into docs/study.md.")
    return p.parse_args(argv)


def build(args):
    from transformers import AutoTokenizer, BertConfig, get_scheduler

    from mometas_utils.configuration_mometas import MometasConfig
    from mometas_utils.modeling_mometas import MometasForPreTraining
    from mometas_utils.objectives import PadCollator, build_objectives, objective_heads

    torch.manual_seed(args.seed)
    name = args.model_name_or_path or minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(name)
    heads = objective_heads(OBJECTIVES)
    if args.tiny:
        base = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=128).to_dict()
        model = MometasForPreTraining(MometasConfig(**{**base, "objectives": heads}))
    else:
        model = MometasForPreTraining.from_pretrained(name, objectives=heads)
    if args.train_file is None:
        from mometas_utils.demo import write_demo_corpus

        args.train_file = str(write_demo_corpus(RESULTS_DIR.parent / "cache" / "demo_corpus.txt"))
    splits = prepare_corpus(args.train_file, tokenizer, objectives=OBJECTIVES, max_seq_length=args.max_seq_length,
                            seed=args.seed)
    pad = PadCollator(tokenizer.pad_token_id)
    kwargs = dict(seed=args.seed, max_length=args.max_seq_length)
    collators = build_objectives(OBJECTIVES, tokenizer, **kwargs)
    eval_collators = build_objectives(OBJECTIVES, tokenizer, **kwargs)
    no_decay = ("bias", "LayerNorm.weight")
    groups = [{"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)], "weight_decay": 0.01},
              {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate)
    scheduler = get_scheduler("linear", optimizer, math.ceil(0.06 * args.max_train_steps), args.max_train_steps)
    return model, splits, pad, collators, eval_collators, optimizer, scheduler


def evaluate(model, validation, eval_collators, pad, args, step, streams=STREAMS):
    """Per-batch validation losses of ``streams``: {stream: {objective: [loss per batch]}}."""
    from mometas_utils.meta_test import meta_test, meta_test_batches

    out = {}
    for stream in streams:
        fixed, offset, n = STREAMS[stream]
        seed = args.seed + offset
        batches = meta_test_batches(validation, batch_size=args.per_device_eval_batch_size,
                                    num_batches=n or args.eval_batches, seed=seed, step=step, process_index=0,
                                    pad=pad, fixed=fixed)
        out[stream] = meta_test(model, batches, eval_collators, seed=seed, device="cpu", per_batch=True)
    return out


def train_and_measure(args, settings, state_path):
    from mometas_utils.samplers import build_sampler

    model, splits, pad, collators, eval_collators, optimizer, scheduler = build(args)
    sampler = build_sampler("uniform", OBJECTIVES, seed=args.seed)
    training, null, start = [], [], 0
    saved = torch.load(state_path, weights_only=False) if state_path.is_file() else None
    if saved is not None and saved["settings"] == settings:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        sampler.load_state_dict(saved["sampler"])
        torch.set_rng_state(saved["rng"])
        training, null, start = saved["training"], saved["null"], saved["step"]
        log(f"resuming from step {start} ({len(training)} training and {len(null)} null meta-tests done)")

    def save(step):
        state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = state_path.with_suffix(".tmp")
        torch.save({"settings": settings, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "sampler": sampler.state_dict(), "rng": torch.get_rng_state(),
                    "training": training, "null": null, "step": step}, tmp)
        tmp.replace(state_path)

    loader = torch.utils.data.DataLoader(splits["train"], batch_size=args.per_device_train_batch_size, shuffle=True,
                                         collate_fn=pad, generator=torch.Generator().manual_seed(args.seed + start))
    stream = iter(loader)
    if not training:
        training.append({"step": 0, "losses": evaluate(model, splits["validation"], eval_collators, pad, args, 0)})
    model.train()
    for step in range(start + 1, args.max_train_steps + 1):
        try:
            padded = next(stream)
        except StopIteration:
            stream = iter(loader)
            padded = next(stream)
        objective = sampler.sample()
        loss = model(objective=objective, **collators[objective](padded)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % args.meta_length == 0:
            training.append({"step": step, "losses": evaluate(model, splits["validation"], eval_collators, pad, args,
                                                              step)})
            save(step)
            log(f"step {step}: meta-test done, last loss {objective}={loss.item():.3f}")
    for r in range(len(null), args.null_pairs + 1):
        # The frozen model at the meta-tests a continued run would hold next: steps T+K, T+2K, ...
        step = args.max_train_steps + (r + 1) * args.meta_length
        streams = ["redrawn", "fixed"] if r < 2 else ["redrawn"]
        null.append({"step": step, "losses": evaluate(model, splits["validation"], eval_collators, pad, args, step,
                                                      streams)})
        save(args.max_train_steps)
        log(f"null meta-test {r + 1}/{args.null_pairs + 1} done")
    return {"training": training, "null": null}


# ----------------------------------------------------------------------------- analysis

CONFIGS = [
    # name, stream, batches (1 or all), transform
    ("literal Eq. 3 (paper: redrawn, 1 batch)", "redrawn", 1, "literal"),
    ("floor -1 + dead zone 1e-3", "redrawn", 1, "guarded"),
    ("fixed batches", "fixed", 1, "literal"),
    ("fixed batches + floor + dead zone", "fixed", 1, "guarded"),
    ("4 batches", "redrawn", "all", "literal"),
    ("4 batches + floor + dead zone", "redrawn", "all", "guarded"),
    ("fixed, 4 batches + floor + dead zone", "fixed", "all", "guarded"),
]


def losses_of(record, stream, batches):
    per_batch = record["losses"][stream]
    n = len(next(iter(per_batch.values()))) if batches == "all" else batches
    return torch.tensor([sum(per_batch[o][:n]) / n for o in OBJECTIVES], dtype=torch.float64)


def rewards(records, stream, batches, transform):
    from mometas_utils.rewards import compute_reward

    kwargs = dict(floor=-1.0, dead_zone=1e-3) if transform == "guarded" else {}
    values = [losses_of(r, stream, batches) for r in records if stream in r["losses"]]
    return [compute_reward("relative", b, a, **kwargs) for b, a in zip(values, values[1:])]


def _std(xs):
    return statistics.pstdev(xs) if len(xs) > 1 else 0.0


def analyse(measured):
    from mometas_utils.rewards import Advantage

    rows = []
    for name, stream, batches, transform in CONFIGS:
        train = rewards(measured["training"], stream, batches, transform)
        null = rewards(measured["null"], stream, batches, transform)
        ab = None
        if batches == 1:  # stream B has one batch
            train_b = rewards(measured["training"], stream + "_b", 1, transform)
            ab = _std([a - b for a, b in zip(train, train_b)]) / math.sqrt(2)
        row = {"config": name, "null_std": _std(null), "train_mean_abs": statistics.fmean(abs(r) for r in train),
               "train_std": _std(train), "ab_noise": ab, "null_max_abs": max(abs(r) for r in null)}
        row["snr"] = row["train_mean_abs"] / row["null_std"] if row["null_std"] > 0 else math.inf
        rows.append(row)
    # Normalisation divides every reward by the running std of the (centred) training rewards:
    # in its units the noise floor is null_std / s and the training advantages have mean |A|.
    for name, stream, batches in (("normalised (EMA baseline), redrawn, guarded", "redrawn", 1),
                                  ("normalised (EMA baseline), fixed, guarded", "fixed", 1)):
        train = rewards(measured["training"], stream, batches, "guarded")
        null = rewards(measured["null"], stream, batches, "guarded")
        advantage = Advantage("ema", 0.9, normalize=True)
        out = [advantage(r) for r in train]
        scale = out[-1]["reward_scale"] or 1.0
        rows.append({"config": name, "null_std": _std(null) / scale,
                     "train_mean_abs": statistics.fmean(abs(o["advantage"]) for o in out),
                     "train_std": _std([o["advantage"] for o in out]), "ab_noise": None,
                     "null_max_abs": max(abs(r) for r in null) / scale})
        rows[-1]["snr"] = rows[-1]["train_mean_abs"] / rows[-1]["null_std"] if rows[-1]["null_std"] > 0 else math.inf
    # Which objective makes the noise: per-objective std of the literal term under the null.
    per_objective = {}
    values = [losses_of(r, "redrawn", 1) for r in measured["null"]]
    for i, name in enumerate(OBJECTIVES):
        terms = [float((b[i] - a[i]) / b[i]) for b, a in zip(values, values[1:])]
        per_objective[name] = _std(terms)
    return {"table": rows, "null_std_per_objective_literal_1_batch": per_objective}


def markdown(analysis) -> str:
    def fmt(x):
        if x is None:
            return "–"
        return "∞" if x == math.inf else f"{x:.3g}"

    lines = ["| reward configuration | null std | null max abs(R) | train mean abs(R) | signal/noise | A–B noise |",
             "|---|---|---|---|---|---|"]
    for row in analysis["table"]:
        lines.append(f"| {row['config']} | {fmt(row['null_std'])} | {fmt(row['null_max_abs'])} | "
                     f"{fmt(row['train_mean_abs'])} | {fmt(row['snr'])} | {fmt(row['ab_noise'])} |")
    per = analysis["null_std_per_objective_literal_1_batch"]
    lines.append("")
    lines.append("Null std of each objective's literal term (redrawn, 1 batch): "
                 + ", ".join(f"{k} {v:.3g}" for k, v in per.items()))
    return "\n".join(lines)


COMMITTED = RESULTS_DIR / "reward_noise.json"


def generated_blocks(results=COMMITTED) -> dict:
    """The blocks of the docs that quote ``study/results/reward_noise.json``: {(doc, block name): text}."""
    analysis = read_json(results)["analysis"]
    return {("docs/study.md", "study-reward-noise"): markdown(analysis)}


def main(argv=None):
    args = parse_args(argv)
    output = Path(args.output)
    if args.report_only:
        if not output.is_file():
            raise SystemExit(f"error: --output {output}: no results to report")
        print(markdown(analyse(read_json(output)["measured"])))
        if output.resolve() == COMMITTED.resolve():
            write_generated_blocks(generated_blocks())
        return
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cached = read_json(output)
    settings = {k: v for k, v in vars(args).items() if k not in ("output", "state", "report_only")}
    if cached and cached.get("settings") == settings:
        log(f"{output} is up to date; delete it to measure again")
        measured = cached["measured"]
    else:
        state = Path(args.state) if args.state else RESULTS_DIR.parent / "cache" / f"{output.stem}.pt"
        measured = train_and_measure(args, settings, state)
        state.unlink(missing_ok=True)
    analysis = analyse(measured)
    write_json(output, {"settings": settings, "measured": measured, "analysis": analysis})
    print(markdown(analysis))
    if output.resolve() == COMMITTED.resolve():
        write_generated_blocks(generated_blocks())


if __name__ == "__main__":
    main()

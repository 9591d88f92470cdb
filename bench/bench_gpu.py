"""Tokens/s and MFU of the MOMETAS loop against a plain MLM loop, same model size and data, one run.

    python bench/bench_gpu.py                               # BERT-base, seq 256, bf16, largest batch
    python bench/bench_gpu.py --torch_compile --fused_adamw
    python bench/bench_gpu.py --device cpu --tiny           # seconds on a CPU: checks the bench itself
    python bench/bench_gpu.py --device cpu --tiny --json bench/results/gpu_cpu_tiny.json   # docs/gpu.md's sample
    python bench/bench_gpu.py report                        # rewrite docs/gpu.md's sample from that file

(a) mometas: the loop of run_mometas_pretraining.py. One objective per step drawn by the MOMETAS
    sampler, the project's collators on CPU, `model(objective=...)`, gradient clipping, the loss
    reduced and read back every step (the sampler observes it), meta-test of every objective
    every K steps on the paper's eval batch (twice the training batch), sampler update.
(b) plain MLM, the way transformers' run_mlm_no_trainer.py does it: DataCollatorForLanguageModeling
    in the DataLoader, BertForMaskedLM, AdamW, linear schedule, accelerate, no clipping.

Both start from the same random BERT weights (no checkpoint is needed) and read sequences of the
same synthetic corpus: a BERT vocabulary laid out like bert-base-uncased's, random word ids,
and entity spans for EMLM. Throughput does not depend on which words they are. Sequences are
packed as each script packs them: 256 tokens for (b); 256 minus ATD's room for insertions for (a),
as run_mometas_pretraining.py does when ATD is trained.

Reported, per loop, over the timed steps (warm-up excluded):
  corpus tokens/s   non-pad tokens of the sequences read from the corpus;
  encoder tokens/s  non-pad tokens that went through the encoder in training steps (CSE counts
                    its two views, ATD its insertions, DTD without its deletions);
  MFU               model FLOPs of the training steps / (time x peak FLOP/s of the device).
The ratio mometas / plain is given for both token counts. Encoder tokens/s compares the cost of
the same work; corpus tokens/s includes what the algorithm adds on purpose (CSE encodes every
sequence twice), so with CSE drawn 1/5 of the time it cannot reach 1.

FLOPs of one training step (forward + backward = 3 x forward, 2 FLOPs per multiply-add), with n
the encoder tokens, W the padded width, L layers, H hidden, I intermediate, V vocabulary:
    6 * (4H^2 + 2HI) * L * n        the encoder's matrix multiplies (N = 85.0M for BERT-base)
  + 12 * L * H * W * n              attention scores and weighted sum
  + 6 * (H^2 + H*V) * n_lm          the LM head on the n_lm positions it scores: the masked ones
                                    in MOMETAS, every position in BertForMaskedLM
  + 6 * 2H * n                      token-detection heads (ATD, DTD)
Embedding lookups, LayerNorms, biases, the pooler and the CSE head are left out (< 0.5%).
Meta-test forwards are not counted as FLOPs: their time lowers the MOMETAS loop's MFU.
Peak: --peak_tflops, else dense bf16/fp16 tensor-core peak by device name: H100 SXM and H200
989 TFLOP/s, H100 PCIe 756, A100 312.
"""

import argparse
import gc
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForMaskedLM, BertTokenizer, DataCollatorForLanguageModeling, get_scheduler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mometas_utils.configuration_mometas import MometasConfig  # noqa: E402
from mometas_utils.meta_test import meta_test, meta_test_batches  # noqa: E402
from mometas_utils.modeling_mometas import MometasForPreTraining  # noqa: E402
from mometas_utils.objectives import PadCollator, build_objectives, objective_heads  # noqa: E402
from mometas_utils.samplers import build_sampler  # noqa: E402

PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0}
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true",
                        help="A 2-layer, 64-wide BERT, 64 tokens, batch 8, 12 steps: checks the bench, measures nothing.")
    parser.add_argument("--mixed_precision", choices=["bf16", "fp16", "no"], default="bf16")
    parser.add_argument("--max_seq_length", type=int, default=None, help="Default 256 (64 with --tiny).")
    parser.add_argument("--batch_size", default=None,
                        help="Sequences per step, or 'auto': the largest power of two with which both loops fit "
                        "(default auto on CUDA, 8 on CPU).")
    parser.add_argument("--steps", type=int, default=None, help="Timed steps per loop (default 200; 12 with --tiny).")
    parser.add_argument("--warmup_steps", type=int, default=None, help="Untimed steps first (default 20; 5 tiny).")
    parser.add_argument("--meta_length", type=int, default=None, help="K (default 100; 6 with --tiny).")
    parser.add_argument("--objectives", default="mlm,cse,atd,dtd,emlm")
    parser.add_argument("--torch_compile", action="store_true", help="Compile the encoder of both models.")
    parser.add_argument("--fused_adamw", action="store_true", help="torch.optim.AdamW(fused=True) in both loops.")
    parser.add_argument("--peak_tflops", type=float, default=None, help="Peak FLOP/s of one device, in TFLOP/s.")
    parser.add_argument("--json", type=str, default=None, help="Also write the figures to this file.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    small = args.tiny
    defaults = dict(max_seq_length=64 if small else 256, steps=12 if small else 200,
                    warmup_steps=5 if small else 20, meta_length=6 if small else 100)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.batch_size is None:
        args.batch_size = "auto" if args.device == "cuda" else "8"
    if args.batch_size != "auto" and (not args.batch_size.isdigit() or int(args.batch_size) < 1):
        parser.error(f"--batch_size: expected a positive integer or 'auto', got {args.batch_size!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible; use --device cpu")
    for flag in ("steps", "meta_length", "max_seq_length"):
        if getattr(args, flag) < (8 if flag == "max_seq_length" else 1):
            parser.error(f"--{flag}: too small ({getattr(args, flag)})")
    return args


# --------------------------------------------------------------------------- data


def bert_vocabulary_tokenizer():
    """A tokenizer with bert-base-uncased's layout (special ids 0, 100-103, 30522 entries), no download."""
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += [f"w{i}" for i in range(30522 - len(tokens))]
    return BertTokenizer(vocab={token: i for i, token in enumerate(tokens)})


def synthetic_corpus(tokenizer, rows, length, seed):
    """Packed sequences [CLS] words [SEP], with a 3-wordpiece entity every 21 tokens (~14%, as in Wikipedia)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, len(tokenizer), size=(rows, length), dtype=np.int64)
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    shifted = np.arange(length)[None, :] + rng.integers(0, 21, size=(rows, 1))
    entity_ids = np.where((shifted % 21) < 3, shifted // 21, -1)
    return ids, entity_ids


class Rows(torch.utils.data.Dataset):
    """Rows as Python lists, as a ``datasets.Dataset`` hands them to the collators (``datasets`` is
    not installed on every GPU image, and the bench must run there as it is)."""

    def __init__(self, **columns):
        self.columns = columns

    def __len__(self):
        return len(next(iter(self.columns.values())))

    def __getitem__(self, index):
        return {name: column[index].tolist() for name, column in self.columns.items()}


def forever(loader):
    for epoch in itertools.count():
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader


# --------------------------------------------------------------------------- FLOPs


def step_flops(config, n_tokens, width, n_lm=0, n_detect=0):
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    encoder = 6 * (4 * h * h + 2 * h * inter) * layers * n_tokens + 12 * layers * h * width * n_tokens
    return encoder + 6 * (h * h + h * config.vocab_size) * n_lm + 6 * 2 * h * n_detect


def peak_flops(args):
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if args.device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_TFLOPS.items():  # "H100 PCIe" is looked at before "H100"
        if key in name:
            return tflops * 1e12
    return None


# --------------------------------------------------------------------------- the two loops


class MometasLoop:
    """One step of run_mometas_pretraining.py's training loop, meta-test included."""

    def __init__(self, args, accelerator, config, tokenizer):
        self.args, self.accelerator, self.config = args, accelerator, config
        self.names = args.objectives.split(",")
        room = math.ceil(0.15 * args.max_seq_length) if "atd" in self.names else 0
        rows = args.pool_batches * args.batch_size
        ids, entity_ids = synthetic_corpus(tokenizer, rows, max(8, args.max_seq_length - room), args.seed)
        train = Rows(input_ids=ids, entity_ids=entity_ids)
        self.validation = Rows(input_ids=ids[: 2 * args.batch_size], entity_ids=entity_ids[: 2 * args.batch_size])
        self.pad = PadCollator(tokenizer.pad_token_id)
        loader = DataLoader(train, shuffle=True, collate_fn=self.pad, batch_size=args.batch_size,
                            generator=torch.Generator().manual_seed(args.seed))
        self.batches = forever(accelerator.prepare_data_loader(loader, device_placement=False))
        self.collators = build_objectives(self.names, tokenizer, seed=args.seed, max_length=args.max_seq_length)
        self.eval_collators = build_objectives(self.names, tokenizer, seed=args.seed, max_length=args.max_seq_length)
        self.sampler = build_sampler("mometas", self.names, meta_length=args.meta_length, seed=args.seed)
        torch.manual_seed(args.seed)
        model = MometasForPreTraining(MometasConfig(**config.to_dict(), objectives=objective_heads(self.names)))
        self.model, self.optimizer, self.scheduler = prepare(model, args, accelerator)
        self.meta_batches = meta_test_batches(self.validation, batch_size=2 * args.batch_size, num_batches=1,
                                              seed=args.seed, step=0, process_index=0, pad=self.pad, fixed=True)

    def step(self, objective=None):
        objective = objective or self.sampler.sample()
        padded = next(self.batches)
        batch = self.collators[objective](padded)
        views = 2 if objective == "cse" else 1
        n_tokens = views * int(batch["attention_mask"].sum())
        n_lm = int((batch["labels"] != -100).sum()) if objective in ("mlm", "emlm") else 0
        n_detect = n_tokens if objective in ("atd", "dtd") else 0
        flops = step_flops(self.config, n_tokens, batch["input_ids"].size(1), n_lm, n_detect)
        device = self.accelerator.device
        loss = self.model(objective=objective, **{k: v.to(device, non_blocking=True) for k, v in batch.items()}).loss
        self.accelerator.backward(loss)
        self.accelerator.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.sampler.observe(objective, self.accelerator.reduce(loss.detach(), reduction="mean").item(), None)
        return {"objective": objective, "corpus_tokens": int(padded["attention_mask"].sum()),
                "encoder_tokens": n_tokens, "flops": flops}

    def meta_test(self):
        losses = meta_test(self.model, self.meta_batches, self.eval_collators, seed=self.args.seed,
                           device=self.accelerator.device)
        self.sampler.update(losses)


class PlainMLMLoop:
    """One step of transformers' run_mlm_no_trainer.py (without its logging)."""

    def __init__(self, args, accelerator, config, tokenizer):
        self.args, self.accelerator, self.config = args, accelerator, config
        ids, _ = synthetic_corpus(tokenizer, args.pool_batches * args.batch_size, args.max_seq_length, args.seed)
        special = np.isin(ids, tokenizer.all_special_ids).astype(np.int64)
        train = Rows(input_ids=ids, attention_mask=np.ones_like(ids), special_tokens_mask=special)
        collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
        loader = DataLoader(train, shuffle=True, collate_fn=collator, batch_size=args.batch_size)
        torch.manual_seed(args.seed)
        model = BertForMaskedLM(config)
        self.model, self.optimizer, self.scheduler = prepare(model, args, accelerator)
        self.batches = forever(accelerator.prepare_data_loader(loader))

    def step(self, objective=None):
        batch = next(self.batches)
        # Packed to full length: every position is a token. numel() reads the shape; a sum on the
        # device would wait for the GPU and cost this loop the overlap it has in run_mlm_no_trainer.
        n_tokens = batch["input_ids"].numel()
        flops = step_flops(self.config, n_tokens, batch["input_ids"].size(1), n_lm=n_tokens)
        loss = self.model(**batch).loss
        self.accelerator.backward(loss)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()
        return {"objective": "mlm", "corpus_tokens": n_tokens, "encoder_tokens": n_tokens, "flops": flops}


def prepare(model, args, accelerator):
    if args.torch_compile:
        # MOMETAS runs the encoder at several widths (ATD grows rows, DTD shrinks them), two batch sizes
        # (CSE doubles it) and three modes (training, meta-test, CSE's seeded dropout at meta-test):
        # more graphs than dynamo's default limit of 8, after which it would silently run eagerly.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        model.bert.compile()
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)], "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=5e-5, fused=args.fused_adamw or None)
    total = args.warmup_steps + args.steps + len(args.objectives.split(",")) + 8
    scheduler = get_scheduler("linear", optimizer=optimizer, num_warmup_steps=max(1, total // 20),
                              num_training_steps=total)
    return accelerator.prepare(model, optimizer, scheduler)


# --------------------------------------------------------------------------- measuring


def synchronize(args):
    if args.device == "cuda":
        torch.cuda.synchronize()


def time_loop(loop, args, meta_test_every=None):
    """Warm-up (every objective at least once, one meta-test), then ``args.steps`` timed steps."""
    names = getattr(loop, "names", ["mlm"])
    for i in range(max(args.warmup_steps, len(names))):
        loop.step(names[i % len(names)] if i < len(names) else None)
    if meta_test_every:
        loop.meta_test()
    synchronize(args)
    totals = {"corpus_tokens": 0, "encoder_tokens": 0, "flops": 0, "meta_test_seconds": 0.0}
    per_objective = {}
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        tic = time.perf_counter()
        record = loop.step()
        for key in ("corpus_tokens", "encoder_tokens", "flops"):
            totals[key] += record[key]
        entry = per_objective.setdefault(record["objective"], {"steps": 0, "seconds": 0.0})
        entry["steps"] += 1
        entry["seconds"] += time.perf_counter() - tic  # exact only where the step syncs (MOMETAS reads its loss)
        if meta_test_every and step % meta_test_every == 0:
            tic = time.perf_counter()
            loop.meta_test()
            totals["meta_test_seconds"] += time.perf_counter() - tic
    synchronize(args)
    seconds = time.perf_counter() - started
    peak = peak_flops(args)
    return {
        "seconds": seconds,
        "corpus_tokens_per_s": totals["corpus_tokens"] / seconds,
        "encoder_tokens_per_s": totals["encoder_tokens"] / seconds,
        "mfu": totals["flops"] / seconds / peak if peak else None,
        "tflops_per_s": totals["flops"] / seconds / 1e12,
        "meta_test_share": totals["meta_test_seconds"] / seconds,
        "seconds_per_step": {name: e["seconds"] / e["steps"] for name, e in per_objective.items()},
        "steps_per_objective": {name: e["steps"] for name, e in per_objective.items()},
    }


def fits(args, accelerator, config, tokenizer, batch_size):
    """Both loops run a step of every objective at this batch size without running out of memory."""
    trial = argparse.Namespace(**{**vars(args), "batch_size": batch_size, "pool_batches": 2, "torch_compile": False})
    loops = []
    try:
        loops = [MometasLoop(trial, accelerator, config, tokenizer), PlainMLMLoop(trial, accelerator, config, tokenizer)]
        for name in loops[0].names:
            loops[0].step(name)
        loops[0].meta_test()
        loops[1].step()
        torch.cuda.synchronize()
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        loops.clear()
        accelerator.free_memory()
        gc.collect()
        torch.cuda.empty_cache()


def largest_batch(args, accelerator, config, tokenizer):
    best = None
    for batch_size in (2 ** k for k in range(3, 12)):
        if not fits(args, accelerator, config, tokenizer, batch_size):
            break
        best = batch_size
        print(f"  batch {batch_size}: fits", flush=True)
    if best is None:
        sys.exit("error: --batch_size auto: not even 8 sequences fit on this device")
    return best


COMMITTED = Path(__file__).resolve().parent / "results" / "gpu_cpu_tiny.json"


def summary(results) -> str:
    """The lines the bench prints, from its figures (also docs/gpu.md's sample of the CPU check)."""
    mometas, plain = results["mometas"], results["plain_mlm"]

    def mfu(r):
        return f"MFU {r['mfu']:.1%}" if r["mfu"] is not None else "MFU n/a (no --peak_tflops for this device)"

    return "\n".join([
        f"device {results['device']}, {results['mixed_precision']}, {'tiny BERT' if results['tiny'] else 'BERT-base'} "
        f"({results['params'] / 1e6:.1f}M parameters), seq {results['max_seq_length']}, batch {results['batch_size']}"
        f"{' (largest that fits)' if results['batch_size_searched'] else ''}, {results['steps']} timed steps after "
        f"{results['warmup_steps']} warm-up, K={results['meta_length']}, torch_compile "
        f"{'on' if results['torch_compile'] else 'off'}, fused_adamw {'on' if results['fused_adamw'] else 'off'}",
        f"mometas   : {mometas['corpus_tokens_per_s']:,.0f} corpus tokens/s, "
        f"{mometas['encoder_tokens_per_s']:,.0f} encoder tokens/s, {mometas['tflops_per_s']:.1f} TFLOP/s, "
        f"{mfu(mometas)}, meta-test {mometas['meta_test_share']:.1%} of the time",
        "            seconds per step: " + ", ".join(
            f"{name} {s * 1e3:.1f} ms x{mometas['steps_per_objective'][name]}" for name, s in mometas["seconds_per_step"].items()),
        f"plain MLM : {plain['corpus_tokens_per_s']:,.0f} tokens/s, {plain['tflops_per_s']:.1f} TFLOP/s, {mfu(plain)}",
        f"ratio mometas / plain MLM: {results['ratio_encoder_tokens']:.3f} in encoder tokens/s (goal >= 0.95), "
        f"{results['ratio_corpus_tokens']:.3f} in corpus tokens/s",
    ])


def generated_blocks() -> dict:
    """docs/gpu.md's sample of the CPU check, from ``bench/results/gpu_cpu_tiny.json``."""
    results = json.loads(COMMITTED.read_text())
    text = "\n".join(f"    {line}" for line in [f"$ {results['command']}", *summary(results).splitlines()])
    return {("docs/gpu.md", "bench-gpu-cpu-check"): (
        f"{text}\n\nFrom its start to the figures (imports excluded) the run took {results['wall_seconds']:.0f} s of "
        f"wall-clock time and {results['cpu_seconds']:.0f} CPU s "
        f"(`OMP_NUM_THREADS={results['omp_num_threads']}`, the project's {results['cpu_count']}-core CPU machine, no GPU, "
        "shared with other jobs).")}


def write_blocks():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "study"))
    from common import write_generated_blocks

    write_generated_blocks(generated_blocks())


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["report"]:
        print(summary(json.loads(COMMITTED.read_text())))
        return write_blocks()
    started, started_cpu = time.perf_counter(), time.process_time()
    args = parse_args(argv)
    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=args.device == "cpu")
    config = BertConfig(max_position_embeddings=512, **(TINY if args.tiny else {}))
    tokenizer = bert_vocabulary_tokenizer()
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    searched = args.batch_size == "auto"
    args.batch_size = largest_batch(args, accelerator, config, tokenizer) if searched else int(args.batch_size)
    # Enough distinct batches that the loaders reshuffle a few times without building a huge corpus.
    args.pool_batches = min(args.warmup_steps + args.steps + 8, 64)

    results = {}
    for name, loop_class, every in (("mometas", MometasLoop, args.meta_length), ("plain_mlm", PlainMLMLoop, None)):
        loop = loop_class(args, accelerator, config, tokenizer)
        results[name] = time_loop(loop, args, meta_test_every=every)
        if name == "mometas":
            results["params"] = sum(p.numel() for p in accelerator.unwrap_model(loop.model).parameters())
        del loop
        accelerator.free_memory()
        gc.collect()
        if args.device == "cuda":
            results[name]["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    mometas, plain = results["mometas"], results["plain_mlm"]
    results.update(
        device=device, mixed_precision=args.mixed_precision, max_seq_length=args.max_seq_length,
        batch_size=args.batch_size, batch_size_searched=searched, steps=args.steps, meta_length=args.meta_length,
        warmup_steps=args.warmup_steps, torch_compile=args.torch_compile, fused_adamw=args.fused_adamw, tiny=args.tiny,
        peak_tflops=(peak_flops(args) or 0) / 1e12 or None,
        ratio_encoder_tokens=mometas["encoder_tokens_per_s"] / plain["encoder_tokens_per_s"],
        ratio_corpus_tokens=mometas["corpus_tokens_per_s"] / plain["corpus_tokens_per_s"],
    )

    print(summary(results))
    if args.json:
        # The command as it is written in the docs: the flags given, the output file named relative to the repository.
        flags = [a if a != args.json else os.path.relpath(os.path.abspath(a), Path(__file__).resolve().parents[1])
                 for a in argv]
        omp = os.environ.get("OMP_NUM_THREADS")
        results.update(command=" ".join([*([f"OMP_NUM_THREADS={omp}"] if omp else []), "python bench/bench_gpu.py", *flags]),
                       omp_num_threads=omp, cpu_count=os.cpu_count(), date=time.strftime("%Y-%m-%d"),
                       wall_seconds=time.perf_counter() - started, cpu_seconds=time.process_time() - started_cpu)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        if Path(args.json).resolve() == COMMITTED.resolve():
            write_blocks()
    return results


if __name__ == "__main__":
    main()

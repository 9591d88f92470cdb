"""The GPU checks in one command (run it through bench/gpu_check.sh): what a CPU cannot show about fp16, bf16, DDP and speed.

On a machine with one or more CUDA GPUs, in under 10 minutes:

1. pre-training, fp16, five objectives, ``--skip_nonfinite_steps 1`` with one NaN step planted:
   the step is skipped, the fp16 loss scaler's step is closed, training goes on;
2. the same under bf16;
3. Gb (``--sampler gradient``) under fp16: the sampler learns from unscaled, finite norms;
4. with 2 or more GPUs: DDP on 2 GPUs (bf16, ``--cse_gather``), the processes draw the same objectives;
5. ``bench/bench_gpu.py``: tokens/s of the MOMETAS loop, its ratio to the plain MLM loop, MFU.

Then one table: pass or fail, tokens/s, the ratio to the MLM loop, MFU. Pre-training runs use a
BERT-base config with random weights, a synthetic corpus and entity spans in a column (no download,
no spaCy); their tokens/s cover short runs with their warm-up, the bench's are the figures to quote.

    bench/gpu_check.sh                 # the GPUs of this machine
    bench/gpu_check.sh --dry_run --gpus 2
    bench/gpu_check.sh --cpu           # a rehearsal on CPU: tiny model, 2 gloo processes, a CPU GradScaler

Exit code 0 when every check passes (a skipped one says why), 1 when one fails, 2 without a GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = ["mlm", "cse", "atd", "dtd", "emlm"]
# Sizes of the pre-training checks: (max_seq_length, per-device batch, eval batch, steps, K, the NaN step).
SIZES = {"gpu": (128, 32, 64, 60, 10, 7), "cpu": (32, 4, 8, 15, 5, 3)}
KEYS = ("fp16", "bf16", "gradient", "ddp", "bench")


@dataclass
class Check:
    key: str
    name: str
    command: list = field(default_factory=list)
    env: dict = field(default_factory=dict)
    timeout: int = 120
    kind: str = "pretraining"  # pretraining | bench
    output: Path | None = None
    expect: dict = field(default_factory=dict)
    skip: str | None = None


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def parse_args(argv=None):
    parser = ArgumentParser(prog="bench/gpu_check.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true",
                        help="Rehearse on CPU: a tiny model, 2 gloo processes for the DDP check, a CPU GradScaler.")
    parser.add_argument("--dry_run", action="store_true", help="Print the checks and their commands; run nothing.")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs to plan for (default: the visible ones).")
    parser.add_argument("--output_dir", type=str, default=None, help="Runs and logs (default: a new temporary folder).")
    parser.add_argument("--budget_s", type=int, default=570, help="Wall-clock seconds for all checks together.")
    parser.add_argument("--only", type=str, default=None,
                        help=f"Run only these checks, comma-separated from {', '.join(KEYS)} (e.g. to rerun a failed one).")
    parser.add_argument("--bench_batch_size", type=int, default=64,
                        help="Sequences per step in bench_gpu.py (BERT-base, 256 tokens); 'auto' would search.")
    args = parser.parse_args(argv)
    if args.budget_s < 60:
        parser.error(f"argument --budget_s: expected at least 60 seconds, got {args.budget_s}")
    args.only = [key.strip() for key in args.only.split(",") if key.strip()] if args.only else list(KEYS)
    if unknown := [key for key in args.only if key not in KEYS]:
        parser.error(f"argument --only: unknown check(s) {', '.join(unknown)}; choose from {', '.join(KEYS)}")
    return args


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- inputs: model folder, corpus


def prepare_inputs(work: Path, cpu: bool):
    """A BERT config and a bert-base-uncased-shaped tokenizer, and a corpus with entity spans; no download."""
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_gpu import TINY, bert_vocabulary_tokenizer
    from transformers import BertConfig

    model = work / "model"
    tokenizer = bert_vocabulary_tokenizer()
    tokenizer.save_pretrained(model)
    config = BertConfig(**(dict(TINY, max_position_embeddings=128) if cpu else {}))
    config.save_pretrained(model)
    rng = random.Random(0)
    for name, documents in (("train", 600 if cpu else 2000), ("validation", 60 if cpu else 200)):
        with open(work / f"{name}.jsonl", "w") as f:
            for _ in range(documents):
                words = [f"w{rng.randrange(1000, 30000)}" for _ in range(rng.randrange(40, 160))]
                text, spans, position = "", [], 0
                for index, word in enumerate(words):
                    if index % 20 == 7 and index + 1 < len(words):  # a two-word entity every 20 words, for EMLM
                        spans.append([position, position + len(word) + 1 + len(words[index + 1])])
                    text += word + " "
                    position += len(word) + 1
                f.write(json.dumps({"text": text.strip(), "entities": spans}) + "\n")
    return model, work / "train.jsonl", work / "validation.jsonl"


# --------------------------------------------------------------------------- the checks


def launcher(processes, precision, cpu):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", precision, "--dynamo_backend", "no"]
    if processes > 1:
        command += ["--multi_gpu", "--main_process_port", str(free_port())]
    elif cpu:
        command += ["--cpu"]
    return command


def plan(args, gpus, work: Path, inputs) -> list[Check]:
    cpu = args.cpu
    model, train, validation = inputs
    seq, batch, eval_batch, steps, k, nan_step = SIZES["cpu" if cpu else "gpu"]
    common = ["--config_name", model, "--tokenizer_name", model, "--train_file", train, "--validation_file", validation,
              "--entity_tagger", "column", "--entity_column", "entities", "--objectives", ",".join(OBJECTIVES),
              "--max_seq_length", seq, "--per_device_train_batch_size", batch, "--per_device_eval_batch_size",
              eval_batch, "--max_train_steps", steps, "--meta_length", k, "--learning_rate", "1e-4",
              "--logging_steps", k, "--cache_dir", work / "cache"]
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1"}
    if cpu:
        env.update(ACCELERATE_USE_CPU="true", MOMETAS_CPU_GRAD_SCALER="1", OMP_NUM_THREADS="1")
    with_nan = [str(ROOT / "bench" / "pretrain_with_nan.py"), "--nan_at_steps", str(nan_step), "--"]
    script = [str(ROOT / "run_mometas_pretraining.py")]
    timeout = 240 if cpu else 100
    checks = []
    for precision in ("fp16", "bf16"):
        out = work / f"pretrain_{precision}"
        checks.append(Check(
            precision, f"pre-training {precision}, 5 objectives, NaN step skipped",
            [*launcher(1, precision, cpu), *with_nan, *common, "--sampler", "mometas", "--skip_nonfinite_steps", "1",
             "--output_dir", out], env, timeout, output=out,
            expect={"steps": steps, "nan_step": nan_step, "cpu_scaler": cpu and precision == "fp16"}))
    out = work / "gradient_fp16"
    no_nan = [str(ROOT / "bench" / "pretrain_with_nan.py"), "--"]  # for the CPU GradScaler of a rehearsal
    checks.append(Check("gradient", "Gb (--sampler gradient), fp16",
                        [*launcher(1, "fp16", cpu), *no_nan, *common, "--sampler", "gradient", "--output_dir", out],
                        env, timeout, output=out, expect={"steps": steps, "gradient": True, "cpu_scaler": cpu}))
    out = work / "ddp_bf16"
    name = "DDP, 2 processes (gloo), bf16, --cse_gather" if cpu else "DDP on 2 GPUs, bf16, --cse_gather"
    ddp = Check("ddp", name, [*launcher(2, "bf16", cpu), *script, *common, "--sampler", "mometas", "--cse_gather",
                       "--output_dir", out], env, timeout, output=out, expect={"steps": steps, "processes": 2})
    if not cpu and gpus < 2:
        ddp.skip = f"{gpus} GPU visible; needs 2"
    checks.append(ddp)
    bench_json = work / "bench.json"
    bench = [sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--json", bench_json]
    bench += ["--device", "cpu", "--tiny"] if cpu else ["--batch_size", str(args.bench_batch_size), "--steps", "100",
                                                        "--warmup_steps", "10"]
    checks.append(Check("bench", "bench_gpu.py: MOMETAS loop vs MLM loop, bf16", bench, env, 300, kind="bench",
                        output=bench_json))
    for check in checks:
        check.command = [str(part) for part in check.command]
    return [check for check in checks if check.key in args.only]


# --------------------------------------------------------------------------- reading the outputs


def read_rows(folder: Path) -> list[dict]:
    history = Path(folder) / "sampler_history.jsonl"
    return [json.loads(line) for line in history.read_text().splitlines() if line.strip()] if history.is_file() else []


def verify_pretraining(folder: Path, expect: dict) -> tuple[bool, str, float | None]:
    """(passed, what was seen, tokens/s) of a finished pre-training run, from its folder."""
    rows = read_rows(folder)
    if not (Path(folder) / "model.safetensors").is_file() or not rows:
        return False, "no model or no history was written", None
    last = rows[-1]
    tokens = sum(last.get("tokens_seen", {}).values())
    speed = tokens / last["elapsed_seconds"] if last.get("elapsed_seconds") else None
    trained = {name: sum((row.get("counts") or {}).get(name, 0) for row in rows) for name in last["objectives"]}
    draws = sum(len(row.get("rollout") or []) for row in rows)
    problems = []
    if last["step"] != expect["steps"]:
        problems.append(f"stopped at step {last['step']} of {expect['steps']}")
    if not all(trained.values()):
        problems.append(f"never trained {[n for n, c in trained.items() if not c]}")
    losses = [v for row in rows for v in (row.get("val_loss") or {}).values()]
    losses += [v for row in rows for v in (row.get("train_loss") or {}).values() if v is not None]
    if any(v is None or not math.isfinite(v) for v in losses):
        problems.append("a non-finite loss in the history")
    notes = [f"{sum(trained.values())} of {draws} steps trained"]
    if "nan_step" in expect:
        if sum(trained.values()) != draws - 1:
            problems.append(f"expected exactly the planted NaN step {expect['nan_step']} skipped")
        else:
            notes.append(f"step {expect['nan_step']} skipped")
    if expect.get("gradient"):
        final = list(last["probabilities"].values())
        if max(final) - min(final) < 1e-6:
            problems.append("Gb's distribution stayed uniform (no gradient norm reached it)")
        else:
            notes.append(f"Gb p in [{min(final):.3f}, {max(final):.3f}]")
    if "processes" in expect:
        if any(row.get("num_processes") != expect["processes"] for row in rows):
            problems.append(f"not {expect['processes']} processes")
        elif any(len({tuple(r) for r in row["process_rollouts"]}) != 1 for row in rows if row.get("process_rollouts")):
            problems.append("the processes drew different objectives")
        else:
            notes.append(f"{expect['processes']} processes drew the same objectives")
    return not problems, "; ".join(problems or notes), speed


def bench_figures(path: Path) -> dict:
    """tokens/s (encoder tokens of the MOMETAS loop), its ratio to the MLM loop, MFU, from bench_gpu.py --json."""
    figures = json.loads(Path(path).read_text())
    mometas = figures["mometas"]
    return {"tokens_per_s": mometas["encoder_tokens_per_s"], "ratio": figures["ratio_encoder_tokens"],
            "mfu": mometas.get("mfu"), "device": figures.get("device"), "batch_size": figures.get("batch_size")}


def format_table(rows: list[dict]) -> str:
    """One line per check: result, tokens/s, ratio to the MLM loop, MFU, and what was seen."""

    def number(value, spec):
        return "-" if value is None else format(value, spec)

    header = ("check", "result", "tokens/s", "vs MLM loop", "MFU", "note")
    lines = [(row["check"], row["result"], number(row.get("tokens_per_s"), ",.0f"), number(row.get("ratio"), ".3f"),
              number(row.get("mfu"), ".1%"), row.get("note", "")) for row in rows]
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(5)]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(line[:5], widths)) + "  " + line[5]
                     for line in [header, *lines]).rstrip() + "\n"


# --------------------------------------------------------------------------- running


def run(check: Check, log: Path, timeout: float) -> tuple[int | None, str]:
    env = {**os.environ, **check.env}
    with open(log, "w") as out, subprocess.Popen(check.command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                                 start_new_session=True) as process:
        try:
            return process.wait(timeout=timeout), ""
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return None, f"timed out after {timeout:.0f} s"


def last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("error:", "Error", "RuntimeError", "torch.", "ValueError"))]
    return (errors or lines or ["no output"])[-1][:160]


def script_imports() -> str | None:
    """None when run_mometas_pretraining.py can be imported here, else the reason (a missing package)."""
    probe = subprocess.run([sys.executable, "-c", "import run_mometas_pretraining"], cwd=ROOT, capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if probe.returncode == 0:
        return None
    return (probe.stderr.strip().splitlines() or ["cannot import run_mometas_pretraining.py"])[-1][:160]


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    gpus = torch.cuda.device_count() if args.gpus is None else args.gpus
    if not args.cpu and gpus < 1:
        print("error: no CUDA GPU is visible (torch.cuda.device_count() is 0): run bench/gpu_check.sh on a GPU "
              "machine, or rehearse on CPU with --cpu", file=sys.stderr)
        return 2
    work = Path(args.output_dir) if args.output_dir else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    device = "cpu (rehearsal)" if args.cpu else (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cuda")
    print(f"gpu_check: {device}, {gpus} GPU(s) planned, budget {args.budget_s} s, runs and logs in {work}", flush=True)
    inputs = (work / "model", work / "train.jsonl", work / "validation.jsonl")
    checks = plan(args, gpus, work, inputs)
    if args.dry_run:
        for check in checks:
            print(f"- {check.name}: " + (f"skip ({check.skip})" if check.skip else " ".join(check.command)))
        return 0
    started = time.monotonic()
    missing = script_imports()
    if missing is None:
        prepare_inputs(work, args.cpu)
    rows = []
    for check in checks:
        row = {"check": check.name}
        left = args.budget_s - (time.monotonic() - started)
        # The bench is the last check; the pre-training checks leave it at least 2.5 minutes.
        reserve = 0 if check.kind == "bench" else min(150, args.budget_s // 4)
        if check.kind == "pretraining" and missing:
            check.skip = f"the pre-training script cannot be imported here ({missing})"
        if check.skip:
            rows.append({**row, "result": "skip", "note": check.skip})
        elif left - reserve < 20:
            rows.append({**row, "result": "skip", "note": f"no time left in --budget_s {args.budget_s}"})
        else:
            log = work / f"{check.output.stem if check.output else 'check'}.log"
            tic = time.monotonic()
            code, why = run(check, log, min(check.timeout, left - reserve))
            seconds = time.monotonic() - tic
            if code != 0:
                rows.append({**row, "result": "FAIL",
                             "note": why or f"exit {code}: {last_error(log)} (log {log})"})
            elif check.kind == "bench":
                figures = bench_figures(check.output)
                rows.append({**row, "result": "pass", **figures,
                             "note": f"{figures['device']}, batch {figures['batch_size']}, {seconds:.0f} s"})
            else:
                ok, note, speed = verify_pretraining(check.output, check.expect)
                if ok and check.expect.get("cpu_scaler") and "GradScaler stands in" not in log.read_text():
                    ok, note = False, "the CPU GradScaler did not stand in: the fp16 path was not exercised"
                rows.append({**row, "result": "pass" if ok else "FAIL", "tokens_per_s": speed,
                             "note": f"{note}; {seconds:.0f} s" + ("" if ok else f" (log {log})")})
        print(f"  {rows[-1]['result']:4}  {check.name}", flush=True)
    print()
    print(format_table(rows), end="")
    print(f"{sum(r['result'] == 'pass' for r in rows)} passed, {sum(r['result'] == 'FAIL' for r in rows)} failed, "
          f"{sum(r['result'] == 'skip' for r in rows)} skipped in {time.monotonic() - started:.0f} s")
    (work / "gpu_check.json").write_text(json.dumps(rows, indent=1))
    return 1 if any(r["result"] == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

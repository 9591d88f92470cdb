"""Dev scores of the un-pre-trained MiniLM with ``--hparams paper``: docs/finetuning_baselines.md's table.

    python bench/finetuning_baselines.py                  # run every task not run yet, then rewrite the doc
    python bench/finetuning_baselines.py --tasks sst2 rte # only these
    python bench/finetuning_baselines.py report           # rewrite the doc from bench/results/finetuning_baselines/

Each task runs the command of the doc's "Commands" section (``--seed 42``, outputs in a temporary
folder) in its own process, one task at a time, and caches one JSON per task in
``bench/results/finetuning_baselines/<task>.json``: the dev scores of the script's
``all_results.json``, the dev scores after each epoch (from the script's log), the majority-class
baseline (from the gold dev labels the script writes next to its predictions), the wall-clock and
CPU seconds of the process, and the effective settings (its ``training_args.json``). A task with a
JSON is never run again: delete the JSON to rerun it. Set ``OMP_NUM_THREADS`` before running (the
docs' numbers used 1).
"""

import argparse
import ast
import collections
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "study"))
import common  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "finetuning_baselines"
DOC = "docs/finetuning_baselines.md"

# name, label, script, arguments ($D: the data folder; every command also gets --model_name_or_path,
# --seed 42 and --output_dir).
TASKS = [
    ("sst2", "SST-2", "run_glue.py", "--task_name sst2 --hparams paper --train_file $D/glue/sst2/train.tsv "
                                     "--validation_file $D/glue/sst2/dev.tsv --per_device_eval_batch_size 64"),
    ("mrpc", "MRPC", "run_glue.py", "--task_name mrpc --hparams paper --train_file $D/glue/mrpc/train.tsv "
                                    "--validation_file $D/glue/mrpc/dev.tsv --per_device_eval_batch_size 64"),
    ("stsb", "STS-B", "run_glue.py", "--task_name stsb --hparams paper --train_file $D/glue/stsb/train.tsv "
                                     "--validation_file $D/glue/stsb/dev.tsv --per_device_eval_batch_size 64"),
    ("cola", "CoLA", "run_glue.py", "--task_name cola --hparams paper --train_file $D/glue/cola/train.tsv "
                                    "--validation_file $D/glue/cola/dev.tsv --per_device_eval_batch_size 64"),
    ("rte", "RTE", "run_glue.py", "--task_name rte --hparams paper --num_train_epochs 3 --train_file $D/glue/rte/train.tsv "
                                  "--validation_file $D/glue/rte/dev.tsv --per_device_eval_batch_size 64"),
    ("qnli", "QNLI", "run_glue.py", "--task_name qnli --hparams paper --train_file $D/glue/qnli/train_from_glue_dev.tsv "
                                    "--validation_file $D/glue/qnli/dev.tsv --per_device_eval_batch_size 64"),
    ("sick", "SICK", "run_glue.py", "--task_name sick --hparams paper --train_file $D/sick/SICK_train_subset.txt "
                                    "--validation_file $D/sick/SICK_trial.txt --per_device_eval_batch_size 64"),
    ("conll2003", "CoNLL-2003", "run_ner.py", "--hparams paper --train_file $D/conll2003/train.txt "
                                              "--validation_file $D/conll2003/valid.txt --return_entity_level_metrics "
                                              "--per_device_eval_batch_size 64"),
    ("wnut17", "WNUT-17", "run_ner.py", "--hparams paper --train_file $D/wnut17/train.conll "
                                        "--validation_file $D/wnut17/dev.conll --return_entity_level_metrics "
                                        "--per_device_eval_batch_size 64"),
    ("dream", "DREAM", "run_multiple_choice.py", "--hparams paper --num_train_epochs 2 --train_file $D/dream/train.json "
                                                 "--validation_file $D/dream/dev.json --per_device_eval_batch_size 32"),
    ("anli", "αNLI", "run_multiple_choice.py", "--hparams paper --validation_file $D/anli/art_validation_subset.jsonl "
                                               "--per_device_eval_batch_size 64"),
]
SEED = 42
# The scores each table row shows: (key of all_results.json without "eval_", label, scale).
SCORES = {
    "sst2": [("accuracy", "acc", 100)], "mrpc": [("accuracy", "acc", 100), ("f1", "F1", 100)],
    "stsb": [("pearson", "Pearson", 100), ("spearmanr", "Spearman", 100)],
    "cola": [("matthews_correlation", "MCC", 100), ("accuracy", "acc", 100)],
    "rte": [("accuracy", "acc", 100)], "qnli": [("accuracy", "acc", 100)], "sick": [("accuracy", "acc", 100)],
    "conll2003": [("f1", "F1", 100), ("precision", "P", 100), ("recall", "R", 100), ("accuracy", "word acc", 100)],
    "wnut17": [("f1", "F1", 100), ("precision", "P", 100), ("recall", "R", 100), ("accuracy", "word acc", 100)],
    "dream": [("accuracy", "acc", 100)], "anli": [("accuracy", "acc", 100)],
}
# The script logs "... - __main__ - [RANK 0] epoch N: {...}" after each epoch (a progress bar may precede it).
EPOCH_LINE = re.compile(r"\bepoch (\d+): (\{[^{}]*\})")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", choices=["run", "report"], default="run",
                        help="run: run the tasks without a JSON, then rewrite the doc; report: only rewrite the doc.")
    parser.add_argument("--tasks", nargs="+", choices=[t[0] for t in TASKS], default=None,
                        help="Run only these tasks, in this order (default: all, in the doc's order).")
    parser.add_argument("--keep_outputs", action="store_true", help="Keep each run's output folder (printed).")
    return parser.parse_args(argv)


def command_of(task, model):
    name, _, script, arguments = task
    arguments = arguments.replace("$D", str(common.data_dir())).split()
    return [sys.executable, script, "--model_name_or_path", model, *arguments, "--seed", str(SEED)]


def epoch_scores(log_text):
    """The dev scores the script logs after each epoch (``epoch N: {...}``), in order."""
    epochs = []
    for line in log_text.splitlines():
        m = EPOCH_LINE.search(line)
        if m:
            text = re.sub(r"np\.\w+\(([^()]*)\)", r"\1", m.group(2)).replace("nan", "None")
            epochs.append({"epoch": int(m.group(1)), **ast.literal_eval(text)})
    return epochs


def gold_labels(out_dir):
    """The gold dev labels, as the script read them from the dev file and wrote them next to its predictions."""
    out = Path(out_dir)
    if (out / "predictions_validation.tsv").is_file():  # run_glue.py: index, prediction, label
        rows = (out / "predictions_validation.tsv").read_text(encoding="utf-8").splitlines()[1:]
        return "label", [row.split("\t")[2] for row in rows if row]
    if (out / "predictions_validation.conll").is_file():  # run_ner.py: token gold predicted, one word a line
        lines = (out / "predictions_validation.conll").read_text(encoding="utf-8").splitlines()
        return "word tag", [line.split(" ")[-2] for line in lines if line.strip()]
    rows = (out / "predictions_validation.jsonl").read_text(encoding="utf-8").splitlines()  # run_multiple_choice.py
    return "answer position", [json.loads(row)["label"] for row in rows if row]


def majority(name, out_dir):
    """Always predicting the most frequent gold dev label: its accuracy (STS-B: a constant, no correlation)."""
    kind, labels = gold_labels(out_dir)
    if name == "stsb":
        return {"kind": "constant score", "accuracy": None, "examples": len(labels)}
    label, count = collections.Counter(labels).most_common(1)[0]
    return {"kind": kind, "label": label, "accuracy": count / len(labels), "examples": len(labels)}


def run_task(task, model, keep):
    name, _, script, _ = task
    out_dir = Path(tempfile.gettempdir()) / "mometas_baselines" / name
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    command = command_of(task, model) + ["--output_dir", str(out_dir / "out")]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    common.log(f"{name}: {' '.join(common.portable(command))}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    with open(out_dir / "log.txt", "w", encoding="utf-8") as log_file:
        returncode = subprocess.run(command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT).returncode
    wall = time.time() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    log_text = (out_dir / "log.txt").read_text(encoding="utf-8", errors="replace")
    if returncode != 0:
        print(log_text[-3000:], file=sys.stderr)
        common.log(f"{name}: failed with exit status {returncode}; nothing cached (output in {out_dir})")
        return False
    out = out_dir / "out"
    all_results = json.loads((out / "all_results.json").read_text())
    settings = json.loads((out / "training_args.json").read_text())
    result = {
        "task": name,
        "script": script,
        "command": common.portable(command),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")} | {"TOKENIZERS_PARALLELISM": "false"},
        "all_results": all_results,
        "epochs": epoch_scores(log_text),
        "majority": majority(name, out),
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "settings": common.portable(settings),
        "date": time.strftime("%Y-%m-%d"),
    }
    common.write_json(RESULTS / f"{name}.json", result)
    common.log(f"{name}: done in {wall:.0f} s wall, {cpu:.0f} s CPU")
    if keep:
        common.log(f"{name}: outputs kept in {out_dir}")
    else:
        shutil.rmtree(out_dir, ignore_errors=True)
    return True


# ---- The doc's table, from the committed JSON -----------------------------------------------------

def load_results():
    return {t[0]: json.loads((RESULTS / f"{t[0]}.json").read_text()) for t in TASKS if (RESULTS / f"{t[0]}.json").is_file()}


def scores_text(name, scores, bold=True):
    parts = []
    for i, (key, label, scale) in enumerate(SCORES[name]):
        value = scores.get(f"eval_{key}", scores.get(key))
        number = "n/a" if value is None else f"{value * scale:.1f}"
        parts.append(f"{label} **{number}**" if bold and i == 0 else f"{label} {number}")
    main, rest = parts[0], parts[1:]
    if name == "mrpc" or name == "stsb":
        return ", ".join(p.replace(" ", " **", 1) + "**" if bold and j else p for j, p in enumerate(parts))
    return main + (f" ({', '.join(rest)})" if rest else "")


def lr_text(lr):
    return f"{lr:.0e}".replace("e-0", "e-")  # 1e-5, as the paper writes it


def settings_text(name, r):
    s, res = r["settings"], r["all_results"]
    if "train_steps" not in res:
        return f"no training split here; evaluation only, untrained head (max length {s.get('max_length')})"
    epochs = s.get("num_train_epochs")
    text = (f"bs {s.get('per_device_train_batch_size')}, lr {lr_text(s['learning_rate'])}, len {s.get('max_length')}, "
            f"warmup {s.get('warmup_ratio'):g}, ")
    if "--num_train_epochs" in r["command"]:  # cut short: the doc's notes say why
        return text + f"**{epochs:g} epochs** (`--num_train_epochs {epochs:g}`, {res['train_steps']} updates)"
    return text + f"{epochs:g} epochs ({res['train_steps']} updates)"


def majority_text(name, r):
    m = r["majority"]
    if m["accuracy"] is None:
        return "(constant: undefined)"
    if name in ("conll2003", "wnut17"):
        return f"F1 0 (word acc {100 * m['accuracy']:.1f})"
    return f"{100 * m['accuracy']:.1f}"


def table(results):
    lines = ["| task | train / dev examples | settings (`--hparams paper`) | dev score | majority | CPU time | wall time |",
             "|---|---|---|---|---|---|---|"]
    for name, label, _, _ in TASKS:
        r = results.get(name)
        if r is None:
            lines.append(f"| {label} | not run | | | | | |")
            continue
        res = r["all_results"]
        examples = f"{res.get('train_samples', '—')} / {res.get('eval_samples')}"
        score = scores_text(name, res)
        if name == "anli":
            score += " (untrained head: **not a baseline**)"
        lines.append(f"| {label} | {examples} | {settings_text(name, r)} | {score} | {majority_text(name, r)} "
                     f"| {r['cpu_s']:.0f} s | {r['wall_s']:.0f} s |")
    return "\n".join(lines)


def epoch_notes(results):
    notes = []
    for name, label, _, _ in TASKS:
        r = results.get(name)
        if r is None or len(r["epochs"]) < 2:
            continue
        key, metric, scale = SCORES[name][0]
        values = ", ".join("n/a" if e.get(key) is None else f"{e[key] * scale:.1f}" for e in r["epochs"])
        notes.append(f"{label} {metric}: {values}")
    return "Dev score after each epoch: " + "; ".join(notes) + "." if notes else "No task has per-epoch scores yet."


def run_note(results):
    threads = sorted({str(r["env"].get("OMP_NUM_THREADS")) for r in results.values()})
    missing = [label for name, label, _, _ in TASKS if name not in results]
    text = (f"Runs: `python bench/finetuning_baselines.py` (each command of the Commands section below, `--seed {SEED}`), "
            f"`OMP_NUM_THREADS={'/'.join(threads) or '1'}`, one run at a time, on the project's 2-core CPU machine "
            "(no GPU) while other jobs used both cores. Wall times are therefore not speed measurements; "
            "the CPU time (user + system seconds of the run's process) is the figure to plan with.")
    if missing:
        text += f" Not run yet: {', '.join(missing)}."
    return text


def generated_blocks():
    results = load_results()
    return {(DOC, "finetuning-baselines-table"): run_note(results) + "\n\n" + table(results),
            (DOC, "finetuning-baselines-epochs"): epoch_notes(results)}


def main():
    args = parse_args()
    if args.command == "run":
        model = str(common.minilm_path())
        by_name = {task[0]: task for task in TASKS}
        for task in [by_name[name] for name in args.tasks] if args.tasks else TASKS:
            if (RESULTS / f"{task[0]}.json").is_file():
                common.log(f"{task[0]}: cached, skipped")
                continue
            run_task(task, model, args.keep_outputs)
    common.write_generated_blocks(generated_blocks())


if __name__ == "__main__":
    main()

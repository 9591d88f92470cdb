"""examples/multitask_glue.py: tasks as objectives, on a tiny random BERT and tiny GLUE files in the original layouts.

The core tests need neither the shared data nor the MiniLM package: the files are written to tmp_path
and the encoder is finetune_helpers' 2-layer BERT. The reader and metric checks against run_glue.py
use the shared slices and skip without them. The study driver (study/multitask.py) runs end to end
at tiny size.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from finetune_helpers import make_tiny_bert, one_error_line, require_data, run_main

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["sst2", "mrpc", "rte", "cola", "stsb"]
# One word per task, in every row of that task and in no other task's rows: a batch names its task.
MARKERS = {"sst2": "movie", "mrpc": "john", "rte": "paris", "cola": "dog", "stsb": "cat"}


def load_script():
    spec = importlib.util.spec_from_file_location("multitask_glue", ROOT / "examples" / "multitask_glue.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mt = load_script()


def write_glue(folder: Path, n_train: int = 40, n_dev: int = 12) -> Path:
    """The five tasks in their original layouts (SST-2 slice order, MRPC, RTE, headerless CoLA, STS-B)."""
    good, bad = ["good", "great", "fine", "fun"], ["bad", "awful", "dull", "boring"]

    def rows(task, n):
        out = []
        for i in range(n):
            y = i % 2
            word = (good if y else bad)[i % 4]
            m = MARKERS[task]
            if task == "sst2":
                out.append(f"{y}\tthe {m} was very {word}")
            elif task == "mrpc":
                out.append(f"{y}\t{i}\t{i + 1000}\t{m} said it was {word}\t{m} said \"it\" was {'good' if y else 'red'}")
            elif task == "rte":
                label = "entailment" if y else "not_entailment"
                out.append(f"{i}\the went to {m}\the visited {m if y else 'london'}\t{label}")
            elif task == "cola":
                out.append(f"gj04\t{y}\t{'' if y else '*'}\tthe {m} {'sleeps' if y else 'sleeps sleeps the'}")
            else:
                out.append(f"{i}\tmain-captions\tMSRvid\t2012test\t{i:04d}\tnone\tnone\ta {m} runs\ta {m} "
                           f"{'runs' if y else 'sleeps'}\t{(4.0 if y else 1.0) + (i % 5) / 5:.3f}")
        return out

    headers = {"sst2": "label\tsentence", "mrpc": "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
               "rte": "index\tsentence1\tsentence2\tlabel", "cola": None,
               "stsb": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"}
    for task in TASKS:
        (folder / task).mkdir(parents=True, exist_ok=True)
        for split, n in (("train", n_train), ("dev", n_dev)):
            lines = ([headers[task]] if headers[task] else []) + rows(task, n)
            (folder / task / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("multitask")
    return {"model": make_tiny_bert(root / "bert"), "data": str(write_glue(root / "glue"))}


def base_flags(tiny, out, *extra):
    return ["--model_name_or_path", tiny["model"], "--data_dir", tiny["data"], "--output_dir", str(out),
            "--max_train_steps", 12, "--meta_length", 5, "--per_device_train_batch_size", 4,
            "--per_device_eval_batch_size", 8, "--meta_test_examples", 6, "--max_seq_length", 32,
            "--learning_rate", 1e-3, "--logging_steps", 4, *extra]


def run_ok(argv):
    code, stderr = run_main(mt.main, argv)
    assert code == 0, stderr[-3000:]


def history(out):
    return [json.loads(line) for line in (Path(out) / "sampler_history.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("sampler", ["uniform", "proportional", "mometas"])
def test_runs_end_to_end_for_each_sampler(tiny, tmp_path, sampler):
    out = tmp_path / sampler
    run_ok(base_flags(tiny, out, "--sampler", sampler))
    results = json.loads((out / "all_results.json").read_text())
    # Every task scored on its dev rows with run_glue.py's metrics; the average is over the primary metrics.
    assert set(results["dev"]) == set(TASKS) and results["dev_rows"] == dict.fromkeys(TASKS, 12)
    assert set(results["dev"]["mrpc"]) == {"accuracy", "f1"}
    assert set(results["dev"]["cola"]) == {"accuracy", "matthews_correlation"}
    assert {"pearson", "spearmanr"} <= set(results["dev"]["stsb"])
    assert results["primary_metric"] == {"sst2": "accuracy", "mrpc": "accuracy", "rte": "accuracy",
                                         "cola": "matthews_correlation", "stsb": "spearmanr"}
    primary = [results["dev"][t][results["primary_metric"][t]] for t in TASKS]
    if all(v is not None for v in primary):
        assert results["average"] == pytest.approx(sum(primary) / 5)
    # The held-out meta-test rows come out of the 40 training rows.
    assert results["meta_test_rows"] == dict.fromkeys(TASKS, 6) and results["train_rows"] == dict.fromkeys(TASKS, 34)
    assert sum(results["steps_per_task"].values()) == 12

    rows = history(out)
    meta_tested = sampler == "mometas"
    assert [r["step"] for r in rows] == ([0, 5, 10, 12] if meta_tested else [5, 10, 12])
    assert all(r["sampler"] == sampler and r["objectives"] == TASKS for r in rows)
    assert sum(sum(r["counts"].values()) for r in rows) == 12
    if meta_tested:
        assert rows[0]["reward"] is None and all(r["reward"] is not None for r in rows[1:3])
        assert all(set(r["val_loss"]) == set(TASKS) for r in rows[:3])
        assert rows[3]["val_loss"] is None  # 2 steps after the last meta-test: no update
    else:
        assert all(r["val_loss"] is None and r["reward"] is None for r in rows)

    # The encoder is a plain AutoModel folder; the heads sit beside it.
    from safetensors.torch import load_file
    from transformers import AutoModel

    AutoModel.from_pretrained(out)
    heads = load_file(str(out / "heads.safetensors"))
    assert {k: tuple(v.shape) for k, v in heads.items() if k.endswith(".weight")} == {
        "sst2.weight": (2, 32), "mrpc.weight": (2, 32), "rte.weight": (2, 32), "cola.weight": (2, 32),
        "stsb.weight": (1, 32)}
    assert json.loads((out / "heads.json").read_text())["stsb"]["problem_type"] == "regression"
    assert (out / "plots" / "probabilities.png").is_file()


def test_baseline_meta_test_records_losses_and_reward_without_changing_training(tiny, tmp_path):
    plain, measured = tmp_path / "plain", tmp_path / "measured"
    run_ok(base_flags(tiny, plain, "--sampler", "uniform"))
    run_ok(base_flags(tiny, measured, "--sampler", "uniform", "--baseline_meta_test"))
    rows = history(measured)
    assert rows[0]["step"] == 0 and rows[1]["reward"] is not None and rows[1]["val_loss"] is not None
    # Meta-testing does not touch the training: the same draws and the same final model.
    assert [r["rollout"] for r in history(plain)] == [r["rollout"] for r in rows[1:]]
    from safetensors.torch import load_file

    a, b = load_file(str(plain / "model.safetensors")), load_file(str(measured / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_each_batch_goes_to_its_own_head(tiny, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny["model"])
    marker_ids = {t: tokenizer.convert_tokens_to_ids(w) for t, w in MARKERS.items()}
    calls = []
    forward = mt.MultiTaskModel.forward

    def spy(self, task, labels=None, **inputs):
        calls.append((task, inputs["input_ids"].clone(), None if labels is None else labels.clone(), self.training))
        return forward(self, task, labels=labels, **inputs)

    monkeypatch.setattr(mt.MultiTaskModel, "forward", spy)
    run_ok(base_flags(tiny, tmp_path / "out", "--sampler", "mometas"))
    drawn = [r for row in history(tmp_path / "out") for r in row["rollout"]]
    training = [c for c in calls if c[3]]
    assert [c[0] for c in training] == drawn  # one forward per step, on the drawn task
    assert len({c[0] for c in calls}) == 5
    for task, ids, labels, _ in calls:  # training, meta-test and dev batches alike
        for row in ids:
            present = {t for t, i in marker_ids.items() if (row == i).any()}
            assert present == {task}, (task, tokenizer.decode(row))
        assert labels.dtype.is_floating_point == (task == "stsb")


def test_heads_are_separate():
    """A step on one task moves the encoder and that task's head only; STS-B's head is a regressor (MSE)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=32))
    model = mt.MultiTaskModel(encoder, {"rte": 2, "stsb": 1, "cola": 2}).eval()
    ids = torch.randint(5, 50, (3, 7))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    scores = torch.tensor([1.0, 2.5, 4.0])
    loss, logits = model("stsb", labels=scores, **inputs)
    assert logits.shape == (3, 1)
    assert loss.item() == pytest.approx(torch.nn.functional.mse_loss(logits[:, 0], scores).item())
    loss.backward()
    moved = {name: p.grad is not None and bool(p.grad.abs().sum() > 0) for name, p in model.heads.named_parameters()}
    assert moved == {"stsb.weight": True, "stsb.bias": True, "rte.weight": False, "rte.bias": False,
                     "cola.weight": False, "cola.bias": False}
    assert any(p.grad is not None for p in model.encoder.parameters())
    loss, logits = model("rte", labels=torch.tensor([0, 1, 1]), **inputs)
    assert logits.shape == (3, 2)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 1])).item())


# --------------------------------------------------------------------------------------------- samplers


def test_proportional_weights_are_sizes_to_the_one_over_t():
    sizes = {"sst2": 67349, "mrpc": 3668, "rte": 2490, "cola": 8551, "stsb": 5749}
    for temperature in (1.0, 2.0, 3.5):
        weights = mt.proportional_weights(sizes, temperature)
        raw = {t: n ** (1 / temperature) for t, n in sizes.items()}
        assert weights == pytest.approx({t: v / sum(raw.values()) for t, v in raw.items()})
    assert mt.proportional_weights({"a": 5, "b": 5}, 2.0) == {"a": 0.5, "b": 0.5}
    assert mt.proportional_weights(sizes, 2.0)["sst2"] == pytest.approx(259.517 / 538.274, abs=1e-4)  # sqrt(67349) over the sum of the roots


def test_proportional_run_draws_from_those_weights(tiny, tmp_path):
    run_ok(base_flags(tiny, tmp_path / "glue", "--sampler", "proportional", "--task_sizes", "glue"))
    probs = history(tmp_path / "glue")[0]["probabilities"]
    assert probs == pytest.approx(mt.proportional_weights(mt.GLUE_TRAIN_SIZES, 2.0))
    run_ok(base_flags(tiny, tmp_path / "given", "--sampler", "proportional", "--temperature", 1,
                      "--task_sizes", "sst2=4,mrpc=1,rte=1,cola=1,stsb=1"))
    assert history(tmp_path / "given")[0]["probabilities"] == pytest.approx(
        {"sst2": 0.5, "mrpc": 0.125, "rte": 0.125, "cola": 0.125, "stsb": 0.125})
    # The default n_i are the training rows used; equal sizes make it the uniform run, draw for draw.
    run_ok(base_flags(tiny, tmp_path / "train", "--sampler", "proportional"))
    run_ok(base_flags(tiny, tmp_path / "uniform", "--sampler", "uniform"))
    assert history(tmp_path / "train")[0]["probabilities"] == pytest.approx(dict.fromkeys(TASKS, 0.2))
    assert [r["rollout"] for r in history(tmp_path / "train")] == [r["rollout"] for r in history(tmp_path / "uniform")]


def test_the_librarys_other_samplers_run_too(tiny, tmp_path):
    run_ok(base_flags(tiny, tmp_path / "fixed", "--sampler", "fixed", "--task_weights", "sst2=3,mrpc=1,rte=0,cola=0,stsb=0"))
    rows = history(tmp_path / "fixed")
    assert rows[0]["probabilities"] == pytest.approx({"sst2": 0.75, "mrpc": 0.25, "rte": 0, "cola": 0, "stsb": 0})
    assert {t for r in rows for t in r["rollout"]} <= {"sst2", "mrpc"}
    for sampler in ("gradient", "loss"):  # they adapt from training signals: no meta-test needed
        run_ok(base_flags(tiny, tmp_path / sampler, "--sampler", sampler))
        rows = history(tmp_path / sampler)
        assert [r["step"] for r in rows] == [5, 10, 12] and rows[1]["val_loss"] is None


def test_history_rows_have_the_pretraining_scripts_keys(tiny, tmp_path):
    """The same row format as run_mometas_pretraining.py's write_history_row, so the plots read both."""
    import run_mometas_pretraining as pre
    from accelerate import Accelerator

    from mometas_utils.history import read_history
    from mometas_utils.plots import plot_history
    from mometas_utils.samplers import build_sampler
    from mometas_utils.tracker import StepTracker

    sampler = build_sampler("mometas", TASKS, meta_length=5)
    tracker = StepTracker(TASKS)
    losses = dict.fromkeys(TASKS, 1.0)
    first = pre.write_history_row(Accelerator(cpu=True), None, tracker, sampler, step=0, update=sampler.update(losses),
                                  val_losses=losses, seconds=0.1, learning_rate=0.0, started=time.perf_counter(),
                                  with_tracking=False)
    for task in TASKS:
        tracker.record(task, 0.5, 10)
        sampler.sample()
    later = pre.write_history_row(Accelerator(cpu=True), None, tracker, sampler, step=5,
                                  update=sampler.update(dict.fromkeys(TASKS, 0.9)), val_losses=losses, seconds=0.1,
                                  learning_rate=0.0, started=time.perf_counter(), with_tracking=False)
    last = pre.write_history_row(Accelerator(cpu=True), None, tracker, sampler, step=6, update=None, val_losses=None,
                                 seconds=None, learning_rate=0.0, started=time.perf_counter(), with_tracking=False)

    out = tmp_path / "out"
    run_ok(base_flags(tiny, out, "--sampler", "mometas"))
    rows = history(out)
    assert set(rows[0]) == set(first) and set(rows[1]) == set(later) and set(rows[-1]) == set(last)
    # plot_sampler_history.py and the library's plots draw it.
    assert len(plot_history(read_history(out), tmp_path / "plots")) == 4
    done = subprocess.run([sys.executable, str(ROOT / "plot_sampler_history.py"), str(out), "--output_dir",
                           str(tmp_path / "cli")], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "mometas sampling distribution" in done.stdout


# ------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("extra", "fragments"), [
    (["--tasks", "sst2,qqp"], ["--tasks", "qqp"]),
    (["--tasks", "sst2,sst2"], ["--tasks", "sst2"]),
    (["--sampler", "mometas", "--meta_length", "3"], ["--meta_length", "number of objectives (5)"]),
    (["--sampler", "mometas", "--meta_step_size", "0"], ["--meta_step_size"]),
    (["--sampler", "mometas", "--reward_tasks", "qqp"], ["--reward_tasks"]),
    (["--sampler", "proportional", "--temperature", "0"], ["--temperature", "> 0"]),
    (["--sampler", "proportional", "--task_sizes", "sst2=10"], ["--task_sizes", "mrpc"]),
    (["--sampler", "proportional", "--task_sizes", "sst2=1,mrpc=x,rte=1,cola=1,stsb=1"], ["--task_sizes", "mrpc"]),
    (["--sampler", "uniform", "--task_sizes", "glue"], ["--task_sizes", "proportional"]),
    (["--sampler", "fixed"], ["--task_weights"]),
    (["--sampler", "uniform", "--task_weights", "sst2=1"], ["--task_weights", "fixed"]),
    (["--sampler", "fixed", "--task_weights", "sst2=0,mrpc=0,rte=0,cola=0,stsb=0"], ["--task_weights"]),
    (["--sampler", "sometimes"], ["--sampler", "invalid choice"]),
    (["--per_device_train_batch_size", "0"], ["--per_device_train_batch_size"]),
    (["--learning_rate", "-1"], ["--learning_rate"]),
    (["--learning_rate", "nan"], ["--learning_rate"]),
    (["--max_seq_length", "1000"], ["--max_seq_length", "128 positions"]),
    (["--meta_test_examples", "40"], ["--meta_test_examples", "40"]),
    (["--no_such_flag"], ["--no_such_flag"]),
])
def test_bad_flags_give_one_line_errors(tiny, tmp_path, extra, fragments):
    code, stderr = run_main(mt.main, base_flags(tiny, tmp_path / "out", *extra))
    one_error_line(code, stderr, *fragments)


def test_bad_data_and_folders_give_one_line_errors(tiny, tmp_path):
    code, stderr = run_main(mt.main, base_flags(tiny, tmp_path / "a", "--data_dir", tmp_path / "nowhere"))
    one_error_line(code, stderr, "--data_dir", "sst2/train.tsv")
    broken = write_glue(tmp_path / "broken")
    (broken / "rte" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n1\tc\td\tentailment\n")
    code, stderr = run_main(mt.main, base_flags(tiny, tmp_path / "b", "--data_dir", broken))
    one_error_line(code, stderr, "rte/train.tsv", "line 2", "maybe")
    code, stderr = run_main(mt.main, base_flags(tiny, tmp_path / "c", "--model_name_or_path", tmp_path / "no_model"))
    one_error_line(code, stderr, "--model_name_or_path")


def test_output_dir_is_not_silently_overwritten(tiny, tmp_path):
    out = tmp_path / "out"
    run_ok(base_flags(tiny, out, "--sampler", "uniform", "--max_train_steps", 3))
    code, stderr = run_main(mt.main, base_flags(tiny, out, "--sampler", "uniform", "--max_train_steps", 3))
    one_error_line(code, stderr, "--output_dir", "--overwrite_output_dir")
    (out / "notes.txt").write_text("mine")
    run_ok(base_flags(tiny, out, "--sampler", "mometas", "--overwrite_output_dir"))
    assert history(out)[0]["sampler"] == "mometas" and (out / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- against run_glue.py


def test_metrics_are_run_glues():
    import run_glue

    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 2, 50).tolist(), rng.integers(0, 2, 50)
    scores, gold = rng.normal(size=50), rng.uniform(0, 5, 50).tolist()
    for metric, p, y in (("accuracy", preds, labels), ("accuracy_f1", preds, labels), ("matthews", preds, labels),
                         ("correlation", scores, gold), ("correlation", np.zeros(50), gold)):
        ours, theirs = mt.compute_metrics(metric, p, y), run_glue.compute_metrics(metric, p, y)
        assert set(ours) == set(theirs)
        assert all((math.isnan(ours[k]) and math.isnan(theirs[k])) or ours[k] == theirs[k] for k in ours)


@pytest.mark.data
@pytest.mark.parametrize("task", TASKS)
def test_reader_reads_the_shared_slices_as_run_glue_does(task):
    import run_glue

    train, dev = require_data(f"glue/{task}/train.tsv", f"glue/{task}/dev.tsv")
    args, _ = run_glue.parse_args(["--model_name_or_path", "unused", "--task_name", task, "--train_file", str(train), "--validation_file", str(dev)])
    splits = run_glue.load_splits(args, run_glue.TASKS[task])
    label_list = run_glue.label_vocabulary(run_glue.TASKS[task], splits["train"])
    for name, path in (("train", train), ("validation", dev)):
        split = splits[name]
        theirs = list(zip(split.data[split.columns["sentence1"]],
                          split.data[split.columns["sentence2"]] if split.columns["sentence2"] else [None] * len(split.data),
                          run_glue.check_labels(split, name, run_glue.TASKS[task], label_list)))
        assert mt.read_task_file(path, task) == theirs


# ------------------------------------------------------------------------------------------ the study


@pytest.mark.slow
def test_study_driver_caches_reports_and_writes_no_absolute_paths(tiny, tmp_path):
    results, cache = tmp_path / "results", tmp_path / "cache"
    command = [sys.executable, str(ROOT / "study" / "multitask.py"), "--model_name_or_path", tiny["model"],
               "--data_dir", tiny["data"], "--results_dir", str(results), "--cache_dir", str(cache), "--name", "mt",
               "--samplers", "uniform,mometas", "--seeds", "1,2", "--extra",
               "--max_train_steps 10 --meta_length 5 --meta_test_examples 6 --per_device_train_batch_size 4 "
               "--per_device_eval_batch_size 8 --max_seq_length 32 --learning_rate 1e-3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert sorted(p.name for p in (results / "mt").iterdir()) == [
        "mometas_seed1.json", "mometas_seed2.json", "uniform_seed1.json", "uniform_seed2.json"]
    assert (results / "mt_weights.png").is_file() and (results / "mt.md").is_file()
    assert "| sampler | SST-2 (Acc) | MRPC (Acc) | RTE (Acc) | CoLA (MCC) | STS-B (Spc) | **Avg** |" in done.stdout
    summary = json.loads((results / "mt.json").read_text())
    assert set(summary["table"]) == {"uniform", "mometas"}
    cell = summary["against_uniform"]["mometas"]["average"]
    assert len(cell["paired_differences"]) == 2 and cell["within_spread"] == (abs(cell["difference"]) <= cell["spread"])
    run = json.loads((results / "mt" / "mometas_seed1.json").read_text())
    assert [r["step"] for r in run["rows"]] == [0, 5, 10] and run["command"][0] == "examples/multitask_glue.py"
    assert "$MODEL" in run["command"]

    # No absolute path in anything the study writes for the repository.
    def strings(value):
        if isinstance(value, dict):
            for k, v in value.items():
                yield str(k)
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)
        elif isinstance(value, str):
            yield value

    for path in [results / "mt.json", *(results / "mt").iterdir()]:
        for text in strings(json.loads(path.read_text())):
            assert not text.startswith("/") and str(tmp_path) not in text, (path.name, text)
    assert str(tmp_path) not in (results / "mt.md").read_text()

    # Cached: a second call runs nothing.
    again = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert again.returncode == 0 and again.stdout.count(": cached") == 4, again.stdout[-2000:]


def test_saved_encoder_and_head_make_a_sequence_classifier(tiny, tmp_path):
    """docs/multitask.md's recipe: AutoModelForSequenceClassification from the folder, the task's head from
    heads.safetensors, gives the multi-task model's logits."""
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoModelForSequenceClassification

    out = tmp_path / "out"
    run_ok(base_flags(tiny, out, "--sampler", "uniform", "--max_train_steps", 4))
    heads = load_file(str(out / "heads.safetensors"))
    ids = torch.tensor([[2, 10, 11, 12, 3], [2, 13, 14, 3, 0]])
    inputs = {"input_ids": ids, "attention_mask": (ids > 0).long()}
    multitask = mt.MultiTaskModel(AutoModel.from_pretrained(out), {"rte": 2, "stsb": 1}).eval()
    multitask.heads.load_state_dict({k: v for k, v in heads.items() if k.split(".")[0] in ("rte", "stsb")})
    for task, n in (("rte", 2), ("stsb", 1)):
        model = AutoModelForSequenceClassification.from_pretrained(out, num_labels=n).eval()
        model.classifier.load_state_dict({"weight": heads[f"{task}.weight"], "bias": heads[f"{task}.bias"]})
        with torch.no_grad():
            assert torch.allclose(model(**inputs).logits, multitask(task, **inputs)[1], atol=1e-6)


# ---------------------------------------------------------------------------------------- processes and fp16


def test_two_gloo_processes_meta_test_all_the_held_out_rows_and_draw_alike(tiny, tmp_path):
    """Each process scores its share of the held-out rows and the sums are added over processes: the step-0
    losses (the same weights everywhere) are the one-process run's, and every process takes the same update."""
    from conftest import accelerate_launch

    flags = ["--sampler", "mometas", "--max_train_steps", 10, "--meta_length", 5, "--meta_test_examples", 7]
    run_ok(base_flags(tiny, tmp_path / "one", *flags))
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="true")
    command = accelerate_launch(2, "no", str(ROOT / "examples" / "multitask_glue.py"),
                                *map(str, base_flags(tiny, tmp_path / "two", *flags)))
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    one, two = history(tmp_path / "one"), history(tmp_path / "two")
    assert all(row["num_processes"] == 2 for row in two), "the launcher must really start two processes"
    assert two[0]["step"] == 0 and two[0]["val_loss"] == pytest.approx(one[0]["val_loss"], rel=1e-4)
    assert [row["step"] for row in two] == [0, 5, 10] and all(row["reward"] is not None for row in two[1:])
    for row in two[1:]:
        first, second = row["process_rollouts"]
        assert first == second == row["rollout"] and len(first) == 5


def test_gb_reads_the_unscaled_gradient_norm_under_fp16(tiny, tmp_path, monkeypatch):
    """A real torch.amp.GradScaler (scale 2**16) behind the loop: Gb observes the norms of the true gradients,
    not 65536 times them (which would saturate its sigmoid and make every task equally likely)."""
    from accelerate.state import AcceleratorState

    from mometas_utils.samplers.rule_based import GradientSampler

    made, observed = [], []

    class ScaledAccelerator(mt.Accelerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, mixed_precision="fp16", **kwargs)
            # On a GPU Accelerate makes this scaler itself; on CPU it makes none, so the test hands it one.
            self.native_amp, self.scaler = True, torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=10**6)
            made.append(self)

    observe = GradientSampler.observe
    monkeypatch.setattr(mt, "Accelerator", ScaledAccelerator)
    monkeypatch.setattr(GradientSampler, "observe",
                        lambda self, task, loss, grad_norm=None: observed.append(grad_norm) or observe(self, task, loss,
                                                                                                    grad_norm))
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        run_ok(base_flags(tiny, tmp_path / "gb", "--sampler", "gradient", "--max_train_steps", 6))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert made and made[0].scaler.get_scale() >= 2.0**15, "the loss was scaled by thousands"
    # A step whose fp16 gradients overflow has a NaN norm, which Gb ignores (the scaler skips that step).
    finite = [norm for norm in observed if math.isfinite(norm)]
    assert len(observed) == 6 and len(finite) >= 4 and all(0 < norm < 100 for norm in finite), observed
    probabilities = json.loads((tmp_path / "gb" / "all_results.json").read_text())["final_probabilities"]
    assert max(probabilities.values()) - min(probabilities.values()) > 1e-6, "Gb did not saturate to uniform"

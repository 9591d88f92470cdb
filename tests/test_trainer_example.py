"""examples/trainer_mometas.py end to end: a run, its exact resumption, two gloo processes, bad input.

The runs train the session's tiny random BERT on 12 paragraphs of the demo corpus, in this process
(one thread, so that an uninterrupted run and its resumptions sum in the same order) or under
``accelerate launch`` on a free port.
"""

import json
import os
import re
import shutil
import signal
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import accelerate_launch, load_module, nan_at
from mometas_utils import MometasForPreTraining

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "trainer_mometas.py"

pytestmark = pytest.mark.usefixtures("one_thread")


def example_env():
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="true")
    return env


def read_rows(folder):
    return [json.loads(line) for line in (Path(folder) / "sampler_history.jsonl").read_text().splitlines()]


def comparable(rows):
    return [{k: v for k, v in row.items() if k not in ("elapsed_seconds", "meta_test_seconds")} for row in rows]


@pytest.fixture(scope="module")
def small_corpus(english_corpus, tmp_path_factory):
    # With 20% held out: 19 training sequences, 5 micro-batches of 4, 3 optimizer steps per epoch (the third
    # of one micro-batch), so 14 steps cross 4 epoch boundaries; 5 validation sequences.
    path = tmp_path_factory.mktemp("small_corpus") / "corpus.txt"
    path.write_text("".join(Path(english_corpus).read_text().splitlines(keepends=True)[:12]))
    return str(path)


def example_args(tiny_bert, corpus, out, *extra):
    return ["--model_name_or_path", tiny_bert, "--train_file", corpus, "--validation_split_percentage", "20",
            "--objectives", "mlm,cse,atd,dtd",
            "--max_seq_length", "32", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
            "--per_device_eval_batch_size", "4", "--meta_length", "4", "--max_steps", "14", "--save_steps", "4",
            "--learning_rate", "1e-3", "--seed", "3", "--min_probability", "0.02", "--logging_steps", "2",
            "--eval_strategy", "steps", "--eval_steps", "6", "--use_cpu", "true", "--dataloader_pin_memory", "false",
            "--disable_tqdm", "true", "--output_dir", str(out), *extra]


def run_example(argv):
    return load_module(EXAMPLE).main([str(a) for a in argv])


@pytest.fixture(scope="module")
def full_run(tiny_bert, small_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("trainer") / "full"
    trainer = run_example(example_args(tiny_bert, small_corpus, out, "--report_to", "tensorboard"))
    return out, trainer


def test_the_example_trains_writes_the_history_and_logs_the_probabilities(full_run):
    out, trainer = full_run
    rows = read_rows(out)
    assert [row["step"] for row in rows] == [0, 4, 8, 12, 14]
    assert rows[0]["reward"] is None and all(row["reward"] is not None for row in rows[1:4])
    assert rows[-1]["reward"] is None and rows[-1]["val_loss"] is None  # the last 2 steps fill no window
    assert [len(row["rollout"]) for row in rows] == [0, 4, 4, 4, 2]
    assert rows[3]["probabilities"] != rows[0]["probabilities"], "MOMETAS learned something"
    assert min(rows[3]["probabilities"].values()) >= 0.02 - 1e-12  # --min_probability reached the sampler
    assert rows[-1]["learning_rate"] == 0.0 and rows[1]["learning_rate"] == pytest.approx(1e-3 * 10 / 14)
    assert int(trainer.state.epoch) == 4, "the run crossed 4 epoch boundaries"
    for name in ("model.safetensors", "config.json", "modeling_mometas.py", "tokenizer.json", "README.md",
                 "probabilities.png", "average_weights.png", "validation_loss.png", "cumulative_reward.png"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-14", "checkpoint-4",
                                                               "checkpoint-8"]
    assert all((p / "mometas_state_0.pt").is_file() for p in out.glob("checkpoint-*"))
    # The trackers: sampler/p_<objective> at every row, and the Trainer's evaluation is a meta-test.
    logged = [entry for entry in trainer.state.log_history if "sampler/p_mlm" in entry]
    assert [entry["step"] for entry in logged] == [0, 4, 8, 12, 14]
    assert logged[2]["sampler/p_atd"] == rows[2]["probabilities"]["atd"]
    assert [e["step"] for e in trainer.state.log_history if "eval_loss_cse" in e] == [6, 12, 14]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(out.rglob("events.out.tfevents*")).parent))
    events.Reload()
    assert "train/sampler/p_dtd" in events.Tags()["scalars"]  # the Trainer files its logs under train/


def test_the_example_trains_emlm_on_spacy_entities(tiny_bert, small_corpus, tmp_path):
    pytest.importorskip("spacy")
    out = tmp_path / "emlm"
    argv = example_args(tiny_bert, small_corpus, out, "--entity_tagger", "spacy")
    argv[argv.index("--objectives") + 1], argv[argv.index("--max_steps") + 1] = "mlm,emlm", "4"
    run_example(argv)
    rows = read_rows(out)
    assert [row["step"] for row in rows] == [0, 4] and set(rows[-1]["val_loss"]) == {"mlm", "emlm"}
    assert rows[-1]["tokens_seen"]["emlm"] > 0


@pytest.mark.parametrize("step", [4, 12])
def test_the_example_resumes_exactly(full_run, tiny_bert, small_corpus, tmp_path, step):
    """Killed after checkpoint-N: resumed, every row (draws, probabilities, rewards, losses) and the weights are
    those of the uninterrupted run. Step 4 is within an epoch; 12 ends one and leaves a partial window."""
    full, _ = full_run
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copytree(full / f"checkpoint-{step}", out / f"checkpoint-{step}")
    # The history of a run killed later than the checkpoint: rows after it are set aside and rewritten.
    shutil.copy(full / "sampler_history.jsonl", out / "sampler_history.jsonl")
    run_example(example_args(tiny_bert, small_corpus, out, "--resume_from_checkpoint", "latest"))
    assert comparable(read_rows(out)) == comparable(read_rows(full))
    assert not (out / "sampler_history.superseded.json").exists()
    expected, got = load_file(full / "model.safetensors"), load_file(out / "model.safetensors")
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


def launch_two_processes(argv):
    # On a free port, never Accelerate's default 29500: other suites run here.
    command = accelerate_launch(2, "no", str(EXAMPLE), *map(str, argv))
    with subprocess.Popen(command, cwd=ROOT, env=example_env(), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True) as process:
        try:
            _, stderr = process.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    assert process.returncode == 0, stderr[-4000:]


def two_process_args(tiny_bert, corpus, out, *extra):
    argv = example_args(tiny_bert, corpus, out, *extra)
    argv[argv.index("--max_steps") + 1] = "6"
    return argv


@pytest.fixture(scope="module")
def two_process_run(tiny_bert, small_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("trainer_ddp") / "ddp"
    launch_two_processes(two_process_args(tiny_bert, small_corpus, out))
    return out


def test_two_gloo_processes_draw_the_same_objectives(two_process_run):
    out = two_process_run
    rows = read_rows(out)
    assert all(row["num_processes"] == 2 for row in rows), "the launcher must really start two processes"
    assert [row["step"] for row in rows] == [0, 4, 6]
    for row, length in zip(rows, (0, 4, 2)):
        first, second = row["process_rollouts"]
        assert len(first) == length and first == second == row["rollout"]
    assert sorted(p.name for p in (out / "checkpoint-4").glob("mometas_state_*.pt")) == ["mometas_state_0.pt",
                                                                                        "mometas_state_1.pt"]


def test_two_gloo_processes_resume_exactly(two_process_run, tiny_bert, small_corpus, tmp_path):
    # Each process continues its own collators' noise and RNG (mometas_state_<process>.pt, rng_state_<process>.pth).
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copytree(two_process_run / "checkpoint-4", out / "checkpoint-4")
    launch_two_processes(two_process_args(tiny_bert, small_corpus, out, "--resume_from_checkpoint", "latest"))
    assert comparable(read_rows(out)) == comparable(read_rows(two_process_run))[2:]
    expected, got = load_file(two_process_run / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.parametrize("flags, fragment", [
    (["--meta_length", "0"], "error: --meta_length: expected a positive integer, got 0"),
    (["--objectives", "mlm,nope"], "error: --objectives: unknown objective(s) ['nope']"),
    (["--sampler", "nope"], "error: --sampler: expected one of exp3, fixed, gradient, loss, mometas, uniform, got 'nope'"),
    (["--sampler", "fixed"], "error: --sampler_weights: the fixed sampler needs a weight per objective"),
    (["--validation_split_percentage", "0"], "error: --validation_split_percentage: expected a number in (0, 100)"),
    (["--train_file", "missing.txt"], "error: --train_file missing.txt does not exist"),
    (["--no_such_flag", "1"], "error: unrecognized arguments: --no_such_flag 1"),
    (["--history"], "error: --output_dir: "),
    (["--no_state"], "error: --resume_from_checkpoint: "),
])
def test_bad_input_is_one_line_naming_the_flag(flags, fragment, tiny_bert, small_corpus, tmp_path, capsys):
    out = tmp_path / "out"
    if flags == ["--history"]:
        out.mkdir()
        (out / "sampler_history.jsonl").write_text('{"step": 0}\n')
        flags = []
    if flags == ["--no_state"]:  # a Trainer checkpoint without the sampler's state
        (out / "checkpoint-4").mkdir(parents=True)
        flags = ["--resume_from_checkpoint", out / "checkpoint-4"]
    with pytest.raises(SystemExit) as exit_info:
        run_example([*example_args(tiny_bert, small_corpus, out), *flags])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert exit_info.value.code == 2 and len(errors) == 1 and "Traceback" not in err, err[-2000:]
    assert errors[0].startswith(fragment), errors[0]


@pytest.fixture(scope="module")
def warm_run(tiny_bert, small_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("trainer_warm") / "full"
    run_example(example_args(tiny_bert, small_corpus, out, "--head_warmup_steps", "6"))
    return out


def test_the_example_warms_the_missing_heads_up_on_a_frozen_encoder(warm_run, tiny_bert):
    initial = load_file(str(next(Path(tiny_bert).glob("*.safetensors"))))
    at8 = load_file(str(warm_run / "checkpoint-8" / "model.safetensors"))
    at4 = load_file(str(warm_run / "checkpoint-4" / "model.safetensors"))
    # Up to step 6 only the heads moved; the encoder is the checkpoint's at step 4 and trains after step 6.
    for name, tensor in at4.items():
        if name.startswith("bert."):
            base = name.removeprefix("bert.")
            assert torch.equal(tensor, initial[base] if base in initial else initial[name]), name
    assert any(not torch.equal(at4[k], at8[k]) for k in at4 if k.startswith("bert."))
    rows = read_rows(warm_run)
    assert [row["step"] for row in rows] == [6, 10, 14]
    assert rows[0]["head_warmup_end"] is True and rows[0]["reward"] is None and rows[0]["val_loss"] is not None
    assert len(rows[0]["rollout"]) == 6 and rows[1]["reward"] is not None
    assert rows[1]["probabilities"] != rows[0]["probabilities"]


@pytest.mark.parametrize("step", [4, 8])
def test_the_example_resumes_exactly_across_the_warm_up(warm_run, tiny_bert, small_corpus, tmp_path, step):
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copytree(warm_run / f"checkpoint-{step}", out / f"checkpoint-{step}")
    shutil.copy(warm_run / "sampler_history.jsonl", out / "sampler_history.jsonl")
    run_example(example_args(tiny_bert, small_corpus, out, "--head_warmup_steps", "6", "--resume_from_checkpoint",
                             "latest"))
    assert comparable(read_rows(out)) == comparable(read_rows(warm_run))
    expected, got = load_file(warm_run / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(expected[k], got[k]) for k in expected)


# ----------------------------------------------------------------------------- the script's flags and policies

# The script's flags the example does not take: the Accelerate loop's, which TrainingArguments covers under its
# own names, and the script's own modes.
SCRIPT_ONLY = {
    "--max_train_steps",  # --max_steps
    "--num_warmup_steps",  # --warmup_steps
    "--warmup_ratio",  # --warmup_steps below 1 (TrainingArguments has no warmup_ratio)
    "--fused_adamw",  # --optim adamw_torch_fused
    "--checkpointing_steps",  # --save_steps
    "--checkpoints_total_limit",  # --save_total_limit
    "--with_tracking",  # --report_to (none: no tracker)
    "--overwrite_output_dir",  # the example refuses another run's folder; TrainingArguments has no such flag
    "--allow_config_change",  # the script's settings check on resume (the Trainer compares its own arguments)
    "--preprocess_only", "--processed_dataset",  # the script's two-stage preprocessing
    "--demo",  # the script's offline demo
}


def script_module():
    return load_module(ROOT / "run_mometas_pretraining.py")


def test_the_example_takes_every_flag_of_the_script_with_its_defaults_and_paper_reward():
    example, script = load_module(EXAMPLE), script_module()
    script_flags = {flag for flag in script.build_parser()._option_string_actions if flag.startswith("--")}
    parser = example.ArgumentParser((example.MometasArguments, example.TrainingArguments))
    example_flags = set(parser._option_string_actions)
    assert SCRIPT_ONLY <= script_flags, SCRIPT_ONLY - script_flags
    assert script_flags - SCRIPT_ONLY - example_flags == set()
    # The example's own dataclass invents no flag the script lacks.
    own = {f"--{f.name}" for f in fields(example.MometasArguments)}
    assert own - script_flags == set()
    base = ["--model_name_or_path", "m", "--train_file", "t", "--output_dir", "o"]
    for extra in ([], ["--paper_reward"], ["--paper_reward", "--reward_floor", "0.5", "--meta_eval_fixed"],
                  ["--paper_reward", "--no_reward_normalize", "--reward_baseline", "ema", "--mlm_probability", "0.3"],
                  ["--reward_floor", "none", "--exp3_loss_scaling", "none", "--no_meta_eval_fixed"]):
        expected = vars(script.parse_args([*base, *extra]))
        got, _ = example.parse_args([*base, *extra])
        for f in fields(example.MometasArguments):
            assert getattr(got, f.name) == expected[f.name], (extra, f.name)
    paper, _ = example.parse_args([*base, "--paper_reward", "--reward_floor", "0.5"])
    assert (paper.reward_floor, paper.reward_dead_zone, paper.meta_eval_fixed) == (0.5, 0.0, False)


def short_args(tiny_bert, corpus, out, *extra):
    argv = example_args(tiny_bert, corpus, out, *extra)
    for flag, value in (("--max_steps", "6"), ("--save_steps", "2"), ("--eval_steps", "100")):
        argv[argv.index(flag) + 1] = value
    return argv


def test_a_nan_ends_the_example_as_it_ends_the_script(tiny_bert, small_corpus, tmp_path, capsys):
    out = tmp_path / "nan"
    # Two micro-batches a step: forward 5 is step 3's first.
    with nan_at(MometasForPreTraining, 5), pytest.raises(SystemExit) as exit_:
        run_example(short_args(tiny_bert, small_corpus, out))
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert re.fullmatch(rf"error: step 3 \(objective \w+\): loss nan; no model was saved and the last good checkpoint "
                        rf"is {re.escape(str(out / 'checkpoint-2'))}; lower --learning_rate or pass "
                        r"--skip_nonfinite_steps N to skip such steps", line), line
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (out / "model.safetensors").exists()

    skipped = tmp_path / "skipped"
    with nan_at(MometasForPreTraining, 5):
        run_example(short_args(tiny_bert, small_corpus, skipped, "--skip_nonfinite_steps", "1"))
    weights = load_file(skipped / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    window = next(row for row in read_rows(skipped) if row["step"] == 4)
    assert len(window["rollout"]) == 4 and sum(window["counts"].values()) == 3, "step 3 was drawn, not trained"


def test_the_example_streams_a_dataset_as_the_script_loads_it(tiny_bert, small_corpus, tmp_path):
    # load_dataset() takes a local folder: the --dataset_name path, offline.
    folder = tmp_path / "corpus"
    folder.mkdir()
    lines = Path(small_corpus).read_text().splitlines(keepends=True)
    (folder / "train.txt").write_text("".join(lines[:10]))
    (folder / "validation.txt").write_text("".join(lines[10:]))
    out = tmp_path / "streamed"
    argv = short_args(tiny_bert, small_corpus, out, "--streaming", "--cache_dir", str(tmp_path / "cache"))
    at = argv.index("--train_file")
    argv[at:at + 2] = ["--dataset_name", str(folder)]
    argv[argv.index("--max_steps") + 1] = "4"
    trainer = run_example(argv)
    assert type(trainer.train_dataset).__name__ == "StreamingSequences"
    rows = read_rows(out)
    assert [row["step"] for row in rows] == [0, 4] and sum(rows[-1]["counts"].values()) == 4
    assert (out / "model.safetensors").is_file()

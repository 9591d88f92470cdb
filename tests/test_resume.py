"""Checkpoints and resume, the same for every script.

A run continued from any checkpoint ends bit-identical to the uninterrupted run; a run killed
while writing a checkpoint leaves the earlier ones complete and resumable. Each test is
parametrised over CASES: to add a script, give its module name and a function that writes small
data into a folder and returns the argv of a tiny run (without --output_dir) that saves a
checkpoint after every update (step_1, step_2, ...) and exports model.safetensors.
"""

import importlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from finetune_helpers import make_tiny_bert, run_main, write_conll, write_dream_json, write_sst2_tsv


def glue_case(folder, model):
    # 13 examples, batch 2, accumulation 2: 7 batches = 4 updates per epoch (the last one flushes
    # a single batch), 8 updates in 2 epochs.
    train = write_sst2_tsv(folder / "train.tsv", 13)
    return ["--model_name_or_path", model, "--task_name", "sst2", "--train_file", train, "--validation_file", train,
            "--max_length", "16", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
            "--num_train_epochs", "2", "--learning_rate", "1e-3", "--warmup_ratio", "0.2", "--checkpointing_steps", "1"]  # fmt: skip


def ner_case(folder, model):
    train = write_conll(folder / "train.txt", 13)
    return ["--model_name_or_path", model, "--train_file", train, "--validation_file", train, "--label_all_tokens",
            "--max_length", "16", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
            "--num_train_epochs", "2", "--learning_rate", "1e-3", "--checkpointing_steps", "1"]  # fmt: skip


def multiple_choice_case(folder, model):
    train = write_dream_json(folder / "train.json", 13)
    return ["--model_name_or_path", model, "--train_file", train, "--validation_file", train,
            "--max_length", "24", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
            "--num_train_epochs", "2", "--learning_rate", "1e-3", "--checkpointing_steps", "1"]  # fmt: skip


CASES = {"run_glue": glue_case, "run_ner": ner_case, "run_multiple_choice": multiple_choice_case}
FINE_TUNING = ["run_glue", "run_ner", "run_multiple_choice"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="module")
def full_runs(tmp_path_factory, tiny_model):
    """One uninterrupted run per script, made on first use: (argv without --output_dir, output folder)."""
    made = {}

    def get(script):
        if script not in made:
            folder = tmp_path_factory.mktemp(script)
            argv = CASES[script](folder, tiny_model)
            code, err = run_main(importlib.import_module(script).main, argv + ["--output_dir", folder / "full"])
            assert code == 0, err[-3000:]
            made[script] = (argv, folder / "full")
        return made[script]

    return get


def same_weights(a, b):
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def steps(folder):
    return sorted(int(p.name.split("_")[1]) for p in folder.glob("step_*"))


@pytest.mark.parametrize("script", list(CASES))
def test_resume_is_bit_exact(script, full_runs, tmp_path):
    argv, full = full_runs(script)
    main = importlib.import_module(script).main
    assert steps(full) == list(range(1, 9))
    assert not same_weights(full / "step_3", full)  # training went on after the checkpoints
    for step in (3, 4, 6):  # mid epoch 0, the end of epoch 0, mid epoch 1
        resumed = tmp_path / f"resumed_{step}"
        resumed.mkdir()
        shutil.copytree(full / f"step_{step}", resumed / f"step_{step}")  # as if the run had been killed there
        code, err = run_main(main, argv + ["--output_dir", resumed, "--resume_from_checkpoint", "latest"])
        assert code == 0, err[-3000:]
        assert same_weights(full, resumed), f"resumed from step_{step}"
        if (full / "all_results.json").is_file():
            assert json.loads((full / "all_results.json").read_text()) == json.loads((resumed / "all_results.json").read_text())


@pytest.mark.parametrize("script", list(CASES))
def test_a_kill_while_saving_leaves_the_earlier_checkpoints_resumable(script, full_runs, tmp_path, monkeypatch):
    argv, full = full_runs(script)
    main = importlib.import_module(script).main
    out = tmp_path / "out"
    original = importlib.import_module("accelerate").Accelerator.save_state
    calls = []

    def killed_on_the_third(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        original(self, output_dir, **kwargs)
        if len(calls) == 3:  # half of the weights file is on disk when the process dies
            weights = next(p for p in __import__("pathlib").Path(output_dir).glob("*.safetensors"))
            weights.write_bytes(weights.read_bytes()[:100])
            raise KeyboardInterrupt

    monkeypatch.setattr("accelerate.Accelerator.save_state", killed_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        main([str(a) for a in argv + ["--output_dir", out]])
    monkeypatch.setattr("accelerate.Accelerator.save_state", original)
    assert steps(out) == [1, 2] and not (out / "model.safetensors").exists()
    code, err = run_main(main, argv + ["--output_dir", out, "--resume_from_checkpoint", "latest"])
    assert code == 0, err[-3000:]
    assert same_weights(full, out) and steps(out) == list(range(1, 9))


@pytest.mark.parametrize("script", FINE_TUNING)
def test_checkpoints_total_limit_keeps_the_newest(script, full_runs, tmp_path):
    argv, _ = full_runs(script)
    main = importlib.import_module(script).main
    code, err = run_main(main, argv + ["--output_dir", tmp_path / "two", "--checkpoints_total_limit", "2"])
    assert code == 0, err[-3000:]
    assert steps(tmp_path / "two") == [7, 8]
    epochs = argv[: argv.index("--checkpointing_steps")] + ["--checkpointing_steps", "epoch", "--checkpoints_total_limit", "1"]
    code, err = run_main(main, epochs + ["--output_dir", tmp_path / "one"])
    assert code == 0, err[-3000:]
    assert sorted(p.name for p in (tmp_path / "one").iterdir() if p.is_dir()) == ["epoch_1"]
    state = json.loads((tmp_path / "one" / "epoch_1" / "mometas_state.json").read_text())
    assert state["completed_steps"] == 8 and state["files"]["model.safetensors"] > 0


@pytest.mark.parametrize("script", FINE_TUNING)
def test_resuming_an_earlier_checkpoint_never_mixes_two_continuations(script, full_runs, tmp_path, monkeypatch):
    """Resume from step_2 of a folder that holds step_1..step_8, on another course (another seed).

    Killed before its first checkpoint, nothing is lost; once it has saved step_3, the old
    step_4..step_8 are gone, so that 'latest' cannot resume the old course after a second kill.
    """
    argv, full = full_runs(script)
    main = importlib.import_module(script).main
    out = tmp_path / "out"
    shutil.copytree(full, out)
    other_course = argv + ["--output_dir", out, "--resume_from_checkpoint", out / "step_2", "--seed", "7", "--allow_config_change"]
    original = importlib.import_module("accelerate").Accelerator.save_state
    for kill_at, expected in ((1, list(range(1, 9))), (2, [1, 2, 3])):
        calls = []

        def killed(self, output_dir=None, **kwargs):
            calls.append(output_dir)
            if len(calls) == kill_at:
                raise KeyboardInterrupt
            original(self, output_dir, **kwargs)

        monkeypatch.setattr("accelerate.Accelerator.save_state", killed)
        with pytest.raises(KeyboardInterrupt):
            main([str(a) for a in other_course])
        assert steps(out) == expected, kill_at
    monkeypatch.setattr("accelerate.Accelerator.save_state", original)
    state = json.loads((out / "step_3" / "mometas_state.json").read_text())
    assert state["settings"]["seed"] == 7  # 'latest' is now the new course's step_3

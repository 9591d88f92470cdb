"""The three fine-tuning scripts on the paper's hardware, as far as a CPU shows it.

A real ``torch.amp.GradScaler`` behind the loop (Accelerate makes none on CPU), a non-finite
update skipped and what the learning-rate schedule does then, the message once the skips are
spent, DeepSpeed's refusal, and ``--hub_strategy every_save`` uploading what each save held.
"""

import importlib
from pathlib import Path
from unittest import mock

import pytest
import torch
import transformers
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType
from huggingface_hub import CommitInfo, RepoUrl
from safetensors.torch import load_file

from conftest import UploadReadLater, nan_at
from finetune_helpers import make_tiny_bert, one_error_line, run_main
from test_copy_one_script import CASES

SCRIPTS = list(CASES)
MODEL_CLASS = {"run_glue.py": "BertForSequenceClassification", "run_ner.py": "BertForTokenClassification",
               "run_multiple_choice.py": "BertForMultipleChoice"}  # fmt: skip
# 8 SST-2 rows / 6 sentences / 6 dialogues in batches of 2: 3 or 4 updates, a checkpoint after each.
SMALL_BATCH = ["--per_device_train_batch_size", "2"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_model"))


def script_and_argv(script, folder, model, *extra):
    module = importlib.import_module(Path(script).stem)
    return module, [*CASES[script](folder, model), *SMALL_BATCH, "--output_dir", folder / "out", *extra]


def nan_loss_at(script, *updates):
    """The training forwards numbered ``updates`` (from 1) of the script's model return a NaN loss."""
    return nan_at(getattr(transformers, MODEL_CLASS[script]), *updates)


def scheduler_spy(module):
    """Patch the script's get_scheduler to keep the scheduler it builds (``made[0]``)."""
    made = []
    real = module.get_scheduler

    def get_scheduler(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    return mock.patch.object(module, "get_scheduler", get_scheduler), made


@pytest.mark.parametrize("script", SCRIPTS)
def test_fp16_loss_scaler_trains_on_after_a_skipped_update(script, tiny_model, tmp_path, monkeypatch):
    module, argv = script_and_argv(script, tmp_path, tiny_model, "--skip_nonfinite_steps", "1")
    made = []

    class ScaledAccelerator(module.Accelerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, mixed_precision="fp16", **kwargs)
            # On a GPU Accelerate makes this scaler itself; on CPU it makes none, so the test hands it one.
            self.native_amp, self.scaler = True, torch.amp.GradScaler("cpu", init_scale=2.0**16)
            made.append(self)

    monkeypatch.setattr(module, "Accelerator", ScaledAccelerator)
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        with nan_loss_at(script, 2):
            code, err = run_main(module.main, argv)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert code == 0, err[-3000:]
    assert made and made[0].scaler is not None
    weights = load_file(tmp_path / "out" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_skipped_update_does_not_advance_the_schedule(script, tiny_model, tmp_path):
    module, argv = script_and_argv(script, tmp_path, tiny_model, "--skip_nonfinite_steps", "1")
    spy, made = scheduler_spy(module)
    with spy, nan_loss_at(script, 2):
        code, err = run_main(module.main, argv)
    assert code == 0, err[-3000:]
    steps = len(list((tmp_path / "out").glob("step_*")))  # a checkpoint after each of the updates, skipped or not
    assert steps >= 3
    # LambdaLR counts its step() calls: one per update that was made, none for the skipped one.
    assert made[0].last_epoch == steps - 1


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_spent_skip_budget_says_so_instead_of_asking_for_the_flag(script, tiny_model, tmp_path):
    module, argv = script_and_argv(script, tmp_path, tiny_model)
    with nan_loss_at(script, 2):
        code, err = run_main(module.main, argv)
    line = [x for x in err.splitlines() if x.startswith("error: ")]
    assert code == 1 and len(line) == 1 and "skip such steps with --skip_nonfinite_steps N" in line[0], err[-2000:]

    with nan_loss_at(script, 1, 3):
        code, err = run_main(module.main, [*argv, "--skip_nonfinite_steps", "1", "--overwrite_output_dir"])
    line = [x for x in err.splitlines() if x.startswith("error: ")]
    assert code == 1 and len(line) == 1 and "Traceback" not in err, err[-2000:]
    assert line[0].startswith("error: step 3: the training loss is not finite")
    assert "All 1 updates --skip_nonfinite_steps allows were already skipped" in line[0]
    assert "raise --skip_nonfinite_steps" in line[0] and "--skip_nonfinite_steps N" not in line[0]


@pytest.mark.parametrize("script", SCRIPTS)
def test_skipping_is_refused_under_deepspeed_before_any_work(script, tiny_model, tmp_path, monkeypatch):
    module, argv = script_and_argv(script, tmp_path, tiny_model, "--skip_nonfinite_steps", "2")

    class DeepSpeedAccelerator(module.Accelerator):
        @property
        def distributed_type(self):
            return DistributedType.DEEPSPEED

    monkeypatch.setattr(module, "Accelerator", DeepSpeedAccelerator)
    with mock.patch.object(module, "load_model", side_effect=AssertionError("loaded the model")):
        code, err = run_main(module.main, argv)
    line = one_error_line(code, err, "--skip_nonfinite_steps 2: under DeepSpeed")
    assert "no update can be skipped" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_save_commit_holds_the_model_of_its_own_step(script, tiny_model, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    module, argv = script_and_argv(script, tmp_path, tiny_model, "--push_to_hub", "--hub_strategy", "every_save",
                                   "--hub_model_id", "someone/run")
    info = CommitInfo(commit_url="https://huggingface.co/someone/run/commit/1", commit_message="m",
                      commit_description="", oid="1")
    sent = {}

    def upload_folder(**kwargs):
        if not kwargs.get("run_as_future"):
            return info

        def read(folder=Path(kwargs["folder_path"]), message=kwargs["commit_message"]):
            sent[message] = load_file(folder / "model.safetensors")
            return info

        return UploadReadLater(read)

    api = mock.MagicMock()
    api.create_repo.return_value = RepoUrl("https://huggingface.co/someone/run")
    api.upload_folder.side_effect = upload_folder
    with mock.patch.object(module, "HfApi", return_value=api):
        code, err = run_main(module.main, argv)
    assert code == 0, err[-3000:]
    out = tmp_path / "out"
    steps = sorted(int(p.name.split("_")[1]) for p in out.glob("step_*"))
    assert sorted(sent) == sorted(f"Training in progress, step {step}" for step in steps)
    for step in steps:
        weights, saved = sent[f"Training in progress, step {step}"], load_file(out / f"step_{step}" / "model.safetensors")
        shared = sorted(set(weights) & set(saved))
        assert shared and all(torch.equal(weights[k], saved[k]) for k in shared), f"the commit of step {step}"
    assert not list(out.glob(".tmp_hub_upload*")), "the copies are gone once uploaded"


@pytest.mark.parametrize("script", SCRIPTS)
def test_zero3_placeholders_are_not_taken_for_finite_weights(script):
    """Under ZeRO-3 a parameter is an empty placeholder; the weights a process holds are param.ds_tensor."""
    from types import SimpleNamespace

    module = importlib.import_module(Path(script).stem)
    layer = torch.nn.Linear(3, 2)
    for param, partition in ((layer.weight, torch.tensor([1.0, float("nan"), 2.0])), (layer.bias, torch.ones(1))):
        param.data = torch.empty(0)
        param.ds_tensor = partition
    accelerator = SimpleNamespace(device=torch.device("cpu"), reduce=lambda tensor, reduction: tensor)
    assert module.parameters_finite(layer, accelerator) is False
    layer.weight.ds_tensor = torch.ones(3)
    assert module.parameters_finite(layer, accelerator) is True

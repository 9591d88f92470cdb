"""MometasTrainer refuses, stops, skips and warms up as run_mometas_pretraining.py does.

The launch table calls the shared check the way each front end calls it: the script's ``check_launch``
on its parsed flags, ``MometasTrainer.train()`` on a trainer whose accelerator reports the launch (no
DeepSpeed or FSDP state can be built on CPU). The non-finite and warm-up tests train tiny models in
this process with a NaN planted in the loss of chosen training forwards, as tests/test_pretraining.py
does for the script.
"""

import json
import re
from unittest import mock

import pytest
import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file
from transformers import Trainer

from mometas_utils import (MometasForPreTraining, MometasInputError, MometasTrainer, PadCollator, build_objectives,
                           build_sampler)
from mometas_utils.nonfinite import NonFiniteError
from conftest import nan_at
from test_parallel import fake_accelerator
from test_pretraining import load_script
from test_trainer import Recorder, sequences, tiny_model, trainer_args

pytestmark = pytest.mark.usefixtures("one_thread")

DS, FSDP = DistributedType.DEEPSPEED, DistributedType.FSDP
# (launch, its plugin's settings), then (sampler, skip_nonfinite_steps, head_warmup_steps, max_grad_norm), and
# whether the launch refuses that: the script's behaviour, which the Trainer must share word for word.
LAUNCHES = {
    "one process": (DistributedType.NO, {}),
    "ddp": (DistributedType.MULTI_GPU, {}),
    "deepspeed": (DS, {"zero_stage": 2}),
    "zero-3, clipping 2": (DS, {"zero_stage": 3, "gradient_clipping": 2.0}),
    "fsdp1": (FSDP, {}),
    "fsdp1 orig params": (FSDP, {"use_orig_params": True}),
    "fsdp2": (FSDP, {"fsdp_version": 2}),
}
SETTINGS = [("mometas", 0, 0, 1.0), ("gradient", 0, 0, 1.0), ("mometas", 2, 0, 1.0), ("mometas", 0, 2, 1.0),
            ("loss", 0, 0, 2.0), ("gradient", 3, 2, 0.5)]
REFUSED = {  # launch -> the settings (by index) it refuses
    "one process": set(), "ddp": set(), "deepspeed": {1, 2, 3, 5}, "zero-3, clipping 2": {0, 1, 2, 3, 5},
    "fsdp1": {1, 3, 5}, "fsdp1 orig params": {3, 5}, "fsdp2": {3, 5},
}


def outcome(call):
    try:
        call()
    except MometasInputError as error:
        return str(error)
    return None


def script_says(script, launch, setting):
    kind, plugin = LAUNCHES[launch]
    sampler, skip, warmup, max_grad_norm = setting
    args = script.parse_args(["--model_name_or_path", "m", "--train_file", "t", "--output_dir", "o",
                              "--sampler", sampler, "--skip_nonfinite_steps", str(skip), "--head_warmup_steps",
                              str(warmup), "--max_grad_norm", str(max_grad_norm)])
    accelerator = fake_accelerator(kind, **plugin)
    return outcome(lambda: script.check_launch(accelerator, args)), accelerator


def trainer_says(trainers, launch, setting, tmp_path):
    kind, plugin = LAUNCHES[launch]
    trainer = trainers(*setting)
    trainer.accelerator = accelerator = fake_accelerator(kind, **plugin)
    # Past the check, the Trainer's own loop would start: it is not run here.
    with mock.patch.object(Trainer, "train", return_value="trained") as trained:
        said = outcome(trainer.train)
    assert (said is None) == trained.called
    return said, accelerator


@pytest.fixture
def trainers(tokenizer, tmp_path):
    objectives = ["mlm", "dtd"]
    data = sequences(tokenizer, 4)
    model = tiny_model(tokenizer, objectives)

    def make(sampler, skip, warmup, max_grad_norm):
        return MometasTrainer(model=model, args=trainer_args(tmp_path, max_grad_norm=max_grad_norm), train_dataset=data,
                              eval_dataset=data, processing_class=tokenizer,
                              sampler=build_sampler(sampler, objectives, meta_length=2),
                              collators=build_objectives(objectives, tokenizer), skip_nonfinite_steps=skip,
                              head_warmup_steps=warmup, head_warmup_objectives=["dtd"])

    return make


def test_the_script_and_the_trainer_refuse_the_same_launches_with_the_same_words(trainers, tmp_path):
    script = load_script()
    table = []
    for launch in LAUNCHES:
        for index, setting in enumerate(SETTINGS):
            said, script_accelerator = script_says(script, launch, setting)
            trainer_said, trainer_accelerator = trainer_says(trainers, launch, setting, tmp_path)
            table.append((launch, setting, said, trainer_said))
            assert trainer_said == said, (launch, setting)
            assert (said is not None) == (index in REFUSED[launch]), (launch, setting, said)
            # Under DeepSpeed both hand max_grad_norm to the engine where its config says "auto".
            configs = [getattr(getattr(a.state, "deepspeed_plugin", None), "deepspeed_config", None)
                       for a in (script_accelerator, trainer_accelerator)]
            assert configs[0] == configs[1], (launch, setting)
    # Every kind of refusal is in the table, each a single line naming the script's flag.
    messages = {t[2] for t in table if t[2]}
    for start in ("--sampler gradient: under DeepSpeed", "--skip_nonfinite_steps 2: under DeepSpeed",
                  "--head_warmup_steps 2: the warm-up freezes the encoder", "--max_grad_norm 1: under DeepSpeed",
                  "--sampler gradient: FSDP1 without use_orig_params"):
        assert any(m.startswith(start) for m in messages), start
    assert all("\n" not in m for m in messages)
    clipped = fake_accelerator(DS, zero_stage=2)
    trainer = trainers("mometas", 0, 0, 0.5)
    trainer.accelerator = clipped
    with mock.patch.object(Trainer, "train", return_value="trained"):
        trainer.train()
    assert clipped.state.deepspeed_plugin.deepspeed_config["gradient_clipping"] == 0.5


# ----------------------------------------------------------------------------- non-finite


def nan_trainer(tokenizer, tmp_path, **settings):
    objectives = ["mlm", "dtd"]
    data = sequences(tokenizer, 24)
    options = {key: settings.pop(key) for key in ("skip_nonfinite_steps", "head_warmup_steps",
                                                  "head_warmup_objectives", "head_warmup_learning_rate")
               if key in settings}
    args = trainer_args(tmp_path, **{"max_steps": 6, "save_strategy": "steps", "save_steps": 2, **settings})
    return MometasTrainer(model=tiny_model(tokenizer, objectives), args=args, train_dataset=data,
                          eval_dataset=data.select(range(4)), processing_class=tokenizer,
                          sampler=build_sampler("mometas", objectives, meta_length=2, seed=0),
                          collators=build_objectives(objectives, tokenizer, max_length=32), **options)


def rows(folder):
    return [json.loads(line) for line in (folder / "sampler_history.jsonl").read_text().splitlines()]


def checkpoints(folder):
    return sorted(p.name for p in folder.glob("checkpoint-*"))


def finite(folder):
    return all(torch.isfinite(t).all() for t in load_file(folder / "model.safetensors").values())


def test_a_nan_stops_the_trainer_before_the_step_and_nothing_is_saved_from_it(tokenizer, tmp_path):
    trainer = nan_trainer(tokenizer, tmp_path)
    with nan_at(MometasForPreTraining, 3), \
            pytest.raises(NonFiniteError, match=r"^step 3 \(objective (mlm|dtd)\): loss nan$") as error:
        trainer.train()
    out = tmp_path / "out"
    assert error.value.step == 3 and not error.value.skips_spent
    assert checkpoints(out) == ["checkpoint-2"] and finite(out / "checkpoint-2")
    assert not (out / "model.safetensors").exists() and [r["step"] for r in rows(out)] == [0, 2]
    # Weights that hold NaN are never saved, by a checkpoint or by save_model.
    with torch.no_grad():
        next(trainer.model.parameters())[0] = float("nan")
    with pytest.raises(NonFiniteError, match="the weights hold NaN or infinity"):
        trainer.save_model(str(tmp_path / "final"))
    with pytest.raises(NonFiniteError, match="the weights hold NaN or infinity"):
        trainer._save_checkpoint(trainer.model, None)
    assert not (tmp_path / "final").exists() and checkpoints(out) == ["checkpoint-2"]


def test_skip_nonfinite_steps_skips_the_step_as_the_script_does(tokenizer, tmp_path):
    trainer = nan_trainer(tokenizer, tmp_path, skip_nonfinite_steps=1)
    recorder = Recorder(trainer.model)
    trainer.add_callback(recorder)
    with nan_at(MometasForPreTraining, 3):
        trainer.train()
    out = tmp_path / "out"
    history = rows(out)
    window = next(row for row in history if row["step"] == 4)
    assert len(window["rollout"]) == 2 and sum(window["counts"].values()) == 1, "the skipped step trained nothing"
    # No update at step 3 (its weights are those of step 4's start), and no schedule step: 6 steps,
    # linear to 0 from 1e-3, so after 4 steps with 3 updates the rate is 1e-3 * (6 - 3) / 6.
    before, after = recorder.steps[2]["params"], recorder.steps[3]["params"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(recorder.steps[1]["params"][k], before[k]) for k in before)
    assert window["learning_rate"] == pytest.approx(1e-3 * 3 / 6)
    assert history[-1]["step"] == 6 and history[-1]["learning_rate"] == pytest.approx(1e-3 * 1 / 6)
    assert trainer.tracker.skipped_steps == 1 and finite(out / "checkpoint-6")
    # A second bad step is one more than allowed: the run stops and says the skips are spent.
    spent = nan_trainer(tokenizer, tmp_path / "spent", skip_nonfinite_steps=1)
    with nan_at(MometasForPreTraining, 3, 5), pytest.raises(NonFiniteError, match=r"^step 5 ") as error:
        spent.train()
    assert error.value.skips_spent and checkpoints(tmp_path / "spent" / "out") == ["checkpoint-2", "checkpoint-4"]


def test_an_fp16_run_closes_its_loss_scalers_step_when_it_skips(tokenizer, tmp_path):
    """A real torch.amp.GradScaler: the Trainer unscales the gradients for their norm, then the step is skipped."""
    trainer = nan_trainer(tokenizer, tmp_path, skip_nonfinite_steps=1, fp16=True)
    assert trainer.accelerator.mixed_precision == "fp16"
    # On a GPU Accelerate makes this scaler itself; on CPU it makes none, so the test hands it one.
    trainer.accelerator.native_amp, trainer.accelerator.scaler = True, torch.amp.GradScaler("cpu", init_scale=2.0**16)
    with nan_at(MometasForPreTraining, 3):
        trainer.train()
    assert trainer.accelerator.scaler.get_scale() < 2.0**16, "the skipped step's NaN gradients lowered the scale"
    history = rows(tmp_path / "out")
    assert sum(sum(row["counts"].values()) for row in history) == 5, "5 of 6 steps trained"
    assert finite(tmp_path / "out" / "checkpoint-6")


# ----------------------------------------------------------------------------- the warm-up's boundaries


def test_a_skip_inside_the_warm_up_moves_none_of_its_boundaries(tokenizer, tmp_path):
    """Step 2 of a 4-step warm-up is skipped: unfreezing, the first meta-test and the schedule's phase change
    still happen at step 4, and step 5 trains the encoder at the schedule's first rate."""
    trainer = nan_trainer(tokenizer, tmp_path, max_steps=8, skip_nonfinite_steps=1, head_warmup_steps=4,
                          head_warmup_objectives=["mlm", "dtd"], head_warmup_learning_rate=1e-2)
    recorder = Recorder(trainer.model)
    trainer.add_callback(recorder)
    with nan_at(MometasForPreTraining, 2):
        trainer.train()
    history = rows(tmp_path / "out")
    assert [row["step"] for row in history] == [4, 6, 8] and history[0]["head_warmup_end"] is True
    assert len(history[0]["rollout"]) == 4 and sum(history[0]["counts"].values()) == 3
    # The schedule (linear over the 4 steps after the warm-up) starts at its first rate after step 4.
    assert history[0]["learning_rate"] == pytest.approx(1e-3)
    encoder = [k for k in recorder.steps[0]["params"] if k.startswith("bert.encoder.")]
    start = [step["params"] for step in recorder.steps] + [{k: v.detach() for k, v in trainer.model.state_dict().items()}]
    moved = [any(not torch.equal(start[i][k], start[i + 1][k]) for k in encoder) for i in range(8)]
    assert moved == [False] * 4 + [True] * 4, "the encoder trains from step 5 on, and only then"


def test_an_epoch_run_whose_warm_up_fills_it_is_refused_before_training(tokenizer, tmp_path):
    # 8 sequences in batches of 2: one epoch of 4 steps, all of them warm-up.
    trainer = nan_trainer(tokenizer, tmp_path, max_steps=-1, num_train_epochs=1, head_warmup_steps=4,
                          head_warmup_objectives=["dtd"])
    trainer.train_dataset = trainer.train_dataset.select(range(8))
    with pytest.raises(MometasInputError) as error:
        trainer.train()
    assert str(error.value) == ("head_warmup_steps: the head warm-up (4 steps) must leave steps to train the whole "
                                "model; the run has 4")
    assert trainer.state.global_step == 0 and not (tmp_path / "out" / "sampler_history.jsonl").exists()


# ----------------------------------------------------------------------------- the smaller differences


def test_the_trainers_smaller_differences_from_the_script(tokenizer, tmp_path):
    objectives = ["mlm", "cse"]
    data = sequences(tokenizer, 8)

    def make(**settings):
        options = {k: settings.pop(k) for k in ("cse_gather",) if k in settings}
        return MometasTrainer(model=tiny_model(tokenizer, objectives), args=trainer_args(tmp_path, **settings),
                              train_dataset=data, processing_class=tokenizer,
                              sampler=build_sampler("fixed", objectives, weights=[0, 1], meta_length=2),
                              collators=build_objectives(objectives, tokenizer, max_length=32), **options)

    # --cse_gather reaches the model's forward, as the script passes it.
    trainer = make(cse_gather=True, max_steps=1)
    seen = []
    trainer.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("cse_gather")), with_kwargs=True)
    trainer.train()
    assert seen == [True]
    # The loader leaves the padded batches on the CPU, where the collators corrupt them; a plain Trainer's
    # loader would place them on the device first.
    assert make().get_train_dataloader().device is None
    plain = Trainer(model=trainer.model, args=trainer_args(tmp_path), train_dataset=data,
                    data_collator=PadCollator(tokenizer.pad_token_id))
    assert plain.get_train_dataloader().device == torch.device("cpu")
    # auto_find_batch_size would run the loop again over an advanced sampler.
    with pytest.raises(MometasInputError, match="^auto_find_batch_size: after an out-of-memory error"):
        make(auto_find_batch_size=True)
    # A checkpoint of two processes is not resumed by one.
    folder = tmp_path / "checkpoint-2"
    folder.mkdir()
    for process in (0, 1):
        torch.save({}, folder / f"mometas_state_{process}.pt")
    with pytest.raises(MometasInputError, match=re.escape(
            f"resume_from_checkpoint: {folder} holds the sampler states of 2 process(es) (mometas_state_0.pt, "
            "mometas_state_1.pt); this run has 1: resume it with 2")):
        make(output_dir=str(tmp_path / "resumed")).train(resume_from_checkpoint=str(folder))

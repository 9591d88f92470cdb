"""MometasTrainer: the sampler in a Hugging Face Trainer, and the Trainer's traps.

Each test builds a tiny MometasForPreTraining on hand-made sequences and trains a few steps in
this process; tests/test_trainer_example.py runs the example end to end.
"""

import json
from pathlib import Path

import datasets
import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from mometas_utils import MometasConfig, MometasForPreTraining, MometasInputError, MometasTrainer, PadCollator
from mometas_utils import build_objectives, build_sampler
from mometas_utils.tracker import StepTracker
from mometas_utils.trainer import history_row

from conftest import load_module

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(tokenizer, objectives, dropout=0.1):
    torch.manual_seed(0)
    return MometasForPreTraining(MometasConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
        objectives=objectives))


def sequences(tokenizer, n, length=20, seed=0):
    """Tokenized sequences as the library makes them, an entity on tokens 3-5, and a text column."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        ids = torch.randint(1000, 5000, (length - 2 - i % 3,), generator=generator).tolist()
        input_ids = [tokenizer.cls_token_id, *ids, tokenizer.sep_token_id]
        entity_ids = [-1] * len(input_ids)
        entity_ids[3:6] = [0, 0, 0]
        rows.append({"input_ids": input_ids, "entity_ids": entity_ids, "text": f"document {i}"})
    return datasets.Dataset.from_list(rows)


def trainer_args(tmp_path, **overrides):
    settings = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, per_device_eval_batch_size=4,
                    max_steps=4, learning_rate=1e-3, report_to="none", save_strategy="no", logging_steps=1000,
                    use_cpu=True, disable_tqdm=True, seed=0, dataloader_pin_memory=False)
    return TrainingArguments(**{**settings, **overrides})


class Recorder(TrainerCallback):
    """Each optimizer step: the parameters before it, the objective and inputs of every forward, the gradient."""

    def __init__(self, model):
        self.model, self.steps = model, []
        model.register_forward_pre_hook(self.forward, with_kwargs=True)

    def on_step_begin(self, args, state, control, **kwargs):
        self.steps.append({"params": {n: t.detach().clone() for n, t in self.model.state_dict().items()}, "calls": []})

    def forward(self, module, args, kwargs):
        if module.training:  # meta-test runs in eval mode
            self.steps[-1]["calls"].append({k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()})

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.steps[-1]["grads"] = {n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None}


def reference_gradient(tokenizer, params, call):
    model = tiny_model(tokenizer, ["mlm", "atd", "dtd"], dropout=0.0)
    model.load_state_dict(params)
    model.train()
    model(**call).loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def with_labels(pad):
    # A data collator whose padded batch carries labels: what makes the Trainer count num_items_in_batch.
    return lambda features: {**pad(features), "labels": pad(features)["input_ids"]}


@pytest.mark.parametrize("case", ["pad", "labels", "trap"])
def test_gradient_accumulation_gives_each_step_one_objective_and_the_mean_gradient(case, tokenizer, tmp_path):
    """GA 2: both micro-batches of a step train the step's draw, and the gradient is their mean.

    ``trap`` puts back what the Trainer decides from forward(**kwargs) (model_accepts_loss_kwargs):
    with labels in the padded batch it then stops dividing by the accumulation steps, and the
    gradient is the sum, which this test must see."""
    objectives = ["mlm", "atd", "dtd"]
    model = tiny_model(tokenizer, objectives, dropout=0.0)
    pad = PadCollator(tokenizer.pad_token_id)
    trainer = MometasTrainer(
        model=model, args=trainer_args(tmp_path, gradient_accumulation_steps=2, max_steps=6, max_grad_norm=0.0,
                                       dataloader_num_workers=2),
        train_dataset=sequences(tokenizer, 40), data_collator=pad if case == "pad" else with_labels(pad),
        sampler=build_sampler("uniform", objectives, meta_length=3, seed=1),
        collators=build_objectives(objectives, tokenizer, seed=0, max_length=32))
    assert Trainer(model=model, args=trainer_args(tmp_path)).model_accepts_loss_kwargs, "the trap exists"
    assert trainer.model_accepts_loss_kwargs is False
    if case == "trap":
        trainer.model_accepts_loss_kwargs, trainer.loss_is_scaled_for_ga = True, None
    recorder = Recorder(model)
    trainer.add_callback(recorder)
    trainer.train()

    expected_draws = build_sampler("uniform", objectives, meta_length=3, seed=1)
    draws = [expected_draws.sample() for _ in range(6)]
    assert len(set(draws)) > 1, "a test of one objective would prove nothing"
    assert [[call["objective"] for call in step["calls"]] for step in recorder.steps] == [[d, d] for d in draws]
    factor = 2.0 if case == "trap" else 1.0
    for step in recorder.steps:
        one, two = (reference_gradient(tokenizer, step["params"], call) for call in step["calls"])
        assert step["grads"].keys() == one.keys()
        for name, grad in step["grads"].items():
            torch.testing.assert_close(grad, factor * (one[name] + two[name]) / 2, rtol=1e-4, atol=1e-6)


def test_remove_unused_columns_keeps_what_the_collators_read(tokenizer, tmp_path):
    data = sequences(tokenizer, 12)
    model = tiny_model(tokenizer, ["mlm", "emlm"])
    args = trainer_args(tmp_path)
    assert args.remove_unused_columns
    # A plain Trainer keeps only forward()'s arguments: EMLM's entity_ids would be gone.
    assert "entity_ids" not in Trainer(model=model, args=args)._remove_unused_columns(data).column_names
    seen = []
    collators = build_objectives(["mlm", "emlm"], tokenizer, seed=0)
    transform = collators["emlm"].transform
    collators["emlm"].transform = lambda batch: seen.append(sorted(batch)) or transform(batch)
    trainer = MometasTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                             sampler=build_sampler("fixed", ["mlm", "emlm"], weights=[0, 1], meta_length=2),
                             collators=collators)
    trainer.train()
    assert seen == [["attention_mask", "entity_ids", "input_ids"]] * 4


def test_ddp_looks_for_unused_parameters(tokenizer, tmp_path):
    model = tiny_model(tokenizer, ["mlm", "dtd"])
    common = dict(train_dataset=sequences(tokenizer, 4), processing_class=tokenizer,
                  collators=build_objectives(["mlm", "dtd"], tokenizer))
    # Under activation checkpointing the Trainer turns the search off; the head not drawn would hang DDP.
    args = trainer_args(tmp_path, activation_checkpointing=True)
    assert Trainer(model=model, args=args).accelerator.ddp_handler.find_unused_parameters is False
    trainer = MometasTrainer(model=model, args=args, sampler=build_sampler("uniform", ["mlm", "dtd"]), **common)
    assert trainer.accelerator.ddp_handler.find_unused_parameters is True
    with pytest.raises(MometasInputError, match="^ddp_find_unused_parameters: one objective per step"):
        MometasTrainer(model=model, args=trainer_args(tmp_path, ddp_find_unused_parameters=False),
                       sampler=build_sampler("uniform", ["mlm", "dtd"]), **common)


def test_what_an_mlm_trainer_script_would_pass_is_refused_with_the_argument(tokenizer, tmp_path):
    from transformers import DataCollatorForLanguageModeling

    model, args = tiny_model(tokenizer, ["mlm", "dtd"]), trainer_args(tmp_path)
    common = dict(model=model, args=args, train_dataset=sequences(tokenizer, 4), processing_class=tokenizer)
    objectives = dict(sampler=build_sampler("uniform", ["mlm", "dtd"]), collators=build_objectives(["mlm", "dtd"], tokenizer))
    with pytest.raises(MometasInputError, match="^data_collator: the objective collators mask"):
        MometasTrainer(data_collator=DataCollatorForLanguageModeling(tokenizer), **common, **objectives)
    with pytest.raises(MometasInputError, match=r"^model: it has heads for \['mlm', 'dtd'\], the sampler draws"):
        MometasTrainer(sampler=build_sampler("uniform", ["mlm", "atd"]),
                       collators=build_objectives(["mlm", "atd"], tokenizer), **common)
    with pytest.raises(MometasInputError, match="^collators: expected one per objective of the sampler"):
        MometasTrainer(sampler=build_sampler("uniform", ["mlm", "dtd"]), collators=build_objectives(["mlm"], tokenizer),
                       **common)
    with pytest.raises(MometasInputError, match="^eval_dataset: the mometas sampler meta-tests every objective"):
        MometasTrainer(sampler=build_sampler("mometas", ["mlm", "dtd"], meta_length=2),
                       collators=objectives["collators"], **common)


@pytest.mark.parametrize("name", ["uniform", "gradient", "loss", "mometas", "fixed"])
def test_every_registered_sampler_runs_in_the_trainer(name, tokenizer, tmp_path):
    objectives = ["mlm", "cse", "dtd"]
    sampler = build_sampler(name, objectives, meta_length=3, seed=0, weights=[1, 1, 2] if name == "fixed" else None)
    data = sequences(tokenizer, 24)
    trainer = MometasTrainer(model=tiny_model(tokenizer, objectives), args=trainer_args(tmp_path, max_steps=6,
                             gradient_accumulation_steps=2), train_dataset=data, eval_dataset=data.select(range(8)),
                             processing_class=tokenizer, sampler=sampler, baseline_meta_test=True,
                             collators=build_objectives(objectives, tokenizer, max_length=32))
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "out" / "sampler_history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 3, 6] and all(row["val_loss"] for row in rows)
    assert [len(row["rollout"]) for row in rows] == [0, 3, 3]
    if name == "gradient":  # the encoder's gradient norm of each step reached the sampler
        drawn = {objectives.index(o) for row in rows for o in row["rollout"]}
        assert all(float(sampler.values[i]) > 0 for i in drawn)
    assert any(f"sampler/p_{objectives[0]}" in entry for entry in trainer.state.log_history)
    metrics = trainer.evaluate()
    assert set(metrics) >= {"eval_loss", *(f"eval_loss_{o}" for o in objectives)}
    assert metrics["eval_loss_mlm"] == pytest.approx(rows[-1]["val_loss"]["mlm"])  # the same fixed meta-test


def test_a_trainer_row_has_the_keys_and_values_of_a_script_row(tokenizer):
    from accelerate import Accelerator

    script = load_module(ROOT / "run_mometas_pretraining.py")
    objectives = ["mlm", "cse", "dtd"]
    sampler = build_sampler("mometas", objectives, meta_length=3, min_probability=0.01)
    sampler.update({"mlm": 5.0, "cse": 2.0, "dtd": 0.7})
    trackers = [StepTracker(objectives), StepTracker(objectives)]
    for loss in (4.0, 3.0, 2.0):
        objective = sampler.sample()
        for tracker in trackers:
            tracker.record(objective, loss, 100)
    val_losses = {"mlm": 4.5, "cse": 1.9, "dtd": 0.71}
    update = sampler.update(val_losses)
    accelerator = Accelerator(cpu=True)
    expected = script.write_history_row(accelerator, None, trackers[0], sampler, step=3, update=update,
                                        val_losses=val_losses, seconds=0.5, learning_rate=1e-4, started=0.0,
                                        with_tracking=False)
    row = history_row(sampler, trackers[1].close_window(accelerator), step=3, update=update, val_losses=val_losses,
                      seconds=0.5, elapsed=expected["elapsed_seconds"], learning_rate=1e-4, num_processes=1)
    assert list(row) == list(expected)
    assert row == expected


def test_the_readme_lines_work_in_an_existing_trainer_script(tiny_bert, tokenizer, tmp_path):
    """README's lines, as quoted, in what an MLM Trainer script already has: a tokenizer, TrainingArguments and
    datasets tokenized by the tokenizer (with attention_mask, token_type_ids and the text still there)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The sampler in your own Trainer or loop"):]
    start = section.index("```python\n") + len("```python\n")
    lines = section[start:section.index("```", start)]
    texts = [f"Paragraph {i} says that the sampler draws one objective per optimizer step." for i in range(16)]
    raw = datasets.Dataset.from_dict({"text": texts})
    tokenized = raw.map(lambda batch: tokenizer(batch["text"], truncation=True, max_length=32), batched=True)
    script = dict(model_name_or_path=tiny_bert, tokenizer=tokenizer, max_seq_length=32,
                  training_args=trainer_args(tmp_path, max_steps=3), train_dataset=tokenized,
                  eval_dataset=tokenized.select(range(4)))
    exec(compile(lines, "README.md", "exec"), script)
    rows = [json.loads(line) for line in (tmp_path / "out" / "sampler_history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 3] and rows[0]["sampler"] == "mometas"
    assert sum(rows[-1]["counts"].values()) == 3 and set(rows[0]["val_loss"]) == {"mlm", "cse", "atd", "dtd"}

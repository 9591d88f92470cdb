"""--head_warmup_steps: heads the checkpoint lacks train on a frozen encoder first; the sampler starts after."""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from mometas_utils.head_warmup import lacking_heads, phased_scheduler, split_param_groups
from test_pretraining import comparable, read_rows, run_script

WARM = ["--max_seq_length", "32", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
        "--objectives", "mlm,cse,dtd", "--sampler", "mometas", "--meta_length", "3", "--max_train_steps", "10",
        "--head_warmup_steps", "4", "--head_warmup_learning_rate", "1e-2", "--checkpointing_steps", "2", "--seed", "5"]


@pytest.fixture(scope="module")
def warm_run(tiny_bert, english_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("head_warmup") / "run"
    result = run_script(["--model_name_or_path", tiny_bert, "--train_file", english_corpus, *WARM, "--output_dir", out])
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def encoder_and_heads(folder):
    weights = load_file(str(folder / "model.safetensors"))
    return ({k: v for k, v in weights.items() if k.startswith("bert.")},
            {k: v for k, v in weights.items() if not k.startswith("bert.")})


def test_the_warm_up_trains_only_the_heads_then_the_sampler_starts(warm_run, tiny_bert):
    initial = load_file(str(next(p for p in __import__("pathlib").Path(tiny_bert).glob("*.safetensors"))))
    encoder4, heads4 = encoder_and_heads(warm_run / "step_4")
    encoder2, heads2 = encoder_and_heads(warm_run / "step_2")
    # The encoder is exactly the checkpoint's until the warm-up ends; the heads moved.
    for name, tensor in encoder4.items():
        assert torch.equal(tensor, initial[name.removeprefix("bert.")] if name.removeprefix("bert.") in initial
                           else initial[name]), name
    assert any(not torch.equal(heads2[k], heads4[k]) for k in heads4)
    encoder6, _ = encoder_and_heads(warm_run / "step_6")
    assert any(not torch.equal(encoder4[k], encoder6[k]) for k in encoder4)  # then everything trains

    rows = read_rows(warm_run)
    # No meta-test on random heads: the first row ends the warm-up and holds its baselines b_i.
    assert [row["step"] for row in rows] == [4, 7, 10]
    assert rows[0]["head_warmup_end"] is True and rows[0]["reward"] is None and rows[0]["val_loss"] is not None
    assert rows[0]["probabilities"] == {"mlm": 1 / 3, "cse": 1 / 3, "dtd": 1 / 3}
    assert len(rows[0]["rollout"]) == 4 and set(rows[0]["rollout"]) <= {"mlm", "cse", "dtd"}
    assert rows[1]["reward"] is not None and rows[1]["probabilities"] != rows[0]["probabilities"]
    assert "head_warmup_end" not in rows[1]
    # The run's schedule starts at the end of the warm-up: 6% warm-up of its 6 steps, then linear to 0.
    assert rows[1]["learning_rate"] == pytest.approx(5e-5 * (6 - 3) / (6 - 1))


@pytest.mark.parametrize("step", [2, 6])
def test_resume_is_exact_inside_and_after_the_warm_up(warm_run, tiny_bert, english_corpus, tmp_path, step):
    resumed = tmp_path / "run"
    resumed.mkdir()
    shutil.copytree(warm_run / f"step_{step}", resumed / f"step_{step}")
    shutil.copy(warm_run / "sampler_history.jsonl", resumed / "sampler_history.jsonl")
    result = run_script(["--model_name_or_path", tiny_bert, "--train_file", english_corpus, *WARM, "--output_dir",
                         resumed, "--resume_from_checkpoint", "latest"])
    assert result.returncode == 0, result.stderr[-4000:]
    assert comparable(read_rows(resumed)) == comparable(read_rows(warm_run))
    expected, got = load_file(warm_run / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_what_cannot_warm_up_is_a_one_line_error(warm_run, tiny_bert, english_corpus, tmp_path):
    base = ["--train_file", english_corpus, "--max_seq_length", "32", "--per_device_train_batch_size", "4",
            "--objectives", "mlm,cse,dtd", "--sampler", "uniform", "--max_train_steps", "4"]
    cases = [
        (["--model_name_or_path", tiny_bert, "--head_warmup_steps", "4"],
         "error: --head_warmup_steps: the head warm-up (4 steps) must leave steps to train the whole model; the run has 4"),
        (["--config_name", tiny_bert, "--tokenizer_name", tiny_bert, "--head_warmup_steps", "2"],
         "error: --head_warmup_steps warms up the heads a pretrained --model_name_or_path lacks; a model new from "
         "--config_name has no encoder worth freezing"),
        # The warm run's output holds every head of these objectives.
        (["--model_name_or_path", warm_run, "--head_warmup_steps", "2"],
         "error: --head_warmup_steps: the checkpoint already holds the head of every objective; there is nothing to "
         "warm up (leave it at 0)"),
        (["--model_name_or_path", tiny_bert, "--head_warmup_steps", "-1"], "error: --head_warmup_steps must be at least 0, got -1"),
    ]
    for i, (args, message) in enumerate(cases):
        done = run_script([*base, *args, "--output_dir", tmp_path / f"bad{i}"])
        assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == message, done.stderr[-2000:]


def test_lacking_heads_and_the_phased_schedule():
    heads = {"mlm": "mlm", "emlm": "mlm", "cse": "contrastive", "atd": "token_detection"}
    missing = ["cls.predictions.transform.dense.weight", "heads.atd.classifier.weight"]
    assert lacking_heads(heads, missing) == ["mlm", "emlm", "atd"]
    assert lacking_heads(heads, []) == []

    model = torch.nn.Module()
    model.bert = torch.nn.Linear(2, 2)
    model.cls = torch.nn.Linear(2, 2)
    groups = split_param_groups(model, [{"params": list(model.parameters()), "weight_decay": 0.1}])
    assert [g["head"] for g in groups] == [False, True] and all(g["weight_decay"] == 0.1 for g in groups)
    optimizer = torch.optim.AdamW(groups, lr=1e-4)
    scheduler = phased_scheduler(optimizer, lambda step: 1.0 - step / 10, warmup_steps=3, head_rate_factor=20.0)
    rates = []
    for step in range(1, 7):
        rates.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        if step != 2:  # step 2 was skipped: no update, no schedule step
            scheduler.step()
        if step == 3:
            scheduler.end_warmup()  # the loop's step 3 ends the warm-up, whatever the schedule counted
    assert rates[:3] == [[0.0, 2e-3]] * 3  # encoder 0, heads 20 x 1e-4
    assert rates[3] == pytest.approx([1e-4, 1e-4]) and rates[5] == pytest.approx([0.8e-4, 0.8e-4])
    # The phase change is in the state: a resumed schedule continues it; a state saved before it had
    # warmup_end ends the warm-up after warmup_steps schedule steps, as it did then.
    state = scheduler.state_dict()
    resumed = phased_scheduler(optimizer, lambda step: 1.0 - step / 10, warmup_steps=3, head_rate_factor=20.0)
    resumed.load_state_dict(state)
    assert resumed.warmup_end == 2 and resumed.get_last_lr() == pytest.approx(scheduler.get_last_lr())
    old = {k: v for k, v in state.items() if k != "warmup_end"}
    legacy = phased_scheduler(optimizer, lambda step: 1.0 - step / 10, warmup_steps=3, head_rate_factor=20.0)
    legacy.load_state_dict(old)
    assert legacy.warmup_end == 3

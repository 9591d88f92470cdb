"""run_multiple_choice.py: real fine-tuning on a DREAM slice, plus logic tests on a tiny random BERT.

The end-to-end test requires a dev accuracy well above the majority-class baseline (always
picking the most frequent answer position) computed from the same dev questions.
"""

import json
import shutil
from collections import Counter

import pytest

from finetune_helpers import (
    assert_input_error,
    assert_ok,
    load_weights,
    minilm_path,
    read_results,
    require_data,
    run_script,
    tiny_ft_model,  # noqa: F401  (fixture)
    write_anli_jsonl,
    write_dream_json,
)

import run_multiple_choice  # noqa: E402
from mometas_utils import finetune_data as fd
from mometas_utils.errors import MometasInputError


@pytest.mark.slow
@pytest.mark.data
def test_dream_end_to_end(tmp_path):
    train, dev = require_data("dream/train.json", "dream/dev.json")
    proc = run_script(
        "run_multiple_choice.py", "--model_name_or_path", minilm_path(), "--train_file", train,
        "--validation_file", dev, "--max_eval_samples", "300",
        "--max_length", "64", "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "50",
        "--learning_rate", "1e-4", "--warmup_ratio", "0.1", "--num_train_epochs", "2",
        "--output_dir", tmp_path / "out",
    )  # fmt: skip
    assert_ok(proc)
    results = read_results(tmp_path / "out")
    _, records = fd.read_multiple_choice(str(dev), "validation")
    labels = [r["label"] for r in records[:300]]
    majority = Counter(labels).most_common(1)[0][1] / len(labels)
    # DREAM is slow to learn for a 6-layer MiniLM: 0.42 against 0.37 after these 252 updates
    # (and 0.38 on the whole dev set after 2 epochs of --hparams paper); the bar is 3 points up.
    assert results["eval_accuracy"] >= majority + 0.03, (results, majority)
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions_validation.jsonl").read_text().splitlines()]
    assert len(rows) == 300 and rows[0]["idx"] == "14-349-0" and rows[0]["label"] == 1


# ------------------------------------------------------------------------------------------------
# Logic on a tiny random BERT
# ------------------------------------------------------------------------------------------------
def tiny_args(model, train, dev, out, *extra):
    return [
        "--model_name_or_path", model, "--train_file", str(train), "--validation_file", str(dev),
        "--output_dir", str(out), "--max_length", "24", "--per_device_train_batch_size", "2",
        "--gradient_accumulation_steps", "2", "--num_train_epochs", "2", "--learning_rate", "1e-3", *map(str, extra),
    ]  # fmt: skip


def test_resume_matches_uninterrupted_run(tiny_ft_model, tmp_path):
    train = write_dream_json(tmp_path / "train.json", 9)  # 5 batches = 3 updates per epoch
    dev = write_dream_json(tmp_path / "dev.json", 3)
    full = tmp_path / "full"
    run_multiple_choice.main(tiny_args(tiny_ft_model, train, dev, full, "--checkpointing_steps", "2"))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "step_2", resumed / "step_2")  # mid epoch 0
    run_multiple_choice.main(tiny_args(tiny_ft_model, train, dev, resumed, "--resume_from_checkpoint", "latest"))
    a, b = load_weights(full), load_weights(resumed)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert read_results(full) == read_results(resumed)


def test_anli_two_choices_and_predictions(tiny_ft_model, tmp_path):
    train = write_anli_jsonl(tmp_path / "train.jsonl", 6)
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"observation_1": "a", "observation_2": "b", "hypothesis_1": "c", "hypothesis_2": "d"}) + "\n")
    out = tmp_path / "out"
    run_multiple_choice.main(tiny_args(tiny_ft_model, train, train, out, "--test_file", test, "--hparams", "paper",
                                       "--max_train_steps", "1"))  # fmt: skip
    saved = json.loads((out / "training_args.json").read_text())
    assert (saved["per_device_train_batch_size"], saved["learning_rate"]) == (2, 1e-3)  # explicit flags win
    assert (saved["warmup_ratio"], saved["weight_decay"]) == (0.06, 0.01)  # Table 7, αNLI
    rows = [json.loads(x) for x in (out / "predictions_validation.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["prediction"] in (0, 1) and r["prediction_label"] == r["prediction"] + 1 for r in rows)
    test_rows = [json.loads(x) for x in (out / "predictions_test.jsonl").read_text().splitlines()]
    assert len(test_rows) == 1 and test_rows[0]["label"] is None
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForMultipleChoice"]


def test_number_of_choices_comes_from_the_data(tiny_ft_model, tmp_path):
    swag = tmp_path / "swag.csv"
    lines = ["video-id,fold-ind,startphrase,sent1,sent2,gold-source,ending0,ending1,ending2,ending3,ending4,label"]
    lines += [f"v{i},{i},x,the man,he,gold,runs,sleeps,is red,is blue,visited paris,{i % 5}" for i in range(6)]
    swag.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    run_multiple_choice.main(tiny_args(tiny_ft_model, swag, swag, out, "--max_train_steps", "1"))
    assert (out / "predictions_validation.jsonl").is_file()
    assert "eval_accuracy" in read_results(out)
    with pytest.raises(MometasInputError, match="DREAM and αNLI only"):
        run_multiple_choice.main(tiny_args(tiny_ft_model, swag, swag, tmp_path / "o2", "--hparams", "paper"))


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------
def test_answer_not_among_choices_cli(tiny_ft_model, tmp_path):
    bad = tmp_path / "dream.json"
    bad.write_text(json.dumps([[["M: hi"], [{"question": "q?", "choice": ["a", "b", "c"], "answer": "z"}], "4-2"]]))
    proc = run_script("run_multiple_choice.py", "--model_name_or_path", tiny_ft_model, "--train_file", bad)
    assert_input_error(proc, str(bad), "dialogue '4-2'", "answer 'z' is not one of the choices")


def test_bad_anli_label_and_mixed_choices(tiny_ft_model, tmp_path):
    bad = tmp_path / "anli.jsonl"
    bad.write_text(json.dumps({"observation_1": "a", "observation_2": "b", "hypothesis_1": "c", "hypothesis_2": "d", "label": "3"}) + "\n")
    with pytest.raises(MometasInputError, match=r"anli.jsonl: line 1: unknown label '3'; expected 1 or 2"):
        run_multiple_choice.main(["--model_name_or_path", tiny_ft_model, "--train_file", str(bad)])
    swag = tmp_path / "swag.csv"
    swag.write_text("sent1,sent2,ending0,ending1,label\na,b,c,d,7\n")
    with pytest.raises(MometasInputError, match=r"swag.csv: line 2: unknown label '7'; expected 0..1"):
        run_multiple_choice.main(["--model_name_or_path", tiny_ft_model, "--train_file", str(swag)])
    swag.write_text("sent1,sent2,ending0,ending1,label\na,b,c,d,1\n")
    dream = write_dream_json(tmp_path / "dream.json", 2)
    with pytest.raises(MometasInputError, match="different formats"):
        run_multiple_choice.main(["--model_name_or_path", tiny_ft_model, "--train_file", str(dream), "--validation_file", str(swag)])

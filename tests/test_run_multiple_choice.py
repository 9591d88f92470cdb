"""run_multiple_choice.py: real fine-tuning on a DREAM slice, plus logic tests on a tiny random BERT.

The end-to-end test requires a dev accuracy well above the majority-class baseline (always
picking the most frequent answer position) computed from the same dev questions.
"""

import json
from collections import Counter
from types import SimpleNamespace

import pytest

from finetune_helpers import (
    assert_ok,
    build_argv,
    common_bad_inputs,
    make_tiny_bert,
    minilm_path,
    one_error_line,
    read_results,
    require_data,
    run_main,
    run_script,
    write_anli_jsonl,
    write_dream_json,
)

import run_multiple_choice  # noqa: E402  (finetune_helpers puts the repo root on sys.path)


@pytest.fixture(scope="module")
def tiny_ft_model(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_ft_model"))


def read_examples(path):
    args, _ = run_multiple_choice.parse_args(["--model_name_or_path", "m", "--validation_file", str(path)])
    fmt, splits = run_multiple_choice.load_splits(args)
    return fmt, splits["validation"].examples


@pytest.mark.slow
@pytest.mark.data
def test_dream_end_to_end(tmp_path):
    """DREAM's JSON through the whole script and its predictions file; the learning run is below."""
    train, dev = require_data("dream/train.json", "dream/dev.json")
    proc = run_script(
        "run_multiple_choice.py", "--model_name_or_path", minilm_path(), "--train_file", train,
        "--validation_file", dev, "--max_train_samples", "48", "--max_eval_samples", "30",
        "--max_seq_length", "64", "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "30",
        "--num_train_epochs", "1", "--output_dir", tmp_path / "out",
    )  # fmt: skip
    assert_ok(proc)
    results = read_results(tmp_path / "out")
    assert 0.0 <= results["eval_accuracy"] <= 1.0
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions_validation.jsonl").read_text().splitlines()]
    _, examples = read_examples(dev)
    assert len(rows) == 30 and [r["idx"] for r in rows] == [e["idx"] for e in examples[:30]]
    assert all(r["label"] == e["label"] and 0 <= r["prediction"] < 3 for r, e in zip(rows, examples))


@pytest.mark.long
@pytest.mark.slow
@pytest.mark.data
def test_dream_learns(tmp_path):
    train, dev = require_data("dream/train.json", "dream/dev.json")
    proc = run_script(
        "run_multiple_choice.py", "--model_name_or_path", minilm_path(), "--train_file", train,
        "--validation_file", dev, "--max_eval_samples", "300",
        "--max_seq_length", "64", "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "50",
        "--learning_rate", "1e-4", "--warmup_ratio", "0.1", "--num_train_epochs", "2",
        "--output_dir", tmp_path / "out",
    )  # fmt: skip
    assert_ok(proc)
    results = read_results(tmp_path / "out")
    _, examples = read_examples(dev)
    labels = [e["label"] for e in examples[:300]]
    majority = Counter(labels).most_common(1)[0][1] / len(labels)
    # DREAM is slow to learn for a 6-layer MiniLM: 0.42 against 0.37 after these 252 updates
    # (and 0.38 on the whole dev set after 2 epochs of --hparams paper); the bar is 3 points up.
    assert results["eval_accuracy"] >= majority + 0.03, (results, majority)
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions_validation.jsonl").read_text().splitlines()]
    assert len(rows) == 300 and rows[0]["idx"] == "14-349-0" and rows[0]["label"] == 1


@pytest.mark.data
def test_dream_and_anli_readers_on_the_shared_data():
    dream, anli = require_data("dream/dev.json", "anli/art_validation_subset.jsonl")
    fmt, examples = read_examples(dream)
    assert fmt == "dream" and len(examples) == 502 and all(len(e["first"]) == 3 for e in examples)
    assert examples[0]["label"] == 1 and examples[0]["first"][0].startswith("M: How long have you been teaching")
    fmt, examples = read_examples(anli)
    assert fmt == "anli" and len(examples) == 58 and {e["label"] for e in examples} == {0, 1}
    assert examples[0]["second"][1].startswith("Quinton could not find another apartment")


# ------------------------------------------------------------------------------------------------
# Logic on a tiny random BERT
# ------------------------------------------------------------------------------------------------
def tiny_args(model, train, dev, out, *extra):
    return [
        "--model_name_or_path", model, "--train_file", str(train), "--validation_file", str(dev),
        "--output_dir", str(out), "--max_length", "24", "--per_device_train_batch_size", "2",
        "--num_train_epochs", "1", "--learning_rate", "1e-3", *map(str, extra),
    ]  # fmt: skip


def test_anli_two_choices_paper_settings_and_predictions(tiny_ft_model, tmp_path):
    train = write_anli_jsonl(tmp_path / "train.jsonl", 6)
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"observation_1": "a", "observation_2": "b", "hypothesis_1": "c", "hypothesis_2": "d"}) + "\n")
    out = tmp_path / "out"
    run_multiple_choice.main(tiny_args(tiny_ft_model, train, train, out, "--test_file", test, "--hparams", "paper",
                                       "--max_train_steps", "1"))  # fmt: skip
    saved = json.loads((out / "training_args.json").read_text())
    assert (saved["per_device_train_batch_size"], saved["learning_rate"]) == (2, 1e-3)  # typed flags win
    assert (saved["warmup_ratio"], saved["weight_decay"]) == (0.06, 0.01)  # Table 7, αNLI
    rows = [json.loads(x) for x in (out / "predictions_validation.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["prediction"] in (0, 1) and r["prediction_label"] == r["prediction"] + 1 for r in rows)
    test_rows = [json.loads(x) for x in (out / "predictions_test.jsonl").read_text().splitlines()]
    assert len(test_rows) == 1 and test_rows[0]["label"] is None
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForMultipleChoice"]
    card = (out / "README.md").read_text()
    assert "pipeline_tag: multiple-choice" in card and "allenai/art" in card and str(tmp_path) not in card


def test_number_of_choices_comes_from_the_data(tiny_ft_model, tmp_path):
    swag = tmp_path / "swag.csv"
    lines = ["video-id,fold-ind,startphrase,sent1,sent2,gold-source,ending0,ending1,ending2,ending3,ending4,label"]
    lines += [f"v{i},{i},x,the man,he,gold,runs,sleeps,is red,is blue,visited paris,{i % 5}" for i in range(6)]
    swag.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    run_multiple_choice.main(tiny_args(tiny_ft_model, swag, swag, out, "--max_train_steps", "1"))
    rows = [json.loads(x) for x in (out / "predictions_validation.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == [0, 1, 2, 3, 4, 0] and all(0 <= r["prediction"] < 5 for r in rows)
    assert "eval_accuracy" in read_results(out)


# ------------------------------------------------------------------------------------------------
# The table of bad inputs: exit code 2, one line "error: ...", no traceback
# ------------------------------------------------------------------------------------------------
def mc_bad_inputs():
    def write(ctx, name, text):
        (ctx.tmp / name).write_text(text)
        return ctx.tmp / name

    def anli(label):
        return json.dumps({"observation_1": "a", "observation_2": "b", "hypothesis_1": "c", "hypothesis_2": "d", "label": label}) + "\n"

    dream_bad_answer = json.dumps([[["M: hi"], [{"question": "q?", "choice": ["a", "b", "c"], "answer": "z"}], "4-2"]])
    return [
        ("answer_not_among_choices", lambda c: (["--train_file", write(c, "d.json", dream_bad_answer)],
                                                ["d.json", "dialogue '4-2'", "answer 'z' is not one of the choices"])),
        ("dream_item_malformed", lambda c: (["--train_file", write(c, "m.json", '[["turns only"]]')], ["m.json", "dialogue 1"])),
        ("dream_without_answer", lambda c: (["--train_file", write(c, "a.json", json.dumps([[["M: hi"], [{"question": "q?", "choice": ["a", "b"]}]]]))],
                                            ["a.json", "missing 'answer'"])),
        ("anli_label_3", lambda c: (["--train_file", write(c, "l.jsonl", anli(3))], ["l.jsonl", "line 1", "unknown label 3", "1 or 2"])),
        ("anli_missing_label", lambda c: (["--train_file", write(c, "n.jsonl", anli(None))], ["n.jsonl", "line 1", "missing label"])),
        ("anli_missing_hypothesis", lambda c: (["--train_file", write(c, "h.jsonl", '{"observation_1": "a", "observation_2": "b", "label": 1}\n')],
                                               ["h.jsonl", "hypothesis_1"])),
        ("swag_label_out_of_range", lambda c: (["--train_file", write(c, "s.csv", "sent1,sent2,ending0,ending1,label\na,b,c,d,7\n")],
                                               ["s.csv", "row 1", "unknown label 7", "0..1"])),
        ("swag_one_ending", lambda c: (["--train_file", write(c, "o.csv", "sent1,sent2,ending0,label\na,b,c,0\n")], ["o.csv", "ending0..endingN"])),
        ("unknown_columns", lambda c: (["--train_file", write(c, "q.jsonl", '{"question": "a"}\n')], ["q.jsonl", "cannot tell the format"])),
        ("mixed_formats", lambda c: (["--validation_file", write(c, "v.jsonl", anli(1))], ["different formats", "dream", "anli"])),
        ("different_choice_counts", lambda c: (["--train_file", write(c, "c.json", json.dumps([
            [["M: hi"], [{"question": "q?", "choice": ["a", "b", "c"], "answer": "a"}], "1"],
            [["M: hi"], [{"question": "q?", "choice": ["a", "b"], "answer": "a"}], "2"]]))], ["c.json", "2 choices", "same number"])),
        ("format_flag_contradicts_file", lambda c: (["--dataset_format", "anli"], ["DREAM JSON", "--dataset_format anli"])),
        ("format_unknown", lambda c: (["--dataset_format", "race"], ["--dataset_format", "race"])),
        ("hparams_paper_for_swag", lambda c: (["--hparams", "paper", "--train_file", write(c, "p.csv", "sent1,sent2,ending0,ending1,label\na,b,c,d,1\n")],
                                              ["--hparams paper", "DREAM and αNLI only", "swag"])),
        ("json_invalid", lambda c: (["--train_file", write(c, "j.json", '[[["M: hi"], [')], ["j.json", "not valid JSON"])),
        ("no_data", lambda c: (["--train_file", None, "--validation_file", None], ["--train_file", "--dataset_name"])),
        ("dataset_offline", lambda c: (["--train_file", None, "--validation_file", None, "--dataset_name", "allenai/swag"],
                                       ["--dataset_name allenai/swag", "cannot load"])),
    ]


BAD_INPUTS = common_bad_inputs() + mc_bad_inputs()


def mc_base_argv(model, train, out):
    return ["--model_name_or_path", model, "--train_file", train, "--validation_file", train, "--output_dir", out,
            "--max_length", "24", "--per_device_train_batch_size", "2", "--max_train_steps", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def mc_ctx(tmp_path_factory, tiny_ft_model):
    base = tmp_path_factory.mktemp("mc_base")
    train = write_dream_json(base / "train.json", 4)
    finished = {}

    def finished_run():
        if not finished:
            folder = base / "finished"
            code, err = run_main(run_multiple_choice.main, mc_base_argv(tiny_ft_model, train, folder) + ["--checkpointing_steps", "1"])
            assert code == 0, err
            finished["path"] = folder
        return finished["path"]

    return SimpleNamespace(model=tiny_ft_model, train=train, finished_run=finished_run)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_table(case, mc_ctx, tmp_path):
    _, setup = case
    ctx = SimpleNamespace(**vars(mc_ctx), tmp=tmp_path, out=tmp_path / "out")
    extra, fragments = setup(ctx)
    code, err = run_main(run_multiple_choice.main, build_argv(mc_base_argv(ctx.model, ctx.train, ctx.out), extra))
    one_error_line(code, err, *map(str, fragments))
    assert "hf_SecretToken000" not in err


def test_bad_input_through_the_command_line(tiny_ft_model, tmp_path):
    bad = tmp_path / "dream.json"
    bad.write_text(json.dumps([[["M: hi"], [{"question": "q?", "choice": ["a", "b", "c"], "answer": "z"}], "4-2"]]))
    proc = run_script("run_multiple_choice.py", "--model_name_or_path", tiny_ft_model, "--train_file", bad)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [x for x in proc.stderr.splitlines() if x.startswith("error: ")] == [
        f"error: --train_file {bad}: dialogue '4-2': answer 'z' is not one of the choices ['a', 'b', 'c']"
    ]

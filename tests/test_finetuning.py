"""Unit tests of the fine-tuning plumbing (mometas_utils/finetuning.py) and readers (finetune_data.py).

No model is trained here; the readers are also checked on the real shared/data files.
"""

import argparse
import json
import os
from pathlib import Path
from unittest import mock

import pytest

from finetune_helpers import data_dir, require_data
from mometas_utils import finetune_data as fd
from mometas_utils import finetuning as ft
from mometas_utils.errors import MometasInputError


def make_parser():
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--task_name")
    ft.add_common_arguments(parser)
    return parser


BASE = ["--model_name_or_path", "m"]


# ----------------------------------------------------------------------------- --hparams paper
def test_paper_table_matches_table7_and_albert():
    t = ft.PAPER_HPARAMS
    # Table 7 (columns MNLI SICK QQP STS-B CoNLL WNUT DREAM aNLI)
    assert [t[k]["batch_size"] for k in ("mnli", "sick", "qqp", "stsb", "conll2003", "wnut17", "dream", "anli")] == [
        128, 32, 128, 16, 32, 16, 16, 64,
    ]
    assert [t[k]["learning_rate"] for k in ("mnli", "sick", "qqp", "stsb", "conll2003", "wnut17", "dream", "anli")] == [
        3e-5, 5e-5, 5e-5, 5e-5, 5e-5, 5e-5, 3e-5, 5e-5,
    ]
    assert t["wnut17"]["max_length"] == 64 and t["conll2003"]["warmup_ratio"] == 0.1
    assert [t[k]["num_train_epochs"] for k in ("mnli", "sick", "qqp", "stsb", "conll2003", "wnut17", "dream", "anli")] == [
        3, 3, 3, 10, 3, 5, 6, 3,
    ]
    # ALBERT's lr / batch size, 3 epochs (10 for RTE), warmup 0.06
    assert {k: (t[k]["learning_rate"], t[k]["batch_size"]) for k in ("cola", "sst2", "mrpc", "qnli", "rte")} == {
        "cola": (1e-5, 16), "sst2": (1e-5, 32), "mrpc": (2e-5, 32), "qnli": (1e-5, 32), "rte": (3e-5, 32),
    }
    assert t["rte"]["num_train_epochs"] == 10 and t["cola"]["num_train_epochs"] == 3
    assert t["paws_qqp"] == t["qqp"]


def test_paper_hparams_fill_in_but_explicit_flags_win():
    parser = make_parser()
    args = ft.parse_args_tracking_explicit(parser, BASE + ["--hparams", "paper", "--learning_rate=7e-5", "--num_train_epochs", "1"])
    applied = ft.apply_paper_hparams(args, "stsb")
    assert args.learning_rate == 7e-5 and args.num_train_epochs == 1  # explicit
    assert args.per_device_train_batch_size == 16 and args.warmup_ratio == 0.06 and args.weight_decay == 0.01
    assert args.max_length == 128
    assert "learning_rate" not in applied and applied["per_device_train_batch_size"] == 16


def test_paper_batch_size_is_a_total_batch_size():
    args = ft.parse_args_tracking_explicit(make_parser(), BASE + ["--hparams", "paper", "--gradient_accumulation_steps", "2"])
    ft.apply_paper_hparams(args, "mnli", num_processes=4)
    assert args.per_device_train_batch_size == 16  # 128 / (4 processes x 2 accumulation steps)


def test_paper_hparams_unknown_task_and_default_is_off():
    args = ft.parse_args_tracking_explicit(make_parser(), BASE + ["--hparams", "paper"])
    with pytest.raises(MometasInputError, match="no paper settings"):
        ft.apply_paper_hparams(args, "swag")
    args = ft.parse_args_tracking_explicit(make_parser(), BASE)
    assert ft.apply_paper_hparams(args, "rte") == {} and args.learning_rate == 5e-5


def test_warmup_ratio_and_steps():
    args = ft.parse_args_tracking_explicit(make_parser(), BASE + ["--warmup_ratio", "0.1"])
    assert ft.warmup_steps(args, 95) == 10
    args.num_warmup_steps = 3
    assert ft.warmup_steps(args, 95) == 3


@pytest.mark.parametrize("value,expected", [("epoch", "epoch"), ("10", 10), (None, None)])
def test_checkpointing_steps(value, expected):
    assert ft.parse_checkpointing_steps(value) == expected


@pytest.mark.parametrize("value", ["abc", "0", "-3"])
def test_checkpointing_steps_bad(value):
    with pytest.raises(MometasInputError, match="--checkpointing_steps"):
        ft.parse_checkpointing_steps(value)


def test_validate_common_args_names_the_flag(tmp_path):
    args = ft.parse_args_tracking_explicit(make_parser(), BASE + ["--train_file", str(tmp_path / "nope.tsv")])
    with pytest.raises(MometasInputError, match="--train_file: no such file"):
        ft.validate_common_args(args)
    args = ft.parse_args_tracking_explicit(make_parser(), BASE + ["--checkpointing_steps", "5"])
    with pytest.raises(MometasInputError, match="needs --output_dir"):
        ft.validate_common_args(args)


# ----------------------------------------------------------------------------- checkpoints
class FakeAccelerator:
    is_main_process = True

    def __init__(self, crash=False):
        self.crash = crash

    def wait_for_everyone(self):
        pass

    def save_state(self, folder):
        os.makedirs(folder, exist_ok=True)
        Path(folder, "model.safetensors").write_text("weights")
        if self.crash:
            raise KeyboardInterrupt("killed while saving")
        Path(folder, "optimizer.bin").write_text("optimizer")


def test_checkpoint_save_is_atomic(tmp_path):
    out = tmp_path / "out"
    ft.save_checkpoint(FakeAccelerator(), str(out), "step_2", completed_steps=2, num_update_steps_per_epoch=4)
    with pytest.raises(KeyboardInterrupt):
        ft.save_checkpoint(FakeAccelerator(crash=True), str(out), "step_4", completed_steps=4, num_update_steps_per_epoch=4)
    # The killed save left only a temp folder; the earlier checkpoint is intact and is "latest".
    assert not (out / "step_4").exists() and (out / ".tmp_step_4").exists()
    assert (out / "step_2" / "optimizer.bin").read_text() == "optimizer"
    assert ft.resolve_resume_checkpoint("latest", str(out)) == str(out / "step_2")
    # The next save cleans the temp folder up; saving the same name again replaces it whole.
    ft.save_checkpoint(FakeAccelerator(), str(out), "step_4", completed_steps=4, num_update_steps_per_epoch=4)
    ft.save_checkpoint(FakeAccelerator(), str(out), "step_4", completed_steps=4, num_update_steps_per_epoch=4)
    assert sorted(p.name for p in out.iterdir()) == ["step_2", "step_4"]
    assert ft.resolve_resume_checkpoint("latest", str(out)) == str(out / "step_4")
    marker = json.loads((out / "step_4" / ft.CHECKPOINT_MARKER).read_text())
    assert marker["completed_steps"] == 4


def test_latest_prefers_most_steps_and_starts_fresh_without_checkpoints(tmp_path):
    assert ft.resolve_resume_checkpoint("latest", str(tmp_path)) is None
    for name, steps in [("step_10", 10), ("epoch_0", 4), ("step_9", 9)]:
        ft.save_checkpoint(FakeAccelerator(), str(tmp_path), name, completed_steps=steps, num_update_steps_per_epoch=4)
    assert ft.resolve_resume_checkpoint("latest", str(tmp_path)).endswith("step_10")


def test_resume_bad_path(tmp_path):
    with pytest.raises(MometasInputError, match="--resume_from_checkpoint: no such checkpoint"):
        ft.resolve_resume_checkpoint(str(tmp_path / "missing"), None)
    (tmp_path / "random").mkdir()
    with pytest.raises(MometasInputError, match="is not a checkpoint"):
        ft.resolve_resume_checkpoint(str(tmp_path / "random"), None)


def test_resume_position(tmp_path):
    ft.save_checkpoint(FakeAccelerator(), str(tmp_path), "step_6", completed_steps=6, num_update_steps_per_epoch=4)
    # 6 updates of 4 per epoch: epoch 1, after 2 updates = 4 batches with accumulation 2
    assert ft.resume_position(str(tmp_path / "step_6"), 4, 2) == (6, 1, 4)
    with pytest.raises(MometasInputError, match="updates per epoch"):
        ft.resume_position(str(tmp_path / "step_6"), 5, 2)
    # Plain no_trainer checkpoints (no marker): epoch_N is the end of epoch N.
    (tmp_path / "epoch_1").mkdir()
    assert ft.resume_position(str(tmp_path / "epoch_1"), 4, 1) == (8, 2, 0)


# ----------------------------------------------------------------------------- secrets, hub, errors
def test_hub_token_never_in_config(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    args = ft.parse_args_tracking_explicit(make_parser(), BASE + ["--hub_token", "hf_SECRET123"])
    token = ft.pop_hub_token(args)
    assert token == "hf_SECRET123" and args.hub_token is None
    config = ft.safe_config(args, [token])
    assert "hf_SECRET123" not in json.dumps(config) and "hub_token" not in config
    monkeypatch.setenv("HF_TOKEN", "hf_FROMENV")
    args = ft.parse_args_tracking_explicit(make_parser(), BASE)
    assert ft.pop_hub_token(args) == "hf_FROMENV"
    args.tokenizer_name = "hf_FROMENV"  # a secret that ended up in another field is dropped too
    assert "hf_FROMENV" not in json.dumps(ft.safe_config(args))


def test_push_to_hub_skips_checkpoints(tmp_path):
    with mock.patch("huggingface_hub.HfApi") as api_cls:
        api = api_cls.return_value
        api.create_repo.return_value.repo_id = "me/my-model"
        ft.push_to_hub(str(tmp_path), None, "hf_tok")
    api.create_repo.assert_called_once_with(tmp_path.name, exist_ok=True, token="hf_tok")
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["repo_id"] == "me/my-model" and kwargs["folder_path"] == str(tmp_path) and kwargs["token"] == "hf_tok"
    assert {"step_*", "epoch_*", ".tmp_*"} <= set(kwargs["ignore_patterns"])


def test_run_main_prints_one_line_and_exits_2(capsys):
    def main(argv):
        raise MometasInputError("--train_file x.tsv: expected\ncolumns a, b")

    with pytest.raises(SystemExit) as exc:
        ft.run_main(main, [])
    assert exc.value.code == 2
    assert capsys.readouterr().err == "error: --train_file x.tsv: expected columns a, b\n"


# ----------------------------------------------------------------------------- metrics
def test_metrics():
    import numpy as np

    m = ft.classification_metrics(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]), f1=True, matthews=True)
    assert m["accuracy"] == 0.75 and abs(m["f1"] - 2 / 3) < 1e-9 and m["matthews_correlation"] > 0
    r = ft.regression_metrics([1.0, 2.0, 3.0], [1.1, 2.1, 2.9])
    assert r["pearson"] > 0.99 and r["spearmanr"] == 1.0
    assert ft.regression_metrics([2.0, 2.0, 2.0], [1.0, 2.0, 3.0])["pearson"] == 0.0  # constant prediction
    assert ft.prefixed({"accuracy": 1.0}) == {"eval_accuracy": 1.0}


# ----------------------------------------------------------------------------- readers on the real files
GLUE_FILES = {
    "cola": ("glue/cola/train.tsv", "glue/cola/dev.tsv"),
    "sst2": ("glue/sst2/train.tsv", "glue/sst2/dev.tsv"),
    "mrpc": ("glue/mrpc/train.tsv", "glue/mrpc/dev.tsv"),
    "stsb": ("glue/stsb/train.tsv", "glue/stsb/dev.tsv"),
    "rte": ("glue/rte/train.tsv", "glue/rte/dev.tsv"),
    "qnli": ("glue/qnli/train_from_glue_dev.tsv", "glue/qnli/dev.tsv"),
    "sick": ("sick/SICK_train_subset.txt", "sick/SICK_trial.txt"),
}


@pytest.mark.data
@pytest.mark.parametrize("task_name", sorted(GLUE_FILES))
def test_glue_readers_detect_columns_in_shared_data(task_name):
    train, dev = require_data(*GLUE_FILES[task_name])
    task = fd.get_glue_task(task_name)
    for path in (train, dev):
        records = fd.read_glue_file(str(path), task, "validation")
        labels = fd.encode_glue_labels(records, task, fd.glue_label_list(task, records), str(path))
        assert len(records) >= 270 and all(r["sentence1"] for r in records)
        assert (records[0]["sentence2"] is None) == (task.sentence2 is None)
        if task.is_regression:
            assert all(0.0 <= y <= 5.0 for y in labels)
        else:
            assert set(labels) == set(range(len(task.label_values)))
    first = fd.read_glue_file(str(train), task, "train")[0]
    expected_first = {
        "cola": ("One more pseudo generalization", "1"),  # no header: columns by position
        "sst2": ("are more deeply thought through", "1"),  # label first
        "mrpc": ("Amrozi accused his brother", "1"),
        "sick": ("A group of kids is playing", "NEUTRAL"),
    }.get(task_name)
    if expected_first:
        assert first["sentence1"].startswith(expected_first[0]) and first["label"] == expected_first[1]


@pytest.mark.data
def test_mrpc_quotes_are_kept_verbatim():
    (dev,) = require_data("glue/mrpc/dev.tsv")
    records = fd.read_glue_file(str(dev), fd.get_glue_task("mrpc"), "validation")
    assert len(records) == 408  # QUOTE_NONE: a stray '"' does not swallow lines
    assert records[0]["sentence2"].startswith('"The foodservice pie business')


def test_glue_wrong_columns_and_unknown_label(tmp_path):
    rte = fd.get_glue_task("rte")
    bad = tmp_path / "bad.tsv"
    bad.write_text("index\tpremise_text\tlabel\n0\ta\tentailment\n")
    with pytest.raises(MometasInputError) as err:
        fd.read_glue_file(str(bad), rte, "train")
    assert str(bad) in str(err.value) and "'sentence1'" in str(err.value) and "\n" not in str(err.value)
    labels = tmp_path / "labels.tsv"
    labels.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\tmaybe\n")
    records = fd.read_glue_file(str(labels), rte, "train")
    with pytest.raises(MometasInputError, match=r"labels.tsv: line 3: unknown label 'maybe'; expected one of entailment, not_entailment"):
        fd.encode_glue_labels(records, rte, fd.glue_label_list(rte, records), str(labels))
    with pytest.raises(MometasInputError, match="--task_name 'wnli' is not one of: cola, sst2"):
        fd.get_glue_task("wnli")


def test_glue_column_overrides_csv_json_and_test_without_labels(tmp_path):
    sst2 = fd.get_glue_task("sst2")
    odd = tmp_path / "odd.tsv"
    odd.write_text("id\treview\tstars\n0\tgood movie\t1\n1\tbad movie\t0\n")
    records = fd.read_glue_file(str(odd), sst2, "train", fd.ColumnKeys(sentence1="review", label="stars"))
    assert [(r["sentence1"], r["label"]) for r in records] == [("good movie", "1"), ("bad movie", "0")]
    csv_file = tmp_path / "x.csv"
    csv_file.write_text('premise,hypothesis,label\n"a, b",c,neutral\n')
    records = fd.read_glue_file(str(csv_file), fd.get_glue_task("mnli"), "train")
    assert records[0]["sentence1"] == "a, b" and records[0]["label"] == "neutral"
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text('{"sentence1": "a", "sentence2": "b", "label": 1}\n')
    records = fd.read_glue_file(str(jsonl), fd.get_glue_task("rte"), "train")
    assert fd.encode_glue_labels(records, fd.get_glue_task("rte"), ["entailment", "not_entailment"], "x") == [1]
    test = tmp_path / "test.tsv"
    test.write_text("index\tsentence\n0\tgood\n")
    assert fd.read_glue_file(str(test), sst2, "test")[0]["label"] is None
    paws = tmp_path / "paws.tsv"
    paws.write_text("id\tsentence1\tsentence2\tlabel\n1\tb'How do I go?'\tb\"Where do I go?\"\t0\n")
    record = fd.read_glue_file(str(paws), fd.get_glue_task("paws_qqp"), "validation")[0]
    assert (record["sentence1"], record["sentence2"]) == ("How do I go?", "Where do I go?")


def test_generic_files_without_task(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("text,label\nx,pos\ny,neg\nz,pos\n")
    records = fd.read_glue_file(str(f), None, "train")
    assert fd.glue_label_list(None, records) == ["neg", "pos"]
    f.write_text("a,b,label\nx,y,0.5\nz,w,1.25\n")
    records = fd.read_glue_file(str(f), None, "train")
    assert records[0]["sentence2"] == "y" and fd.glue_label_list(None, records) is None  # regression


@pytest.mark.data
def test_conll_and_wnut_readers():
    conll, wnut = require_data("conll2003/train.txt", "wnut17/train.conll")
    sentences = fd.read_conll(str(conll), "train")
    assert len(sentences) == 2000 and sentences[0]["tokens"][:2] == ["EU", "rejects"]
    assert sentences[0]["tags"][:3] == ["B-ORG", "O", "B-MISC"]
    assert fd.guess_ner_paper_task(fd.ner_label_list(sentences)) == "conll2003"
    sentences = fd.read_conll(str(wnut), "train")
    assert len(sentences) == 2000 and fd.guess_ner_paper_task(fd.ner_label_list(sentences)) == "wnut17"


def test_conll_errors(tmp_path):
    f = tmp_path / "pos_last.txt"
    f.write_text("EU B-ORG NNP\nrejects O VBZ\n")
    with pytest.raises(MometasInputError, match=r"pos_last.txt: line 1: last column 'NNP' is not an IOB tag"):
        fd.read_conll(str(f), "train")
    f.write_text("EU NNP B-NP B-ORG\nrejects O\n")
    with pytest.raises(MometasInputError, match=r"line 2: expected 4 columns"):
        fd.read_conll(str(f), "train")
    f.write_text("EU B-ORG\n\nParis B-CITY\n")
    sentences = fd.read_conll(str(f), "validation")
    with pytest.raises(MometasInputError, match=r"line 3: unknown tag 'B-CITY'"):
        fd.check_ner_labels(sentences, ["B-ORG", "O"], str(f))


@pytest.mark.data
def test_dream_and_anli_readers():
    dream, anli = require_data("dream/dev.json", "anli/art_validation_subset.jsonl")
    fmt, records = fd.read_multiple_choice(str(dream), "validation")
    assert fmt == "dream" and len(records) == 502 and all(len(r["first"]) == 3 for r in records)
    assert records[0]["label"] == 1 and records[0]["first"][0].startswith("M: How long have you been teaching")
    fmt, records = fd.read_multiple_choice(str(anli), "validation")
    assert fmt == "anli" and len(records) == 58 and {r["label"] for r in records} == {0, 1}
    assert records[0]["second"][1].startswith("Quinton could not find another apartment")


def test_multiple_choice_errors(tmp_path):
    f = tmp_path / "dream.json"
    f.write_text(json.dumps([[["M: hi"], [{"question": "q?", "choice": ["a", "b", "c"], "answer": "d"}], "1-1"]]))
    with pytest.raises(MometasInputError, match=r"dream.json: dialogue '1-1': answer 'd' is not one of the choices"):
        fd.read_multiple_choice(str(f), "train")
    f = tmp_path / "anli.jsonl"
    f.write_text(json.dumps({"observation_1": "a", "observation_2": "b", "hypothesis_1": "c", "hypothesis_2": "d", "label": 3}) + "\n")
    with pytest.raises(MometasInputError, match=r"anli.jsonl: line 1: unknown label 3; expected 1 or 2"):
        fd.read_multiple_choice(str(f), "train")
    f = tmp_path / "other.jsonl"
    f.write_text('{"question": "a"}\n')
    with pytest.raises(MometasInputError, match="cannot tell the format"):
        fd.read_multiple_choice(str(f), "train")
    swag = tmp_path / "swag.csv"
    swag.write_text("sent1,sent2,ending0,ending1,ending2,ending3,ending4,label\na,b,c,d,e,f,g,4\n")
    fmt, records = fd.read_multiple_choice(str(swag), "train")
    assert fmt == "swag" and len(records[0]["first"]) == 5 and records[0]["label"] == 4
    assert fd.number_of_choices({"train": records}, {}) == 5


def test_data_dir_default_is_shared_data():
    if "MOMETAS_DATA_DIR" not in os.environ:
        assert data_dir() == Path(__file__).resolve().parent.parent.parent / "shared" / "data"

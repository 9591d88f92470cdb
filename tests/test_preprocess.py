"""Preprocess once (--preprocess_only, --processed_dataset) and streaming shares per process and worker."""

import hashlib
import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file
from conftest import accelerate_launch
from test_pretraining import FAST, comparable, expect_error, load_script, read_rows, run_script, script_env

from mometas_utils import entities as E
from mometas_utils.corpus import load_raw_corpus
from mometas_utils.data import iter_rows
from mometas_utils.errors import MometasInputError
from mometas_utils.preprocess import (
    RECORD_DOCUMENTS_ENV,
    SequenceBuilder,
    StreamingSequences,
    load_processed,
    save_processed,
)

datasets.disable_progress_bars()


def digest(text):
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def read_records(folder):
    """{file name: [(pass, document hash), ...]} written by the MOMETAS_RECORD_DOCUMENTS hook."""
    return {p.name: [tuple(line.split("\t")) for line in p.read_text().splitlines()]
            for p in sorted(Path(folder).glob("documents-*.tsv"))}


@pytest.fixture(scope="module")
def small_corpus(english_corpus, tmp_path_factory):
    """160 training paragraphs and a separate 24-paragraph validation file (a stream needs one)."""
    lines = Path(english_corpus).read_text(encoding="utf-8").splitlines()
    folder = tmp_path_factory.mktemp("small")
    (folder / "train.txt").write_text("\n".join(lines[:160]) + "\n", encoding="utf-8")
    (folder / "validation.txt").write_text("\n".join(lines[400:424]) + "\n", encoding="utf-8")
    return folder / "train.txt", folder / "validation.txt"


# ----------------------------------------------------------------------------- preprocess once


def columns(split):
    return {name: list(split[name]) for name in split.column_names}


def test_processed_dataset_gives_the_sequences_and_the_run_of_a_run_that_preprocesses_itself(
        tiny_bert, english_corpus, tmp_path):
    processed = tmp_path / "processed"
    corpus = ["--model_name_or_path", tiny_bert, "--train_file", english_corpus, *FAST]
    run = ["--objectives", "mlm,atd,emlm", "--max_train_steps", 8, "--meta_length", 4]
    result = run_script([*corpus, *run, "--preprocess_only", "--processed_dataset", processed,
                         "--preprocessing_num_workers", 2])
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list(tmp_path.glob(".*tmp")), "the dataset is written under a temporary name, then renamed"
    metadata = json.loads((processed / "mometas_preprocessing.json").read_text())
    assert metadata["block"] == 64 - 10 and metadata["entities"].startswith("spacy==")

    script = load_script()
    args = script.parse_args([*map(str, corpus), *map(str, run), "--output_dir", str(tmp_path / "x")])
    script.validate_args(args)
    tokenizer = script.AutoTokenizer.from_pretrained(tiny_bert)
    itself, _ = script.prepare_sequences(args, tokenizer)
    args.processed_dataset, args.train_file = str(processed), None
    loaded, _ = script.prepare_sequences(args, tokenizer)
    for name in ("train", "validation"):
        assert len(itself[name]) > 0
        assert columns(loaded[name]) == columns(itself[name]), name
        assert "entity_ids" in loaded[name].column_names

    # And a training run on the saved sequences is the run that preprocesses itself, step for step.
    from_disk = run_script(["--model_name_or_path", tiny_bert, *FAST, *run, "--processed_dataset", processed,
                            "--output_dir", tmp_path / "from_disk"])
    assert from_disk.returncode == 0, from_disk.stderr[-3000:]
    direct = run_script([*corpus, *run, "--output_dir", tmp_path / "direct"])
    assert direct.returncode == 0, direct.stderr[-3000:]
    assert comparable(read_rows(tmp_path / "from_disk")) == comparable(read_rows(tmp_path / "direct"))
    a, b = load_file(tmp_path / "from_disk" / "model.safetensors"), load_file(tmp_path / "direct" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def saved(tokenizer, tmp_path_factory):
    """A processed dataset of packed MLM-only sequences (no entities) and its builder."""
    builder = SequenceBuilder(tokenizer, 32)
    texts = [f"Paragraph {i} of a small corpus, long enough to fill a few sequences of tokens." for i in range(30)]
    raw = datasets.Dataset.from_dict({"text": texts})
    splits = {"train": builder(raw.select(range(25))), "validation": builder(raw.select(range(25, 30)))}
    path = tmp_path_factory.mktemp("saved") / "processed"
    save_processed(splits, path, builder.description(34))
    return path, builder, splits


def test_save_never_overwrites(saved):
    path, builder, splits = saved
    before = (path / "mometas_preprocessing.json").read_text()
    with pytest.raises(MometasInputError, match="already exists"):
        save_processed(splits, path, builder.description(34))
    assert (path / "mometas_preprocessing.json").read_text() == before


def test_load_checks_the_dataset_against_the_run(saved, tokenizer, tmp_path):
    path, builder, splits = saved
    loaded = load_processed(path, builder.description(34))
    assert columns(loaded["train"]) == columns(splits["train"])
    with pytest.raises(MometasInputError, match="sequences of 32 tokens .* this run packs 16"):
        load_processed(path, SequenceBuilder(tokenizer, 16).description(18))
    with pytest.raises(MometasInputError, match="packed sequences, this run wants them line by line"):
        load_processed(path, SequenceBuilder(tokenizer, 32, line_by_line=True).description(34))
    with pytest.raises(MometasInputError, match="no entity ids"):
        load_processed(path, SequenceBuilder(tokenizer, 32, entity_tagger="spacy").description(34, identify_tagger=False))
    other = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    other.add_tokens(["mometasnewtoken"])
    with pytest.raises(MometasInputError, match="vocabulary or settings differ"):
        load_processed(path, SequenceBuilder(other, 32).description(34))


def test_bad_processed_dataset_folders(saved, tmp_path):
    path, builder, _ = saved
    expected = builder.description(34)
    with pytest.raises(MometasInputError, match="does not exist"):
        load_processed(tmp_path / "missing", expected)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MometasInputError, match="not a dataset saved by --preprocess_only"):
        load_processed(tmp_path / "empty", expected)
    raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"]}),
                                "validation": datasets.Dataset.from_dict({"text": ["b"]})})
    raw.save_to_disk(str(tmp_path / "raw"))
    with pytest.raises(MometasInputError, match="no readable mometas_preprocessing.json"):
        load_processed(tmp_path / "raw", expected)
    (tmp_path / "raw" / "mometas_preprocessing.json").write_text((path / "mometas_preprocessing.json").read_text())
    with pytest.raises(MometasInputError, match="train split .* has no column input_ids"):
        load_processed(tmp_path / "raw", expected)


def test_script_flags_for_preprocessed_data(capsys, tiny_bert, english_corpus, saved, tmp_path):
    path, _, _ = saved
    base = ["--model_name_or_path", tiny_bert, "--output_dir", tmp_path / "out"]
    expect_error(capsys, [*base, "--train_file", english_corpus, "--preprocess_only"], "--preprocess_only needs --processed_dataset")
    expect_error(capsys, [*base, "--train_file", english_corpus, "--preprocess_only", "--processed_dataset", path],
                 "--processed_dataset", "already exists")
    expect_error(capsys, [*base, "--train_file", english_corpus, "--streaming", "--max_train_steps", 5,
                          "--preprocess_only", "--processed_dataset", tmp_path / "p"], "--streaming")
    expect_error(capsys, [*base, "--train_file", english_corpus, "--processed_dataset", path],
                 "--processed_dataset replaces the corpus", "--train_file")
    expect_error(capsys, [*base, "--processed_dataset", tmp_path / "missing", "--objectives", "mlm"],
                 "--processed_dataset", "does not exist")
    # Saved for sequences of 32 tokens (--max_seq_length 34 without ATD): a run of 64 must refuse them.
    expect_error(capsys, [*base, "--processed_dataset", path, "--objectives", "mlm", "--max_seq_length", 64],
                 "--processed_dataset", "this run packs 64")
    expect_error(capsys, [*base, "--train_file", english_corpus, "--dataloader_num_workers", -1],
                 "--dataloader_num_workers")


# ----------------------------------------------------------------------------- tagger shared with workers


def test_forked_map_workers_reuse_the_tagger_loaded_before_the_fork(tmp_path, monkeypatch):
    loads = tmp_path / "loads"
    real = E._load_spacy

    def logged():
        if "spacy" not in E._PIPELINES:
            with open(loads, "a") as f:
                f.write(f"{os.getpid()}\n")
        return real()

    monkeypatch.setattr(E, "_load_spacy", logged)
    monkeypatch.setattr(E, "_PIPELINES", {})
    texts = [f"Angela Merkel met Barack Obama in Berlin on day {i}." for i in range(40)]
    tagged = E.tag_entities(datasets.Dataset.from_dict({"text": texts}), "spacy", batch_size=8, num_proc=2)
    assert all(len(spans) >= 3 for spans in tagged["entities"])
    assert loads.read_text().split() == [str(os.getpid())], "loaded once, in this process"


# ----------------------------------------------------------------------------- streaming


def test_stream_shares_are_disjoint_complete_and_tagged_once(small_corpus, tokenizer, tmp_path, monkeypatch):
    train_file, validation_file = small_corpus
    monkeypatch.setenv(RECORD_DOCUMENTS_ENV, str(tmp_path))
    raw = load_raw_corpus(train_file=str(train_file), validation_file=str(validation_file), streaming=True)
    builder = SequenceBuilder(tokenizer, 30, entity_tagger="spacy")
    sequences = {}
    for process in range(2):
        stream = StreamingSequences(raw["train"], builder, process_index=process, num_processes=2, passes=2)
        loader = torch.utils.data.DataLoader(stream, batch_size=4, num_workers=2, collate_fn=lambda rows: rows)
        sequences[process] = [row for batch in loader for row in batch]
    records = read_records(tmp_path)
    assert sorted(records) == [f"documents-p{p}-w{w}.tsv" for p in range(2) for w in range(2)]
    documents = [digest(line) for line in train_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    for pass_index in ("0", "1"):
        shares = [[h for p, h in rows if p == pass_index] for rows in records.values()]
        assert all(shares), "every worker of every process has a share"
        # Each document is read (and so tagged and tokenised) by exactly one worker of one process.
        assert sorted(h for share in shares for h in share) == sorted(documents)
    for rows in sequences.values():
        assert any(x >= 0 for row in rows for x in row["entity_ids"]), "entities were tagged in the workers"
    content = Counter(t for rows in sequences.values() for row in rows for t in row["input_ids"][1:-1]
                      if t != tokenizer.sep_token_id)
    expected = Counter(t for line in train_file.read_text(encoding="utf-8").splitlines() if line.strip()
                       for t in tokenizer(line, add_special_tokens=False)["input_ids"] * 2)
    # Every token of every document once per pass, but for the short last chunk that packing drops at
    # the end of each share and pass (fewer than 8 tokens, 4 shares x 2 passes).
    assert content <= expected and expected.total() - content.total() < 8 * 4 * 2


def test_a_stream_without_schema_is_read_once_per_document(tokenizer, tmp_path, monkeypatch):
    path = tmp_path / "c.txt"
    path.write_text("\n".join(f"Document {i} is about Paris and London." for i in range(50)) + "\n")
    raw = load_raw_corpus(train_file=str(path), streaming=True, streaming_validation_examples=5)
    assert raw["train"].features is None, "the case under test: datasets' text streams have no schema"
    monkeypatch.setenv(RECORD_DOCUMENTS_ENV, str(tmp_path))
    rows = list(StreamingSequences(raw["train"], SequenceBuilder(tokenizer, 16, entity_tagger="spacy"), passes=1))
    assert rows
    assert len(read_records(tmp_path)["documents-p0-w0.tsv"]) == 45


def test_two_processes_stream_disjoint_shares_in_dataloader_workers(tiny_bert, small_corpus, tmp_path,
                                                                      default_port_taken):
    train_file, validation_file = small_corpus
    out, records = tmp_path / "run", tmp_path / "records"
    records.mkdir()
    args = ["--model_name_or_path", tiny_bert, "--train_file", train_file, "--validation_file", validation_file,
            *FAST, "--objectives", "mlm,cse", "--streaming", "--dataloader_num_workers", 2,
            "--max_train_steps", 40, "--meta_length", 20, "--output_dir", out]
    result = run_script(args, launcher=accelerate_launch(2),
                        env=script_env(ACCELERATE_USE_CPU="true", **{RECORD_DOCUMENTS_ENV: str(records)}))
    assert result.returncode == 0, result.stderr[-4000:]
    rows = read_rows(out)
    assert all(row["num_processes"] == 2 for row in rows)
    found = read_records(records)
    assert sorted(found) == [f"documents-p{p}-w{w}.tsv" for p in range(2) for w in range(2)]
    documents = [digest(line) for line in train_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    first_pass = [h for rows in found.values() for p, h in rows if p == "0"]
    assert sorted(first_pass) == sorted(documents), "one epoch reads every document once, in one place"
    # 40 steps x 2 processes x 4 sequences of 64 tokens need more than one pass over 160 paragraphs.
    assert any(p == "1" for rows in found.values() for p, _ in rows)


def test_streaming_resume_with_dataloader_workers_is_exact(tiny_bert, small_corpus, tmp_path):
    train_file, validation_file = small_corpus
    args = ["--model_name_or_path", tiny_bert, "--train_file", train_file, "--validation_file", validation_file,
            *FAST, "--objectives", "mlm,emlm", "--streaming", "--dataloader_num_workers", 2,
            "--max_train_steps", 12, "--meta_length", 4, "--checkpointing_steps", 4]
    full = run_script([*args, "--output_dir", tmp_path / "full"])
    assert full.returncode == 0, full.stderr[-4000:]
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tmp_path / "full" / "step_4", resumed / "step_4")
    shutil.copy(tmp_path / "full" / "sampler_history.jsonl", resumed / "sampler_history.jsonl")
    # Skipping the first 4 batches makes the workers produce and drop them again: same batches after.
    result = run_script([*args, "--output_dir", resumed, "--resume_from_checkpoint", "latest"])
    assert result.returncode == 0, result.stderr[-4000:]
    assert comparable(read_rows(resumed)) == comparable(read_rows(tmp_path / "full"))
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_iter_rows_reads_a_whole_stream_inside_a_dataloader_worker():
    stream = datasets.Dataset.from_dict({"x": list(range(10))}).to_iterable_dataset()

    class Wrapper(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter_rows(stream)

    direct = [row["x"] for row in torch.utils.data.DataLoader(Wrapper(), batch_size=None, num_workers=1)]
    assert direct == list(range(10))

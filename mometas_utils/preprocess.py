"""From a raw corpus to the pre-training script's sequences: tag (EMLM), tokenise, pack.

Three ways to get them, one recipe (:class:`SequenceBuilder`):

* cached: ``builder(raw["train"])`` runs cached ``datasets.map`` steps with ``num_proc`` workers;
* preprocessed once: :func:`save_processed` writes both splits with ``save_to_disk`` and a
  ``mometas_preprocessing.json`` describing how they were made; :func:`load_processed` checks that
  description against a run before training on them;
* streaming: :class:`StreamingSequences` gives every process and DataLoader worker its own share
  of the stream and runs the recipe where the batches are consumed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import shutil
from pathlib import Path

import datasets
import torch
from datasets.distributed import split_dataset_by_node

from .corpus import TEXT_COLUMN
from .data import (
    ENTITY_IDS,
    INPUT_IDS,
    _out_features,
    _tokenizer_fingerprint,
    iter_rows,
    line_by_line,
    pack_sequences,
    tokenize_corpus,
)
from .entities import check_entity_tagger, tag_entities
from .errors import MometasInputError

PROCESSED_METADATA = "mometas_preprocessing.json"
_FORMAT = 1
# Test and debug hook: a folder where every streaming worker lists the documents it consumed.
RECORD_DOCUMENTS_ENV = "MOMETAS_RECORD_DOCUMENTS"


def sequence_block(max_seq_length: int, objectives, noise_probability: float) -> int:
    """Tokens per packed sequence. ATD inserts tokens, so with ATD sequences are packed shorter by
    its expected insertions and still fit ``max_seq_length`` after corruption."""
    room = math.ceil(noise_probability * max_seq_length) if "atd" in objectives else 0
    return max(8, max_seq_length - room)


@dataclasses.dataclass
class SequenceBuilder:
    """The recipe raw documents -> ``[CLS] ... [SEP]`` sequences of at most ``block`` tokens.

    ``entity_tagger`` None: no entities (no objective needs them); else tag with it and carry
    ``entity_ids``. ``num_proc`` applies to the cached path only.
    """

    tokenizer: object
    block: int
    line_by_line: bool = False
    entity_tagger: str | None = None
    entity_column: str | None = None
    num_proc: int | None = None

    def __call__(self, dataset):
        if self.entity_tagger is not None:
            dataset = tag_entities(dataset, self.entity_tagger, text_column=TEXT_COLUMN,
                                   entity_column=self.entity_column, num_proc=self.num_proc)
        dataset = tokenize_corpus(dataset, self.tokenizer, text_column=TEXT_COLUMN,
                                  with_entities=self.entity_tagger is not None, num_proc=self.num_proc)
        cut = line_by_line if self.line_by_line else pack_sequences
        return cut(dataset, self.tokenizer, self.block, num_proc=self.num_proc)

    def description(self, max_seq_length: int, identify_tagger: bool = True) -> dict:
        """What determines the sequences; a processed dataset must match it to be reused.

        ``identify_tagger`` False leaves the tagger's name instead of its version (a run that
        trains on saved sequences needs no tagger installed)."""
        return {
            "tokenizer": _tokenizer_fingerprint(self.tokenizer),
            "tokenizer_name": getattr(self.tokenizer, "name_or_path", type(self.tokenizer).__name__),
            "max_seq_length": max_seq_length,
            "block": self.block,
            "line_by_line": self.line_by_line,
            "entities": self.entity_tagger if self.entity_tagger is None or not identify_tagger
            else check_entity_tagger(self.entity_tagger, self.entity_column),
        }


def materialise(sequences, builder: SequenceBuilder) -> datasets.Dataset:
    """A stream of sequences held in memory (the validation split, which meta-test samples from)."""
    return datasets.Dataset.from_list(list(iter_rows(sequences)),
                                      features=_out_features(builder.entity_tagger is not None))


def stream_schema(stream: datasets.IterableDataset):
    """The features of a stream, inferred from its first row where datasets does not know them
    (text and JSON streams)."""
    if stream.features is not None:
        return stream.features
    first = next(iter_rows(stream, 1), None)
    return None if first is None else datasets.Dataset.from_list([first]).features


def reread(stream: datasets.IterableDataset, features=None) -> datasets.IterableDataset:
    """``stream`` read through a generator, with a known schema.

    Steps mapped onto the result neither peek at it for its columns (which would run the steps
    before them on a first batch again) nor run under a node split that datasets would apply
    after them (so every worker would tag and tokenise the whole stream).
    """
    return datasets.IterableDataset.from_generator(iter_rows, features=features or stream_schema(stream),
                                                   gen_kwargs={"dataset": stream})


# --------------------------------------------------------------------------- preprocess once


def save_processed(splits: dict, path, description: dict, *, source: dict | None = None) -> Path:
    """Write ``splits`` with ``DatasetDict.save_to_disk`` and their description, atomically.

    An existing ``path`` is never overwritten: a half-written or clobbered dataset would silently
    change the sequences of every run that trains on it.
    """
    path = Path(path)
    if path.exists():
        raise MometasInputError(f"processed_dataset: {path} already exists; remove it or choose another path")
    tmp = path.with_name(f".{path.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    # One writer: save_to_disk(num_proc=...) spawns fresh interpreters, slower than writing the arrow files.
    datasets.DatasetDict(splits).save_to_disk(str(tmp))
    metadata = {"format": _FORMAT, **description, "source": source or {},
                "sequences": {name: len(split) for name, split in splits.items()}}
    (tmp / PROCESSED_METADATA).write_text(json.dumps(metadata, indent=2, default=str))
    os.replace(tmp, path)
    return path


def _mismatch(path, metadata: dict, expected: dict) -> str | None:
    if metadata["tokenizer"] != expected["tokenizer"]:
        return (f"{path} was tokenised with {metadata['tokenizer_name']}, whose vocabulary or settings differ from "
                f"this run's tokenizer ({expected['tokenizer_name']}); preprocess again with this tokenizer")
    if metadata["block"] != expected["block"]:
        return (f"{path} holds sequences of {metadata['block']} tokens (max_seq_length {metadata['max_seq_length']}), "
                f"this run packs {expected['block']} (max_seq_length {expected['max_seq_length']}, less room for ATD's "
                "insertions when atd is trained); preprocess again with this run's max_seq_length, objectives and "
                "noise_probability")
    if metadata["line_by_line"] != expected["line_by_line"]:
        kind = {True: "line by line", False: "packed"}
        return (f"{path} holds {kind[metadata['line_by_line']]} sequences, this run wants them "
                f"{kind[expected['line_by_line']]} (line_by_line)")
    if expected["entities"] is not None and metadata["entities"] is None:
        return f"{path} has no entity ids (preprocessed without emlm); preprocess again with emlm in objectives"
    return None


def load_processed(path, expected: dict) -> dict:
    """The train/validation sequences saved by :func:`save_processed`, checked against ``expected``
    (a :meth:`SequenceBuilder.description`). Entity ids that the run does not need are dropped."""
    path = Path(path)
    if not path.exists():
        raise MometasInputError(f"processed_dataset: {path} does not exist")
    if not (path / "dataset_dict.json").is_file():
        raise MometasInputError(f"processed_dataset: {path} is not a dataset saved by --preprocess_only "
                                "(no dataset_dict.json)")
    try:
        metadata = json.loads((path / PROCESSED_METADATA).read_text())
        if metadata.get("format") != _FORMAT:
            raise ValueError(f"format {metadata.get('format')!r}")
        problem = _mismatch(path, metadata, expected)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MometasInputError(f"processed_dataset: {path} has no readable {PROCESSED_METADATA} "
                                f"({type(e).__name__}: {e}); write it with --preprocess_only") from e
    if problem:
        raise MometasInputError(f"processed_dataset: {problem}")
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets reports a damaged folder in many ways
        raise MometasInputError(f"processed_dataset: {path} could not be loaded ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''})") from e
    if not isinstance(loaded, datasets.DatasetDict) or not {"train", "validation"} <= set(loaded):
        raise MometasInputError(f"processed_dataset: {path} must hold the splits train and validation")
    splits = {}
    for name in ("train", "validation"):
        split = loaded[name]
        needed = [INPUT_IDS] + ([ENTITY_IDS] if expected["entities"] is not None else [])
        missing = [c for c in needed if c not in split.column_names]
        if missing:
            raise MometasInputError(f"processed_dataset: the {name} split of {path} has no column "
                                    f"{', '.join(missing)} (columns: {', '.join(split.column_names)})")
        if expected["entities"] is None and ENTITY_IDS in split.column_names:
            split = split.remove_columns(ENTITY_IDS)
        splits[name] = split
    return splits


# --------------------------------------------------------------------------- streaming


class _Record:
    """Appends "<pass>\\t<document hash>" for every document this worker is about to process."""

    def __init__(self, path: Path, pass_index: int):
        self.path, self.pass_index = path, pass_index

    def __call__(self, batch):
        with open(self.path, "a", encoding="utf-8") as f:
            for text in batch[TEXT_COLUMN]:
                f.write(f"{self.pass_index}\t{hashlib.blake2b(text.encode('utf-8'), digest_size=16).hexdigest()}\n")
        return {}


class StreamingSequences(torch.utils.data.IterableDataset):
    """Sequences of a streamed corpus, made in the process (and DataLoader worker) that uses them.

    Process ``p`` of ``P``, worker ``w`` of ``W`` reads share ``p * W + w`` of ``P * W`` of the raw
    documents (``datasets.distributed.split_dataset_by_node``: whole files when their number is a
    multiple of ``P * W``, otherwise every ``P * W``-th document, the others being skipped unread by
    the pipeline) and runs ``builder`` on it. So every document is tagged, tokenised and packed by
    exactly one worker of one process, and ``--dataloader_num_workers`` runs that work beside
    training. Packing joins documents of one share only.

    Iteration is endless by default: at the end of its share a worker starts it again (the next
    pass), so that every process has a batch at every step whatever the length of its share.
    The order of batches is fixed (DataLoader takes them from its workers in turn), so skipping
    the first N batches resumes exactly; it does so by producing and dropping them again.

    With the environment variable ``MOMETAS_RECORD_DOCUMENTS`` set to a folder, each worker appends
    ``<pass>\\t<blake2b of the text>`` for every document it reads to
    ``documents-p<process>-w<worker>.tsv`` there (tests use it to check the split).
    """

    def __init__(self, raw: datasets.IterableDataset, builder: SequenceBuilder, *, process_index: int = 0,
                 num_processes: int = 1, passes: int | None = None):
        self.raw, self.builder = raw, builder
        self.process_index, self.num_processes = process_index, num_processes
        self.passes = passes
        self.record_dir = os.environ.get(RECORD_DOCUMENTS_ENV)
        self.features = stream_schema(raw)

    def share(self):
        """This process's and DataLoader worker's share of the raw stream, and the worker index."""
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        share = split_dataset_by_node(self.raw, rank=self.process_index * workers + worker,
                                      world_size=self.num_processes * workers)
        return reread(share, self.features), worker

    def __iter__(self):
        share, worker = self.share()
        for pass_index in itertools.count() if self.passes is None else range(self.passes):
            docs = share
            if self.record_dir:
                path = Path(self.record_dir) / f"documents-p{self.process_index}-w{worker}.tsv"
                docs = share.map(_Record(path, pass_index), batched=True, features=share.features)
            empty = True
            for row in iter_rows(self.builder(docs)):
                empty = False
                yield row
            if empty:  # a share without documents would otherwise spin forever
                return

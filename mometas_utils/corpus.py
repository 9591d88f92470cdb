"""Loading a pre-training corpus: a file or a Hub dataset, split into train/validation, text in column "text".

    raw = load_raw_corpus(train_file="corpus.txt")        # DatasetDict (cached) or IterableDatasetDict (--streaming)

The validation documents never occur in the training split (exact text), so meta-test
measures held-out text. Tokenising and packing live in :mod:`mometas_utils.data`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os

import datasets
from datasets.fingerprint import Hasher

from .errors import MometasInputError

logger = logging.getLogger(__name__)

TEXT_COLUMN = "text"

# Extension -> datasets builder. Compressed variants (.gz, ...) are decompressed by datasets.
_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv"}
_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
# Streaming corpora have no known length, so the validation slice is a fixed count.
DEFAULT_STREAMING_VALIDATION_EXAMPLES = 1000
STREAMING_TEXT_CHUNK_BYTES = 1 << 20

def _builder_for(path: str, flag: str) -> str:
    if not os.path.exists(path):
        raise MometasInputError(f"{flag} {path} does not exist")
    if os.path.isdir(path):
        raise MometasInputError(f"{flag} {path} is a directory; expected a .txt, .json, .jsonl or .csv file")
    name = path.lower()
    for comp in _COMPRESSIONS:
        if name.endswith(comp):
            name = name[: -len(comp)]
            break
    ext = os.path.splitext(name)[1]
    if ext not in _BUILDERS:
        raise MometasInputError(
            f"{flag} {path}: unknown extension {ext or '(none)'!r}; expected .txt (one document per line), "
            ".json/.jsonl (JSON lines) or .csv"
        )
    return _BUILDERS[ext]


def _first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__


def _load_file(path: str, flag: str, streaming: bool, cache_dir):
    builder = _builder_for(path, flag)
    # The text reader holds 10 MB of lines at a time by default, and its peak memory grows with
    # the file up to about ten of them; 1 MB reads stream as fast with a flat peak.
    kwargs = {"chunksize": STREAMING_TEXT_CHUNK_BYTES} if streaming and builder == "text" else {}
    try:
        return datasets.load_dataset(
            builder, data_files={"train": path}, split="train", streaming=streaming, cache_dir=cache_dir, **kwargs
        )
    except Exception as e:
        kind = {"text": "text", "json": "JSON lines", "csv": "CSV"}[builder]
        raise MometasInputError(f"{flag} {path} could not be read as {kind} ({_first_line(e)})") from e


def _string_columns(ds, source: str) -> tuple[list[str], list[str]]:
    """(all columns, string columns); peeks at the first row when a stream has no schema."""
    features = ds.features
    if features is not None:
        strings = [
            c for c, f in features.items() if isinstance(f, datasets.Value) and f.dtype in ("string", "large_string")
        ]
        return list(features), strings
    try:
        first = next(iter(ds), None)
    except Exception as e:
        raise MometasInputError(f"{source} could not be read ({_first_line(e)})") from e
    if first is None:
        raise MometasInputError(f"{source} is empty: it contains no documents")
    return list(first), [c for c, v in first.items() if isinstance(v, str)]


def _resolve_text_column(ds, source: str, text_column: str | None) -> str:
    columns, strings = _string_columns(ds, source)
    if text_column is not None:
        if text_column not in columns:
            raise MometasInputError(
                f"--text_column {text_column!r} is not a column of {source} (columns: {', '.join(columns)})"
            )
        if text_column not in strings:
            raise MometasInputError(f"--text_column {text_column!r} of {source} does not hold strings")
        return text_column
    if TEXT_COLUMN in strings:
        return TEXT_COLUMN
    if len(strings) == 1:
        return strings[0]
    raise MometasInputError(
        f"{source}: cannot tell which column holds the text (columns: {', '.join(columns) or 'none'}); "
        "name it with --text_column"
    )


def _nonempty(batch):
    return [isinstance(t, str) and t.strip() != "" for t in batch[TEXT_COLUMN]]


def _normalise(ds, source: str, text_column: str | None):
    """Rename the chosen text column to "text" and drop documents without text."""
    col = _resolve_text_column(ds, source, text_column)
    if col != TEXT_COLUMN:
        columns = ds.column_names
        # A different "text" column would be ambiguous downstream; the user chose `col`.
        if columns is not None and TEXT_COLUMN in columns:
            ds = ds.remove_columns(TEXT_COLUMN)
        ds = ds.rename_column(col, TEXT_COLUMN)
    ds = ds.filter(_nonempty, batched=True)
    if isinstance(ds, datasets.IterableDataset):
        try:
            empty = next(iter(ds), None) is None
        except Exception as e:
            raise MometasInputError(f"{source} could not be read ({_first_line(e)})") from e
    else:
        empty = len(ds) == 0
    if empty:
        raise MometasInputError(f"{source} contains no non-empty text (column {col!r})")
    return ds


def _text_hash(text: str) -> bytes:
    # Python's hash() is salted per process; a digest keeps the check reproducible.
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class _NotIn:
    """Filter predicate: keep documents whose text is not in ``hashes``."""

    def __init__(self, hashes: set[bytes]):
        self.hashes = hashes

    def __call__(self, batch):
        return [_text_hash(t) not in self.hashes for t in batch[TEXT_COLUMN]]


def _iter_texts(ds, text_column: str):
    if isinstance(ds, datasets.Dataset):
        for batch in ds.select_columns([text_column]).iter(batch_size=10_000):
            yield from batch[text_column]
    else:
        for ex in ds:
            yield ex[text_column]


def count_overlap(train, validation, text_column: str = TEXT_COLUMN) -> int:
    """Number of validation documents whose exact text also occurs in ``train``."""
    val = {_text_hash(t) for t in _iter_texts(validation, text_column) if isinstance(t, str)}
    seen = {h for t in _iter_texts(train, text_column) if isinstance(t, str) and (h := _text_hash(t)) in val}
    return len(seen)


def assert_disjoint(train, validation, text_column: str = TEXT_COLUMN) -> None:
    """Raise MometasInputError if any document text is both in ``train`` and ``validation``."""
    n = count_overlap(train, validation, text_column)
    if n:
        raise MometasInputError(f"{n} validation documents also occur in the training data")


def _check_percentage(pct) -> None:
    if not (isinstance(pct, (int, float)) and 0 < pct < 100):
        raise MometasInputError(f"--validation_split_percentage must be in (0, 100), got {pct!r}")


def _split_documents(train: datasets.Dataset, pct, seed: int, source: str):
    _check_percentage(pct)
    n = len(train)
    n_val = math.ceil(n * pct / 100)
    if n - n_val < 1:
        raise MometasInputError(
            f"{source} has only {n} documents, too few to split off {pct}% for validation; "
            "give --validation_file"
        )
    split = train.train_test_split(test_size=n_val, shuffle=True, seed=seed)
    train, validation = split["train"], split["test"]
    # Repeated paragraphs (boilerplate) would otherwise sit on both sides of the split.
    hashes = {_text_hash(t) for t in _iter_texts(validation, TEXT_COLUMN)}
    before = len(train)
    train = train.filter(
        _NotIn(hashes),
        batched=True,
        new_fingerprint=Hasher.hash((train._fingerprint, validation._fingerprint, "drop-val-duplicates")),
    )
    if len(train) < before:
        logger.info("dropped %d training documents whose text also occurs in validation", before - len(train))
    return train, validation


def _split_stream(train: datasets.IterableDataset, pct, n_val: int | None, source: str):
    if n_val is None:
        _check_percentage(pct)
        splits = train.info.splits if train.info is not None else None
        total = splits["train"].num_examples if splits and "train" in splits else 0
        n_val = math.ceil(total * pct / 100) if total else DEFAULT_STREAMING_VALIDATION_EXAMPLES
    if n_val < 1:
        raise MometasInputError(f"the streaming validation size must be at least 1, got {n_val}")
    validation = train.take(n_val)
    hashes = {_text_hash(ex[TEXT_COLUMN]) for ex in validation}
    if len(hashes) == 0 or next(iter(train.skip(n_val)), None) is None:
        raise MometasInputError(
            f"{source} has too few documents to take {n_val} for validation in --streaming mode; "
            "give --validation_file"
        )
    return train.skip(n_val).filter(_NotIn(hashes), batched=True), validation


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def load_raw_corpus(
    *,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    validation_split_percentage: float = 5,
    streaming: bool = False,
    text_column: str | None = None,
    seed: int = 42,
    cache_dir: str | None = None,
    trust_remote_code: bool = False,
    streaming_validation_examples: int | None = None,
):
    """Load a corpus as splits ``train``/``validation`` whose text is in column ``"text"``.

    Documents with no text are dropped; other columns are kept. Without a validation file
    or split, ``validation_split_percentage`` % of the documents (seeded shuffle) become
    validation and training documents with the same text are removed, so the splits share
    no document. Streaming: the first ``streaming_validation_examples`` documents (default
    the percentage of the known size, else 1000) are validation, the rest training.
    """
    if dataset_name and (train_file or validation_file):
        raise MometasInputError("give either --dataset_name or --train_file/--validation_file, not both")
    if not dataset_name and not train_file:
        if validation_file:
            raise MometasInputError("--validation_file needs a --train_file")
        raise MometasInputError("no corpus given: pass --dataset_name or --train_file")

    if dataset_name:
        kwargs = {}
        if trust_remote_code:
            if int(datasets.__version__.split(".")[0]) >= 4:
                logger.warning("--trust_remote_code is ignored: datasets>=4 no longer runs dataset scripts")
            else:
                kwargs["trust_remote_code"] = True
        try:
            raw = datasets.load_dataset(
                dataset_name, dataset_config_name, cache_dir=cache_dir, streaming=streaming, **kwargs
            )
        except (datasets.exceptions.DatasetNotFoundError, FileNotFoundError) as e:
            raise MometasInputError(f"--dataset_name {dataset_name} was not found ({_first_line(e)})") from e
        except ValueError as e:
            if "config" in str(e).lower():
                raise MometasInputError(
                    f"--dataset_config_name {dataset_config_name!r} is not valid for {dataset_name} ({_first_line(e)})"
                ) from e
            raise
        source = f"--dataset_name {dataset_name}"
        if "train" not in raw:
            raise MometasInputError(f"{source} has no 'train' split (splits: {', '.join(raw)})")
        train = _normalise(raw["train"], source, text_column)
        validation = _normalise(raw["validation"], f"{source} (validation split)", text_column) if "validation" in raw else None
    else:
        source = f"--train_file {train_file}"
        if validation_file and os.path.exists(train_file) and os.path.exists(validation_file):
            if _same_file(train_file, validation_file):
                raise MometasInputError(
                    f"--validation_file {validation_file} is the same file as --train_file; validation must "
                    "be held out (omit --validation_file to split off --validation_split_percentage)"
                )
        train = _normalise(_load_file(train_file, "--train_file", streaming, cache_dir), source, text_column)
        validation = None
        if validation_file:
            validation = _normalise(
                _load_file(validation_file, "--validation_file", streaming, cache_dir),
                f"--validation_file {validation_file}",
                text_column,
            )

    if validation is None:
        if streaming:
            train, validation = _split_stream(train, validation_split_percentage, streaming_validation_examples, source)
        else:
            train, validation = _split_documents(train, validation_split_percentage, seed, source)
    dict_cls = datasets.IterableDatasetDict if streaming else datasets.DatasetDict
    return dict_cls({"train": train, "validation": validation})

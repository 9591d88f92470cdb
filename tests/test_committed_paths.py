"""Committed results and docs name no folder of the machine they were made on.

A path such as /work/main/study/cache/... or /root/.pyenv/.../python says where one machine kept
things and nothing to a reader elsewhere. Results name files relative to the repository, or
through placeholders: $MOMETAS_DATA_DIR, $MINILM, $TMPDIR, ~ (study/common.py, ``portable``).
"""

import fnmatch
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "study"))
from common import data_dir, portable  # noqa: E402

CHECKED = ("study/results", "docs")
# Files another change is rewriting; each entry leaves this list with that change.
PENDING = ()

# An absolute path of a machine's own folders: temporary, work and home folders, an installed
# package's folder, a Windows drive. It must start a token: not inside a word, a URL (after ':' or
# '/'), a relative path or a placeholder ($MOMETAS_DATA_DIR/...), so prose, fractions and URLs pass.
ABSOLUTE = re.compile(
    r"(?<![\w.~/$:\\-])"
    r"(?:/(?:tmp|var/tmp|var/folders|private|work|root|home|Users|mnt|scratch|gpfs|lustre)/[^\s\"'`)\],]*"
    r"|/[^\s\"'`)\],]*(?:site-packages|dist-packages|\.pyenv|conda)[^\s\"'`)\],]*"
    r"|[A-Za-z]:(?:\\\\|\\|/)[\w.$ -]+)"
)


def committed_files():
    try:
        listed = subprocess.run(["git", "ls-files", *CHECKED], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: cannot tell which files are committed")
    return [ROOT / name for name in listed.stdout.splitlines()]


def absolute_paths(text):
    return [(text.count("\n", 0, m.start()) + 1, m.group(0)) for m in ABSOLUTE.finditer(text)]


def test_no_committed_result_or_doc_names_a_folder_of_one_machine():
    files = committed_files()
    assert any(f.suffix == ".json" for f in files) and any(f.suffix == ".md" for f in files)
    found = []
    for path in files:
        relative = path.relative_to(ROOT).as_posix()
        if any(fnmatch.fnmatch(relative, pattern) for pattern in PENDING) or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # figures
            continue
        found += [f"{relative}:{line}: {match}" for line, match in absolute_paths(text)]
    assert not found, f"{len(found)} absolute paths, e.g.:\n" + "\n".join(found[:10])


@pytest.mark.parametrize("text", [
    "/tmp/bl/out_sst2", "--output_dir /work/main/study/cache/x", '"/root/.pyenv/versions/3.11.7/bin/python"',
    "/home/alice/data/train.tsv", "`/Users/bob/x`", "/usr/lib/python3/dist-packages/gt/model",
    "(/private/var/folders/ab/T/x)", "C:\\Users\\bob\\data", "C:\\\\Users\\\\bob", "D:/runs/out", "--x=/tmp/a",
])
def test_machine_paths_are_found(text):
    assert absolute_paths(text), text


@pytest.mark.parametrize("text", [
    "https://huggingface.co/home/x and https://github.com/a/site-packages/b", "6,358 encoder tokens/s",
    "1/2 of the steps, and/or", "a / b", "~/.cache/huggingface", "$MOMETAS_DATA_DIR/glue/sst2/train.tsv",
    "$TMPDIR/bl/out_<task>", "study/cache/study_cpu-small/models/x", "`error: --output_dir /proc/mometas_out`",
    "#!/usr/bin/env python", "file:///tmp/x is a URL", "tmp/work/root", "ratio 0.95/1", "--data_dir=data/home/x",
])
def test_prose_urls_and_portable_paths_pass(text):
    assert not absolute_paths(text), text


def test_study_results_write_this_machines_paths_as_placeholders(minilm):
    command = [sys.executable, "run_glue.py", "--model_name_or_path", str(minilm), "--train_file",
               str(data_dir() / "glue" / "sst2" / "train.tsv"), "--output_dir", str(ROOT / "study" / "cache" / "x"),
               f"--logging_dir={ROOT / 'study' / 'cache' / 'logs'}", "--seed", "42"]
    assert portable(command) == ["python", "run_glue.py", "--model_name_or_path", "$MINILM", "--train_file",
                                 "$MOMETAS_DATA_DIR/glue/sst2/train.tsv", "--output_dir", "study/cache/x",
                                 "--logging_dir=study/cache/logs", "--seed", "42"]
    assert not absolute_paths(" ".join(portable(command)))
    assert portable({"rows": [{"loss": 1.5}], "command": command})["rows"] == [{"loss": 1.5}]

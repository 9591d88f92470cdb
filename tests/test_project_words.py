"""The project's files speak of the project only.

A reader can act on a flag, a file or a number; not on how the work behind them was organised:
numbered work items, who did what, which machine was lent for how long, a remote tool the reader
does not have, planning words. Each pattern below is one such kind of sentence; the test scans
every text file that git tracks (this file excepted: it has to spell them).
"""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PATTERNS = {
    "a numbered work item": r"\b(?:issues?|tickets?|work[- ]items?)\s*#?\d+",
    "a work item as a source": r"\bthe (?:issue|ticket)'s\b",
    "who did the work": r"\b(?:this|other|another) (?:sessions?|engineers?|helpers?)\b|\bengineers?'",
    "a lent machine": r"\b(?:was|were|is|are|be|been) lent\b|\blent to\b",
    "a remote tool": r"\b(?:device|remote) tool\b|\$OUT\b|\btimeout_s\b",
    "a planning word": r"\banchors?\b|\bthe GPU day\b|\bwork[- ]items?\b",
    "the task that wrote it": r"\bthe task that\b",
}
SCANNED = re.compile("|".join(f"(?:{p})" for p in PATTERNS.values()), re.IGNORECASE)


def tracked_text_files():
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: cannot tell which files are tracked")
    for name in listed.stdout.splitlines():
        path = ROOT / name
        if name == Path(__file__).relative_to(ROOT).as_posix() or not path.is_file():
            continue
        try:
            yield name, path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # figures and other binary files
            continue


def findings(name, text):
    return [f"{name}:{number}: {line.strip()[:160]}" for number, line in enumerate(text.splitlines(), 1)
            if SCANNED.search(line)]


def test_no_tracked_file_speaks_of_how_the_work_was_made():
    found = [hit for name, text in tracked_text_files() for hit in findings(name, text)]
    assert not found, f"{len(found)} lines speak of how the work was made:\n" + "\n".join(found[:20])


@pytest.mark.parametrize("line", [
    "This is the demo's reward of issue 7.", "The goal of Issue #10 is a ratio of 0.95.", "the issue's figure",
    "No GPU was lent to the task that wrote this page.", "measured by one call of the device tool",
    "writes its JSON to $OUT as it finishes", "none of the anchors offers", "Other engineers' jobs ran here",
    "a background study and other sessions", "The GPU day in one command",
])
def test_each_kind_of_sentence_is_caught(line):
    assert findings("docs/x.md", line)


@pytest.mark.parametrize("line", [
    "@pytest.fixture(scope=\"session\")", "start_new_session=True", "7 issues were fixed upstream in spaCy",
    "the equivalent of a plain BERT", "a silent fresh start", "GitHub issues and pull requests",
])
def test_the_projects_own_words_pass(line):
    assert not findings("docs/x.md", line)

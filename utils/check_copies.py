#!/usr/bin/env python
"""Keep the code the fine-tuning scripts share honest: every copy of run_glue.py's code is marked, and matches.

Each fine-tuning script must run alone (copy one into any folder and change it), so the three
share code by copying it, not by importing it. They follow transformers' convention
(``utils/check_copies.py`` there): in run_ner.py and run_multiple_choice.py, the line directly
above a top-level function, class or assignment says where it comes from:

    # Copied from run_glue.save_checkpoint
    # Copied from run_glue.load_model with AutoModelForSequenceClassification->AutoModelForTokenClassification

and the statement must equal run_glue.py's, after the ``A->B`` replacements (comma-separated).
A top-level name that run_glue.py also defines but that cannot stay identical says why instead:

    # Not a copy of run_glue.load_tokenizer: aligning tags to wordpieces needs a fast tokenizer

so that no shared name is left unexplained. Usage:

    python utils/check_copies.py                        # exit 1 and one line per problem
    python utils/check_copies.py --fix_and_overwrite    # rewrite the copies that drifted from run_glue.py
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORIGINAL = "run_glue.py"
COPIES = ("run_ner.py", "run_multiple_choice.py")
COPIED = re.compile(r"^# Copied from run_glue\.(\w+)(?: with (.+?))?\s*$")
NOT_A_COPY = re.compile(r"^# Not a copy of run_glue\.(\w+): \S")
MARKER = re.compile(r"^# (Copied from|Not a copy of) run_glue\.")


def top_level(source: str) -> dict[str, tuple[int, int]]:
    """Name -> (first line, line after the last), 0-based, of each top-level def, class and simple assignment."""
    spans = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = node.name
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if len(targets) != 1 or not isinstance(targets[0], ast.Name):
                continue
            name, first = targets[0].id, node.lineno
        else:
            continue
        spans[name] = (first - 1, node.end_lineno)
    return spans


def replacements(spec: str | None) -> list[tuple[str, str]]:
    pairs = []
    for part in (spec or "").split(","):
        if part.strip():
            old, arrow, new = part.strip().partition("->")
            if not arrow or not old:
                raise ValueError(f"'{part.strip()}' is not of the form A->B")
            pairs.append((old, new))
    return pairs


def expected_copy(text: str, pairs) -> str:
    for old, new in pairs:
        text = text.replace(old, new)
    return text


def check_file(path: Path, original: str, fix: bool = False) -> tuple[list[str], int]:
    """Problems in one copying script (and rewrites it when ``fix``); returns (problems, copies checked)."""
    source = path.read_text()
    lines = source.splitlines(keepends=True)
    original_lines = original.splitlines(keepends=True)
    originals, copies = top_level(original), top_level(source)
    starts = {first: name for name, (first, _) in copies.items()}
    problems, checked, rewrites, marked = [], 0, [], set()
    for index, line in enumerate(lines):
        if not MARKER.match(line):
            continue
        where = f"{path.name}:{index + 1}"
        copied, not_copy = COPIED.match(line), NOT_A_COPY.match(line)
        if not copied and not not_copy:
            problems.append(f"{where}: cannot read the marker {line.strip()!r}; expected '# Copied from "
                            "run_glue.NAME [with A->B, ...]' or '# Not a copy of run_glue.NAME: why'")
            continue
        name = (copied or not_copy).group(1)
        below = starts.get(index + 1)
        if below is None:
            problems.append(f"{where}: the marker for {name} is not directly above a top-level def, class or assignment")
            continue
        if name not in originals:
            problems.append(f"{where}: {ORIGINAL} has no top-level {name}")
            continue
        if not_copy:
            if name != below:
                problems.append(f"{where}: the marker names run_glue.{name}, but {below} follows it")
            else:
                marked.add(below)
            continue
        try:
            pairs = replacements(copied.group(2))
        except ValueError as error:
            problems.append(f"{where}: {error}")
            continue
        if expected_copy(name, pairs) != below:
            problems.append(f"{where}: the marker names run_glue.{name}, but {below} follows it")
            continue
        checked += 1
        marked.add(below)
        first, end = copies[below]
        o_first, o_end = originals[name]
        want = expected_copy("".join(original_lines[o_first:o_end]), pairs)
        have = "".join(lines[first:end])
        if have != want:
            diff = list(difflib.unified_diff(want.splitlines(), have.splitlines(), f"run_glue.{name}",
                                             f"{path.name}:{below}", n=0, lineterm=""))
            shown = "; ".join(d.strip() for d in diff[2:8] if not d.startswith("@@"))
            problems.append(f"{path.name}:{first + 1}: {below} is no longer a copy of run_glue.{name} ({shown})")
            rewrites.append((first, end, want))
    for name in sorted(set(copies) & set(originals) - marked):
        problems.append(f"{path.name}:{copies[name][0] + 1}: {name} shares its name with run_glue.{name}: mark it "
                        f"'# Copied from run_glue.{name}' or say why not with '# Not a copy of run_glue.{name}: ...'")
    if fix and rewrites:
        for first, end, want in sorted(rewrites, reverse=True):
            lines[first:end] = [want]
        path.write_text("".join(lines))
    return problems, checked


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fix_and_overwrite", action="store_true",
                        help="Rewrite every marked copy that drifted from run_glue.py (other problems stay).")
    parser.add_argument("--root", type=Path, default=ROOT, help="The folder holding the scripts (default: this repository).")
    args = parser.parse_args(argv)
    original = (args.root / ORIGINAL).read_text()
    problems, checked = [], 0
    for name in COPIES:
        found, count = check_file(args.root / name, original, fix=args.fix_and_overwrite)
        problems += found
        checked += count
    if args.fix_and_overwrite:
        fixed = [p for p in problems if "is no longer a copy" in p]
        problems = [p for p in problems if "is no longer a copy" not in p]
        for line in fixed:
            print(f"fixed: {line}")
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if problems:
        return 1
    print(f"{checked} copies of {ORIGINAL} in {', '.join(COPIES)} match")
    return 0


if __name__ == "__main__":
    sys.exit(main())

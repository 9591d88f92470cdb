"""The offline demo corpus: real English prose that ships with every CPython install.

``pydoc_data.topics`` holds the text of the Python Language Reference topics (about
460 KB, written by people for people). The demo keeps its prose paragraphs, unwraps
them to one paragraph per line and drops code blocks, grammar rules and headings, so
that the README's first command can pre-train on real English with no network and
without shipping any dataset in this repository.
"""

from __future__ import annotations

import re
from pathlib import Path

MIN_WORDS = 12


def demo_paragraphs(min_words: int = MIN_WORDS) -> list[str]:
    """Prose paragraphs of the Python reference text, one string each, in a fixed order."""
    from pydoc_data.topics import topics

    paragraphs = []
    for key in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[key]):
            lines = block.splitlines()
            # Indented blocks are code or grammar; underline rows mark headings.
            if not lines or lines[0].startswith((" ", "\t")) or any(set(l.strip()) <= set("*=-~^") for l in lines):
                continue
            text = " ".join(l.strip() for l in lines)
            if len(text.split()) >= min_words and not text.startswith((">>>", "...")):
                paragraphs.append(text)
    return paragraphs


def write_demo_corpus(path: str | Path) -> Path:
    """Write the demo corpus to ``path`` (one paragraph per line) unless it is already there."""
    path = Path(path)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text("\n".join(demo_paragraphs()) + "\n", encoding="utf-8")
        tmp.replace(path)
    return path

"""Every table the docs quote from study/results/ or bench/results/ is the one its script writes.

A block sits between ``<!-- BEGIN GENERATED: <name> -->`` and ``<!-- END GENERATED: <name> -->`` in
README.md or a page of docs/. The script that makes the results writes it
(``study.common.write_generated_block``), and this test regenerates every block from the committed
JSON and fails on any difference: a typed or stale number in a block fails here.

To register a generator: give its script a function that reads only committed results and returns
``{(doc path relative to the repository, block name): text}``, have the script write those blocks
with ``common.write_generated_blocks(generated_blocks())`` after it makes or reports its results, put
the markers in the page, and add ``(script path, function name)`` to ``GENERATORS`` below.
"""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "study"))
from common import GENERATED, generated_blocks_in, write_generated_block  # noqa: E402

#: (script, function): the function returns {(doc, block name): text} from the committed results.
GENERATORS = [
    ("study/reward_noise.py", "generated_blocks"),
    ("study/run_study.py", "generated_blocks"),
    ("study/multitask.py", "generated_blocks"),
    ("bench/bench_pipeline.py", "generated_blocks"),
    ("bench/bench_collators.py", "generated_blocks"),
    ("bench/bench_pretraining.py", "generated_blocks"),
    ("bench/bench_gpu.py", "generated_blocks"),
    ("bench/finetuning_baselines.py", "generated_blocks"),
    ("study/planted.py", "generated_blocks"),
]

DOCS = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]


def load(script):
    path = ROOT / script
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(f"generator_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def expected_blocks():
    blocks = {}
    for script, function in GENERATORS:
        for key, text in getattr(load(script), function)().items():
            assert key not in blocks, f"{key} is written by two generators"
            blocks[key] = (text.rstrip("\n") + "\n", script)
    return blocks


@pytest.fixture(scope="module")
def expected():
    return expected_blocks()


def test_every_block_is_what_its_script_writes_from_the_committed_results(expected):
    stale = []
    for (doc, name), (text, script) in expected.items():
        found = generated_blocks_in(ROOT / doc)
        if name not in found:
            stale.append(f"{doc}: no markers for block {name!r} (written by {script})")
        elif found[name] != text:
            stale.append(f"{doc}: block {name!r} differs from what {script} writes; run it (see its --help) to rewrite it")
    assert not stale, "\n".join(stale)


def test_every_block_in_the_docs_has_a_generator(expected):
    written = {key for key in expected}
    orphans = [f"{doc}: {name}" for doc in DOCS for name in generated_blocks_in(ROOT / doc)
               if (doc, name) not in written]
    assert not orphans, f"blocks no registered generator writes: {orphans}"


def test_markers_come_in_pairs():
    begin, end = re.compile(r"<!-- BEGIN GENERATED: ([\w.-]+) -->"), re.compile(r"<!-- END GENERATED: ([\w.-]+) -->")
    bad = []
    for doc in DOCS:
        text = (ROOT / doc).read_text(encoding="utf-8")
        names = sorted(begin.findall(text))
        if names != sorted(end.findall(text)) or len(names) != len(set(names)) \
                or len(GENERATED.findall(text)) != len(names):
            bad.append(doc)
    assert not bad, f"unpaired, repeated or nested markers in {bad}"


def test_write_generated_block_replaces_only_its_block(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("intro\n<!-- BEGIN GENERATED: a -->\nold\n<!-- END GENERATED: a -->\nmiddle\n"
                    "<!-- BEGIN GENERATED: b -->\nkeep\n<!-- END GENERATED: b -->\nend\n")
    assert write_generated_block(page, "a", "| new |\n| --- |") is True
    assert write_generated_block(page, "a", "| new |\n| --- |") is False
    assert page.read_text() == ("intro\n<!-- BEGIN GENERATED: a -->\n| new |\n| --- |\n<!-- END GENERATED: a -->\n"
                                "middle\n<!-- BEGIN GENERATED: b -->\nkeep\n<!-- END GENERATED: b -->\nend\n")
    with pytest.raises(ValueError, match="no_such"):
        write_generated_block(page, "no_such", "x")


def test_the_baselines_doc_lists_the_commands_its_runner_runs():
    """docs/finetuning_baselines.md's Commands section and bench/finetuning_baselines.py's TASKS are one list."""
    tasks = load("bench/finetuning_baselines.py").TASKS
    text = (ROOT / "docs" / "finetuning_baselines.md").read_text()
    documented = [line.split(maxsplit=4)[1::3] for line in text.splitlines()
                  if line.startswith("python run_") and "--model_name_or_path $MODEL " in line]
    documented = [(script, " ".join(rest.split())) for script, rest in documented]
    assert documented == [(script, " ".join(args.split())) for _, _, script, args in tasks]

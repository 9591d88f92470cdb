"""A loop of your own: examples/own_loop.py runs, docs/library.md quotes it, mometas_utils exports its helpers."""

import inspect
from pathlib import Path

import pytest

from conftest import load_module

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "own_loop.py"

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_meta_test_names_are_exported_as_functions():
    import mometas_utils.meta_test  # noqa: F401  the submodule first: its name must not replace the function's
    from mometas_utils import Advantage, encoder_grad_norm, meta_test, meta_test_batches, reward_terms

    assert inspect.isfunction(meta_test) and inspect.isfunction(meta_test_batches)
    assert inspect.isfunction(reward_terms) and inspect.isfunction(encoder_grad_norm) and inspect.isclass(Advantage)


def test_the_own_loop_runs_and_the_sampler_learns(tiny_bert, english_corpus, capsys):
    own_loop = load_module(EXAMPLE)
    sampler = own_loop.main(["--model_name_or_path", tiny_bert, "--train_file", english_corpus, "--max_steps", "16",
                             "--meta_length", "8", "--max_seq_length", "64", "--batch_size", "4",
                             "--eval_batch_size", "8", "--learning_rate", "1e-3"])
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.split(":")[0] for line in printed] == ["step 8", "step 16"]
    assert all("reward none" not in line for line in printed)
    assert sampler.baselines is not None and sampler.advantage.count == 2
    assert max(sampler.probabilities.values()) > 0.25 + 1e-3, "two REINFORCE steps moved the distribution"


def python_block(markdown, heading):
    """The first ```python block after ``heading``."""
    text = markdown[markdown.index(heading):]
    start = text.index("```python\n") + len("```python\n")
    return text[start:text.index("```", start)]


def test_the_library_doc_loop_is_the_example_shortened():
    snippet = [line.strip() for line in python_block((ROOT / "docs" / "library.md").read_text(),
                                                     "## A loop of your own").splitlines() if line.strip()]
    lines = iter(line.strip() for line in EXAMPLE.read_text().splitlines())
    missing = [line for line in snippet if not any(line == candidate for candidate in lines)]
    assert len(snippet) > 20 and not missing, f"not in examples/own_loop.py, in this order: {missing}"

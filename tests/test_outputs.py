"""mometas_utils.outputs: which files are a run's, clearing exactly those, and an output folder that can be written."""

import pytest

from mometas_utils.errors import MometasInputError
from mometas_utils.outputs import check_writable_dir, clear_run_outputs, run_outputs


def finished_run(folder):
    for name in ("model.safetensors", "config.json", "tokenizer.json", "vocab.txt", "README.md", "mometas_args.json",
                 "sampler_history.jsonl", "probabilities.png", "modeling_mometas.py", "demo_corpus.txt", "notes.md"):
        (folder / name).write_text("x")
    for name in ("step_10", ".step_20.tmp", "mometas_pretraining", "data"):
        (folder / name).mkdir()
        (folder / name / "f").write_text("x")
    return folder


def test_run_outputs_name_what_another_run_left(tmp_path):
    assert run_outputs(tmp_path) == [] and run_outputs(tmp_path / "missing") == []
    (tmp_path / "README.md").write_text("mine")  # a README alone is not a run
    assert run_outputs(tmp_path) == []
    finished_run(tmp_path)
    assert run_outputs(tmp_path) == [".step_20.tmp", "config.json", "model.safetensors", "mometas_args.json",
                                     "sampler_history.jsonl", "step_10"]


def test_clear_removes_the_run_and_nothing_else(tmp_path):
    finished_run(tmp_path)
    clear_run_outputs(tmp_path)
    # The demo corpus is an input; notes.md and data/ are the user's.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "demo_corpus.txt", "notes.md"]


def test_output_dir_that_cannot_be_written(tmp_path):
    file = tmp_path / "a_file"
    file.write_text("x")
    with pytest.raises(MometasInputError, match=f"output_dir: {file} is a file"):
        check_writable_dir(file)
    with pytest.raises(MometasInputError, match="output_dir: cannot write in"):
        check_writable_dir(file / "sub")
    with pytest.raises(MometasInputError, match="output_dir: cannot write in /proc/mometas_out"):
        check_writable_dir("/proc/mometas_out")
    assert check_writable_dir(tmp_path / "new" / "run").is_dir()
    assert list((tmp_path / "new" / "run").iterdir()) == []  # the write test leaves nothing behind

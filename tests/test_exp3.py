"""The EXP3 (ODM) sampler inside the pre-training script: drawn every step, learned from every step, resumed exactly."""

import json
import shutil

import pytest

from test_pretraining import QUICK, read_rows, run_script

EXP3 = ["exp3" if a == "uniform" else a for a in QUICK]


def test_exp3_runs_in_the_script_and_resumes_exactly(tiny_bert, english_corpus, tmp_path):
    base = ["--model_name_or_path", tiny_bert, "--train_file", english_corpus, *EXP3, "--max_train_steps", 8,
            "--checkpointing_steps", 4, "--baseline_meta_test", "--exp3_smoothing", "0.5", "--seed", 3]
    full = run_script([*base, "--output_dir", tmp_path / "full"])
    assert full.returncode == 0, full.stderr[-3000:]
    rows = read_rows(tmp_path / "full")
    # It learns from training losses between meta-tests: the distribution has moved by step 2.
    assert rows[1]["sampler"] == "exp3" and rows[1]["probabilities"] != {"mlm": 0.5, "dtd": 0.5}
    assert all(row["val_loss"] is not None for row in rows)  # --baseline_meta_test records the curves
    # Every row after step 0 says what its window's draws were made from on average: exp3 moves every step,
    # so that mean is not the distribution the row ends with.
    assert rows[0]["mean_probabilities"] is None
    assert all(sum(r["mean_probabilities"].values()) == pytest.approx(1.0) for r in rows[1:])
    assert rows[2]["mean_probabilities"] != rows[1]["probabilities"]

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tmp_path / "full" / "step_4", resumed / "step_4")
    shutil.copy(tmp_path / "full" / "sampler_history.jsonl", resumed / "sampler_history.jsonl")
    again = run_script([*base, "--output_dir", resumed, "--resume_from_checkpoint", "latest"])
    assert again.returncode == 0, again.stderr[-3000:]
    keys = ("step", "probabilities", "rollout", "train_loss", "val_loss", "reward")
    assert [{k: r[k] for k in keys} for r in read_rows(resumed)] == [{k: r[k] for k in keys} for r in rows]
    assert json.loads((tmp_path / "full" / "mometas_args.json").read_text())["exp3_smoothing"] == 0.5


def test_a_mometas_rows_mean_probabilities_are_the_previous_rows_distribution(tiny_bert, english_corpus, tmp_path):
    args = ["mometas" if a == "uniform" else a for a in QUICK]
    done = run_script(["--model_name_or_path", tiny_bert, "--train_file", english_corpus, *args, "--max_train_steps", 6,
                       "--meta_step_size", "1", "--output_dir", tmp_path / "run"])
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_rows(tmp_path / "run")
    assert [r["step"] for r in rows] == [0, 2, 4, 6]
    assert rows[2]["probabilities"] != rows[1]["probabilities"]  # it learned, so the check below can fail
    for before, row in zip(rows, rows[1:]):
        assert row["mean_probabilities"] == pytest.approx(before["probabilities"], rel=1e-12)


def test_exp3_smoothing_out_of_range_is_a_one_line_error(tiny_bert, english_corpus, tmp_path):
    done = run_script(["--model_name_or_path", tiny_bert, "--train_file", english_corpus, *EXP3, "--max_train_steps", 2,
                       "--exp3_smoothing", "1.5", "--output_dir", tmp_path / "bad"])
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: --exp3_smoothing: expected a number in [0, 1), got 1.5"]
    done = run_script(["--model_name_or_path", tiny_bert, "--train_file", english_corpus, *EXP3, "--max_train_steps", 2,
                       "--exp3_loss_scaling", "log", "--output_dir", tmp_path / "bad"])
    assert done.returncode == 2 and "--exp3_loss_scaling" in done.stderr.strip().splitlines()[-1]

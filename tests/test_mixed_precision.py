"""Mixed precision: the pre-training script under `accelerate launch --mixed_precision bf16` (CPU autocast)."""

import math
import sys

from test_pretraining import FAST, read_rows, run_script, script_env


def test_bf16_trains_all_five_objectives_and_updates_the_sampler(tiny_bert, english_corpus, tmp_path):
    out = tmp_path / "bf16"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
                "--mixed_precision", "bf16", "--dynamo_backend", "no"]
    args = ["--model_name_or_path", tiny_bert, "--train_file", english_corpus, *FAST,
            "--objectives", "mlm,cse,atd,dtd,emlm", "--sampler", "mometas", "--max_train_steps", 15,
            "--meta_length", 5, "--learning_rate", "5e-4", "--output_dir", out]
    result = run_script(args, launcher=launcher, env=script_env(ACCELERATE_USE_CPU="true"))
    assert result.returncode == 0, result.stderr[-4000:]
    assert "mixed precision bf16" in result.stdout + result.stderr, "the launcher's bf16 reached the Accelerator"
    rows = read_rows(out)
    assert [row["step"] for row in rows] == [0, 5, 10, 15]
    objectives = rows[0]["objectives"]
    for row in rows:
        assert set(row["val_loss"]) == set(objectives)
        assert all(math.isfinite(v) for v in row["val_loss"].values()), row["val_loss"]
        assert all(math.isfinite(v) for v in row["train_loss"].values() if v is not None), row["train_loss"]
    trained = {name for row in rows for name, n in row["counts"].items() if n}
    assert len(trained) >= 3, f"15 steps drew only {trained}"
    uniform = 1 / len(objectives)
    assert all(abs(p - uniform) < 1e-9 for p in rows[0]["probabilities"].values())
    final = rows[-1]["probabilities"]
    assert max(abs(p - uniform) for p in final.values()) > 1e-3, f"the sampler did not move: {final}"
    assert rows[-1]["reward"] is not None and math.isfinite(rows[-1]["reward"])

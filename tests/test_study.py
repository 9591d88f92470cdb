"""The study commands run end to end at tiny size: the diagnostic, the planted proof and the harness."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_committed_paths import absolute_paths

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "study"

pytestmark = pytest.mark.slow


def run(script, *args, cwd=ROOT):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, str(STUDY / script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def small_corpus(english_corpus, tmp_path_factory):
    """80 paragraphs: enough for a few batches, cheap to tag with spaCy."""
    path = tmp_path_factory.mktemp("study") / "small.txt"
    path.write_text("\n".join(Path(english_corpus).read_text().splitlines()[:80]) + "\n")
    return str(path)


def test_reward_noise_diagnostic(tiny_bert, small_corpus, tmp_path):
    out = tmp_path / "noise.json"
    table = run("reward_noise.py", "--tiny", "--model_name_or_path", tiny_bert, "--train_file", small_corpus,
                "--max_seq_length", 32, "--per_device_train_batch_size", 4, "--per_device_eval_batch_size", 4,
                "--max_train_steps", 6, "--meta_length", 2, "--null_pairs", 3, "--eval_batches", 2, "--output", out)
    result = json.loads(out.read_text())
    rows = {row["config"]: row for row in result["analysis"]["table"]}
    # A frozen model measured on one fixed set of batches gives exactly the same losses every time.
    assert rows["fixed batches"]["null_std"] == 0 and rows["fixed batches"]["null_max_abs"] == 0
    assert rows["literal Eq. 3 (paper: redrawn, 1 batch)"]["null_std"] > 0  # redrawn text is noise
    assert len(result["measured"]["training"]) == 4 and len(result["measured"]["null"]) == 4
    assert "| reward configuration |" in table
    # Cached: a second call with the same settings measures nothing again.
    assert "is up to date" in run("reward_noise.py", "--tiny", "--model_name_or_path", tiny_bert, "--train_file",
                                  small_corpus, "--max_seq_length", 32, "--per_device_train_batch_size", 4,
                                  "--per_device_eval_batch_size", 4, "--max_train_steps", 6, "--meta_length", 2,
                                  "--null_pairs", 3, "--eval_batches", 2, "--output", out)


def test_planted_benchmark_harness(tiny_bert, small_corpus, tmp_path):
    """The benchmark at toy size: the testbed from scratch, two fractions, a MOMETAS arm and the oracle."""
    results = tmp_path / "benchmark"
    args = ["--testbed", "scratch", "--model_name_or_path", tiny_bert, "--train_file", small_corpus, "--meta_lengths", 5,
            "--seeds", 1, "--max_train_steps", 10, "--max_seq_length", 32, "--per_device_train_batch_size", 4,
            "--per_device_eval_batch_size", 8, "--warm_batch_size", 4, "--final_eval_batches", 1, "--warm_steps", 3,
            "--layers", 1, "--hidden_size", 32, "--heads", 2, "--results", results]
    table = run("planted.py", *args, "--arms", "robust_mlm,oracle", "--fractions", "1,0")
    names = sorted(p.name for p in results.glob("*.json"))
    assert names == ["scratch_K5_f0_oracle_seed1.json", "scratch_K5_f0_robust_mlm_seed1.json",
                     "scratch_K5_f1_oracle_seed1.json", "scratch_K5_f1_robust_mlm_seed1.json"]
    run_file = json.loads((results / "scratch_K5_f1_robust_mlm_seed1.json").read_text())
    assert run_file["settings"]["hidden_size"] == 32 and run_file["meta_length"] == 5 and run_file["fraction"] == 1
    assert [row["step"] for row in run_file["rows"]] == [0, 5, 10]
    assert all(set(row["reward_terms"]) == {"mlm"} for row in run_file["rows"] if row["reward_terms"])
    assert run_file["rows"][-1]["probabilities"]["shuffled_mlm"] != 0.2  # the sampler did update
    assert set(run_file["final_val_loss"]) == {"mlm", "cse", "atd", "dtd", "shuffled_mlm"}
    assert run_file["cpu_seconds"] > 0
    oracle = json.loads((results / "scratch_K5_f1_oracle_seed1.json").read_text())
    assert set(oracle["final_val_loss"]) == {"mlm", "cse", "atd", "dtd"}
    assert oracle["rows"][-1]["val_loss"] is not None  # samplers that need no meta-test are meta-tested too
    # Committed results never name a path of the machine they ran on.
    assert str(ROOT) not in json.dumps(run_file) and "/tmp" not in json.dumps(run_file["settings"])
    summary = json.loads((tmp_path / "benchmark.json").read_text())["groups"]
    regret = summary["scratch/K5/f1/robust_mlm"]["regret"]["mean"]
    assert regret == pytest.approx(run_file["final_val_loss"]["mlm"] - oracle["final_val_loss"]["mlm"])
    assert (tmp_path / "benchmark_weights.png").is_file() and (tmp_path / "benchmark_power.png").is_file()
    assert "**scratch, K = 5 (2 updates), f = 1**" in table and "| robust_mlm |" in table
    # Cached: a second call runs nothing.
    again = run("planted.py", *args, "--arms", "oracle", "--fractions", "1")
    assert "1 already done" in again and "scratch_K5_f1_oracle_seed1 ..." not in again


def test_planted_measures_by_hand():
    import sys

    sys.path.insert(0, str(STUDY))
    from planted_analysis import analyse, time_to_drop, weight_between

    def rows(weights, k=10):
        return [{"step": i * k, "probabilities": {"shuffled_mlm": w}, "val_loss": {"mlm": 5.0},
                 "counts": {"shuffled_mlm": 2}, "reward": 0.0} for i, w in enumerate(weights)]

    # 0.2 on [0, 10), 0.05 on [10, 20), 0.12 on [20, 30), 0.08 on [30, 40): second half [20, 40) = 0.10.
    history = rows([0.2, 0.05, 0.12, 0.08, 0.06])
    assert weight_between(history, "shuffled_mlm", 20, 40) == pytest.approx(0.10)
    assert time_to_drop(history) == 30  # the dip at step 10 does not last
    assert time_to_drop(rows([0.2, 0.05, 0.12])) is None
    runs = []
    for arm, final, weights in (("uniform", 5.0, [0.2] * 5), ("robust_mlm", 4.8, [0.2, 0.1, 0.05, 0.05, 0.05]),
                                ("oracle", 4.5, None)):
        for seed in range(1, 6):
            runs.append({"testbed": "small", "meta_length": 10, "fraction": 1.0, "arm": arm, "seed": seed,
                         "objectives": ["mlm"] + ([] if weights is None else ["shuffled_mlm"]),
                         "settings": {"max_train_steps": 40}, "final_val_loss": {"mlm": final + 0.01 * seed},
                         "rows": rows(weights or [0.2] * 5)})
    groups = analyse(runs)
    g = groups["small/K10/f1/robust_mlm"]
    assert g["seeds_below_0.10"] == 5 and g["time_to_drop_per_seed"] == [20] * 5
    assert g["mlm_loss_minus_uniform"]["mean"] == pytest.approx(-0.2)
    assert g["regret"]["mean"] == pytest.approx(0.3)
    # No f = 0 control was run: the bar holds on what was measured and says the control is missing.
    assert g["bar"] == {"dropped_in_4_of_5": True, "mlm_no_worse_than_uniform": True,
                        "duplicate_kept_in_4_of_5": None, "holds": True}
    assert groups["small/K10/f1/uniform"]["seeds_below_0.10"] == 0 and groups["small/K10/f1/uniform"]["bar"] is None


def test_planted_signal_by_half_and_late_drift_by_hand():
    sys.path.insert(0, str(STUDY))
    from planted_analysis import low_and_last, signal_by_half

    # Updates at steps 10..40 of a 40-step run; the first half is (0, 20], the second (20, 40].
    rows = [{"step": 0, "probabilities": {"shuffled_mlm": 0.2}, "reward": None}]
    for step, reward, advantage, weight in ((10, 0.02, 1.0, 0.12), (20, -0.01, -0.5, 0.06),
                                            (30, 0.0, 0.2, 0.08), (40, 0.004, -0.1, 0.11)):
        rows.append({"step": step, "probabilities": {"shuffled_mlm": weight}, "reward": reward, "advantage": advantage})
    halves = signal_by_half(rows, 40)
    assert halves["first"] == {"mean_abs_advantage": pytest.approx(0.75), "zero_reward_share": 0.0}
    assert halves["second"] == {"mean_abs_advantage": pytest.approx(0.15), "zero_reward_share": 0.5}
    assert low_and_last(rows) == {"lowest": 0.06, "last": 0.11}


def test_study_harness_caches_and_reports(tiny_bert, small_corpus, tmp_path, shared_data):
    args = ["--model_name_or_path", tiny_bert, "--train_file", small_corpus, "--samplers", "uniform", "--seeds", 1,
            "--tasks", "sst2", "--train_documents", 70, "--validation_documents", 10, "--name", f"test_{os.getpid()}",
            "--extra_pretrain", "--max_train_steps 4 --meta_length 2 --max_seq_length 32",
            "--extra_finetune", "--max_train_samples 16 --max_eval_samples 16 --num_train_epochs 1 --max_length 32"]
    name = args[args.index("--name") + 1]
    try:
        table = run("run_study.py", *args)
        summary = json.loads((STUDY / "results" / f"{name}.json").read_text())
        assert set(summary["finetune_scores"]) == {"base/sst2", "uniform_seed1/sst2"}
        assert "| Ub |" in table and "| MiniLM (no continual pre-training) |" in table
        assert not (STUDY / "cache" / name / "models" / "uniform_seed1").exists(), "models are not kept"
        # The commands name this machine's folders as placeholders or relative to the repository.
        for result in sorted((STUDY / "results" / name).glob("*.json")):
            command = json.loads(result.read_text())["command"]
            assert command[0] == "python" and not absolute_paths(" ".join(command)), (result.name, command)
        finetune = json.loads((STUDY / "results" / name / "finetune_base_sst2.json").read_text())["command"]
        assert "$MOMETAS_DATA_DIR/glue/sst2/train.tsv" in finetune and f"study/cache/{name}/finetune/base_sst2" in finetune
        # A second call finds every run cached and only reports.
        again = run("run_study.py", *args)
        assert "[pretrain" not in again and "[finetune" not in again
    finally:
        import shutil

        shutil.rmtree(STUDY / "results" / name, ignore_errors=True)
        shutil.rmtree(STUDY / "cache" / name, ignore_errors=True)
        for suffix in (".json", "_weights.png", "_reward.png"):
            (STUDY / "results" / f"{name}{suffix}").unlink(missing_ok=True)


def test_sampler_model_recovers_the_planted_effect_and_predicts_lambda(tmp_path):
    """Synthetic uniform windows with a known per-draw effect: the fit finds it, and the simulated
    sampler keeps more weight on the harmful objective with lambda = 3 than with lambda = 0."""
    import numpy as np

    rng = np.random.default_rng(0)
    names = ["mlm", "cse", "atd", "dtd", "shuffled_mlm"]
    alpha = np.array([3e-3, 0.0, 0.0, 0.0, -6e-3])
    for seed in (1, 2):
        loss, rows = 5.0, [{"val_loss": {"mlm": 5.0}, "counts": dict.fromkeys(names, 0), "probabilities": None}]
        for _ in range(60):
            counts = rng.multinomial(8, [0.2] * 5)
            loss *= 1 - (counts @ alpha + 1e-3 * rng.standard_normal())
            rows.append({"val_loss": {"mlm": loss}, "counts": dict(zip(names, counts.tolist())),
                         "probabilities": dict.fromkeys(names, 0.2)})
        (tmp_path / f"uniform_seed{seed}.json").write_text(json.dumps({"rows": rows}))
    out = tmp_path / "model.json"
    run("sampler_model.py", "--results", tmp_path, "--output", out, "--runs", 4)
    result = json.loads(out.read_text())
    fitted = result["fit"]["alpha"]
    assert fitted["shuffled_mlm"] == pytest.approx(-6e-3, abs=1e-3)
    assert fitted["mlm"] == pytest.approx(3e-3, abs=1e-3)
    by_lambda = {r["entropy_lambda"]: r["second_half_mean"] for r in result["settings"]
                 if r["meta_length"] == 8 and r["updates"] == 50 and r["meta_step_size"] == 0.1}
    assert by_lambda[0.0] < by_lambda[3.0] < 0.2


def test_planted_objective_corrupts_the_share_f_of_masked_targets(tokenizer):
    """shuffled_mlm's dial: f = 0 is MLM, f = 1 takes every target from the next row, f = 0.5 about half."""
    import sys

    import torch

    sys.path.insert(0, str(STUDY))
    import shuffled_mlm

    from mometas_utils.objectives import MLMCollator, build_objectives

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (64, 48), generator=generator)
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    reference = MLMCollator(tokenizer, seed=5)(dict(batch))
    masked = reference["labels"] != -100
    other = torch.roll(ids, 1, 0)
    try:
        for f in (0.0, 0.5, 1.0):
            shuffled_mlm.register(f)
            out = build_objectives(["shuffled_mlm"], tokenizer, seed=5)["shuffled_mlm"](dict(batch))
            # The inputs (masks, 80/10/10) are MLM's: only the targets change.
            assert torch.equal(out["input_ids"], reference["input_ids"]) and torch.equal(out["labels"] != -100, masked)
            from_other = (out["labels"] == other)[masked].float().mean().item()
            kept = (out["labels"] == reference["labels"])[masked].float().mean().item()
            if f == 0.0:
                assert kept == 1.0
            elif f == 1.0:
                assert from_other == 1.0
            else:
                assert 0.4 < from_other < 0.6 and from_other + kept == pytest.approx(1.0, abs=0.01)
    finally:
        shuffled_mlm.register(1.0)

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
    from planted_analysis import analyse, time_to_drop, verdicts, weight_between

    def rows(weights, k=10):
        return [{"step": i * k, "probabilities": {"shuffled_mlm": w}, "val_loss": {"mlm": 5.0},
                 "counts": {"shuffled_mlm": 2}, "reward": 0.0} for i, w in enumerate(weights)]

    # 0.2 on [0, 10), 0.05 on [10, 20), 0.12 on [20, 30), 0.08 on [30, 40): second half [20, 40) = 0.10.
    history = rows([0.2, 0.05, 0.12, 0.08, 0.06])
    assert weight_between(history, "shuffled_mlm", 20, 40) == pytest.approx(0.10)
    assert time_to_drop(history) == 30  # the dip at step 10 does not last
    assert time_to_drop(rows([0.2, 0.05, 0.12, 0.2])) is None
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
    # No f = 0 control was run: a missing result, not a pass.
    assert g["bar"] == {"dropped_in_4_of_5": True, "mlm_no_worse_than_uniform": True,
                        "duplicate_kept_in_4_of_5": None, "holds": None}
    # Without CSE, ATD and DTD beside it there is no discrimination to measure either.
    assert verdicts(groups)["small/K10/robust_mlm"]["verdict"] == "not concluded: no discrimination measured"
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
    # The weights the windows were drawn with: each row's distribution is drawn from until the next row.
    assert low_and_last(rows) == {"lowest": 0.06, "last": 0.08}


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


def _synthetic_runs(folder, *, c, tau, effect, noise, seeds, arm="uniform", steps=300, k=10, seed0=0):
    """Planted-benchmark result files drawn from the step model by a loop of its own: a step on objective j
    moves MLM's log loss by -a_j u_s g(t - s), g(d) = c + (1 - c) exp(-d / tau)."""
    import math

    import numpy as np

    names = ["mlm", "cse", "atd", "dtd", "shuffled_mlm"]
    warmup = math.ceil(0.06 * steps)
    for seed in seeds:
        rng = np.random.default_rng(seed0 + seed)
        draws = rng.integers(0, 5, size=steps)
        u = [s / warmup if s < warmup else (steps - s) / (steps - warmup) for s in range(steps)]
        rows, measured, previous = [], 5.0, 0.0
        for end in range(0, steps + 1, k):
            level = sum(effect[draws[s]] * u[s] * (c + (1 - c) * math.exp(-(end - 1 - s) / tau)) for s in range(end))
            if rows:
                measured = rows[-1]["val_loss"]["mlm"] * (1 - (level - previous) + noise * rng.standard_normal())
            previous = level
            rollout = [names[d] for d in draws[max(0, end - k):end]]
            rows.append({"step": end, "val_loss": {"mlm": measured}, "rollout": rollout,
                         "counts": {n: rollout.count(n) for n in names}, "probabilities": dict.fromkeys(names, 0.2),
                         "reward": None})
        run = {"testbed": "toy", "meta_length": k, "fraction": 1.0, "arm": arm, "seed": seed, "objectives": names,
               "settings": {"max_train_steps": steps, "warmup_ratio": 0.06}, "final_val_loss": {"mlm": measured},
               "rows": rows}
        (folder / f"toy_K{k}_f1_{arm}_seed{seed}.json").write_text(json.dumps(run))


def test_sampler_model_recovers_recovering_harm_and_refuses_to_predict_what_it_cannot_reproduce(tmp_path):
    """Runs drawn from a known step model (a fifth of each effect lasts, the rest recovers in 10 steps):
    the fit finds c, tau and the per-draw effects. The recipe's runs here keep p = 0.2, which the fitted
    model's sampler does not reproduce, so the model prints no prediction."""
    effect = [0.004, 0.0, 0.0, 0.0, -0.008]
    _synthetic_runs(tmp_path, c=0.2, tau=10, effect=effect, noise=1e-4, seeds=(1, 2, 3))
    _synthetic_runs(tmp_path, c=0.2, tau=10, effect=effect, noise=1e-4, seeds=(1, 2, 3, 4, 5), arm="robust_mlm",
                    seed0=10)
    out = tmp_path / "model.json"
    printed = run("sampler_model.py", "--results", tmp_path, "--output", out, "--runs", 8, "--fits", "10:toy")
    result = json.loads(out.read_text())
    fitted = result["fits"]["K10"]
    assert (fitted["persistent_share"], fitted["recovery_steps"]) == (0.2, 10)
    assert fitted["effect_per_draw"]["shuffled_mlm"] == pytest.approx(-0.008, abs=5e-4)
    assert fitted["effect_per_draw"]["mlm"] == pytest.approx(0.004, abs=5e-4)
    [check] = result["checks"]
    assert check["measured"]["second_half_mean"] == pytest.approx(0.2) and not check["reproduces"]
    assert result["table"] == [] and "predicts nothing" in printed


def test_sampler_model_simulation_and_reproduction_rule_by_hand():
    sys.path.insert(0, str(STUDY))
    from sampler_model import rate_factors, reproduces, simulate

    # The script's linear schedule: warm-up over ceil(0.06 * 100) = 6 steps, then down to 0.
    u = rate_factors(100, 0.06)
    assert u[0] == 0.0 and u[3] == pytest.approx(0.5) and u[6] == 1.0 and u[-1] == pytest.approx(1 / 94)
    model = {"effect_per_draw": {"mlm": 0.01, "cse": 0.0, "atd": 0.0, "dtd": 0.0, "shuffled_mlm": -0.02},
             "persistent_share": 1.0, "recovery_steps": None, "noise": {"s0": 0.0, "s1": 0.001},
             "measurement_share": 0.0, "start_mlm_loss": 5.0}
    strong = simulate(model, meta_length=10, updates=60, entropy_lambda=0.0, runs=4, seed=0)
    entropic = simulate(model, meta_length=10, updates=60, entropy_lambda=3.0, runs=4, seed=0)
    assert strong["second_half_mean"] < entropic["second_half_mean"] < 0.2
    # λ following the rate: full strength early, none left at the end, so between the two.
    follows = simulate(model, meta_length=10, updates=60, entropy_lambda=3.0, runs=4, seed=0,
                       entropy_lambda_schedule="learning_rate")
    assert strong["second_half_mean"] < follows["second_half_mean"] < entropic["second_half_mean"]
    # The control: a duplicate that helps as MLM does climbs above uniform's 0.2, and the report counts the
    # runs that keep it at 0.15 or more.
    control = simulate(model, meta_length=10, updates=60, entropy_lambda=3.0, runs=4, seed=0, fraction=0.0)
    assert control["second_half_mean"] > 0.3 and control["share_at_least_0.15"] == 1.0
    assert "share_below_0.10" not in control
    # Harm that is gone before the meta-test (recovery in one step) leaves the sampler nothing to learn from.
    hidden = simulate({**model, "persistent_share": 0.0, "recovery_steps": 1.0, "noise": {"s0": 0.002, "s1": 0.0}},
                      meta_length=100, updates=10, entropy_lambda=3.0, runs=4, seed=0)
    assert hidden["second_half_mean"] > strong["second_half_mean"]
    # Two standard errors of the measured seeds' mean, and their count of seeds below 0.10 not improbable.
    sim = {"second_half_mean": 0.10, "second_half_std": 0.04, "share_below_0.10": 0.5}
    assert reproduces(sim, {"second_half_per_seed": [0.1] * 4, "second_half_mean": 0.139, "seeds_below_0.10": 2})
    assert not reproduces(sim, {"second_half_per_seed": [0.1] * 4, "second_half_mean": 0.141, "seeds_below_0.10": 2})
    assert not reproduces({**sim, "share_below_0.10": 0.95},
                          {"second_half_per_seed": [0.1] * 4, "second_half_mean": 0.10, "seeds_below_0.10": 1})


def _weights_rows(windows, k=10):
    """Rows whose windows were drawn with the given {objective: p} (as mean_probabilities)."""
    rows = [{"step": 0, "probabilities": windows[0], "val_loss": {"mlm": 5.0}, "reward": None}]
    for i, mean in enumerate(windows, start=1):
        rows.append({"step": i * k, "probabilities": mean, "mean_probabilities": mean, "val_loss": {"mlm": 5.0},
                     "counts": {}, "reward": 0.0})
    return rows


def test_planted_discrimination_control_and_verdict_by_hand():
    sys.path.insert(0, str(STUDY))
    from planted_analysis import analyse, markdown, verdicts

    def w(planted, mlm, others):
        return {"mlm": mlm, "cse": others, "atd": others, "dtd": others, "shuffled_mlm": planted}

    # Second half = the last two of four windows. At f = 1 the planted weight 0.05 against the others' 0.15:
    # discrimination -0.10. At f = 0 the duplicate keeps 0.30 beside MLM's 0.31: duplicate - MLM = -0.01.
    harm = [w(0.2, 0.2, 0.2), w(0.1, 0.3, 0.2), w(0.05, 0.5, 0.15), w(0.05, 0.5, 0.15)]
    kept = [w(0.2, 0.2, 0.2)] * 2 + [w(0.30, 0.31, 0.13)] * 2
    pushed = [w(0.2, 0.2, 0.2)] * 2 + [w(0.05, 0.5, 0.15)] * 2
    runs = []
    # Gb and Lb have no f = 0 control: Lb sets the harm apart (not concluded), Gb does not (nothing detected).
    blind = [w(0.2, 0.2, 0.2)] * 2 + [w(0.2, 0.35, 0.15)] * 2
    for f, arm, windows in ((1.0, "robust_mlm", harm), (0.0, "robust_mlm", kept), (1.0, "robust_all", harm),
                            (0.0, "robust_all", pushed), (1.0, "uniform", [w(0.2, 0.2, 0.2)] * 4),
                            (1.0, "loss", harm), (1.0, "gradient", blind)):
        for seed in range(1, 6):
            runs.append({"testbed": "toy", "meta_length": 10, "fraction": f, "arm": arm, "seed": seed,
                         "objectives": ["mlm", "cse", "atd", "dtd", "shuffled_mlm"],
                         "settings": {"max_train_steps": 40},
                         "final_val_loss": {"mlm": 5.0 - 0.1 * (arm != "uniform")}, "rows": _weights_rows(windows)})
    runs.append({**runs[0], "arm": "oracle", "seed": 1, "objectives": ["mlm", "cse", "atd", "dtd"],
                 "final_val_loss": {"mlm": 4.8}})
    groups = analyse(runs)
    g = groups["toy/K10/f1/robust_mlm"]
    assert g["discrimination_per_seed"] == pytest.approx([-0.10] * 5)
    assert g["regret_per_seed"] == [pytest.approx(0.1), None, None, None, None]
    assert g["regret"] is None  # one oracle seed for five: no mean, printed "–"
    control = groups["toy/K10/f0/robust_mlm"]
    assert control["duplicate_minus_mlm_per_seed"] == pytest.approx([-0.01] * 5)
    assert control["seeds_at_least_0.15"] == 5
    found = verdicts(groups)
    assert found["toy/K10/robust_mlm"]["verdict"] == "detects harm"
    assert found["toy/K10/robust_all"]["verdict"].startswith("favours the rewarded objective")
    assert found["toy/K10/loss"]["verdict"] == "not concluded: sets the harm apart, but has no f = 0 control"
    assert found["toy/K10/gradient"]["verdict"] == "does not tell the harm apart"
    assert groups["toy/K10/f1/gradient"]["discrimination_per_seed"] == pytest.approx([0.05] * 5)
    # The estimator change on the same seeds: discrimination -0.14 against the recipe's -0.10 at f = 1, the
    # duplicate at 0.35 against 0.30 at f = 0. Both improve; on 4 seeds nothing is concluded.
    from planted_report import candidate_decision

    sharper = [w(0.2, 0.2, 0.2)] * 2 + [w(0.02, 0.5, 0.16)] * 2
    keeps_more = [w(0.2, 0.2, 0.2)] * 2 + [w(0.35, 0.31, 0.34 / 3)] * 2
    change = [{**runs[0], "arm": "robust_mlm_lr_lambda", "fraction": f, "seed": seed, "rows": _weights_rows(windows)}
              for f, windows in ((1.0, sharper), (0.0, keeps_more)) for seed in range(1, 6)]
    decided = candidate_decision(analyse(runs + change))
    assert decided["discrimination_minus_recipe_per_seed"] == pytest.approx([-0.04] * 5)
    assert decided["duplicate_weight_minus_recipe_per_seed"] == pytest.approx([0.05] * 5)
    assert decided["decision"] == "improves both: make it the default"
    from planted_report import verdict_markdown

    text = verdict_markdown({"groups": analyse(runs + change), "verdicts": {}, "candidate": decided}, None)
    assert ("discrimination -0.040 ± 0.000 (n = 5) (lower in 5), the duplicate's weight at f = 0 +0.050 ± 0.000 "
            "(n = 5) (higher in 5). Decision: **improves both: make it the default**.") in text
    assert candidate_decision(analyse(runs + change[1:]))["decision"].startswith("not concluded")
    assert candidate_decision(groups) is None  # no run of the change: nothing to decide
    table = markdown(groups)
    assert "| robust_mlm | 5 | 0.050 ± 0.000 (n=5) | -0.100 ± 0.000 (n=5) |" in table
    assert "| -0.100 ± 0.000 (n=5) | – |" in table  # the paired Δ vs uniform exists, the regret does not


def test_exp3_weights_come_from_what_the_draws_were_made_from():
    """A sampler that moves every step: the row's mean_probabilities, not its end-of-window distribution."""
    sys.path.insert(0, str(STUDY))
    from planted_analysis import weight_between

    rows = [{"step": 0, "probabilities": {"shuffled_mlm": 0.2}},
            {"step": 10, "probabilities": {"shuffled_mlm": 0.9}, "mean_probabilities": {"shuffled_mlm": 0.3}},
            {"step": 20, "probabilities": {"shuffled_mlm": 0.9}, "mean_probabilities": {"shuffled_mlm": 0.5}}]
    assert weight_between(rows, "shuffled_mlm", 0, 20) == pytest.approx(0.4)


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

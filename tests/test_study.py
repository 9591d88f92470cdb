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


def test_planted_objective_proof_harness(tiny_bert, small_corpus, tmp_path):
    results = tmp_path / "planted"
    table = run("planted.py", "--model_name_or_path", tiny_bert, "--train_file", small_corpus, "--arms",
                "uniform,robust_named", "--seeds", 1, "--max_train_steps", 10, "--meta_length", 5,
                "--max_seq_length", 32, "--per_device_train_batch_size", 4, "--per_device_eval_batch_size", 8,
                "--warm_batch_size", 4, "--final_eval_batches", 1, "--warm_steps", 3,
                "--results", results)
    runs = sorted(p.name for p in results.glob("*.json"))
    assert runs == ["robust_named_seed1.json", "uniform_seed1.json"]
    named = json.loads((results / "robust_named_seed1.json").read_text())
    assert all(set(row["reward_terms"]) == {"mlm", "cse", "atd", "dtd"} for row in named["rows"] if row["reward_terms"])
    assert named["rows"][-1]["probabilities"]["shuffled_mlm"] != 0.2  # the sampler did update
    assert set(named["final_val_loss"]) == {"mlm", "cse", "atd", "dtd", "shuffled_mlm"}
    assert (tmp_path / "planted_probability.png").is_file()
    assert "| robust_named |" in table and "| uniform |" in table


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

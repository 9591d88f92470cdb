"""run_mometas_pretraining.py end to end: outputs, exact resume, two processes, bad input, the Hub."""

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "run_mometas_pretraining.py"
SECRET = "hf_TESTSECRETtokenABCDEFGHIJKLMNOP"
FAST = ["--max_seq_length", "64", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
        "--meta_eval_batches", "1", "--entity_tagger", "spacy"]
# Every option of the robust reward that is not already on by default, so that exact resume and the
# two-process run are tested with all of them.
REWARD_OPTIONS = ["--min_probability", "0.02", "--reward_objectives", "mlm,cse,atd,dtd"]


def script_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN",)}
    env.update({"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}, **extra)
    return env


def run_script(args, launcher=(), env=None, timeout=600):
    command = [*launcher] if launcher else [sys.executable]
    result = subprocess.run([*command, str(SCRIPT), *map(str, args)], cwd=ROOT, env=env or script_env(),
                            capture_output=True, text=True, timeout=timeout)
    return result


def load_script():
    spec = importlib.util.spec_from_file_location("run_mometas_pretraining", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def comparable(rows):
    """History rows without wall-clock fields."""
    return [{k: v for k, v in row.items() if k not in ("elapsed_seconds", "meta_test_seconds")} for row in rows]


def read_rows(folder):
    return [json.loads(line) for line in (Path(folder) / "sampler_history.jsonl").read_text().splitlines()]


def run_args(tiny_bert, corpus, out, steps=30):
    return ["--model_name_or_path", tiny_bert, "--train_file", corpus, *FAST, *REWARD_OPTIONS,
            "--max_train_steps", steps, "--meta_length", 10, "--checkpointing_steps", 10, "--output_dir", out]


@pytest.fixture(scope="module")
def full_run(tiny_bert, english_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "run"
    env = script_env(HF_TOKEN=SECRET)
    result = run_script([*run_args(tiny_bert, english_corpus, out), "--with_tracking", "--hub_token", SECRET], env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return out, result


def test_end_to_end_writes_model_history_plots_card_and_checkpoints(full_run):
    out, result = full_run
    for name in ("model.safetensors", "config.json", "modeling_mometas.py", "configuration_mometas.py",
                 "tokenizer.json", "sampler_history.jsonl", "README.md", "mometas_args.json",
                 "probabilities.png", "average_weights.png", "validation_loss.png", "cumulative_reward.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.bin")), "weights are safetensors only"
    assert [p.name for p in sorted(out.glob("step_*"))] == ["step_10", "step_20", "step_30"]
    assert not list(out.glob(".*tmp")), "no temporary folder is left behind"
    assert list(out.rglob("events.out.tfevents*")), "TensorBoard tracking wrote events"

    rows = read_rows(out)
    assert [r["step"] for r in rows] == [0, 10, 20, 30]
    assert rows[0]["reward"] is None and all(r["reward"] is not None for r in rows[1:])
    for row in rows[1:]:
        assert sum(row["counts"].values()) == 10 == len(row["rollout"])
        assert set(row["val_loss"]) == {"mlm", "cse", "atd", "dtd", "emlm"}
        assert set(row["reward_terms"]) == {"mlm", "cse", "atd", "dtd"}  # --reward_objectives
        assert row["reward"] == pytest.approx(sum(row["reward_terms"].values()))
        assert abs(sum(row["probabilities"].values()) - 1) < 1e-9
        assert min(row["probabilities"].values()) >= 0.02 - 1e-12  # --min_probability
    assert sum(rows[-1]["tokens_seen"].values()) > sum(rows[1]["tokens_seen"].values()) > 0
    card = (out / "README.md").read_text()
    assert "mometas" in card.lower() and "emlm" in card and "trust_remote_code" in card
    assert "average" in result.stdout.lower(), "the learned distribution is printed at the end"
    assert "smallest probability" in result.stdout and "reward floor clipped" in result.stdout


def test_no_secret_anywhere(full_run):
    out, result = full_run
    assert SECRET not in result.stdout + result.stderr
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_trained_folder_loads_in_a_fresh_process(full_run, tmp_path):
    out, _ = full_run
    code = textwrap.dedent(
        f"""
        import importlib.util
        assert importlib.util.find_spec("mometas_utils") is None
        from transformers import AutoModel, AutoModelForPreTraining
        assert type(AutoModel.from_pretrained({str(out)!r})).__name__ == "BertModel"
        full = AutoModelForPreTraining.from_pretrained({str(out)!r}, trust_remote_code=True)
        assert sorted(full.config.objectives) == ["atd", "cse", "dtd", "emlm", "mlm"]
        print("OK")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "OK" in result.stdout, result.stderr[-3000:]


def test_resume_matches_an_uninterrupted_run(full_run, tiny_bert, english_corpus, tmp_path):
    out, _ = full_run
    resumed = tmp_path / "run"
    resumed.mkdir()
    # The state of a run that stopped after step 10: its checkpoint and its history (which holds
    # later rows of the uninterrupted run; resume must drop them and rewrite them identically).
    shutil.copytree(out / "step_10", resumed / "step_10")
    shutil.copy(out / "sampler_history.jsonl", resumed / "sampler_history.jsonl")
    result = run_script([*run_args(tiny_bert, english_corpus, resumed), "--resume_from_checkpoint", "latest"])
    assert result.returncode == 0, result.stderr[-4000:]
    assert comparable(read_rows(resumed)) == comparable(read_rows(out))
    expected, got = load_file(out / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_two_processes_draw_the_same_objectives(tiny_bert, english_corpus, tmp_path):
    out = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    args = ["--model_name_or_path", tiny_bert, "--train_file", english_corpus, *FAST, *REWARD_OPTIONS,
            "--max_train_steps", 20, "--meta_length", 10, "--output_dir", out]
    result = run_script(args, launcher=launcher, env=script_env(ACCELERATE_USE_CPU="true"))
    assert result.returncode == 0, result.stderr[-4000:]
    rows = read_rows(out)
    assert all(row["num_processes"] == 2 for row in rows), "the launcher must really start two processes"
    trained = [row for row in rows if row["step"] > 0]
    assert len(trained) == 2
    for row in trained:
        first, second = row["process_rollouts"]
        assert len(first) == 10 and first == second
    # The linear schedule is the one of a single process: 2 warmup steps (6% of 20), then down to 0.
    assert rows[1]["learning_rate"] == pytest.approx(5e-5 * (20 - 10) / (20 - 2))


# ----------------------------------------------------------------------------- bad input


def expect_error(capsys, argv, *fragments):
    module = load_script()
    with pytest.raises(SystemExit) as exit_info:
        module.main([str(a) for a in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    message = err[-1]
    assert message.startswith("error: ") and "Traceback" not in "\n".join(err), err
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_unknown_objective(capsys, tiny_bert, english_corpus, tmp_path):
    expect_error(capsys, ["--model_name_or_path", tiny_bert, "--train_file", english_corpus, "--output_dir", tmp_path,
                          "--objectives", "mlm,nsp"], "--objectives", "nsp")


def test_emlm_without_a_working_tagger(capsys, tiny_bert, english_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("STANZA_RESOURCES_DIR", str(tmp_path / "no_stanza"))
    expect_error(capsys, ["--model_name_or_path", tiny_bert, "--train_file", english_corpus, "--output_dir", tmp_path,
                          "--entity_tagger", "stanza"], "stanza", "spacy")


def test_missing_and_empty_corpus(capsys, tiny_bert, tmp_path):
    base = ["--model_name_or_path", tiny_bert, "--output_dir", tmp_path / "out", *FAST, "--objectives", "mlm,dtd",
            "--meta_length", 5]
    expect_error(capsys, [*base, "--train_file", tmp_path / "nope.txt"], "--train_file", "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    expect_error(capsys, [*base, "--train_file", empty], "empty.txt")


def test_corpus_without_the_text_column(capsys, tiny_bert, tmp_path):
    corpus = tmp_path / "corpus.csv"
    corpus.write_text("title,body\nA title,Some body text that is long enough\nB,More text here\n")
    expect_error(capsys, ["--model_name_or_path", tiny_bert, "--output_dir", tmp_path / "out", "--train_file", corpus,
                          "--objectives", "mlm", "--meta_length", 5], "corpus.csv", "--text_column")


def test_meta_length_smaller_than_the_number_of_objectives(capsys, tiny_bert, english_corpus, tmp_path):
    expect_error(capsys, ["--model_name_or_path", tiny_bert, "--train_file", english_corpus, "--output_dir", tmp_path,
                          "--meta_length", 3, "--entity_tagger", "spacy"], "--meta_length")


def tree_digest(folder):
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_resume_with_other_objectives_and_unannounced_overwrite_leave_checkpoints_intact(
    capsys, full_run, tiny_bert, english_corpus
):
    out, _ = full_run
    before = tree_digest(out)
    base = ["--model_name_or_path", tiny_bert, "--train_file", english_corpus, *FAST, "--output_dir", out,
            "--meta_length", 10]
    expect_error(capsys, [*base, "--objectives", "mlm,cse", "--resume_from_checkpoint", "latest"], "--objectives", "step_30")
    expect_error(capsys, base, "--resume_from_checkpoint latest", "--overwrite_output_dir")
    assert tree_digest(out) == before


def test_lines_longer_than_max_length_are_packed_not_rejected(tiny_bert, tmp_path):
    corpus = tmp_path / "long.txt"
    corpus.write_text(("word " * 3000 + "\n") + ("another document with several ordinary words\n" * 20))
    out = tmp_path / "out"
    result = run_script(["--model_name_or_path", tiny_bert, "--train_file", corpus, *FAST, "--objectives", "mlm,atd",
                         "--sampler", "uniform", "--max_train_steps", 3, "--meta_length", 2, "--output_dir", out])
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "model.safetensors").is_file()


def test_push_to_hub_uploads_the_output_without_checkpoints_or_token(tiny_bert, english_corpus, tmp_path, capsys, caplog):
    module = load_script()
    out = tmp_path / "hub"
    with mock.patch("huggingface_hub.HfApi") as api_class:
        api_class.return_value.create_repo.return_value = "https://huggingface.co/org/mometas-tiny"
        module.main([str(a) for a in ["--model_name_or_path", tiny_bert, "--train_file", english_corpus, *FAST,
                                      "--objectives", "mlm,cse", "--sampler", "uniform", "--max_train_steps", 4,
                                      "--meta_length", 2, "--checkpointing_steps", 2, "--output_dir", out,
                                      "--push_to_hub", "--hub_model_id", "org/mometas-tiny", "--hub_token", SECRET]])
    api_class.assert_called_with(token=SECRET)
    upload = api_class.return_value.upload_folder.call_args.kwargs
    assert upload["repo_id"] == "org/mometas-tiny" and Path(upload["folder_path"]) == out
    assert "step_*" in upload["ignore_patterns"]
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err + caplog.text
    assert SECRET not in (out / "README.md").read_text() + (out / "mometas_args.json").read_text()


def test_demo_defaults_and_explicit_flags_win(tmp_path, minilm):
    args = load_script().parse_args(["--demo", "--output_dir", str(tmp_path / "demo"), "--max_train_steps", "7"])
    assert args.model_name_or_path == minilm
    assert args.objectives == "mlm,cse,atd,dtd,emlm" and args.sampler == "mometas"
    assert args.entity_tagger == "spacy" and args.max_train_steps == 7 and args.meta_length == 50
    lines = Path(args.train_file).read_text().splitlines()
    assert len(lines) > 500 and all(len(line.split()) >= 12 for line in lines)


def test_demo_runs_end_to_end_on_the_real_checkpoint(tmp_path):
    out = tmp_path / "demo"
    result = run_script(["--demo", "--output_dir", out, "--max_train_steps", 10, "--meta_length", 5])
    assert result.returncode == 0, result.stderr[-4000:]
    rows = read_rows(out)
    assert [r["step"] for r in rows] == [0, 5, 10]
    assert rows[-1]["probabilities"] != rows[0]["probabilities"], "MOMETAS moved the distribution"
    assert "average" in result.stdout and (out / "average_weights.png").is_file()

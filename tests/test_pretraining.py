"""run_mometas_pretraining.py end to end: outputs, exact resume, two processes, the output folder, non-finite,
the Hub, and the script copied alone."""

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import Future
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file

from conftest import UploadReadLater, accelerate_launch, nan_at

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "run_mometas_pretraining.py"
SECRET = "hf_TESTSECRETtokenABCDEFGHIJKLMNOP"
FAST = ["--max_seq_length", "64", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
        "--meta_eval_batches", "1", "--entity_tagger", "spacy"]
# Every option of the robust reward that is not already on by default, so that exact resume and the
# two-process run are tested with all of them.
REWARD_OPTIONS = ["--min_probability", "0.02", "--reward_objectives", "mlm,cse,atd,dtd"]
# A small, quick run: two objectives, no meta-test.
QUICK = ["--max_seq_length", "32", "--per_device_train_batch_size", "4", "--objectives", "mlm,dtd",
         "--sampler", "uniform", "--meta_length", "2"]


def script_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN",)}
    env.update({"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}, **extra)
    return env


def run_script(args, launcher=(), env=None, timeout=600, script=SCRIPT, cwd=ROOT):
    command = [*launcher] if launcher else [sys.executable]
    # A session of its own: on a timeout (a hang) the launcher's worker processes are killed with it.
    with subprocess.Popen([*command, str(script), *map(str, args)], cwd=cwd, env=env or script_env(), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def load_script():
    spec = importlib.util.spec_from_file_location("run_mometas_pretraining", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(argv):
    """The script's main() in this process; returns the exit code (0 when it returns)."""
    try:
        load_script().main([str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code
    return 0


def expect_error(capsys, argv, *fragments):
    """main(argv) ends in exit code 2 and one line `error: ...` holding every fragment; returns that line."""
    with pytest.raises(SystemExit) as exit_info:
        load_script().main([str(a) for a in argv])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert exit_info.value.code == 2, err[-2000:]
    assert len(errors) == 1 and err.rstrip().splitlines()[-1] == errors[0] and "Traceback" not in err, err[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def tree_digest(folder):
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


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


def copy_run(out, dest, checkpoints=True):
    shutil.copytree(out, dest, ignore=None if checkpoints else shutil.ignore_patterns("step_*"))
    return dest


# ----------------------------------------------------------------------------- outputs


def test_end_to_end_writes_model_history_plots_card_and_checkpoints(full_run):
    out, result = full_run
    for name in ("model.safetensors", "config.json", "modeling_mometas.py", "configuration_mometas.py",
                 "tokenizer.json", "sampler_history.jsonl", "README.md", "mometas_args.json",
                 "probabilities.png", "average_weights.png", "validation_loss.png", "cumulative_reward.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.bin")), "weights are safetensors only"
    assert [p.name for p in sorted(out.glob("step_*"))] == ["step_10", "step_20", "step_30"]
    assert all((p / "mometas_checkpoint.json").is_file() for p in out.glob("step_*"))
    assert not list(out.glob(".*tmp")), "no temporary folder is left behind"
    assert list(out.rglob("events.out.tfevents*")), "tracking (--report_to all) wrote TensorBoard events"

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
    assert card.startswith("---\n") and "pipeline_tag: fill-mask" in card and "trust_remote_code" in card
    assert "emlm" in card and "Sampler health: smallest probability" in card
    assert str(Path(out).parent) not in card and "tiny_bert" not in card.split("## Training arguments")[0]
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
        import sys
        from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForPreTraining, pipeline
        assert type(AutoModel.from_pretrained({str(out)!r})).__name__ == "BertModel"
        assert type(AutoModelForMaskedLM.from_pretrained({str(out)!r})).__name__ == "BertForMaskedLM"
        assert pipeline("fill-mask", model={str(out)!r})("The cat sat on the [MASK].")
        full = AutoModelForPreTraining.from_pretrained({str(out)!r}, trust_remote_code=True)
        assert sorted(full.config.objectives) == ["atd", "cse", "dtd", "emlm", "mlm"]
        assert not [m for m in sys.modules if m.startswith("mometas_utils")], "the folder needs nothing of ours"
        print("OK")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "OK" in result.stdout, result.stderr[-3000:]


# ----------------------------------------------------------------------------- resume


def test_resume_matches_an_uninterrupted_run(full_run, tiny_bert, english_corpus, tmp_path):
    out, _ = full_run
    resumed = tmp_path / "run"
    resumed.mkdir()
    # The state of a run that stopped after step 10: its checkpoint and its history (which holds
    # later rows of the uninterrupted run; resume sets them aside and rewrites them identically).
    shutil.copytree(out / "step_10", resumed / "step_10")
    shutil.copy(out / "sampler_history.jsonl", resumed / "sampler_history.jsonl")
    result = run_script([*run_args(tiny_bert, english_corpus, resumed), "--resume_from_checkpoint", "latest"])
    assert result.returncode == 0, result.stderr[-4000:]
    assert comparable(read_rows(resumed)) == comparable(read_rows(out))
    assert not (resumed / "sampler_history.superseded.json").exists()
    expected, got = load_file(out / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_resume_into_another_output_dir_continues_tokens_seen(full_run, tiny_bert, english_corpus, tmp_path):
    # The counters are part of the checkpoint, not rebuilt from the output folder's history.
    out, _ = full_run
    elsewhere = tmp_path / "elsewhere"
    result = run_script([*run_args(tiny_bert, english_corpus, elsewhere), "--resume_from_checkpoint", out / "step_10"])
    assert result.returncode == 0, result.stderr[-4000:]
    original = {row["step"]: row for row in comparable(read_rows(out))}
    rows = comparable(read_rows(elsewhere))
    assert [row["step"] for row in rows] == [20, 30]
    for row in rows:
        assert row["tokens_seen"] == original[row["step"]]["tokens_seen"]
        assert row == original[row["step"]]


def test_two_processes_draw_the_same_objectives_and_finish_off_the_meta_length(tiny_bert, english_corpus, tmp_path,
                                                                                default_port_taken):
    # 25 steps with K = 10: the last 5 steps fill no window, and every process takes part in that
    # last row's collectives (a main-process-only row hung here).
    out = tmp_path / "ddp"
    launcher = accelerate_launch(2)
    args = ["--model_name_or_path", tiny_bert, "--train_file", english_corpus, *FAST, *REWARD_OPTIONS,
            "--max_train_steps", 25, "--meta_length", 10, "--checkpointing_steps", 10, "--checkpoints_total_limit", 1,
            "--output_dir", out]
    result = run_script(args, launcher=launcher, env=script_env(ACCELERATE_USE_CPU="true"), timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = read_rows(out)
    assert all(row["num_processes"] == 2 for row in rows), "the launcher must really start two processes"
    assert [row["step"] for row in rows] == [0, 10, 20, 25]
    for row, length in zip(rows[1:], (10, 10, 5)):
        first, second = row["process_rollouts"]
        assert len(first) == length and first == second
    assert rows[-1]["reward"] is None and rows[-1]["tokens_seen"] != rows[-2]["tokens_seen"]
    # The linear schedule is the one of a single process: 2 warmup steps (6% of 25), then down to 0.
    assert rows[1]["learning_rate"] == pytest.approx(5e-5 * (25 - 10) / (25 - 2))
    assert [p.name for p in out.glob("step_*")] == ["step_20"], "--checkpoints_total_limit 1"
    assert (out / "model.safetensors").is_file()
    # Two processes resume exactly too: each gets back its own collators' noise, not process 0's.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(out / "step_20", resumed / "step_20")
    shutil.copy(out / "sampler_history.jsonl", resumed / "sampler_history.jsonl")
    result = run_script([*args[:-1], resumed, "--resume_from_checkpoint", "latest"], launcher=accelerate_launch(2),
                        env=script_env(ACCELERATE_USE_CPU="true"), timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert comparable(read_rows(resumed)) == comparable(rows)
    expected, got = load_file(out / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(expected[name], got[name]) for name in expected)


# ----------------------------------------------------------------------------- an output folder belongs to one run


def test_a_finished_run_without_checkpoints_is_not_overwritten(full_run, tiny_bert, english_corpus, tmp_path, capsys):
    out, _ = full_run
    finished = copy_run(out, tmp_path / "finished", checkpoints=False)
    before = tree_digest(finished)
    expect_error(capsys, ["--model_name_or_path", tiny_bert, "--train_file", english_corpus, *QUICK,
                          "--max_train_steps", 2, "--output_dir", finished],
                 f"error: --output_dir {finished} holds the outputs of another run", "--resume_from_checkpoint",
                 "--overwrite_output_dir")
    assert tree_digest(finished) == before


def test_a_killed_resume_loses_no_history(full_run, tiny_bert, english_corpus, tmp_path):
    out, _ = full_run
    run = copy_run(out, tmp_path / "run")
    args = run_args(tiny_bert, english_corpus, run)
    module = load_script()
    # Resume from step_10 while step_20 and step_30 exist, and get killed at the first checkpoint.
    with mock.patch.object(module, "save_checkpoint", side_effect=KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            module.main([str(a) for a in [*args, "--resume_from_checkpoint", run / "step_10"]])
    # 'latest' is the old run's step_30: its history must be whole again.
    assert run_main([*args, "--resume_from_checkpoint", "latest"]) == 0
    assert comparable(read_rows(run)) == comparable(read_rows(out))
    assert not (run / "sampler_history.superseded.json").exists()


def test_overwrite_clears_the_old_run_checkpoints_included_but_only_once_inputs_are_valid(
    full_run, tiny_bert, english_corpus, tmp_path, capsys
):
    out, _ = full_run
    run = copy_run(out, tmp_path / "run")
    before = tree_digest(run)
    base = ["--model_name_or_path", tiny_bert, *QUICK, "--max_train_steps", 4, "--output_dir", run,
            "--overwrite_output_dir"]
    assert run_main([*base, "--train_file", tmp_path / "missing.txt"]) == 2
    assert "missing.txt" in capsys.readouterr().err
    assert tree_digest(run) == before, "a run that fails its checks leaves the old run untouched"

    assert run_main([*base, "--train_file", english_corpus]) == 0
    assert not list(run.glob("step_*")), "the old run's checkpoints are gone"
    assert [row["step"] for row in read_rows(run)] == [2, 4] and read_rows(run)[0]["sampler"] == "uniform"
    capsys.readouterr()
    assert run_main([*base[:-1], "--train_file", english_corpus, "--resume_from_checkpoint", "latest"]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err


def test_resume_checks_the_settings_that_fix_the_data(full_run, tiny_bert, english_corpus, tmp_path, capsys):
    out, _ = full_run
    run = copy_run(out, tmp_path / "run")
    before = tree_digest(run)
    args = [*run_args(tiny_bert, english_corpus, run), "--resume_from_checkpoint", "latest"]
    changed = [*args, "--seed", 43, "--max_seq_length", 32, "--per_device_train_batch_size", 2]
    assert run_main(changed) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith(f"error: --resume_from_checkpoint {run / 'step_30'} was saved with other settings")
    for difference in ("seed: 42 -> 43", "max_seq_length: 64 -> 32", "per_device_train_batch_size: 4 -> 2"):
        assert difference in message
    assert "--allow_config_change" in message and tree_digest(run) == before
    # Objectives and sampler cannot change at all; the schedule length may, without a word.
    assert run_main([*args, "--objectives", "mlm,cse,atd,dtd"]) == 2
    assert "was trained with --objectives mlm,cse,atd,dtd,emlm" in capsys.readouterr().err
    assert run_main([*args[:-2], "--resume_from_checkpoint", run / "step_20", "--max_train_steps", 20]) == 0
    assert run_main([*changed[:-4], "--max_train_steps", 32, "--allow_config_change"]) == 0
    assert read_rows(run)[-1]["step"] == 32


# ----------------------------------------------------------------------------- non-finite


def test_a_nan_loss_stops_the_run_without_a_model_and_keeps_the_last_checkpoint(tiny_bert, english_corpus, tmp_path):
    out = tmp_path / "nan"
    # lr 1e30 is finite, so it passes the checks; the first step at that rate blows the weights up.
    result = run_script(["--model_name_or_path", tiny_bert, "--train_file", english_corpus, *QUICK,
                         "--max_train_steps", 8, "--checkpointing_steps", 2, "--learning_rate", 1e30,
                         "--output_dir", out])
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: step 3 (objective ")
    assert "loss nan" in message and f"the last good checkpoint is {out / 'step_2'}" in message
    assert "Traceback" not in result.stderr
    assert not (out / "model.safetensors").exists() and [p.name for p in out.glob("step_*")] == ["step_2"]
    weights = load_file(out / "step_2" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_skip_nonfinite_steps_skips_a_bad_step_and_trains_on(tiny_bert, english_corpus, tmp_path, capsys):
    module = load_script()
    args = ["--model_name_or_path", tiny_bert, "--train_file", english_corpus, *QUICK, "--max_train_steps", 6]
    with nan_at(module.MometasForPreTraining, 3):
        module.main([str(a) for a in [*args, "--output_dir", tmp_path / "skip", "--skip_nonfinite_steps", 1]])
    weights = load_file(tmp_path / "skip" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    rows = read_rows(tmp_path / "skip")
    window = next(row for row in rows if row["step"] == 4)
    assert len(window["rollout"]) == 2 and sum(window["counts"].values()) == 1, "the skipped step trained nothing"
    # Only updates advance the schedule (1 warmup step of 6, then linear to 0): after 4 steps, one
    # of them skipped, 3 updates were made and the rate is 5e-5 * (6 - 3) / (6 - 1).
    assert window["learning_rate"] == pytest.approx(5e-5 * 3 / 5)
    assert rows[-1]["step"] == 6 and rows[-1]["learning_rate"] == pytest.approx(5e-5 * 1 / 5)

    with nan_at(module.MometasForPreTraining, 3), pytest.raises(SystemExit) as exit_:
        module.main([str(a) for a in [*args, "--output_dir", tmp_path / "stop"]])
    assert exit_.value.code == 1 and not (tmp_path / "stop" / "model.safetensors").exists()
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error: step 3 (objective ") and "pass --skip_nonfinite_steps N" in message


def test_a_spent_skip_budget_says_so_instead_of_asking_for_the_flag(tiny_bert, english_corpus, tmp_path, capsys):
    module = load_script()
    args = ["--model_name_or_path", tiny_bert, "--train_file", english_corpus, *QUICK, "--max_train_steps", 6]
    # One skip allowed, two bad steps.
    with nan_at(module.MometasForPreTraining, 3, 5), pytest.raises(SystemExit) as exit_:
        module.main([str(a) for a in [*args, "--output_dir", tmp_path / "spent", "--skip_nonfinite_steps", 1]])
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 1 and message.startswith("error: step 5 (objective "), message
    assert "pass --skip_nonfinite_steps N" not in message
    assert "all 1 steps --skip_nonfinite_steps allows were already skipped" in message
    assert "raise --skip_nonfinite_steps" in message


def test_fp16_loss_scaler_trains_on_after_a_skipped_step(tiny_bert, english_corpus, tmp_path, monkeypatch):
    """A real torch.amp.GradScaler behind the loop: clip_grad_norm_ unscales, then the step is skipped."""
    from accelerate.state import AcceleratorState

    module = load_script()
    made = []

    class ScaledAccelerator(module.Accelerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, mixed_precision="fp16", **kwargs)
            # On a GPU Accelerate makes this scaler itself; on CPU it makes none, so the test hands it one.
            self.native_amp, self.scaler = True, torch.amp.GradScaler("cpu", init_scale=2.0**16)
            made.append(self)

    monkeypatch.setattr(module, "Accelerator", ScaledAccelerator)
    args = ["--model_name_or_path", tiny_bert, "--train_file", english_corpus, *QUICK, "--max_train_steps", 6,
            "--output_dir", tmp_path / "fp16", "--skip_nonfinite_steps", 1]
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        with nan_at(module.MometasForPreTraining, 3):
            module.main([str(a) for a in args])
        assert made and made[0].mixed_precision == "fp16"
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert made[0].scaler.get_scale() < 2.0**16, "the skipped step's NaN gradients lowered the scale"
    weights = load_file(tmp_path / "fp16" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    rows = read_rows(tmp_path / "fp16")
    assert [row["step"] for row in rows] == [2, 4, 6]
    assert sum(sum(row["counts"].values()) for row in rows) == 5, "5 of 6 steps trained"


# ----------------------------------------------------------------------------- the Hub


def test_push_to_hub_checks_the_repo_first_and_uploads_to_the_namespaced_id(tiny_bert, english_corpus, tmp_path,
                                                                            capsys, caplog):
    from huggingface_hub import CommitInfo, RepoUrl

    out = tmp_path / "mometas-tiny"
    argv = ["--model_name_or_path", tiny_bert, "--train_file", english_corpus, *QUICK, "--max_train_steps", 4,
            "--checkpointing_steps", 2, "--output_dir", out, "--push_to_hub", "--hub_strategy", "every_save",
            "--hub_private_repo", "--hub_token", SECRET]
    info = CommitInfo(commit_url="https://huggingface.co/alice/mometas-tiny/commit/1", commit_message="m",
                      commit_description="", oid="1")

    def upload_folder(**kwargs):  # what huggingface_hub returns: a CommitInfo, or a Future of one
        if not kwargs["run_as_future"]:
            return info
        future = Future()
        future.set_result(info)
        return future

    with mock.patch("huggingface_hub.HfApi") as api_class:
        api = api_class.return_value
        api.create_repo.return_value = RepoUrl("https://huggingface.co/alice/mometas-tiny")
        api.upload_folder.side_effect = upload_folder
        assert run_main(argv) == 0
    api_class.assert_called_with(token=SECRET)
    api.create_repo.assert_called_once_with("mometas-tiny", exist_ok=True, private=True)
    api.auth_check.assert_called_once_with("alice/mometas-tiny", write=True)
    uploads = [call.kwargs for call in api.upload_folder.call_args_list]
    assert [u["run_as_future"] for u in uploads] == [True, True, False], "every save in the background, then the end"
    assert all(u["repo_id"] == "alice/mometas-tiny" for u in uploads) and Path(uploads[-1]["folder_path"]) == out
    assert [Path(u["folder_path"]).parent for u in uploads[:2]] == [out, out], "each save from its own copy"
    assert not list(out.glob(".hub_upload*")), "the copies are gone once uploaded"
    assert "step_*" in uploads[-1]["ignore_patterns"]
    captured = capsys.readouterr()
    assert "alice/mometas-tiny" in captured.out
    assert SECRET not in captured.out + captured.err + caplog.text
    assert SECRET not in (out / "README.md").read_text() + (out / "mometas_args.json").read_text()
    assert 'from_pretrained("alice/mometas-tiny")' in (out / "README.md").read_text()


def test_every_save_commit_holds_the_model_and_history_of_its_own_step(tiny_bert, english_corpus, tmp_path):
    """--hub_strategy every_save: the training goes on while an upload runs; what it sends must not move."""
    from huggingface_hub import CommitInfo, RepoUrl

    out = tmp_path / "run"
    info = CommitInfo(commit_url="https://huggingface.co/alice/run/commit/1", commit_message="m", commit_description="",
                      oid="1")
    sent = {}

    def upload_folder(**kwargs):
        if not kwargs["run_as_future"]:
            return info

        def read(folder=Path(kwargs["folder_path"]), message=kwargs["commit_message"]):
            sent[message] = (read_rows(folder), load_file(folder / "model.safetensors"))
            return info

        return UploadReadLater(read)

    with mock.patch("huggingface_hub.HfApi") as api_class:
        api_class.return_value.create_repo.return_value = RepoUrl("https://huggingface.co/alice/run")
        api_class.return_value.upload_folder.side_effect = upload_folder
        assert run_main(["--model_name_or_path", tiny_bert, "--train_file", english_corpus, *QUICK,
                         "--max_train_steps", 6, "--checkpointing_steps", 2, "--output_dir", out, "--push_to_hub",
                         "--hub_strategy", "every_save"]) == 0
    assert sorted(sent) == ["step 2", "step 4", "step 6"]
    for step in (2, 4, 6):
        rows, weights = sent[f"step {step}"]
        assert rows[-1]["step"] == step, f"the commit of step {step} holds history up to step {rows[-1]['step']}"
        saved = load_file(out / f"step_{step}" / "model.safetensors")
        shared = sorted(set(weights) & set(saved))
        assert shared and all(torch.equal(weights[k], saved[k]) for k in shared), f"step {step}: another model"


def test_a_push_that_fails_after_training_keeps_the_outputs(tiny_bert, english_corpus, tmp_path, capsys):
    from huggingface_hub import RepoUrl

    out = tmp_path / "run"
    with mock.patch("huggingface_hub.HfApi") as api_class:
        api_class.return_value.create_repo.return_value = RepoUrl("https://huggingface.co/alice/run")
        api_class.return_value.upload_folder.side_effect = ConnectionError("connection reset")
        code = run_main(["--model_name_or_path", tiny_bert, "--train_file", english_corpus, *QUICK,
                         "--max_train_steps", 2, "--output_dir", out, "--push_to_hub"])
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and message.startswith(f"error: --push_to_hub: could not upload {out} to alice/run")
    assert f"hf upload alice/run {out} ." in message
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()


# ----------------------------------------------------------------------------- other


def test_lines_longer_than_max_length_are_packed_not_rejected(tiny_bert, tmp_path):
    corpus = tmp_path / "long.txt"
    corpus.write_text(("word " * 3000 + "\n") + ("another document with several ordinary words\n" * 20))
    out = tmp_path / "out"
    result = run_script(["--model_name_or_path", tiny_bert, "--train_file", corpus, *FAST, "--objectives", "mlm,atd",
                         "--sampler", "uniform", "--max_train_steps", 3, "--meta_length", 2, "--output_dir", out])
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "model.safetensors").is_file()


def test_demo_defaults_and_explicit_flags_win(tmp_path, minilm):
    args = load_script().parse_args(["--demo", "--output_dir", str(tmp_path / "demo"), "--max_train_steps", "7"])
    assert args.model_name_or_path == minilm
    assert args.objectives == "mlm,cse,atd,dtd,emlm" and args.sampler == "mometas"
    assert args.entity_tagger == "spacy" and args.max_train_steps == 7 and args.meta_length == 50
    lines = Path(args.train_file).read_text().splitlines()
    assert len(lines) > 500 and all(len(line.split()) >= 12 for line in lines)


def test_paper_reward_and_demo_keep_every_typed_flag_even_at_its_default(tmp_path, minilm):
    module = load_script()
    base = ["--model_name_or_path", "m", "--train_file", "t.txt", "--output_dir", str(tmp_path / "o")]
    literal = module.parse_args([*base, "--paper_reward"])
    assert (literal.meta_eval_fixed, literal.reward_floor, literal.reward_dead_zone, literal.reward_baseline,
            literal.reward_normalize) == (False, None, 0.0, "none", False)
    # A typed flag wins even when it equals the parser's default, in every spelling.
    for typed, key, value in ((["--meta_eval_fixed"], "meta_eval_fixed", True),
                              (["--reward_floor=-1"], "reward_floor", -1.0),
                              (["--reward_floor", "-1"], "reward_floor", -1.0),
                              (["--reward_dead_zone=1e-3"], "reward_dead_zone", 1e-3),
                              (["--reward_baseline", "ema"], "reward_baseline", "ema"),
                              (["--reward_normalize"], "reward_normalize", True)):
        args = module.parse_args([*base, "--paper_reward", *typed])
        assert getattr(args, key) == value, (typed, getattr(args, key))
        others = {k for k in ("meta_eval_fixed", "reward_floor", "reward_dead_zone", "reward_baseline",
                              "reward_normalize") if k != key}
        assert all(getattr(args, k) == getattr(literal, k) for k in others), typed
    # A --no_x flag is typed too (here it agrees with --paper_reward anyway).
    assert module.parse_args([*base, "--paper_reward", "--no_meta_eval_fixed"]).meta_eval_fixed is False

    demo = ["--demo", "--output_dir", str(tmp_path / "demo")]
    assert module.parse_args(demo).max_seq_length == 128
    assert module.parse_args([*demo, "--max_seq_length", "256"]).max_seq_length == 256  # the parser's default
    assert module.parse_args([*demo, "--max_seq_length=256"]).max_seq_length == 256
    assert module.parse_args([*demo, "--max_seq_length", "512"]).max_seq_length == 512
    assert module.parse_args([*demo, "--entity_tagger=stanza"]).entity_tagger == "stanza"
    assert module.parse_args([*demo, "--per_device_train_batch_size", "8"]).per_device_train_batch_size == 8
    assert module.parse_args(demo).per_device_train_batch_size == 16


def test_demo_runs_end_to_end_on_the_real_checkpoint(tmp_path):
    out = tmp_path / "demo"
    result = run_script(["--demo", "--output_dir", out, "--max_train_steps", 10, "--meta_length", 5])
    assert result.returncode == 0, result.stderr[-4000:]
    rows = read_rows(out)
    assert [r["step"] for r in rows] == [0, 5, 10]
    assert rows[-1]["probabilities"] != rows[0]["probabilities"], "MOMETAS moved the distribution"
    assert "average" in result.stdout and (out / "average_weights.png").is_file()
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "site-packages" not in card and str(tmp_path) not in card


def test_copy_one_script_runs_with_an_installed_library(tiny_bert, english_corpus, tmp_path):
    """The script alone in an empty folder, the library from an installed copy, the repository nowhere on the path."""
    site, work, source = tmp_path / "site", tmp_path / "work", tmp_path / "source"
    work.mkdir()
    # Install from a copy of what the repository tracks for the package, so the build leaves nothing in the tree.
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "mometas_utils", source / "mometas_utils", ignore=shutil.ignore_patterns("__pycache__"))
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--target", str(site), str(source)], capture_output=True, text=True, timeout=300,
                             cwd=tmp_path)
    assert install.returncode == 0, install.stderr[-3000:]
    script = Path(shutil.copy(SCRIPT, work / "run_mometas_pretraining.py"))
    env = script_env(PYTHONPATH=str(site))
    code = ("import os, sys, mometas_utils; print(mometas_utils.__file__); "
            "print(any(os.path.realpath(p or '.') == os.path.realpath(sys.argv[1]) for p in sys.path))")
    probe = subprocess.run([sys.executable, "-c", code, str(ROOT)], cwd=work, env=env, capture_output=True, text=True)
    assert probe.stdout.split() == [str(site / "mometas_utils" / "__init__.py"), "False"], probe.stderr
    help_ = run_script(["--help"], env=env, script=script, cwd=work, timeout=120)
    assert help_.returncode == 0 and "--model_name_or_path" in help_.stdout, help_.stderr[-2000:]
    result = run_script(["--model_name_or_path", tiny_bert, "--train_file", english_corpus, *QUICK,
                         "--max_train_steps", 2, "--output_dir", "out"], env=env, script=script, cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (work / "out" / "model.safetensors").is_file() and sorted(p.name for p in work.iterdir()) == [
        "out", "run_mometas_pretraining.py"]
    print(f"copy-one-script: mometas_utils from {probe.stdout.split()[0]}; --help {len(help_.stdout.splitlines())} "
          f"lines; a 2-step run in {work} wrote {len(list((work / 'out').iterdir()))} files")


def test_the_entropy_weight_follows_the_scripts_learning_rate(tiny_bert, english_corpus, tmp_path):
    """--entropy_lambda_schedule learning_rate: each update's lambda_t is lambda x its row's rate over the
    largest rate of the rows so far, through the warm-up's rise and the linear decay."""
    args = ["mometas" if a == "uniform" else a for a in QUICK]
    done = run_script(["--model_name_or_path", tiny_bert, "--train_file", english_corpus, *args, "--max_train_steps", 10,
                       "--num_warmup_steps", 4, "--entropy_lambda", 2, "--entropy_lambda_schedule", "learning_rate",
                       "--output_dir", tmp_path / "run"])
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_rows(tmp_path / "run")
    updates = [r for r in rows if "entropy_lambda" in r]
    assert [r["step"] for r in updates] == [2, 4, 6, 8, 10]
    peak = 0.0
    for row in rows:
        peak = max(peak, row["learning_rate"])
        if "entropy_lambda" in row:
            assert row["entropy_lambda"] == pytest.approx(2.0 * row["learning_rate"] / peak)
    assert [r["entropy_lambda"] for r in updates][:2] == [pytest.approx(2.0)] * 2  # rising: the rate is its own peak
    assert updates[-1]["entropy_lambda"] == 0.0  # the schedule's end: no entropy bonus is left
    assert json.loads((tmp_path / "run" / "mometas_args.json").read_text())["entropy_lambda_schedule"] == "learning_rate"

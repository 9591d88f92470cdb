"""Sampler history, Figure 2/3 quantities, plots, model card, secrets and Hub upload."""

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from mometas_utils import reporting
from mometas_utils.errors import MometasInputError
from mometas_utils.reporting import (
    HistoryWriter,
    average_distribution,
    build_model_card,
    cumulative_reward,
    plot_history,
    public_args,
    push_output_dir,
    read_history,
    redact,
    reward_difference,
    save_model_card,
    summarize_distribution,
    truncate_history,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SECRET = "hf_SECRETabcdefghijklmnopqrstuvwxyz0123"
ENV_SECRET = "hf_ENVSECRETzyxwvutsrqponmlkjihgf98765"
OBJECTIVES = ["mlm", "cse", "atd", "dtd", "emlm"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_rows(sampler="mometas", k=100, n=6, reward_scale=0.03, with_val=True, drift=0.02):
    """A synthetic history: step-0 row (no reward), then one row every K steps."""
    rows = []
    for i in range(n + 1):
        raw = [1.0 + drift * i * (j - 2) for j in range(len(OBJECTIVES))]
        total = sum(raw)
        probs = {o: r / total for o, r in zip(OBJECTIVES, raw)}
        rows.append({
            "step": i * k,
            "sampler": sampler,
            "objectives": OBJECTIVES,
            "probabilities": probs,
            "entropy": 1.6 - 0.01 * i,
            "reward": None if i == 0 else reward_scale * (1 + 0.1 * i),
            "val_loss": {o: 3.0 - 0.1 * i + 0.05 * j for j, o in enumerate(OBJECTIVES)} if with_val else None,
            "train_loss": None if i == 0 else {o: 3.1 - 0.1 * i for o in OBJECTIVES},
            "counts": None if i == 0 else {o: k // 5 for o in OBJECTIVES},
            "tokens_seen": {o: 1000 * i for o in OBJECTIVES},
            "meta_test_seconds": 0.8,
            "elapsed_seconds": 10.0 * i,
            "learning_rate": 5e-5,
        })
    return rows


def write_run(run_dir, rows):
    writer = HistoryWriter(run_dir)
    for row in rows:
        writer.write(row)
    return writer.path


def assert_png(path):
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5000


# ---------------------------------------------------------------- history file


def test_writer_appends_across_instances_and_reads_back(tmp_path):
    rows = make_rows(n=3)
    path = write_run(tmp_path, rows[:2])
    assert path == tmp_path / "sampler_history.jsonl"
    HistoryWriter(path).write(rows[2])  # a resumed run keeps appending
    HistoryWriter(tmp_path).write(rows[3])
    back = read_history(tmp_path)
    assert [r["step"] for r in back] == [0, 100, 200, 300]
    assert back[1]["probabilities"] == pytest.approx(rows[1]["probabilities"])
    assert read_history(path) == back
    # One strict-JSON object per line.
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_history_path_for_new_run_dirs_and_files(tmp_path):
    assert HistoryWriter(tmp_path / "new_run").path == tmp_path / "new_run" / "sampler_history.jsonl"
    assert HistoryWriter(tmp_path / "h.jsonl").path == tmp_path / "h.jsonl"
    with pytest.raises(MometasInputError, match="not found"):
        read_history(tmp_path / "no_such_run")


def test_writer_makes_rows_json_safe(tmp_path):
    writer = HistoryWriter(tmp_path / "sub" / "sampler_history.jsonl")
    writer.write({"step": 0, "reward": float("nan"), "val_loss": {"mlm": float("inf")}, "path": tmp_path})
    (row,) = read_history(tmp_path / "sub")
    assert row["reward"] is None and row["val_loss"] == {"mlm": None} and row["path"] == str(tmp_path)


def test_truncate_after_drops_later_rows_atomically(tmp_path):
    path = write_run(tmp_path, make_rows(n=5))
    writer = HistoryWriter(tmp_path)
    assert writer.truncate_after(200) == 3
    assert [r["step"] for r in read_history(path)] == [0, 100, 200]
    writer.write(make_rows(n=3)[3])
    assert [r["step"] for r in read_history(path)] == [0, 100, 200, 300]
    assert truncate_history(path, 1000) == 0
    assert truncate_history(tmp_path / "missing.jsonl", 5) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sampler_history.jsonl"]  # no temp files left

    # A failed swap leaves the original untouched and no temp file behind.
    before = path.read_text()
    with mock.patch("mometas_utils.reporting.os.replace", side_effect=OSError("disk full")):
        with pytest.raises(OSError):
            truncate_history(path, 0)
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sampler_history.jsonl"]


def test_writer_warns_when_resumed_without_truncation(tmp_path, caplog):
    write_run(tmp_path, make_rows(n=3))
    with caplog.at_level(logging.WARNING, logger="mometas_utils.reporting"):
        HistoryWriter(tmp_path).write({"step": 100})
    assert "truncate_after" in caplog.text


def test_fresh_writer_discards_old_history(tmp_path):
    write_run(tmp_path, make_rows(n=3))
    HistoryWriter(tmp_path, fresh=True).write({"step": 0})
    assert [r["step"] for r in read_history(tmp_path)] == [0]


def test_torn_last_line_is_skipped_and_repaired(tmp_path, caplog):
    path = write_run(tmp_path, make_rows(n=2))
    with open(path, "a") as f:
        f.write('{"step": 300, "probab')  # killed mid-write
    with caplog.at_level(logging.WARNING):
        assert [r["step"] for r in read_history(path)] == [0, 100, 200]
    assert "incomplete last line" in caplog.text
    HistoryWriter(path).write({"step": 300})
    assert [r["step"] for r in read_history(path)] == [0, 100, 200, 300]


@pytest.mark.parametrize("content, expected", [
    (None, "not found"),
    ("", "no rows"),
    ("\n\n", "no rows"),
    ('{"step": 0}\nnot json\n{"step": 1}\n', ":2:"),
    ('[1, 2]\n', "not a JSON object"),
    ('{"probabilities": {}}\n', "'step'"),
    ('{"step": 0, "probabilities": [0.5, 0.5]}\n', "probabilities"),
])
def test_read_history_errors_name_the_file(tmp_path, content, expected):
    path = tmp_path / "sampler_history.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(MometasInputError) as err:
        read_history(tmp_path)
    message = str(err.value)
    assert str(path) in message and expected in message
    assert "\n" not in message


# ---------------------------------------------------------------- Figure 2 / 3 quantities


def hand_rows():
    return [
        {"step": 300, "probabilities": {"a": 0.2, "b": 0.8}, "reward": 0.1},
        {"step": 0, "probabilities": {"a": 0.5, "b": 0.5}, "reward": None},
        {"step": 100, "probabilities": {"a": 0.8, "b": 0.2}, "reward": 0.3},
        {"step": 400, "probabilities": {"a": 0.1, "b": 0.9}, "reward": -0.05},
    ]


def test_average_distribution_weights_by_steps_in_force():
    # 0.5 for steps 0-99, 0.8 for 100-299, 0.2 for 300-399; the step-400 row ends training.
    avg = average_distribution(hand_rows())
    assert avg["a"] == pytest.approx((0.5 * 100 + 0.8 * 200 + 0.2 * 100) / 400)  # 0.575
    assert avg["b"] == pytest.approx(0.425)
    # Training went on to step 500 with the last distribution.
    avg = average_distribution(hand_rows(), total_steps=500)
    assert avg["a"] == pytest.approx((0.5 * 100 + 0.8 * 200 + 0.2 * 100 + 0.1 * 100) / 500)


def test_average_distribution_edge_cases():
    # A row without probabilities leaves the previous distribution in force.
    rows = [{"step": 0, "probabilities": {"a": 1.0, "b": 0.0}},
            {"step": 50, "probabilities": None},
            {"step": 100, "probabilities": {"a": 0.0, "b": 1.0}},
            {"step": 200, "probabilities": None}]
    assert average_distribution(rows) == pytest.approx({"a": 0.5, "b": 0.5})
    assert average_distribution([{"step": 0, "probabilities": {"a": 0.3, "b": 0.7}}]) == {"a": 0.3, "b": 0.7}
    assert average_distribution([{"step": 0, "probabilities": None}]) == {}


def test_cumulative_reward_skips_nulls():
    steps, cum = cumulative_reward(hand_rows())
    assert steps == [100, 300, 400]
    assert cum == pytest.approx([0.3, 0.4, 0.35])


def test_reward_difference_interpolates_on_baseline_steps():
    run = [{"step": s, "reward": 1.0} for s in (100, 200, 300, 400)]  # cumulative = step / 100
    base = [{"step": s, "reward": 0.5} for s in (0, 150, 300, 450)]  # cumulative 0.5, 1.0, 1.5, 2.0
    steps, diff = reward_difference(run, base)
    # Baseline steps inside [100, 400]: 150 and 300; run interpolated at 150 is 1.5.
    assert steps == [150, 300]
    assert diff == pytest.approx([1.5 - 1.0, 3.0 - 1.5])
    assert reward_difference(run, [{"step": 0, "reward": None}]) == ([], [])


def test_summarize_distribution_lists_average_and_final():
    text = summarize_distribution(hand_rows())
    assert "average" in text and "final" in text
    line_a = next(line for line in text.splitlines() if line.startswith("a "))
    assert "0.575" in line_a and "0.100" in line_a
    assert "No sampling probabilities" in summarize_distribution([{"step": 0}])


def test_sampler_health_counts_starved_updates_and_floor_clips():
    rows = [
        {"step": 0, "probabilities": {"a": 0.5, "b": 0.5}, "reward": None},
        {"step": 10, "probabilities": {"a": 0.995, "b": 0.005}, "reward": -3.0, "reward_floored": 2},
        {"step": 20, "probabilities": {"a": 0.9, "b": 0.1}, "reward": 0.2, "reward_floored": 0},
        {"step": 30, "probabilities": {"a": 0.996, "b": 0.004}, "reward": 0.1},
    ]
    health = reporting.sampler_health(rows)
    assert (health["smallest_probability"], health["smallest_objective"], health["smallest_step"]) == (0.004, "b", 30)
    assert (health["updates"], health["updates_below_0.01"], health["floored_updates"]) == (3, 2, 1)
    text = summarize_distribution(rows)
    assert "smallest probability 0.004 (b at step 30)" in text and "2 of 3 updates" in text and "clipped 1" in text


# ---------------------------------------------------------------- plots


def test_plot_history_writes_all_pngs_with_baseline(tmp_path):
    paths = plot_history(make_rows(), tmp_path / "plots",
                         baseline_rows=make_rows(sampler="uniform", k=150, n=4, drift=0.0, reward_scale=0.02))
    assert [p.name for p in paths] == list(reporting.PLOT_FILENAMES)
    for path in paths:
        assert_png(path)


def test_plot_history_skips_missing_data(tmp_path):
    rows = make_rows(with_val=False)
    for row in rows:
        row["reward"] = None
    paths = plot_history(rows, tmp_path)
    assert [p.name for p in paths] == ["probabilities.png", "average_weights.png"]
    for path in paths:
        assert_png(path)
    assert plot_history([{"step": 0}, {"step": 100}], tmp_path / "empty") == []


# ---------------------------------------------------------------- secrets and model card


def secret_args():
    return argparse.Namespace(
        hub_token=SECRET, hub_model_id="me/bert-mometas", tokenizer_name="bert-base-uncased",
        max_tokens=512, db_password="pw-12345", nested={"api_secret": "s3cr3t-value", "lr": 1e-4},
        output_dir=Path("/tmp/run"), note=f"pushed with {ENV_SECRET}", max_grad_norm=float("inf"),
    )


def test_public_args_removes_secrets(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", ENV_SECRET)
    safe = public_args(secret_args())
    text = json.dumps(safe, allow_nan=False)
    for secret in (SECRET, ENV_SECRET, "pw-12345", "s3cr3t-value"):
        assert secret not in text
    assert "hub_token" not in safe and "db_password" not in safe and "api_secret" not in safe["nested"]
    # Names that merely contain "token(s)" as part of another word are kept.
    assert safe["tokenizer_name"] == "bert-base-uncased" and safe["max_tokens"] == 512
    assert safe["output_dir"] == "/tmp/run" and safe["nested"]["lr"] == 1e-4
    assert safe["note"] == "pushed with ***"
    assert public_args({"hub_token": SECRET, "a": 1}) == {"a": 1}


def test_redact():
    assert redact(f"token={SECRET}!", SECRET) == "token=***!"
    assert redact(f"see {SECRET}") == "see ***"  # hf_ tokens are caught without being named
    with mock.patch.dict(os.environ, {"HF_TOKEN": "plain-env-token"}):
        assert redact("a plain-env-token b") == "a *** b"
    assert redact("nothing here", [None, ""]) == "nothing here"


def card_kwargs():
    return dict(
        args_dict=secret_args(),
        objectives=OBJECTIVES,
        sampler_name="mometas",
        sampler_settings={"meta_length": 100, "meta_step_size": 0.1, "entropy_weight": 2.0, "reward": "relative"},
        average_distribution={"mlm": 0.21, "cse": 0.17, "atd": 0.19, "dtd": 0.24, "emlm": 0.19},
        base_model="bert-base-uncased",
        final_probabilities={"mlm": 0.2, "cse": 0.1, "atd": 0.2, "dtd": 0.3, "emlm": 0.2},
        metrics={"val_loss_mlm": 2.05},
    )


def test_model_card_content_and_no_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", ENV_SECRET)
    card = build_model_card(**card_kwargs())  # repo id taken from args' hub_model_id
    text = str(card)
    for secret in (SECRET, ENV_SECRET, "pw-12345", "s3cr3t-value"):
        assert secret not in text
    assert card.data.language == "en" and card.data.library_name == "transformers"
    assert card.data.base_model == "bert-base-uncased" and not card.data.license
    assert card.data.tags == ["mometas", "bert", "continual-pretraining", "multi-objective"]
    for needle in ("meta length K | 100", "meta step size β | 0.1", "entropy weight λ | 2",
                   "reward R(τ) | relative", "| dtd | 0.240 | 0.300 |", "Figure 2",
                   'AutoModel.from_pretrained("me/bert-mometas")',
                   'AutoModelForPreTraining.from_pretrained("me/bert-mometas", trust_remote_code=True)',
                   "Forging Multiple Training Objectives", "val_loss_mlm", "tokenizer_name"):
        assert needle in text, needle

    path = save_model_card(card, tmp_path)
    assert path == tmp_path / "README.md"
    saved = path.read_text()
    assert SECRET not in saved and ENV_SECRET not in saved
    assert saved.startswith("---\n") and "base_model: bert-base-uncased" in saved


def test_model_card_without_optional_parts():
    kwargs = card_kwargs()
    kwargs.update(final_probabilities=None, metrics=None, average_distribution={}, sampler_name="uniform",
                  args_dict={"lr": 1e-4}, base_model="/local/bert")
    text = str(build_model_card(**kwargs))
    assert "## Metrics" not in text and "## Learned sampling distribution" not in text
    assert "uniform" in text and "path/or/repo-id" in text
    assert "`/local/bert`" in text and "huggingface.co//local" not in text
    assert "base_model" not in text.split("---")[1]  # not valid Hub metadata


# ---------------------------------------------------------------- Hub upload


def test_push_output_dir_calls_hub_without_leaking_token(tmp_path, caplog):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with mock.patch("huggingface_hub.HfApi") as api_cls, caplog.at_level(logging.DEBUG):
        api = api_cls.return_value
        api.create_repo.return_value = "https://huggingface.co/me/bert-mometas"
        url = push_output_dir(tmp_path, "me/bert-mometas", token=SECRET, commit_message="final", private=True)
    assert url == "https://huggingface.co/me/bert-mometas"
    api_cls.assert_called_once_with(token=SECRET)
    api.create_repo.assert_called_once_with("me/bert-mometas", exist_ok=True, private=True)
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["repo_id"] == "me/bert-mometas" and kwargs["folder_path"] == str(tmp_path)
    assert kwargs["commit_message"] == "final"
    assert SECRET not in caplog.text and "me/bert-mometas" in caplog.text

    # The patterns, applied with huggingface_hub's own matcher, drop the checkpoint folders.
    from huggingface_hub.utils import filter_repo_objects
    files = ["model.safetensors", "README.md", "plots/probabilities.png", "sampler_history.jsonl",
             "step_500/model.safetensors", "epoch_1/optimizer.bin", "checkpoint-3/x", "checkpoints/y",
             ".sampler_history.jsonl.abc.tmp"]
    kept = list(filter_repo_objects(files, ignore_patterns=kwargs["ignore_patterns"]))
    assert kept == ["model.safetensors", "README.md", "plots/probabilities.png", "sampler_history.jsonl"]


@pytest.mark.parametrize("error", [
    OSError(f"connection refused while using {SECRET}"),
    "http",
])
def test_push_output_dir_failure_is_one_clear_line(tmp_path, caplog, error):
    if error == "http":
        import httpx2
        from huggingface_hub.errors import HfHubHTTPError
        request = httpx2.Request("POST", "https://huggingface.co/api/repos/create")
        response = httpx2.Response(401, request=request)
        error = HfHubHTTPError(f"401 Unauthorized: bad token {SECRET}", response=response)
    with mock.patch("huggingface_hub.HfApi") as api_cls, caplog.at_level(logging.DEBUG):
        api_cls.return_value.create_repo.side_effect = error
        with pytest.raises(RuntimeError) as err:
            push_output_dir(tmp_path, "me/bert-mometas", token=SECRET, commit_message="final")
    message = str(err.value)
    assert message.startswith(f"--push_to_hub: could not upload {tmp_path} to me/bert-mometas: ")
    assert SECRET not in message and "\n" not in message
    assert SECRET not in caplog.text
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_push_output_dir_bad_input(tmp_path):
    with pytest.raises(MometasInputError, match="--output_dir"):
        push_output_dir(tmp_path / "missing", "me/x", commit_message="m")
    with pytest.raises(MometasInputError, match="--push_to_hub"):
        push_output_dir(tmp_path, "not a/valid//id", commit_message="m")


# ---------------------------------------------------------------- command line


def test_cli_end_to_end_with_baseline(tmp_path):
    write_run(tmp_path / "mometas", make_rows())
    write_run(tmp_path / "uniform", make_rows(sampler="uniform", drift=0.0, reward_scale=0.02))
    out = tmp_path / "figs"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "plot_sampler_history.py"), str(tmp_path / "mometas"),
         "--baseline", str(tmp_path / "uniform"), "--output_dir", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "mometas sampling distribution" in proc.stdout and "dtd" in proc.stdout
    for name in reporting.PLOT_FILENAMES:
        assert_png(out / name)


def test_cli_defaults_and_errors(tmp_path, capsys):
    write_run(tmp_path, make_rows(n=2, with_val=False))
    assert reporting.main([str(tmp_path / "sampler_history.jsonl")]) == 0
    assert (tmp_path / "plots" / "average_weights.png").is_file()
    assert "skipped validation_loss.png" in capsys.readouterr().out

    assert reporting.main([str(tmp_path), "--baseline", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --baseline: ") and "nope" in err and "\n" not in err

    with pytest.raises(SystemExit) as exit_:
        reporting.main(["-h"], prog="plot_sampler_history.py")
    assert exit_.value.code == 0
    assert "Figure 2" in capsys.readouterr().out

"""mometas_utils.history: the history file, resume without losing rows, and the quantities of §6."""

import json
import logging
from unittest import mock

import pytest

from mometas_utils import history
from mometas_utils.errors import MometasInputError
from mometas_utils.history import (
    SUPERSEDED_FILENAME,
    HistoryWriter,
    average_distribution,
    cumulative_reward,
    drop_superseded,
    read_history,
    restore_superseded,
    reward_difference,
    rewind_history,
    summarize_distribution,
    truncate_history,
)


def write_run(run_dir, rows):
    writer = HistoryWriter(run_dir)
    for row in rows:
        writer.write(row)
    return writer.path


def steps(run_dir):
    return [r["step"] for r in read_history(run_dir)]


# ---------------------------------------------------------------- the file


def test_writer_appends_across_instances_and_reads_back(tmp_path, make_history):
    rows = make_history(n=3)
    path = write_run(tmp_path, rows[:2])
    assert path == tmp_path / "sampler_history.jsonl"
    HistoryWriter(path).write(rows[2])  # a resumed run keeps appending
    HistoryWriter(tmp_path).write(rows[3])
    back = read_history(tmp_path)
    assert [r["step"] for r in back] == [0, 100, 200, 300]
    assert back[1]["probabilities"] == pytest.approx(rows[1]["probabilities"])
    assert read_history(path) == back
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_history_path_for_new_run_dirs_and_files(tmp_path):
    assert HistoryWriter(tmp_path / "new_run").path == tmp_path / "new_run" / "sampler_history.jsonl"
    assert HistoryWriter(tmp_path / "h.jsonl").path == tmp_path / "h.jsonl"
    with pytest.raises(MometasInputError, match="not found"):
        read_history(tmp_path / "no_such_run")


def test_writer_makes_rows_strict_json(tmp_path):
    HistoryWriter(tmp_path / "sub").write({"step": 0, "reward": float("nan"), "val_loss": {"mlm": float("inf")},
                                           "path": tmp_path})
    text = (tmp_path / "sub" / "sampler_history.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    (row,) = read_history(tmp_path / "sub")
    assert row["reward"] is None and row["val_loss"] == {"mlm": None} and row["path"] == str(tmp_path)


def test_truncate_is_atomic(tmp_path, make_history):
    path = write_run(tmp_path, make_history(n=5))
    assert truncate_history(path, 200) == 3
    assert steps(tmp_path) == [0, 100, 200]
    assert truncate_history(path, 1000) == 0
    assert truncate_history(tmp_path / "missing.jsonl", 5) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sampler_history.jsonl"]
    # A failed swap leaves the original untouched and no temporary file behind.
    before = path.read_text()
    with mock.patch("mometas_utils.atomic.os.replace", side_effect=OSError("disk full")):
        with pytest.raises(OSError):
            truncate_history(path, 0)
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sampler_history.jsonl"]


def test_torn_last_line_is_skipped_and_repaired(tmp_path, caplog, make_history):
    path = write_run(tmp_path, make_history(n=2))
    with open(path, "a") as f:
        f.write('{"step": 300, "probab')  # killed mid-write
    with caplog.at_level(logging.WARNING):
        assert steps(path) == [0, 100, 200]
    assert "incomplete last line" in caplog.text
    HistoryWriter(path).write({"step": 300})
    assert steps(path) == [0, 100, 200, 300]


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
    assert str(path) in str(err.value) and expected in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- resume never loses a row


def test_rewind_sets_rows_aside_until_the_resumed_run_checkpoints(tmp_path, make_history):
    rows = make_history(n=4)  # steps 0..400
    write_run(tmp_path, rows)
    assert rewind_history(tmp_path, 200) == 2
    assert steps(tmp_path) == [0, 100, 200]
    side = json.loads((tmp_path / SUPERSEDED_FILENAME).read_text())
    assert side["resume_step"] == 200 and [r["step"] for r in side["rows"]] == [300, 400]
    # The resumed run writes a row, then is killed before any checkpoint: the next start puts
    # the set-aside rows back and drops the orphan row.
    HistoryWriter(tmp_path).write({"step": 300, "sampler": "killed"})
    assert restore_superseded(tmp_path) == 2
    assert read_history(tmp_path) == read_history_rows(rows)
    assert not (tmp_path / SUPERSEDED_FILENAME).exists()
    # A resume that reaches its checkpoint drops the set-aside rows for good.
    rewind_history(tmp_path, 100)
    assert drop_superseded(tmp_path) and not drop_superseded(tmp_path)
    assert steps(tmp_path) == [0, 100]


def read_history_rows(rows):
    return [json.loads(json.dumps(r)) for r in rows]


def test_rewind_again_after_a_killed_resume_starts_from_the_whole_history(tmp_path, make_history):
    rows = make_history(n=4)
    write_run(tmp_path, rows)
    rewind_history(tmp_path, 100)
    HistoryWriter(tmp_path).write({"step": 200, "sampler": "killed"})
    rewind_history(tmp_path, 300)  # 'latest' is the old run's step 300
    assert read_history(tmp_path) == read_history_rows(rows[:4])
    assert [r["step"] for r in json.loads((tmp_path / SUPERSEDED_FILENAME).read_text())["rows"]] == [400]


def test_a_crash_inside_rewind_loses_nothing(tmp_path, make_history):
    rows = make_history(n=3)
    write_run(tmp_path, rows)
    with mock.patch.object(history, "truncate_history", side_effect=KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            rewind_history(tmp_path, 100)
    # The set-aside file was written, the history not yet cut: restoring gives the whole history once.
    restore_superseded(tmp_path)
    assert read_history(tmp_path) == read_history_rows(rows)


def test_a_damaged_side_file_is_an_error_naming_it(tmp_path):
    (tmp_path / SUPERSEDED_FILENAME).write_text("{not json")
    with pytest.raises(MometasInputError, match=SUPERSEDED_FILENAME):
        restore_superseded(tmp_path)


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
    assert avg["a"] == pytest.approx((0.5 * 100 + 0.8 * 200 + 0.2 * 100) / 400)
    assert avg["b"] == pytest.approx(0.425)
    avg = average_distribution(hand_rows(), total_steps=500)
    assert avg["a"] == pytest.approx((0.5 * 100 + 0.8 * 200 + 0.2 * 100 + 0.1 * 100) / 500)


def test_average_distribution_edge_cases():
    rows = [{"step": 0, "probabilities": {"a": 1.0, "b": 0.0}},
            {"step": 50, "probabilities": None},
            {"step": 100, "probabilities": {"a": 0.0, "b": 1.0}},
            {"step": 200, "probabilities": None}]
    assert average_distribution(rows) == pytest.approx({"a": 0.5, "b": 0.5})
    assert average_distribution([{"step": 0, "probabilities": {"a": 0.3, "b": 0.7}}]) == {"a": 0.3, "b": 0.7}
    assert average_distribution([{"step": 0, "probabilities": None}]) == {}


def test_cumulative_reward_skips_nulls():
    assert cumulative_reward(hand_rows()) == ([100, 300, 400], pytest.approx([0.3, 0.4, 0.35]))


def test_reward_difference_interpolates_on_baseline_steps():
    run = [{"step": s, "reward": 1.0} for s in (100, 200, 300, 400)]  # cumulative = step / 100
    base = [{"step": s, "reward": 0.5} for s in (0, 150, 300, 450)]  # cumulative 0.5, 1.0, 1.5, 2.0
    diff_steps, diff = reward_difference(run, base)
    assert diff_steps == [150, 300]
    assert diff == pytest.approx([1.5 - 1.0, 3.0 - 1.5])
    assert reward_difference(run, [{"step": 0, "reward": None}]) == ([], [])


def test_summarize_distribution_lists_average_and_final():
    text = summarize_distribution(hand_rows())
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
    health = history.sampler_health(rows)
    assert (health["smallest_probability"], health["smallest_objective"], health["smallest_step"]) == (0.004, "b", 30)
    assert (health["updates"], health["updates_below_0.01"], health["floored_updates"]) == (3, 2, 1)
    text = summarize_distribution(rows)
    assert "smallest probability 0.004 (b at step 30)" in text and "2 of 3 updates" in text and "clipped 1" in text
    assert history.health_line([{"step": 0}]) is None

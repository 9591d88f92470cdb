"""mometas_utils.tracker: the window a history row reports, and its checkpointed state."""

import pytest
from accelerate import Accelerator

from mometas_utils.tracker import StepTracker


@pytest.fixture(scope="module")
def accelerator():
    return Accelerator(cpu=True)


def test_window_means_counts_draws_and_cumulative_tokens(accelerator):
    tracker = StepTracker(["mlm", "cse"])
    for objective, loss, tokens in (("mlm", 2.0, 10), ("cse", 1.0, 7), ("mlm", 4.0, 5)):
        tracker.record(objective, loss, tokens)
    window = tracker.close_window(accelerator)
    assert window == {"train_loss": {"mlm": 3.0, "cse": 1.0}, "counts": {"mlm": 2, "cse": 1},
                      "rollout": ["mlm", "cse", "mlm"], "tokens_seen": {"mlm": 15, "cse": 7},
                      "mean_probabilities": None}
    tracker.record("cse", None, 3)  # a skipped step: drawn, its tokens seen, but not trained
    window = tracker.close_window(accelerator)
    assert window["train_loss"] == {"mlm": None, "cse": None} and window["counts"] == {"mlm": 0, "cse": 0}
    assert window["rollout"] == ["cse"] and window["tokens_seen"] == {"mlm": 15, "cse": 10}


def test_mean_probabilities_average_what_each_draw_was_made_from(accelerator):
    tracker = StepTracker(["mlm", "cse", "atd"])
    tracker.record("mlm", 2.0, 1, {"mlm": 0.5, "cse": 0.25, "atd": 0.25})
    tracker.record("cse", None, 1, {"mlm": 0.2, "cse": 0.6, "atd": 0.2})  # a skipped step was still drawn
    tracker.record("mlm", 1.0, 1, {"mlm": 0.8, "cse": 0.2})  # a warm-up sampler lacking atd: it counts as 0
    mean = tracker.close_window(accelerator)["mean_probabilities"]
    assert mean == pytest.approx({"mlm": 1.5 / 3, "cse": 1.05 / 3, "atd": 0.45 / 3}, rel=1e-12)
    assert tracker.close_window(accelerator)["mean_probabilities"] is None  # a new window, nothing drawn


def test_state_carries_the_open_window_and_the_totals(accelerator):
    tracker = StepTracker(["mlm", "cse"])
    tracker.record("mlm", 2.0, 10, {"mlm": 0.9, "cse": 0.1})
    tracker.sync_tokens(accelerator)
    tracker.record("cse", 1.0, 4)
    tracker.sync_tokens(accelerator)
    tracker.skipped_steps = 1
    resumed = StepTracker(["mlm", "cse"])
    resumed.load_state_dict(tracker.state_dict())
    assert resumed.close_window(accelerator) == tracker.close_window(accelerator)
    assert resumed.skipped_steps == 1 and resumed.tokens_seen == [10, 4]
    with pytest.raises(ValueError, match="objectives"):
        StepTracker(["mlm"]).load_state_dict(tracker.state_dict())

"""Deprecated: the names of the former ``reporting`` module, now in :mod:`.history`, :mod:`.plots`,
:mod:`.card`, :mod:`.hub` and :mod:`.scrub`. Kept so that code written against it (a study already
running) keeps working; import from the new modules instead."""

from .card import build_model_card, save_model_card  # noqa: F401
from .history import (  # noqa: F401
    HISTORY_FILENAME,
    HistoryWriter,
    average_distribution,
    cumulative_reward,
    final_probabilities,
    objective_names,
    read_history,
    reward_difference,
    sampler_health,
    summarize_distribution,
    truncate_history,
)
from .plots import PLOT_FILENAMES, plot_history  # noqa: F401
from .scrub import public_args, redact  # noqa: F401

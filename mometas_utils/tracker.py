"""What a history row reports about the steps since the last one: the draws, the training losses and the tokens.

One :class:`StepTracker` per run keeps the rollout (the objectives drawn since the last
meta-test), each objective's summed training loss and count over that window, and the
cumulative number of non-pad tokens trained per objective. It is registered for
checkpointing, so a resumed run continues its windows and counters wherever its output goes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


class StepTracker:
    """The draws and windows of a run between two history rows, and its cumulative tokens.

    Draws and losses are the same on every process (losses are averaged over processes before
    :meth:`record`); tokens are counted per process and summed by :meth:`sync_tokens`, which
    every process calls before a checkpoint so that the saved state is the same everywhere.
    """

    def __init__(self, objectives: Sequence[str]):
        self.objectives = list(objectives)
        self.tokens_seen = [0] * len(self.objectives)
        self._local_tokens = torch.zeros(len(self.objectives), dtype=torch.long)
        #: Steps skipped because their loss or gradient norm was not finite (``--skip_nonfinite_steps``).
        self.skipped_steps = 0
        self.reset_window()

    def reset_window(self) -> None:
        self.rollout: list[str] = []
        self.loss_sum = dict.fromkeys(self.objectives, 0.0)
        self.counts = dict.fromkeys(self.objectives, 0)
        self.probability_sum = dict.fromkeys(self.objectives, 0.0)
        self.draws_with_probabilities = 0

    def record(self, objective: str, loss: float | None, tokens: int,
               drawn_with: Mapping[str, float] | None = None) -> None:
        """One step on ``objective``: its loss (averaged over processes; None for a skipped step, which
        counts as a draw but not as a trained step), this process's tokens and the distribution the
        objective was drawn from (``sampler.drawn_with``; an objective it lacks counts as 0)."""
        self.rollout.append(objective)
        if drawn_with is not None:
            for name in self.objectives:
                self.probability_sum[name] += float(drawn_with.get(name, 0.0))
            self.draws_with_probabilities += 1
        if loss is not None:
            self.loss_sum[objective] += loss
            self.counts[objective] += 1
        self._local_tokens[self.objectives.index(objective)] += tokens

    def sync_tokens(self, accelerator) -> list[int]:
        """Add every process's tokens since the last call to the totals (a collective: all processes call it)."""
        added = accelerator.reduce(self._local_tokens.to(accelerator.device), reduction="sum").cpu()
        self.tokens_seen = [total + int(n) for total, n in zip(self.tokens_seen, added)]
        self._local_tokens.zero_()
        return self.tokens_seen

    def close_window(self, accelerator) -> dict:
        """The row fields of the window (``train_loss``, ``counts``, ``rollout``, ``tokens_seen``,
        ``mean_probabilities`` and, with several processes, ``process_rollouts``), then a new window. A
        collective: all processes call it.

        ``mean_probabilities`` is the mean of the distributions the window's objectives were drawn from
        (None when no draw recorded one). For a sampler that changes only at meta-tests it is the
        previous row's ``probabilities``; for exp3, which moves every step, it is what was really drawn from.

        Every process must have drawn the same objectives; the draws are gathered to prove it.
        """
        names = self.objectives
        tokens = self.sync_tokens(accelerator)
        drawn = torch.tensor([names.index(n) for n in self.rollout], dtype=torch.long, device=accelerator.device)
        per_process = accelerator.gather(drawn).view(accelerator.num_processes, -1).tolist()
        if any(r != per_process[0] for r in per_process):
            raise RuntimeError(f"processes drew different objectives in this window: {per_process}")
        window = {
            "train_loss": {n: (self.loss_sum[n] / self.counts[n] if self.counts[n] else None) for n in names},
            "counts": dict(self.counts),
            "rollout": list(self.rollout),
            "tokens_seen": dict(zip(names, tokens)),
            "mean_probabilities": ({n: self.probability_sum[n] / self.draws_with_probabilities for n in names}
                                   if self.draws_with_probabilities else None),
        }
        if accelerator.num_processes > 1:
            window["process_rollouts"] = [[names[i] for i in r] for r in per_process]
        self.reset_window()
        return window

    def state_dict(self) -> dict:
        # Saved from the main process only: call sync_tokens first so the totals hold every process.
        return {"objectives": list(self.objectives), "rollout": list(self.rollout), "loss_sum": dict(self.loss_sum),
                "counts": dict(self.counts), "tokens_seen": list(self.tokens_seen),
                "skipped_steps": self.skipped_steps, "probability_sum": dict(self.probability_sum),
                "draws_with_probabilities": self.draws_with_probabilities}

    def load_state_dict(self, state: dict) -> None:
        if list(state["objectives"]) != self.objectives:
            raise ValueError(f"objectives: the checkpoint tracked {state['objectives']}, this run has {self.objectives}")
        self.rollout = list(state["rollout"])
        self.loss_sum = dict(state["loss_sum"])
        self.counts = dict(state["counts"])
        self.tokens_seen = [int(n) for n in state["tokens_seen"]]
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.probability_sum = dict(state.get("probability_sum") or dict.fromkeys(self.objectives, 0.0))
        self.draws_with_probabilities = int(state.get("draws_with_probabilities", 0))
        self._local_tokens.zero_()


__all__ = ["StepTracker"]

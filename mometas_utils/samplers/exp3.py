"""EXP3 as in Online Data Mixing (ODM; Albalak et al., 2023), over objectives instead of data domains.

ODM is the strongest *online* mixer in the data-mixing literature and the natural anchor for
MOMETAS: a multi-armed bandit whose arm is the domain (here: the objective) of each step and
whose reward is that step's *training* loss, so it favours what the model finds hardest. It is
here to be measured against MOMETAS, whose reward is the drop of *validation* losses: an
objective that can never be learned (a harmful one) keeps a high training loss, so EXP3 should
favour exactly what MOMETAS must drop (``study/planted.py`` measures it).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch

from ..errors import MometasInputError
from .base import DTYPE, ObjectiveSampler, register_sampler


@register_sampler("exp3")
class Exp3Sampler(ObjectiveSampler):
    """ODM's EXP3 (Albalak et al., 2023, Algorithm 1) with the sampled objective's training loss as reward.

    With m objectives, t the number of trained steps so far and the exploration rate

        eps_t = min(1/m, sqrt(ln m / (m t)))        (eps_0 = 1/m)

    step t + 1 draws from the mixing distribution

        pi_i = (1 - m eps_{t+1}) exp(eps_t R_i) / sum_j exp(eps_t R_j) + eps_{t+1}

    whose exploration floor eps_{t+1} decays as training goes on. After the step on objective
    i with training loss L, only i's estimated reward moves, importance-weighted by the
    probability it was drawn with and smoothed with alpha (``smoothing``):

        R_i <- alpha R_i + (1 - alpha) L / pi_i

    The distribution therefore changes after every step, not every K steps; K (the meta
    length) only schedules the optional meta-tests that record validation losses. No reward
    of Eq. 3 is learned from: :meth:`update` reports it and changes nothing.

    Args:
        smoothing: alpha in [0, 1), the weight of the old estimate (ODM's default 0.9).
        Other options: :class:`ObjectiveSampler`.
    """

    def __init__(self, objectives: Sequence[str], *, smoothing: float = 0.9, **common) -> None:
        super().__init__(objectives, **common)
        if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0.0 <= smoothing < 1.0:
            raise MometasInputError(f"smoothing: expected a number in [0, 1), got {smoothing!r}")
        self.smoothing = float(smoothing)
        #: R_i, the smoothed importance-weighted training losses.
        self.estimates = torch.zeros(len(self.objectives), dtype=DTYPE)
        #: t, the number of steps observed so far.
        self.steps = 0

    def exploration_rate(self, t: int) -> float:
        """eps_t = min(1/m, sqrt(ln m / (m t))); eps_0 = 1/m."""
        m = len(self.objectives)
        if t <= 0:
            return 1.0 / m
        return min(1.0 / m, math.sqrt(math.log(m) / (m * t)))

    def probs_tensor(self) -> torch.Tensor:
        m = len(self.objectives)
        floor = self.exploration_rate(self.steps + 1)
        exploit = torch.softmax(self.exploration_rate(self.steps) * self.estimates, dim=0)
        return (1.0 - m * floor) * exploit + floor

    def observe(self, objective: str, loss: float, grad_norm: float | None = None) -> None:
        index = self._objective_index(objective)
        loss = float(loss)
        if not math.isfinite(loss):
            # An fp16 overflow step must not poison the estimate for good.
            warnings.warn(f"exp3 sampler: ignoring non-finite loss {loss} of {objective!r}", RuntimeWarning,
                          stacklevel=2)
            return
        # The probability the objective was drawn with: the distribution has not moved since sample().
        drawn_with = float(self.probs_tensor()[index])
        self.estimates[index] = self.smoothing * self.estimates[index] + (1.0 - self.smoothing) * loss / drawn_with
        self.steps += 1

    def _extra_state(self) -> dict:
        return {"estimates": self.estimates.clone(), "steps": self.steps}

    def _load_extra_state(self, state: dict) -> None:
        self.estimates = state["estimates"].to(DTYPE).clone()
        self.steps = int(state["steps"])

"""EXP3 as in Online Data Mixing (ODM; Albalak et al., 2023), over objectives instead of data domains.

ODM is the strongest *online* mixer in the data-mixing literature and the natural rival of
MOMETAS: a multi-armed bandit whose arm is the domain (here: the objective) of each step and
whose reward is that step's *training* loss, so it favours what the model finds hardest. It is
here to be measured against MOMETAS, whose reward is the drop of *validation* losses: an
objective that can never be learned (a harmful one) keeps a high training loss, so EXP3 should
favour exactly what MOMETAS must drop (``study/planted.py`` measures it).

ODM's domains share one loss; objectives do not (a vocabulary-sized cross-entropy sits near 6,
a binary detection loss near 0.2, SimCSE's near 0). On raw losses EXP3 would favour the
vocabulary-sized objectives whatever they do, so by default each loss is divided by the first
training loss measured for its objective (``loss_scaling="first"``); ``"none"`` keeps ODM's raw loss.
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

        R_i <- alpha R_i + (1 - alpha) (L / s_i) / pi_i

    s_i is the first positive training loss observed for objective i (``loss_scaling="first"``):
    every objective's reward starts near 1 and falls as far as its loss falls, whatever the loss's
    own scale. A loss observed before any positive one counts as 0. With ``loss_scaling="none"``,
    s_i = 1: ODM's reward, the raw loss.

    The distribution therefore changes after every step, not every K steps; K (the meta
    length) only schedules the optional meta-tests that record validation losses. No reward
    of Eq. 3 is learned from: :meth:`update` reports it and changes nothing.

    Args:
        smoothing: alpha in [0, 1), the weight of the old estimate (ODM's default 0.9).
        loss_scaling: ``"first"`` (each loss over its objective's first one) or ``"none"`` (raw losses).
        Other options: :class:`ObjectiveSampler`.
    """

    LOSS_SCALINGS = ("first", "none")

    def __init__(self, objectives: Sequence[str], *, smoothing: float = 0.9, loss_scaling: str = "first",
                 **common) -> None:
        super().__init__(objectives, **common)
        if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0.0 <= smoothing < 1.0:
            raise MometasInputError(f"smoothing: expected a number in [0, 1), got {smoothing!r}")
        if loss_scaling not in self.LOSS_SCALINGS:
            raise MometasInputError(f"loss_scaling: expected one of {', '.join(self.LOSS_SCALINGS)}, got {loss_scaling!r}")
        self.smoothing = float(smoothing)
        self.loss_scaling = loss_scaling
        #: s_i, each objective's first positive training loss (0 until one is seen).
        self.scales = torch.zeros(len(self.objectives), dtype=DTYPE)
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
        self.estimates[index] = (self.smoothing * self.estimates[index]
                                 + (1.0 - self.smoothing) * self.scaled(index, loss) / drawn_with)
        self.steps += 1

    def scaled(self, index: int, loss: float) -> float:
        """L / s_i (the reward of one step before importance weighting); sets s_i on the first positive loss."""
        if self.loss_scaling == "none":
            return loss
        if self.scales[index] <= 0 and loss > 0:
            self.scales[index] = loss
        return loss / float(self.scales[index]) if self.scales[index] > 0 else 0.0

    def _extra_state(self) -> dict:
        return {"estimates": self.estimates.clone(), "steps": self.steps, "scales": self.scales.clone()}

    def _load_extra_state(self, state: dict) -> None:
        self.estimates = state["estimates"].to(DTYPE).clone()
        self.steps = int(state["steps"])
        if "scales" in state:
            self.scales = state["scales"].to(DTYPE).clone()

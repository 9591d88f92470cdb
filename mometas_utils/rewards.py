"""The reward R(tau) of a meta-train rollout and the advantage MOMETAS learns from.

Paper (Wu et al., 2022, Section 3.4.1, Eq. 3): with b_i the validation loss of objective i
at the previous meta-test and a_i the current one,

    R(tau) = sum_i (b_i - a_i) / b_i

What this module adds, each a flag of ``run_mometas_pretraining.py``:

* ``floor`` and ``dead_zone`` (from the authors' released code, not the paper): each
  objective's relative term is 0 when |b_i - a_i| <= dead_zone and at least ``floor``.
  Without them an objective whose loss is near 0 (CSE saturates in tens of steps) turns
  validation noise into a term of -10 or worse that wipes out the whole distribution.
* ``reward_objectives``: the objectives whose losses make the reward. The paper sums all
  of them, so an objective is rewarded for lowering its own loss even while it damages
  the others; naming the objectives you care about removes that self-reward.
* :class:`Advantage` (REINFORCE with a baseline, not in the paper): the update uses
  R - b, b an exponential moving average of earlier rewards, optionally divided by a
  running standard deviation so that the meta step size means the same step whatever
  the scale of the losses.

The paper's literal reward is ``floor=None, dead_zone=0``, all objectives, and an
:class:`Advantage` with ``baseline="none", normalize=False``; see ``PAPER_REWARD``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Callable

import torch

from .errors import MometasInputError

DTYPE = torch.float64

#: Settings that reproduce Eqs. 2-4 literally (the ``--paper_reward`` flag).
PAPER_REWARD = dict(reward_floor=None, reward_dead_zone=0.0, reward_baseline="none", reward_normalize=False,
                    min_probability=0.0)


def _relative_terms(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    # Eq. 3: dividing by b_i puts objectives whose losses differ in scale on one footing. A b_i <= 0
    # (an exactly zero loss) has no relative change; its term is 0 rather than inf.
    positive = b > 0
    return torch.where(positive, (b - a) / torch.where(positive, b, torch.ones_like(b)), torch.zeros_like(b))


def _overall_terms(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return b - a


def _hard_terms(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return torch.sign(b - a)


#: Per-objective reward terms r_i; R(tau) = sum_i r_i (Section 3.4.1 and the ablations of Section 7.1).
REWARDS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "relative": _relative_terms,
    "overall": _overall_terms,
    "hard": _hard_terms,
}


def check_reward_settings(kind: str, floor: float | None, dead_zone: float) -> None:
    if kind not in REWARDS:
        raise MometasInputError(f"reward: expected one of {', '.join(REWARDS)}, got {kind!r}")
    if floor is not None and (not isinstance(floor, (int, float)) or not math.isfinite(floor) or floor > 0):
        raise MometasInputError(f"reward_floor: expected a finite number <= 0 or none, got {floor!r}")
    if not isinstance(dead_zone, (int, float)) or not math.isfinite(dead_zone) or dead_zone < 0:
        raise MometasInputError(f"reward_dead_zone: expected a finite number >= 0, got {dead_zone!r}")


def reward_terms(
    kind: str,
    baselines: torch.Tensor,
    current: torch.Tensor,
    *,
    floor: float | None = None,
    dead_zone: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-objective terms r_i of R(tau) and a mask of the terms the floor raised.

    * ``relative`` (Eq. 3): (b_i - a_i) / b_i
    * ``overall``: b_i - a_i (their sum is the drop of the summed loss)
    * ``hard``: sign(b_i - a_i)

    A change |b_i - a_i| <= ``dead_zone`` gives r_i = 0. ``floor`` (relative reward only)
    raises every r_i below it to ``floor``.
    """
    check_reward_settings(kind, floor, dead_zone)
    b, a = baselines.to(DTYPE), current.to(DTYPE)
    terms = REWARDS[kind](b, a)
    terms = torch.where((b - a).abs() <= dead_zone, torch.zeros_like(terms), terms)
    floored = torch.zeros_like(terms, dtype=torch.bool)
    if floor is not None and kind == "relative":
        floored = terms < floor
        terms = terms.clamp(min=floor)
    return terms, floored


def compute_reward(
    kind: str,
    baselines: torch.Tensor,
    current: torch.Tensor,
    *,
    floor: float | None = None,
    dead_zone: float = 0.0,
    mask: torch.Tensor | None = None,
) -> float:
    """R(tau) = sum of :func:`reward_terms` over the objectives selected by ``mask`` (all by default)."""
    terms, _ = reward_terms(kind, baselines, current, floor=floor, dead_zone=dead_zone)
    if mask is not None:
        terms = terms[mask]
    return float(terms.sum())


def resolve_reward_objectives(spec: str | Sequence[str] | None, objectives: Sequence[str]) -> list[str]:
    """The objectives whose validation losses make R(tau); ``None`` means all (the paper)."""
    if spec is None:
        return list(objectives)
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else [str(n).strip() for n in spec]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in objectives]
    if not names or unknown:
        raise MometasInputError(
            f"reward_objectives: expected a non-empty subset of the trained objectives {list(objectives)}, "
            f"got {names or spec!r}"
        )
    return [n for n in objectives if n in names]


class Advantage:
    """REINFORCE with a baseline: turns the n-th reward R_n into the advantage A_n of the update.

    ``baseline="ema"``: b_n is the bias-corrected exponential moving average (decay d) of the
    earlier rewards R_1..R_{n-1}, and b_1 = 0:

        b_n = sum_{j<n} (1-d) d^(n-1-j) R_j / (1 - d^(n-1))

    It does not depend on the current rollout, so R_n - b_n keeps the policy gradient
    unbiased while removing the common part of the rewards (the loss drop every rollout
    gets early in training). ``baseline="none"`` keeps b_n = 0, as in the paper.

    ``normalize=True`` divides the centred reward c_n = R_n - b_n by s_n, the square root of
    the bias-corrected moving average of c_j^2 over j <= n. Including c_n itself bounds the
    advantage: |A_n| <= 1 / sqrt(w_n) with w_n = (1-d) / (1-d^n) the weight of the current
    term, i.e. |A_n| <= 1/sqrt(1-d) (3.16 for d = 0.9), so one noisy meta-test can no
    longer move the distribution arbitrarily far. The first advantage is sign(c_1).
    """

    def __init__(self, baseline: str = "none", decay: float = 0.9, normalize: bool = False) -> None:
        if baseline not in ("none", "ema"):
            raise MometasInputError(f"reward_baseline: expected none or ema, got {baseline!r}")
        if not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise MometasInputError(f"reward_baseline_decay: expected a number in [0, 1), got {decay!r}")
        self.baseline, self.decay, self.normalize = baseline, float(decay), bool(normalize)
        self.count = 0
        self._reward_ema = 0.0  # biased EMA of R_j
        self._square_ema = 0.0  # biased EMA of c_j^2

    def _corrected(self, ema: float, n: int) -> float:
        return ema / (1.0 - self.decay**n) if n else 0.0

    def __call__(self, reward: float) -> dict[str, float]:
        """A_n for the n-th reward, and the statistics that gave it. Advances the state."""
        b = self._corrected(self._reward_ema, self.count) if self.baseline == "ema" else 0.0
        centred = reward - b
        self.count += 1
        self._reward_ema = self.decay * self._reward_ema + (1.0 - self.decay) * reward
        scale = 1.0
        if self.normalize:
            self._square_ema = self.decay * self._square_ema + (1.0 - self.decay) * centred**2
            scale = math.sqrt(self._corrected(self._square_ema, self.count))
        advantage = centred / scale if scale > 0 else 0.0
        return {"advantage": advantage, "reward_baseline": b, "reward_scale": scale}

    def state_dict(self) -> dict:
        return {"count": self.count, "reward_ema": self._reward_ema, "square_ema": self._square_ema}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state["count"])
        self._reward_ema = float(state["reward_ema"])
        self._square_ema = float(state["square_ema"])


__all__ = [
    "PAPER_REWARD",
    "REWARDS",
    "Advantage",
    "check_reward_settings",
    "compute_reward",
    "resolve_reward_objectives",
    "reward_terms",
]

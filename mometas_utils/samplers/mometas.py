"""MOMETAS, the meta-learned objective sampler (Wu et al., 2022, Section 3.4)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import MometasInputError
from ..rewards import Advantage
from .base import DTYPE, ObjectiveSampler, register_sampler


#: ``entropy_lambda_schedule``: lambda as given (the paper), or lambda times the learning rate over its peak so far.
ENTROPY_LAMBDA_SCHEDULES = ("constant", "learning_rate")


@register_sampler("mometas")
class MometasSampler(ObjectiveSampler):
    """MOMETAS, the meta-sampler (Section 3.4): P_D = softmax(psi), psi learned by REINFORCE.

    At each meta-test, with the rollout tau = (T_1..T_n) drawn since the last one
    (n = K, the meta length, in the normal loop), the reward R(tau) and its advantage A
    (:class:`~mometas_utils.rewards.Advantage`; A = R in the paper), one policy-gradient
    step on Eq. 4 with meta step size beta:

        psi <- psi + beta * grad_psi [ sum_t log q(T_t; psi) * A + lambda * H(q) ]

    Then b_i <- a_i. psi starts at zero, i.e. uniform (Algorithm 1, line 1).

    Draws come from q = (1 - m eps) softmax(psi) + eps, with eps = ``min_probability``
    (eps = 0 is the paper), so no objective is starved for good. The gradient is that of
    the distribution actually drawn from. With p = softmax(psi), dq_k/dpsi_j =
    (1 - m eps) p_k (delta_kj - p_j), so

        d/dpsi_j log q_k = (1 - m eps) p_k (delta_kj - p_j) / q_k
        d/dpsi_j H(q)    = -(1 - m eps) p_j (log q_j - sum_k p_k log q_k)

    which for eps = 0 are the familiar delta_kj - p_j and -p_j (log p_j + H(p)).

    Args:
        meta_length: K, meta-train steps between meta-tests (default 100, Section 4.4);
            must be >= m (Section 7.3).
        meta_step_size: beta, the meta step size of Eq. 2 (default 0.1, Section 4.4); > 0.
        entropy_lambda: lambda, the temperature of the entropy regularisation in Eq. 4
            (default 3.0, the best value in Table 4); >= 0.
        entropy_lambda_schedule: ``"constant"`` (the paper) or ``"learning_rate"``: each update
            uses lambda_t = lambda * lr_t / max(lr_1..lr_t), lr_t the learning rate given to
            :meth:`update`. Not in the paper. A draw moves the losses in proportion to the step's
            learning rate, so as the rate decays the reward's signal shrinks while a constant
            entropy bonus keeps pulling P_D back to uniform with full force; following the rate
            keeps the two in proportion (docs/study.md, the planted benchmark).
        reward_baseline, reward_baseline_decay, reward_normalize: the advantage estimator
            (:class:`~mometas_utils.rewards.Advantage`).
        min_probability: eps in [0, 1/m), the least probability of every objective.
        Other options: :class:`ObjectiveSampler`.
    """

    requires_meta_test = True
    adapts_every_meta_length = True

    def __init__(
        self,
        objectives: Sequence[str],
        *,
        meta_step_size: float = 0.1,
        entropy_lambda: float = 3.0,
        entropy_lambda_schedule: str = "constant",
        reward_baseline: str = "ema",
        reward_baseline_decay: float = 0.9,
        reward_normalize: bool = True,
        min_probability: float = 0.0,
        **common,
    ) -> None:
        super().__init__(objectives, **common)
        if not isinstance(meta_step_size, (int, float)) or not math.isfinite(meta_step_size) or meta_step_size <= 0:
            raise MometasInputError(f"meta_step_size: expected a positive number, got {meta_step_size!r}")
        if not isinstance(entropy_lambda, (int, float)) or not math.isfinite(entropy_lambda) or entropy_lambda < 0:
            raise MometasInputError(f"entropy_lambda: expected a number >= 0, got {entropy_lambda!r}")
        if entropy_lambda_schedule not in ENTROPY_LAMBDA_SCHEDULES:
            raise MometasInputError(f"entropy_lambda_schedule: expected one of {', '.join(ENTROPY_LAMBDA_SCHEDULES)}, "
                                    f"got {entropy_lambda_schedule!r}")
        m = len(self.objectives)
        if not isinstance(min_probability, (int, float)) or not 0.0 <= min_probability < 1.0 / m:
            raise MometasInputError(
                f"min_probability: expected a number in [0, 1/m) = [0, {1.0 / m:.4g}) for {m} objectives, "
                f"got {min_probability!r}"
            )
        self.meta_step_size = float(meta_step_size)
        self.entropy_lambda = float(entropy_lambda)
        self.entropy_lambda_schedule = entropy_lambda_schedule
        #: The largest learning rate :meth:`update` has been given (the schedule's peak so far).
        self.peak_learning_rate: float | None = None
        self._rate_factor = 1.0
        self.min_probability = float(min_probability)
        self.advantage = Advantage(reward_baseline, reward_baseline_decay, reward_normalize)
        #: psi, the logits of P_D.
        self.logits = torch.zeros(m, dtype=DTYPE)

    def _mix(self, p: torch.Tensor) -> torch.Tensor:
        m = p.numel()
        return (1.0 - m * self.min_probability) * p + self.min_probability

    def probs_tensor(self) -> torch.Tensor:
        return self._mix(torch.softmax(self.logits, dim=0))

    def _observe_learning_rate(self, learning_rate: float | None) -> None:
        if self.entropy_lambda_schedule == "constant":
            return
        if learning_rate is None or not math.isfinite(learning_rate) or learning_rate < 0:
            raise MometasInputError(
                f"learning_rate: entropy_lambda_schedule {self.entropy_lambda_schedule!r} needs the optimizer's "
                f"learning rate (>= 0) at every meta-test, sampler.update(val_losses, learning_rate=...); got {learning_rate!r}")
        self.peak_learning_rate = max(self.peak_learning_rate or 0.0, float(learning_rate))
        self._rate_factor = learning_rate / self.peak_learning_rate if self.peak_learning_rate > 0 else 1.0

    @property
    def entropy_weight(self) -> float:
        """lambda_t, the entropy weight of the next update: lambda, or lambda * lr_t / peak under the
        ``learning_rate`` schedule."""
        return self.entropy_lambda * self._rate_factor

    def _adapt(self, reward: float | None) -> dict:
        # No reward (first meta-test) or no rollout (update called twice): nothing to learn from.
        if reward is None or not self.rollout:
            return {"updated": False}
        stats = self.advantage(reward)
        # The caller may be evaluating under no_grad / inference_mode; this step needs autograd.
        with torch.inference_mode(False), torch.enable_grad():
            tau = torch.tensor(self.rollout, dtype=torch.int64)
            psi = self.logits.clone().requires_grad_(True)
            q = self._mix(torch.softmax(psi, dim=0))
            log_q = q.log()
            entropy = -(q * log_q).sum()
            objective = log_q[tau].sum() * stats["advantage"] + self.entropy_weight * entropy
            (grad,) = torch.autograd.grad(objective, psi)
        self.logits = (self.logits + self.meta_step_size * grad).detach()
        return {"updated": True, **stats, "entropy_lambda": self.entropy_weight}

    def _extra_state(self) -> dict:
        return {"logits": self.logits.clone(), "advantage": self.advantage.state_dict(),
                "peak_learning_rate": self.peak_learning_rate}

    def _load_extra_state(self, state: dict) -> None:
        self.logits = state["logits"].to(DTYPE).clone()
        self.advantage.load_state_dict(state["advantage"])
        self.peak_learning_rate = state.get("peak_learning_rate")  # None in checkpoints from before the schedule

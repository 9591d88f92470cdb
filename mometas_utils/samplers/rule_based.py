"""The rule-based samplers of Section 3.3 / 4.3 (Ub, Gb, Lb) and fixed weights."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import torch

from ..errors import MometasInputError
from .base import DTYPE, ObjectiveSampler, register_sampler


@register_sampler("uniform")
class UniformSampler(ObjectiveSampler):
    """Ub (Section 3.3): every objective with probability 1/m, i.e. plain multi-objective training."""


class _WindowSampler(ObjectiveSampler):
    """Shared machinery of the proportional baselines Gb and Lb (Section 4.3).

    Over each window of K steps it averages a per-objective value v_i; at meta-test it sets
    p_i proportional to sigmoid(v_i). The sigmoid keeps one large value (e.g. the big
    gradients early in training) from pushing the other probabilities to zero. An objective
    not drawn in a window keeps its last value; one never observed yet borrows the largest
    known value, so it is sampled and measured rather than starved. Before the first update
    with any observation, P_D is uniform.
    """

    adapts_every_meta_length = True

    def __init__(self, objectives: Sequence[str], **common) -> None:
        super().__init__(objectives, **common)
        m = len(self.objectives)
        self._window_sum = torch.zeros(m, dtype=DTYPE)
        self._window_count = torch.zeros(m, dtype=torch.int64)
        #: v_i from the latest window in which T^i was observed (NaN: never observed).
        self.values = torch.full((m,), math.nan, dtype=DTYPE)

    def _record(self, index: int, value: float) -> None:
        self._window_sum[index] += value
        self._window_count[index] += 1

    def _window_value(self, mean: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """Map the window means of the observed objectives to v_i (identity by default)."""
        return mean

    def _adapt(self, reward: float | None) -> dict:
        seen = self._window_count > 0
        updated = bool(seen.any())
        if updated:
            mean = self._window_sum / self._window_count.clamp(min=1)
            self.values = torch.where(seen, self._window_value(mean, seen), self.values)
        self._window_sum.zero_()
        self._window_count.zero_()
        return {"updated": updated}

    def probs_tensor(self) -> torch.Tensor:
        known = ~torch.isnan(self.values)
        if not known.any():
            return super().probs_tensor()
        values = torch.where(known, self.values, self.values[known].max())
        scaled = torch.sigmoid(values)
        return scaled / scaled.sum()

    def _extra_state(self) -> dict:
        return {
            "window_sum": self._window_sum.clone(),
            "window_count": self._window_count.clone(),
            "values": self.values.clone(),
        }

    def _load_extra_state(self, state: dict) -> None:
        self._window_sum = state["window_sum"].to(DTYPE).clone()
        self._window_count = state["window_count"].to(torch.int64).clone()
        self.values = state["values"].to(DTYPE).clone()

    def _skip_non_finite(self, what: str, objective: str, value: float) -> bool:
        # fp16 loss scaling produces inf gradients on overflow steps; one must not poison a window.
        if math.isfinite(value):
            return False
        warnings.warn(
            f"{self.name} sampler: ignoring non-finite {what} {value} of {objective!r}",
            RuntimeWarning,
            stacklevel=3,
        )
        return True


@register_sampler("gradient")
class GradientSampler(_WindowSampler):
    """Gb (Sections 3.3, 4.3): p_i proportional to sigmoid(mean L2 norm of the encoder
    gradients of T^i over the window). :meth:`observe` needs ``grad_norm``."""

    requires_grad_norm = True

    def observe(self, objective: str, loss: float, grad_norm: float | None = None) -> None:
        index = self._objective_index(objective)
        if grad_norm is None:
            raise MometasInputError(
                "grad_norm: the gradient sampler needs the L2 norm of the encoder gradients of every step, got None"
            )
        grad_norm = float(grad_norm)
        if not self._skip_non_finite("gradient norm", objective, grad_norm):
            self._record(index, grad_norm)


@register_sampler("loss")
class LossSampler(_WindowSampler):
    """Lb (Sections 3.3, 4.3): p_i proportional to sigmoid(IR_i), the inverse training rate
    IR_i = (mean training loss of T^i over the window) / (first loss ever observed for T^i).
    Objectives that learn slower (higher IR) are sampled more."""

    def __init__(self, objectives: Sequence[str], **common) -> None:
        super().__init__(objectives, **common)
        #: L_i(0): the first finite, positive training loss observed for T^i (NaN: none yet).
        self.initial_losses = torch.full((len(self.objectives),), math.nan, dtype=DTYPE)

    def observe(self, objective: str, loss: float, grad_norm: float | None = None) -> None:
        index = self._objective_index(objective)
        loss = float(loss)
        if self._skip_non_finite("loss", objective, loss):
            return
        if math.isnan(self.initial_losses[index]):
            if loss <= 0:
                # IR divides by the initial loss: wait for one that can be divided by.
                warnings.warn(
                    f"loss sampler: first loss of {objective!r} is {loss}, not positive; "
                    "waiting for a positive one to use as its initial loss",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return
            self.initial_losses[index] = loss
        self._record(index, loss)

    def _window_value(self, mean: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        return mean / self.initial_losses

    def _extra_state(self) -> dict:
        state = super()._extra_state()
        state["initial_losses"] = self.initial_losses.clone()
        return state

    def _load_extra_state(self, state: dict) -> None:
        super()._load_extra_state(state)
        self.initial_losses = state["initial_losses"].to(DTYPE).clone()


@register_sampler("fixed")
class FixedSampler(ObjectiveSampler):
    """A fixed distribution from user weights, normalised to sum to 1.

    ``weights`` is a dict ``{objective: weight}`` naming every objective, or a list aligned
    with ``objectives``; weights must be finite and >= 0, not all zero. A zero weight means
    the objective is never drawn. Used for ablations and to replay a distribution MOMETAS
    learned (pass the ``probabilities`` dict of its last update).
    """

    def __init__(
        self,
        objectives: Sequence[str],
        *,
        weights: Mapping[str, float] | Sequence[float] | None = None,
        **common,
    ) -> None:
        super().__init__(objectives, **common)
        self._probs = self._check_weights(weights)

    def _check_weights(self, weights) -> torch.Tensor:
        flag = "weights"
        if weights is None:
            raise MometasInputError(f"{flag}: the fixed sampler needs a weight per objective {self.objectives}")
        if isinstance(weights, Mapping):
            missing = [n for n in self.objectives if n not in weights]
            unknown = [n for n in weights if n not in self._index]
            if missing or unknown:
                raise MometasInputError(
                    f"{flag}: expected a weight for exactly {self.objectives}; "
                    f"missing {missing}, unknown {unknown}"
                )
            values = [weights[n] for n in self.objectives]
        elif isinstance(weights, Sequence) and not isinstance(weights, str):
            values = list(weights)
            if len(values) != len(self.objectives):
                raise MometasInputError(
                    f"{flag}: expected {len(self.objectives)} weights (one per objective "
                    f"{self.objectives}), got {len(values)}"
                )
        else:
            raise MometasInputError(f"{flag}: expected a dict or list of weights, got {weights!r}")
        try:
            probs = torch.tensor([float(v) for v in values], dtype=DTYPE)
        except (TypeError, ValueError):
            raise MometasInputError(f"{flag}: expected numbers, got {values!r}") from None
        if not torch.isfinite(probs).all() or bool((probs < 0).any()):
            raise MometasInputError(f"{flag}: expected finite weights >= 0, got {values!r}")
        if float(probs.sum()) == 0.0:
            raise MometasInputError(f"{flag}: expected at least one positive weight, got {values!r}")
        return probs / probs.sum()

    def probs_tensor(self) -> torch.Tensor:
        return self._probs.clone()

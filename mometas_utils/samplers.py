"""Objective samplers: which pre-training objective T_t to train on at step t.

One small interface, :class:`ObjectiveSampler`, and one class per strategy of the paper
(Section 3.3 rule-based samplers, Section 3.4 MOMETAS, Section 4.3 baselines):

========  =====================================================================
uniform   Ub: p_i = 1/m.
gradient  Gb: p_i proportional to sigmoid(mean encoder grad-norm of T^i over the window).
loss      Lb: p_i proportional to sigmoid(inverse training rate of T^i over the window).
mometas   the meta-sampler: p = softmax(psi), psi learned with REINFORCE (Eq. 2-4).
fixed     user-given weights (ablations, replaying a schedule MOMETAS learned).
========  =====================================================================

The training loop drives every sampler the same way::

    sampler.update(val_losses)               # meta-test at step 0: stores baselines b_i
    for step in range(1, total_steps + 1):
        objective = sampler.sample()          # T_t, appended to the rollout tau
        loss, grad_norm = train_step(objective)
        sampler.observe(objective, loss, grad_norm)
        if step % sampler.meta_length == 0:   # meta-test every K steps
            metrics = sampler.update(evaluate_all_objectives())

Every sampler computes the reward R(tau) at meta-test when validation losses are given, so
a uniform run's reward curve can be compared with MOMETAS's (Figure 3); only MOMETAS
learns from it.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Callable

import torch

from mometas_utils.errors import MometasInputError

__all__ = [
    "ObjectiveSampler",
    "UniformSampler",
    "GradientSampler",
    "LossSampler",
    "MometasSampler",
    "FixedSampler",
    "SAMPLERS",
    "REWARDS",
    "register_sampler",
    "build_sampler",
    "compute_reward",
]

# Probabilities and logits are float64 so that every process computes bit-identical
# distributions, and therefore draws the same objective from the same generator state.
DTYPE = torch.float64

SAMPLERS: dict[str, type[ObjectiveSampler]] = {}


def register_sampler(name: str) -> Callable[[type[ObjectiveSampler]], type[ObjectiveSampler]]:
    """Class decorator: make a sampler available to :func:`build_sampler` under ``name``."""

    def decorator(cls: type[ObjectiveSampler]) -> type[ObjectiveSampler]:
        if name in SAMPLERS and SAMPLERS[name] is not cls:
            raise ValueError(f"a sampler named {name!r} is already registered")
        cls.name = name
        SAMPLERS[name] = cls
        return cls

    return decorator


# ----------------------------------------------------------------------------- rewards


def _relative_reward(b: torch.Tensor, a: torch.Tensor) -> float:
    # Eq. 3: dividing by b_i puts objectives whose losses differ in scale on one footing.
    return float(((b - a) / b).sum())


def _overall_reward(b: torch.Tensor, a: torch.Tensor) -> float:
    return float(b.sum() - a.sum())


def _hard_reward(b: torch.Tensor, a: torch.Tensor) -> float:
    return float(torch.sign(b - a).sum())


REWARDS: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "relative": _relative_reward,
    "overall": _overall_reward,
    "hard": _hard_reward,
}


def compute_reward(kind: str, baselines: torch.Tensor, current: torch.Tensor) -> float:
    """The reward R(tau) of one meta-train rollout (Section 3.4.1 and Section 7.1).

    ``baselines`` are the b_i (validation losses of the previous meta-test) and ``current``
    the a_i (this meta-test), both in objective order.

    * ``relative`` (Eq. 3, the default): sum_i (b_i - a_i) / b_i
    * ``overall``: sum_i b_i - sum_i a_i, the drop of the summed loss
    * ``hard``: sum_i sign(b_i - a_i), +1 per objective whose loss fell, -1 if it rose,
      0 if unchanged
    """
    if kind not in REWARDS:
        raise MometasInputError(
            f"--reward: expected one of {', '.join(REWARDS)}, got {kind!r}"
        )
    return REWARDS[kind](baselines.to(DTYPE), current.to(DTYPE))


# ------------------------------------------------------------------------ base class


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class ObjectiveSampler:
    """Chooses the objective T_t of each training step from a distribution P_D over m objectives.

    Args:
        objectives: names of the m pre-training objectives T^1..T^m (unique, non-empty).
        meta_length: the meta length K, the number of meta-train steps between two
            meta-tests. The training loop calls :meth:`update` every K steps; samplers that
            adapt on that schedule (mometas, gradient, loss) need K >= m.
        seed: seed of the sampler's own ``torch.Generator``; every process that holds the
            same sampler state draws the same objective.
        reward: the reward function R(tau) reported at every meta-test (and learned from by
            mometas): ``relative`` (Eq. 3), ``overall`` or ``hard``; see :func:`compute_reward`.

    Subclasses set ``name`` (through :func:`register_sampler`), the two ``requires_*`` flags,
    and override :meth:`probs_tensor` and, if they adapt, :meth:`_adapt`.
    """

    name: str = "base"
    #: True when :meth:`update` needs the validation losses of every objective.
    requires_meta_test: bool = False
    #: True when :meth:`observe` needs ``grad_norm`` (the encoder gradient L2 norm).
    requires_grad_norm: bool = False
    #: True when the distribution changes every K steps, which needs K >= m (Section 7.3).
    adapts_every_meta_length: bool = False

    def __init__(
        self,
        objectives: Sequence[str],
        *,
        meta_length: int = 100,
        seed: int = 0,
        reward: str = "relative",
    ) -> None:
        self.objectives: list[str] = self._check_objectives(objectives)
        self.meta_length: int = self._check_meta_length(meta_length)
        if not _is_int(seed):
            raise MometasInputError(f"--seed: expected an integer, got {seed!r}")
        if reward not in REWARDS:
            raise MometasInputError(f"--reward: expected one of {', '.join(REWARDS)}, got {reward!r}")
        self.seed: int = seed
        self.reward_kind: str = reward
        self._index = {name: i for i, name in enumerate(self.objectives)}
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)
        #: tau: indices of the objectives drawn since the last meta-test.
        self.rollout: list[int] = []
        #: b_i: validation losses of the last usable meta-test (None before the first).
        self.baselines: torch.Tensor | None = None

    # ---------------------------------------------------------------- argument checks

    @staticmethod
    def _check_objectives(objectives: Sequence[str]) -> list[str]:
        if isinstance(objectives, str) or not isinstance(objectives, Sequence):
            raise MometasInputError(
                f"--objectives: expected a list of objective names, got {objectives!r}"
            )
        names = list(objectives)
        if not names:
            raise MometasInputError("--objectives: expected at least one objective, got none")
        bad = [n for n in names if not isinstance(n, str) or not n]
        if bad:
            raise MometasInputError(f"--objectives: expected non-empty names, got {bad!r}")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise MometasInputError(f"--objectives: each objective once, got duplicates {duplicates}")
        return names

    def _check_meta_length(self, meta_length: int) -> int:
        if not _is_int(meta_length) or meta_length < 1:
            raise MometasInputError(f"--meta_length: expected a positive integer, got {meta_length!r}")
        # Section 7.3: a window shorter than m cannot even visit every objective once.
        if self.adapts_every_meta_length and meta_length < len(self.objectives):
            raise MometasInputError(
                f"--meta_length: the {self.name} sampler needs K >= the number of objectives "
                f"({len(self.objectives)}), got {meta_length}"
            )
        return meta_length

    def _objective_index(self, objective: str) -> int:
        try:
            return self._index[objective]
        except (KeyError, TypeError):
            raise MometasInputError(
                f"objective: expected one of {self.objectives}, got {objective!r}"
            ) from None

    def _check_val_losses(self, val_losses: Mapping[str, float]) -> torch.Tensor:
        if not isinstance(val_losses, Mapping):
            raise MometasInputError(
                f"val_losses: expected a dict objective -> loss, got {type(val_losses).__name__}"
            )
        missing = [n for n in self.objectives if n not in val_losses]
        unknown = [n for n in val_losses if n not in self._index]
        if missing or unknown:
            raise MometasInputError(
                f"val_losses: expected exactly the objectives {self.objectives}; "
                f"missing {missing}, unknown {unknown}"
            )
        return torch.tensor([float(val_losses[n]) for n in self.objectives], dtype=DTYPE)

    # ------------------------------------------------------------------- distribution

    def probs_tensor(self) -> torch.Tensor:
        """P_D as a float64 tensor aligned with :attr:`objectives`."""
        m = len(self.objectives)
        return torch.full((m,), 1.0 / m, dtype=DTYPE)

    @property
    def probabilities(self) -> dict[str, float]:
        """P_D as ``{objective: probability}``."""
        return dict(zip(self.objectives, self.probs_tensor().tolist()))

    def entropy(self) -> float:
        """H(P_D) = -sum_i p_i log p_i in nats (0 log 0 counts as 0)."""
        p = self.probs_tensor()
        return float(-torch.special.xlogy(p, p).sum())

    # ----------------------------------------------------------------------- the loop

    def sample(self) -> str:
        """Draw T_t ~ P_D from the sampler's own generator and append it to the rollout tau."""
        index = int(torch.multinomial(self.probs_tensor(), 1, generator=self.generator))
        self.rollout.append(index)
        return self.objectives[index]

    def observe(self, objective: str, loss: float, grad_norm: float | None = None) -> None:
        """Record the training signal of one step.

        ``loss`` must already be averaged over processes, and ``grad_norm`` (the L2 norm of
        the encoder gradients) too, so that every process keeps the same state.
        """
        self._objective_index(objective)

    def update(self, val_losses: Mapping[str, float] | None = None) -> dict:
        """Meta-test: compute R(tau), adapt P_D, move the baselines, clear the rollout.

        ``val_losses`` maps every objective to its validation loss a_i at this meta-test
        (identical on all processes). The first usable meta-test only stores the baselines
        b_i and returns reward None. A NaN or infinite loss is skipped with a warning: the
        reward is None, the baselines stay, and MOMETAS does not step (gradient and loss,
        which adapt from training signals, still do).

        Returns ``{"reward", "entropy", "probabilities", "rollout_length", "updated"}``,
        where ``updated`` says whether the distribution was recomputed.
        """
        reward: float | None = None
        current: torch.Tensor | None = None
        if val_losses is None:
            if self.requires_meta_test:
                raise MometasInputError(
                    f"val_losses: the {self.name} sampler needs the validation loss of every "
                    "objective at each meta-test"
                )
        else:
            current = self._check_val_losses(val_losses)
            if not torch.isfinite(current).all():
                warnings.warn(
                    f"{self.name} sampler: non-finite validation loss at meta-test "
                    f"{dict(zip(self.objectives, current.tolist()))}; skipping this update",
                    RuntimeWarning,
                    stacklevel=2,
                )
                current = None
            elif self.reward_kind == "relative" and bool((current <= 0).any()):
                # Eq. 3 divides by b_i at the next meta-test, so it cannot be zero.
                warnings.warn(
                    f"{self.name} sampler: the relative reward needs positive validation losses, "
                    f"got {dict(zip(self.objectives, current.tolist()))}; skipping this update",
                    RuntimeWarning,
                    stacklevel=2,
                )
                current = None
            elif self.baselines is not None:
                reward = compute_reward(self.reward_kind, self.baselines, current)

        rollout_length = len(self.rollout)
        updated = self._adapt(reward)
        if current is not None:
            self.baselines = current
        self.rollout = []
        return {
            "reward": reward,
            "entropy": self.entropy(),
            "probabilities": self.probabilities,
            "rollout_length": rollout_length,
            "updated": updated,
        }

    def _adapt(self, reward: float | None) -> bool:
        """Change P_D at meta-test; return whether it was recomputed. Window is cleared here."""
        return False

    # -------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict:
        """Everything needed to continue bit-identically: generator, rollout, baselines, stats."""
        state = {
            "sampler": self.name,
            "objectives": list(self.objectives),
            "generator_state": self.generator.get_state().clone(),
            "rollout": list(self.rollout),
            "baselines": None if self.baselines is None else self.baselines.clone(),
        }
        state.update(self._extra_state())
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` of the same sampler type over the same objectives.

        Hyper-parameters (K, beta, lambda, reward) are not part of the state: they come from
        the constructor, so a resumed run may change them.
        """
        if state.get("sampler") != self.name:
            raise MometasInputError(
                f"--sampler: the checkpoint holds a {state.get('sampler')!r} sampler, "
                f"this run uses {self.name!r}"
            )
        if list(state.get("objectives", [])) != self.objectives:
            raise MometasInputError(
                f"--objectives: the checkpoint's sampler was built for {state.get('objectives')}, "
                f"this run has {self.objectives}"
            )
        self.generator.set_state(state["generator_state"].clone())
        self.rollout = [int(i) for i in state["rollout"]]
        baselines = state["baselines"]
        self.baselines = None if baselines is None else baselines.to(DTYPE).clone()
        self._load_extra_state(state)

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, state: dict) -> None:
        pass

    def __repr__(self) -> str:
        probs = ", ".join(f"{n}={p:.3f}" for n, p in self.probabilities.items())
        return f"{type(self).__name__}({probs})"


# ----------------------------------------------------------------------------- samplers


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

    def __init__(
        self,
        objectives: Sequence[str],
        *,
        meta_length: int = 100,
        seed: int = 0,
        reward: str = "relative",
    ) -> None:
        super().__init__(objectives, meta_length=meta_length, seed=seed, reward=reward)
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

    def _adapt(self, reward: float | None) -> bool:
        seen = self._window_count > 0
        updated = bool(seen.any())
        if updated:
            mean = self._window_sum / self._window_count.clamp(min=1)
            self.values = torch.where(seen, self._window_value(mean, seen), self.values)
        self._window_sum.zero_()
        self._window_count.zero_()
        return updated

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
                "grad_norm: the gradient sampler needs the L2 norm of the encoder gradients "
                "of every step, got None"
            )
        grad_norm = float(grad_norm)
        if not self._skip_non_finite("gradient norm", objective, grad_norm):
            self._record(index, grad_norm)


@register_sampler("loss")
class LossSampler(_WindowSampler):
    """Lb (Sections 3.3, 4.3): p_i proportional to sigmoid(IR_i), the inverse training rate
    IR_i = (mean training loss of T^i over the window) / (first loss ever observed for T^i).
    Objectives that learn slower (higher IR) are sampled more."""

    def __init__(
        self,
        objectives: Sequence[str],
        *,
        meta_length: int = 100,
        seed: int = 0,
        reward: str = "relative",
    ) -> None:
        super().__init__(objectives, meta_length=meta_length, seed=seed, reward=reward)
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


@register_sampler("mometas")
class MometasSampler(ObjectiveSampler):
    """MOMETAS, the meta-sampler (Section 3.4): P_D = softmax(psi), psi learned by REINFORCE.

    At each meta-test, with the rollout tau = (T_1..T_n) drawn since the last one
    (n = K in the normal loop), the reward R(tau) from the baselines b_i and one policy
    gradient step on Eq. 4:

        psi <- psi + beta * grad_psi [ sum_t log P(T_t; psi) * R(tau) + lambda * H(psi) ]

    Then b_i <- a_i. psi starts at zero, i.e. uniform (Algorithm 1, line 1).

    Args:
        meta_length: K, meta-train steps between meta-tests (default 100, Section 4.4);
            must be >= m (Section 7.3).
        meta_step_size: beta, the meta step size of Eq. 2 (default 0.1, Section 4.4); > 0.
        entropy_lambda: lambda, the temperature of the entropy regularisation in Eq. 4
            (default 3.0, the best value in Table 4); >= 0.
        reward: R(tau): ``relative`` (Eq. 3, default), ``overall`` or ``hard`` (Section 7.1).
    """

    requires_meta_test = True
    adapts_every_meta_length = True

    def __init__(
        self,
        objectives: Sequence[str],
        *,
        meta_length: int = 100,
        seed: int = 0,
        reward: str = "relative",
        meta_step_size: float = 0.1,
        entropy_lambda: float = 3.0,
    ) -> None:
        super().__init__(objectives, meta_length=meta_length, seed=seed, reward=reward)
        if not isinstance(meta_step_size, (int, float)) or not math.isfinite(meta_step_size) or meta_step_size <= 0:
            raise MometasInputError(f"--meta_step_size: expected a positive number, got {meta_step_size!r}")
        if not isinstance(entropy_lambda, (int, float)) or not math.isfinite(entropy_lambda) or entropy_lambda < 0:
            raise MometasInputError(f"--entropy_lambda: expected a number >= 0, got {entropy_lambda!r}")
        self.meta_step_size = float(meta_step_size)
        self.entropy_lambda = float(entropy_lambda)
        #: psi, the logits of P_D.
        self.logits = torch.zeros(len(self.objectives), dtype=DTYPE)

    def probs_tensor(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=0)

    def _adapt(self, reward: float | None) -> bool:
        # No reward (first meta-test) or no rollout (update called twice): nothing to learn from.
        if reward is None or not self.rollout:
            return False
        # The caller may be evaluating under no_grad / inference_mode; this step needs autograd.
        with torch.inference_mode(False), torch.enable_grad():
            tau = torch.tensor(self.rollout, dtype=torch.int64)
            psi = self.logits.clone().requires_grad_(True)
            log_p = torch.log_softmax(psi, dim=0)
            entropy = -(log_p.exp() * log_p).sum()
            objective = log_p[tau].sum() * reward + self.entropy_lambda * entropy
            (grad,) = torch.autograd.grad(objective, psi)
        self.logits = (self.logits + self.meta_step_size * grad).detach()
        return True

    def _extra_state(self) -> dict:
        return {"logits": self.logits.clone()}

    def _load_extra_state(self, state: dict) -> None:
        self.logits = state["logits"].to(DTYPE).clone()


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
        meta_length: int = 100,
        seed: int = 0,
        reward: str = "relative",
    ) -> None:
        super().__init__(objectives, meta_length=meta_length, seed=seed, reward=reward)
        self._probs = self._check_weights(weights)

    def _check_weights(self, weights) -> torch.Tensor:
        flag = "--sampler_weights"
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


# ------------------------------------------------------------------------------ factory


def build_sampler(name: str, objectives: Sequence[str], **kwargs) -> ObjectiveSampler:
    """Build the sampler registered as ``name`` (the ``--sampler`` flag).

    ``kwargs`` may hold every sampler option (meta_length, seed, reward, meta_step_size,
    entropy_lambda, weights) so that a script can pass all its flags: options the chosen
    sampler does not use are dropped, except ``weights``, which only the fixed sampler
    takes. An option no sampler knows is a TypeError.
    """
    if name not in SAMPLERS:
        raise MometasInputError(f"--sampler: expected one of {', '.join(sorted(SAMPLERS))}, got {name!r}")
    cls = SAMPLERS[name]
    accepted = _options(cls)
    known = set().union(*(_options(c) for c in SAMPLERS.values()))
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(f"build_sampler() got unknown sampler options {unknown}")
    if kwargs.get("weights") is not None and "weights" not in accepted:
        raise MometasInputError(f"--sampler_weights: only used with --sampler fixed, not {name!r}")
    return cls(objectives, **{k: v for k, v in kwargs.items() if k in accepted})


def _options(cls: type[ObjectiveSampler]) -> set[str]:
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}

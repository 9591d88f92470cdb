"""The sampler interface, the registry of strategies and the factory behind ``--sampler``."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping, Sequence
from typing import Callable

import torch

from ..errors import MometasInputError
from ..rewards import check_reward_settings, resolve_reward_objectives, reward_terms

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
            mometas): ``relative`` (Eq. 3), ``overall`` or ``hard``; see :mod:`.rewards`.
        reward_floor: lower bound of each objective's relative term (authors' code: -1);
            None for the literal Eq. 3.
        reward_dead_zone: a loss change |b_i - a_i| at most this counts as 0 (authors'
            code: 1e-3).
        reward_objectives: the objectives whose validation losses make R(tau); None for all
            of them (the paper).

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
        reward_floor: float | None = -1.0,
        reward_dead_zone: float = 1e-3,
        reward_objectives: Sequence[str] | str | None = None,
    ) -> None:
        self.objectives: list[str] = self._check_objectives(objectives)
        self.meta_length: int = self._check_meta_length(meta_length)
        if not _is_int(seed):
            raise MometasInputError(f"seed: expected an integer, got {seed!r}")
        check_reward_settings(reward, reward_floor, reward_dead_zone)
        self.seed: int = seed
        self.reward_kind: str = reward
        self.reward_floor = None if reward_floor is None else float(reward_floor)
        self.reward_dead_zone = float(reward_dead_zone)
        self.reward_objectives = resolve_reward_objectives(reward_objectives, self.objectives)
        self._reward_mask = torch.tensor([n in self.reward_objectives for n in self.objectives])
        self._index = {name: i for i, name in enumerate(self.objectives)}
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)
        #: tau: indices of the objectives drawn since the last meta-test.
        self.rollout: list[int] = []
        #: b_i: validation losses of the last usable meta-test (None before the first).
        self.baselines: torch.Tensor | None = None
        #: The distribution the last draw was made from (``{objective: p}``; None before the first). A
        #: history row averages these over its window: for a sampler that moves every step (exp3) the
        #: distribution at the meta-test alone misstates what was drawn.
        self.drawn_with: dict[str, float] | None = None

    # ---------------------------------------------------------------- argument checks

    @staticmethod
    def _check_objectives(objectives: Sequence[str]) -> list[str]:
        if isinstance(objectives, str) or not isinstance(objectives, Sequence):
            raise MometasInputError(f"objectives: expected a list of objective names, got {objectives!r}")
        names = list(objectives)
        if not names:
            raise MometasInputError("objectives: expected at least one objective, got none")
        bad = [n for n in names if not isinstance(n, str) or not n]
        if bad:
            raise MometasInputError(f"objectives: expected non-empty names, got {bad!r}")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise MometasInputError(f"objectives: each objective once, got duplicates {duplicates}")
        return names

    def _check_meta_length(self, meta_length: int) -> int:
        if not _is_int(meta_length) or meta_length < 1:
            raise MometasInputError(f"meta_length: expected a positive integer, got {meta_length!r}")
        # Section 7.3: a window shorter than m cannot even visit every objective once.
        if self.adapts_every_meta_length and meta_length < len(self.objectives):
            raise MometasInputError(
                f"meta_length: the {self.name} sampler needs K >= the number of objectives "
                f"({len(self.objectives)}), got {meta_length}"
            )
        return meta_length

    def _objective_index(self, objective: str) -> int:
        try:
            return self._index[objective]
        except (KeyError, TypeError):
            raise MometasInputError(f"objective: expected one of {self.objectives}, got {objective!r}") from None

    def _check_val_losses(self, val_losses: Mapping[str, float]) -> torch.Tensor:
        if not isinstance(val_losses, Mapping):
            raise MometasInputError(f"val_losses: expected a dict objective -> loss, got {type(val_losses).__name__}")
        missing = [n for n in self.objectives if n not in val_losses]
        unknown = [n for n in val_losses if n not in self._index]
        if missing or unknown:
            raise MometasInputError(
                f"val_losses: expected exactly the objectives {self.objectives}; missing {missing}, unknown {unknown}"
            )
        return torch.tensor([float(val_losses[n]) for n in self.objectives], dtype=DTYPE)

    # ------------------------------------------------------------------- distribution

    def probs_tensor(self) -> torch.Tensor:
        """P_D, the distribution objectives are drawn from, as float64 aligned with :attr:`objectives`."""
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
        probs = self.probs_tensor()
        index = int(torch.multinomial(probs, 1, generator=self.generator))
        self.drawn_with = dict(zip(self.objectives, probs.tolist()))
        self.rollout.append(index)
        return self.objectives[index]

    def observe(self, objective: str, loss: float, grad_norm: float | None = None) -> None:
        """Record the training signal of one step.

        ``loss`` must already be averaged over processes, and ``grad_norm`` (the L2 norm of
        the unscaled encoder gradients) too, so that every process keeps the same state.
        """
        self._objective_index(objective)

    def update(self, val_losses: Mapping[str, float] | None = None, *, learning_rate: float | None = None) -> dict:
        """Meta-test: compute R(tau), adapt P_D, move the baselines, clear the rollout.

        ``val_losses`` maps every objective to its validation loss a_i at this meta-test
        (identical on all processes). ``learning_rate``: the optimizer's learning rate now, for
        an update that follows it (MOMETAS with ``entropy_lambda_schedule="learning_rate"``);
        the other samplers ignore it. The first usable meta-test only stores the baselines
        b_i and returns reward None. A NaN or infinite loss is skipped with a warning: the
        reward is None, the baselines stay, and MOMETAS does not step (gradient and loss,
        which adapt from training signals, still do). For the relative reward a b_i <= 0
        contributes 0 (with a warning): only the baselines are divided by.

        Returns ``reward``, ``reward_terms`` (r_i per objective), ``reward_floored`` (how
        many terms the floor raised), ``entropy``, ``probabilities``, ``rollout_length``,
        ``updated`` (whether the distribution was recomputed) and whatever the sampler's
        update adds (MOMETAS: ``advantage``, ``reward_baseline``, ``reward_scale``).
        """
        metrics: dict = {"reward": None, "reward_terms": None, "reward_floored": 0}
        current: torch.Tensor | None = None
        if val_losses is None:
            if self.requires_meta_test:
                raise MometasInputError(
                    f"val_losses: the {self.name} sampler needs the validation loss of every objective at each meta-test"
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
            elif self.baselines is not None:
                metrics.update(self._reward(self.baselines, current))

        rollout_length = len(self.rollout)
        self._observe_learning_rate(learning_rate)
        metrics.update(self._adapt(metrics["reward"]))
        if current is not None:
            self.baselines = current
        self.rollout = []
        metrics.update(entropy=self.entropy(), probabilities=self.probabilities, rollout_length=rollout_length)
        metrics.setdefault("updated", False)
        return metrics

    def _reward(self, baselines: torch.Tensor, current: torch.Tensor) -> dict:
        if self.reward_kind == "relative" and bool((baselines[self._reward_mask] <= 0).any()):
            warnings.warn(
                f"{self.name} sampler: a relative reward term needs a positive previous loss b_i, got "
                f"{dict(zip(self.objectives, baselines.tolist()))}; those terms count as 0",
                RuntimeWarning,
                stacklevel=3,
            )
        terms, floored = reward_terms(
            self.reward_kind, baselines, current, floor=self.reward_floor, dead_zone=self.reward_dead_zone
        )
        mask = self._reward_mask
        return {
            "reward": float(terms[mask].sum()),
            "reward_terms": {n: float(t) for n, t, m in zip(self.objectives, terms, mask) if m},
            "reward_floored": int(floored[mask].sum()),
        }

    def _observe_learning_rate(self, learning_rate: float | None) -> None:
        """The learning rate :meth:`update` was given (before :meth:`_adapt`); unused by default."""

    def _adapt(self, reward: float | None) -> dict:
        """Change P_D at meta-test; return at least ``{"updated": bool}``. Windows are cleared here."""
        return {"updated": False}

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

        Hyper-parameters (K, beta, lambda, reward settings) are not part of the state: they
        come from the constructor, so a resumed run may change them.
        """
        if state.get("sampler") != self.name:
            raise MometasInputError(
                f"sampler: the checkpoint holds a {state.get('sampler')!r} sampler, this run uses {self.name!r}"
            )
        if list(state.get("objectives", [])) != self.objectives:
            raise MometasInputError(
                f"objectives: the checkpoint's sampler was built for {state.get('objectives')}, "
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


# ------------------------------------------------------------------------------ factory


def build_sampler(name: str, objectives: Sequence[str], **kwargs) -> ObjectiveSampler:
    """Build the sampler registered as ``name`` (the ``--sampler`` flag).

    ``kwargs`` may hold every sampler option (meta_length, seed, reward, meta_step_size,
    entropy_lambda, weights) so that a script can pass all its flags: options the chosen
    sampler does not use are dropped, except ``weights``, which only the fixed sampler
    takes. An option no sampler knows is a TypeError.
    """
    if name not in SAMPLERS:
        raise MometasInputError(f"sampler: expected one of {', '.join(sorted(SAMPLERS))}, got {name!r}")
    cls = SAMPLERS[name]
    accepted = _options(cls)
    known = set().union(*(_options(c) for c in SAMPLERS.values()))
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(f"build_sampler() got unknown sampler options {unknown}")
    if kwargs.get("weights") is not None and "weights" not in accepted:
        raise MometasInputError(f"weights: only used with the fixed sampler, not {name!r}")
    return cls(objectives, **{k: v for k, v in kwargs.items() if k in accepted})


def _options(cls: type[ObjectiveSampler]) -> set[str]:
    """Keyword options of ``cls`` and of every base whose constructor it passes ``**common`` to."""
    options = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        options |= {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            break
    return options

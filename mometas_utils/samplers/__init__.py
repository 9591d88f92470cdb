"""Objective samplers: which pre-training objective T_t to train on at step t.

One small interface, :class:`ObjectiveSampler`, and one class per strategy of the paper
(Section 3.3 rule-based samplers, Section 3.4 MOMETAS, Section 4.3 baselines):

========  =====================================================================
uniform   Ub: p_i = 1/m.
gradient  Gb: p_i proportional to sigmoid(mean encoder grad-norm of T^i over the window).
loss      Lb: p_i proportional to sigmoid(inverse training rate of T^i over the window).
mometas   the meta-sampler: p = softmax(psi), psi learned with REINFORCE (Eq. 2-4).
fixed     user-given weights (ablations, replaying a schedule MOMETAS learned).
exp3      ODM's EXP3 bandit (Albalak et al., 2023): the sampled objective's training loss as reward.
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
learns from it. The reward itself (Eq. 3 and its guards) lives in :mod:`mometas_utils.rewards`.

Files: ``base.py`` (the interface, registry and factory), ``rule_based.py`` (Ub, Gb, Lb,
fixed), ``mometas.py`` (the meta-sampler), ``exp3.py`` (Online Data Mixing's bandit, to compare against). A new strategy is one subclass of
:class:`ObjectiveSampler` decorated with :func:`register_sampler`.
"""


from .base import DTYPE, SAMPLERS, ObjectiveSampler, build_sampler, register_sampler
from .exp3 import Exp3Sampler
from .mometas import MometasSampler
from .rule_based import FixedSampler, GradientSampler, LossSampler, UniformSampler

__all__ = [
    "DTYPE",
    "ObjectiveSampler",
    "UniformSampler",
    "GradientSampler",
    "LossSampler",
    "MometasSampler",
    "FixedSampler",
    "Exp3Sampler",
    "SAMPLERS",
    "register_sampler",
    "build_sampler",
]

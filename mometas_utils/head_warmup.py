"""Head warm-up: train the objective heads a checkpoint lacks on a frozen encoder before MOMETAS starts.

Many encoders people continue pre-training ship without pre-training heads (sentence-transformers
models such as MiniLM, distilled and task-tuned checkpoints). Their first multi-objective steps
then train random heads *through* the encoder, and the gradients of a random MLM head damage
what the encoder knew. With ``--head_warmup_steps N``:

* steps 1..N train only the heads the checkpoint lacks (every parameter outside ``bert.``), on
  objectives drawn uniformly from those heads' objectives; the encoder is frozen and its
  learning rate is 0;
* the heads learn at their own rate (``--head_warmup_learning_rate``): alone on a frozen encoder
  they tolerate a rate far above the encoder's, as in linear probing;
* from step N + 1 everything trains under the run's schedule, which starts at step N as if the
  run began there (learning-rate warm-up included), and the sampler starts learning: its first
  meta-test, at step N, gives the baselines b_i. Unfreezing, that meta-test and the schedule's
  phase change all happen at step N counted in steps drawn, skipped steps included
  (:class:`PhasedLR`).

Used by ``run_mometas_pretraining.py`` and :class:`~mometas_utils.trainer.MometasTrainer`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from torch.optim.lr_scheduler import LambdaLR

from .errors import MometasInputError

ENCODER_PREFIX = "bert."


def lacking_heads(objectives: Mapping[str, str], missing_keys: Iterable[str]) -> list[str]:
    """The objectives whose head the checkpoint did not hold (``from_pretrained``'s ``missing_keys``).

    ``objectives`` maps each objective to its head type (``MometasConfig.objectives``); MLM-type
    heads share BERT's LM head ``cls.predictions``, the others live under ``heads.<name>``.
    """
    missing = list(missing_keys)

    def lacks(name, head):
        prefix = "cls.predictions." if head == "mlm" else f"heads.{name}."
        return any(key.startswith(prefix) for key in missing)

    return [name for name, head in objectives.items() if lacks(name, head)]


def check_head_warmup(steps: int, total_steps: int | None, objectives: Sequence[str] | None, *,
                      flag="head_warmup_steps"):
    """One-line errors for a warm-up that cannot run: too long, or nothing to warm up (``None``: not known yet)."""
    if total_steps is not None and steps >= total_steps:
        raise MometasInputError(f"{flag}: the head warm-up ({steps} steps) must leave steps to train the whole "
                                f"model; the run has {total_steps}")
    if steps and objectives is not None and not objectives:
        raise MometasInputError(f"{flag}: the checkpoint already holds the head of every objective; there is "
                                "nothing to warm up (leave it at 0)")


def is_encoder(name: str) -> bool:
    return name.startswith(ENCODER_PREFIX)


def set_encoder_trainable(model, trainable: bool) -> None:
    """Freeze or unfreeze the shared encoder (``model.bert``); the heads always train."""
    for name, parameter in model.named_parameters():
        if is_encoder(name):
            parameter.requires_grad_(trainable)


def split_param_groups(model, groups: Sequence[dict]) -> list[dict]:
    """Each optimizer group split in two, encoder and heads (``"head": True``), with the same settings."""
    names = {id(p): n for n, p in model.named_parameters()}
    split = []
    for group in groups:
        for head in (False, True):
            params = [p for p in group["params"] if is_encoder(names[id(p)]) != head]
            if params:
                split.append({**group, "params": params, "head": head})
    return split


class PhasedLR(LambdaLR):
    """A ``LambdaLR`` in two phases: the warm-up's rates, then the run's schedule from where the warm-up ended.

    The warm-up ends when the loop says so (:meth:`end_warmup`, at the step that unfreezes the encoder
    and runs the sampler's first meta-test), not after a count of its own: the schedule counts only
    the steps that updated the weights, and a skipped step inside the warm-up would otherwise move
    its end one step past the others'. ``warmup_end`` (the scheduler's step count at that moment) is
    in ``state_dict()``; a state saved before it existed ends the warm-up at ``warmup_steps`` x
    ``steps_per_step``, as it did then.
    """

    def __init__(self, optimizer, schedule, warmup_steps: int, head_rate_factor: float, steps_per_step: int = 1):
        self.warmup_end = None
        self._default_end = warmup_steps * steps_per_step

        def for_group(group):
            during = head_rate_factor if group.get("head") else 0.0
            return lambda step: during if self.warmup_end is None else schedule(step - self.warmup_end)

        super().__init__(optimizer, [for_group(group) for group in optimizer.param_groups])

    def end_warmup(self) -> None:
        """From the next optimizer step on, every group follows the run's schedule from its start."""
        if self.warmup_end is not None:
            return
        self.warmup_end = self.last_epoch
        for group, base, rate in zip(self.optimizer.param_groups, self.base_lrs, self.lr_lambdas):
            group["lr"] = base * rate(self.last_epoch)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "warmup_end" not in state_dict and self.last_epoch >= self._default_end:
            self.warmup_end = self._default_end


def check_trainer_warmup(steps, objectives, learning_rate, *, sampler_objectives, max_steps) -> list[str]:
    """``MometasTrainer``'s warm-up arguments checked (``max_steps`` <= 0: an epoch-based run, whose length
    :meth:`~mometas_utils.trainer.MometasTrainer.create_scheduler` checks); the objectives to warm up."""
    if not isinstance(steps, int) or steps < 0:
        raise MometasInputError(f"head_warmup_steps: expected an integer >= 0, got {steps!r}")
    warm = list(objectives or [])
    if not steps:
        return warm
    check_head_warmup(steps, max_steps if max_steps > 0 else None, warm)
    unknown = [name for name in warm if name not in sampler_objectives]
    if unknown:
        raise MometasInputError(f"head_warmup_objectives: {unknown} are not objectives of the sampler {sampler_objectives}")
    if not learning_rate > 0:
        raise MometasInputError(f"head_warmup_learning_rate: expected a number > 0, got {learning_rate!r}")
    return warm


def split_optimizer_groups(optimizer, model) -> None:
    """Split each group of a built optimizer into encoder and heads (before any step), so that the two
    phases can give them different rates; nothing else about the optimizer changes."""
    if any("head" in group for group in optimizer.param_groups):
        return
    groups = split_param_groups(model, optimizer.param_groups)
    optimizer.param_groups.clear()
    for group in groups:
        optimizer.add_param_group(group)


def trainer_scheduler(args, optimizer, num_training_steps: int, warmup_steps: int, head_learning_rate: float):
    """The :class:`PhasedLR` of a ``Trainer`` (``args``: its ``TrainingArguments``): the warm-up's rates, then
    ``args.lr_scheduler_type`` with its own warm-up over the ``num_training_steps - warmup_steps`` after it."""
    import torch
    from transformers import get_scheduler

    main_steps = num_training_steps - warmup_steps
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = get_scheduler(args.lr_scheduler_type, probe, num_warmup_steps=args.get_warmup_steps(main_steps),
                             num_training_steps=main_steps, scheduler_specific_kwargs=args.lr_scheduler_kwargs)
    return PhasedLR(optimizer, schedule.lr_lambdas[0], warmup_steps, head_learning_rate / args.learning_rate)


def phased_scheduler(optimizer, schedule, warmup_steps: int, head_rate_factor: float, steps_per_step: int = 1):
    """A :class:`PhasedLR`: during the warm-up, rate 0 for the encoder groups and ``head_rate_factor`` x the
    base rate for the head groups; after :meth:`PhasedLR.end_warmup`, ``schedule(step - end)`` for every group.

    ``schedule`` is the multiplier of the run's schedule (``get_scheduler(...).lr_lambdas[0]``) built over
    the steps after the warm-up. ``steps_per_step``: how often the scheduler steps per optimizer step
    (Accelerate steps a prepared scheduler once per process).
    """
    return PhasedLR(optimizer, schedule, warmup_steps, head_rate_factor, steps_per_step)


__all__ = ["PhasedLR", "check_head_warmup", "check_trainer_warmup", "is_encoder", "lacking_heads", "phased_scheduler",
           "set_encoder_trainable", "split_optimizer_groups", "split_param_groups", "trainer_scheduler"]

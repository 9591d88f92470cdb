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
  meta-test, at step N, gives the baselines b_i.

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


def phased_scheduler(optimizer, schedule, warmup_steps: int, head_rate_factor: float, steps_per_step: int = 1):
    """A ``LambdaLR``: during the warm-up, rate 0 for the encoder groups and ``head_rate_factor`` x the
    base rate for the head groups; afterwards ``schedule(step - warmup)`` for every group.

    ``schedule`` is the multiplier of the run's schedule (``get_scheduler(...).lr_lambdas[0]``) built over
    the steps after the warm-up. ``steps_per_step``: how often the scheduler steps per optimizer step
    (Accelerate steps a prepared scheduler once per process).
    """
    offset = warmup_steps * steps_per_step

    def for_group(group):
        during = head_rate_factor if group.get("head") else 0.0
        return lambda step: during if step < offset else schedule(step - offset)

    return LambdaLR(optimizer, [for_group(group) for group in optimizer.param_groups])


__all__ = ["check_head_warmup", "is_encoder", "lacking_heads", "phased_scheduler", "set_encoder_trainable",
           "split_param_groups"]

"""Meta-test (Algorithm 1, lines 9-10) and the training signals the samplers observe.

Every K steps (the meta length) the model is evaluated on every objective on held-out
text; the validation losses a_i feed the reward of :mod:`mometas_utils.rewards`. Two
sources of noise make a_i differ from b_i even for a model that did not change:

* the validation batches. The paper redraws them at every meta-test ("we fetch the
  validation samples from V through random sampling"); ``fixed=True`` draws them once and
  measures b_i and a_i on the same text.
* the corruption (masks, insertions, deletions) and CSE's dropout. Both are seeded the
  same way at every meta-test, so a loss change reflects the model, not the noise.

The script and the study code (``study/``) share these functions, so the study measures
exactly what the training loop does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .parallel import local_tensor, shards_parameters, to_device


def meta_test_batches(
    validation: Sequence,
    *,
    batch_size: int,
    num_batches: int,
    seed: int,
    step: int,
    process_index: int,
    pad,
    fixed: bool = False,
) -> list[dict]:
    """The padded validation batches of one meta-test, a function of (seed, step, process).

    With ``fixed`` the step is ignored: every meta-test sees the same batches. Processes
    draw different batches, so with N processes a meta-test covers N times the text.
    """
    key = 0 if fixed else step
    generator = torch.Generator().manual_seed(seed * 1_000_003 + key * 101 + process_index)
    size = min(batch_size, len(validation))
    batches = []
    for _ in range(num_batches):
        indices = torch.randperm(len(validation), generator=generator)[:size].tolist()
        batches.append(pad([validation[i] for i in indices]))
    return batches


def corruption_seed(seed: int, index: int) -> int:
    """The seed every meta-test gives the collator of the ``index``-th objective."""
    return seed + 7919 * (1 + index)


@torch.inference_mode()
def meta_test(model, batches: Sequence[dict], collators: Mapping, *, seed: int, device, reduce=None,
              per_batch: bool = False) -> dict:
    """Validation loss a_i of every objective: the mean over ``batches``, then over processes.

    ``collators`` maps objective name to its (evaluation) collator, ``reduce`` averages a
    tensor over processes (``lambda t: accelerator.reduce(t, "mean")``; None for one
    process). ``per_batch=True`` returns each batch's loss instead of the mean (the
    reward-noise study compares 1 and 4 batches from one pass). The model is put back in
    training mode afterwards.
    """
    was_training = model.training
    model.eval()
    losses = {}
    for index, (name, collator) in enumerate(collators.items()):
        collator.generator.manual_seed(corruption_seed(seed, index))
        values = []
        for padded in batches:
            batch = to_device(collator(padded), device)
            values.append(model(objective=name, **batch).loss.float())
        stacked = torch.stack(values) if per_batch else torch.stack(values).mean()
        stacked = reduce(stacked) if reduce is not None else stacked
        losses[name] = stacked.tolist() if per_batch else stacked.item()
    model.train(was_training)
    return losses


def encoder_grad_norm(model, loss_scale: float = 1.0, *, reduce_sum=None, device=None) -> float:
    """L2 norm of the shared encoder's gradients: the gradient-based sampler's signal (Section 4.3).

    Under fp16 the gradients still carry the loss scale when this runs (Accelerate unscales
    them only inside ``clip_grad_norm_``), so pass ``loss_scale`` (``accelerator.scaler.get_scale()``)
    and the norm is that of the true gradients. Without it every norm is ~65536 times too
    large, the sigmoid of Gb saturates and every objective gets the same weight.

    When each process holds a shard of each gradient (FSDP), pass ``reduce_sum`` (a sum over
    processes, which every process must call): the norm is then that of the whole gradient, not
    of this process's shard.
    """
    encoder = model.bert if hasattr(model, "bert") else model
    squares = [torch.linalg.vector_norm(local_tensor(p.grad).detach().float()) ** 2
               for p in encoder.parameters() if p.grad is not None]
    if reduce_sum is None and not squares:
        return 0.0
    total = torch.stack(squares).sum() if squares else torch.zeros((), device=device)
    if reduce_sum is not None:
        total = reduce_sum(total.to(device) if device is not None else total)
    return total.sqrt().item() / loss_scale


def unscaled_encoder_grad_norm(accelerator, model, encoder=None) -> float:
    """:func:`encoder_grad_norm` of a prepared model, divided by the fp16 loss scale when there is one.

    ``encoder``: the module whose gradients count (default: the unwrapped model's ``bert``, or the whole
    model), for models that keep their encoder under another name.

    Call it after the backward passes and before ``accelerator.clip_grad_norm_`` (which
    unscales the gradients in place; unscaling twice is an error in PyTorch). Under DDP the
    gradients are already averaged, so every process gets the same norm; under FSDP the
    shards' squares are summed over processes, so again every process gets the whole norm.
    (DeepSpeed is refused before training: its backward has already stepped and cleared them.)
    """
    scaler = getattr(accelerator, "scaler", None)
    scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0
    reduce_sum = (lambda t: accelerator.reduce(t, reduction="sum")) if shards_parameters(accelerator) else None
    module = accelerator.unwrap_model(model) if encoder is None else encoder
    return encoder_grad_norm(module, scale, reduce_sum=reduce_sum, device=accelerator.device)


__all__ = ["corruption_seed", "encoder_grad_norm", "meta_test", "meta_test_batches", "unscaled_encoder_grad_norm"]

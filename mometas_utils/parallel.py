"""What the training loop must know about how Accelerate runs it: one process, DDP, FSDP or DeepSpeed.

The loop of ``run_mometas_pretraining.py`` reads gradients after ``accelerator.backward`` (the
gradient-based sampler), decides after it whether to take the optimizer step (a non-finite
step is skipped), and checks the weights before it saves them. Under DDP all three see whole,
averaged tensors. Elsewhere they do not:

* **DeepSpeed**: ``accelerator.backward`` runs ``engine.step()`` at the accumulation boundary. By the
  time the loop looks, the update is applied and the gradients are gone, so a step cannot be
  skipped and Gb would read no gradient. Clipping is the DeepSpeed config's ``gradient_clipping``.
  Both combinations are refused before training (:func:`check_parallel_support`).
* **ZeRO-3**: each parameter is an empty placeholder outside a forward pass; the weights a
  process holds are its partition, ``param.ds_tensor``.
* **FSDP**: parameters and gradients are shards. FSDP2 gives DTensors, FSDP1 with
  ``use_orig_params`` gives each original parameter's local piece; FSDP1 without it hides the
  encoder's parameters in flat parameters of the wrapping units, which Gb cannot tell apart
  (refused). A norm is the square root of the shards' squares summed over the processes.

:func:`local_tensor` gives the piece of a parameter or gradient this process holds; summed over
processes (sharded) or taken on one (replicated), the pieces are the whole tensor.
"""

from __future__ import annotations

import torch

from .errors import MometasInputError


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The part of ``tensor`` this process holds: a ZeRO-3 partition, a DTensor's local shard, or itself."""
    partition = getattr(tensor, "ds_tensor", None)
    if partition is not None:
        return partition
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def distributed_type(accelerator) -> str:
    """``accelerator.distributed_type`` as its plain name ("NO", "MULTI_GPU", "FSDP", "DEEPSPEED", ...)."""
    kind = getattr(accelerator, "distributed_type", None)
    return str(getattr(kind, "value", kind) or "NO").upper()


def shards_parameters(accelerator) -> bool:
    """True when each process holds only a shard of the weights and gradients (FSDP, DeepSpeed ZeRO-3)."""
    kind = distributed_type(accelerator)
    if kind == "FSDP":
        return True
    plugin = getattr(getattr(accelerator, "state", None), "deepspeed_plugin", None)
    return kind == "DEEPSPEED" and getattr(plugin, "zero_stage", None) == 3


def loss_scaled(accelerator) -> bool:
    """True when a loss scaler skips the steps whose fp16 gradients overflow (Accelerate's or DeepSpeed's)."""
    if getattr(accelerator, "scaler", None) is not None:
        return True
    return distributed_type(accelerator) == "DEEPSPEED" and getattr(accelerator, "mixed_precision", None) == "fp16"


def check_parallel_support(accelerator, *, sampler: str, skip_nonfinite_steps: int, max_grad_norm: float,
                           head_warmup_steps: int = 0) -> None:
    """Refuse, before any training, what the loop cannot do under this launch; never degrade in silence.

    Under DeepSpeed a ``gradient_clipping`` of "auto" (Accelerate's default config) is set to
    ``max_grad_norm``, so the flag means what it says; a number that differs is refused.
    """
    kind = distributed_type(accelerator)
    if head_warmup_steps and kind in ("DEEPSPEED", "FSDP"):
        raise MometasInputError(
            f"--head_warmup_steps {head_warmup_steps}: the warm-up freezes the encoder by switching its gradients "
            f"off and on, which {kind} fixes when it wraps the model; warm the heads up in a DDP or one-process run "
            "first, or drop the flag")
    if kind == "DEEPSPEED":
        if sampler == "gradient":
            raise MometasInputError(
                "--sampler gradient: under DeepSpeed accelerator.backward already takes the optimizer step and "
                "clears the gradients, so Gb would see no gradient norm; use another --sampler, or launch with "
                "DDP or FSDP")
        if skip_nonfinite_steps:
            raise MometasInputError(
                f"--skip_nonfinite_steps {skip_nonfinite_steps}: under DeepSpeed accelerator.backward applies the "
                "step before its loss can be checked, so no step can be skipped; drop the flag (a non-finite step "
                "then stops the run), or launch with DDP or FSDP")
        plugin = getattr(accelerator.state, "deepspeed_plugin", None)
        config = getattr(plugin, "deepspeed_config", None)
        if isinstance(config, dict):
            clipping = config.get("gradient_clipping", "auto")
            if clipping == "auto":
                config["gradient_clipping"] = float(max_grad_norm)
            elif float(clipping) != float(max_grad_norm):
                raise MometasInputError(
                    f"--max_grad_norm {max_grad_norm:g}: under DeepSpeed the config's gradient_clipping "
                    f"({float(clipping):g}) clips the gradients, not this flag; make the two equal")
    if kind == "FSDP" and sampler == "gradient":
        plugin = getattr(accelerator.state, "fsdp_plugin", None)
        if getattr(plugin, "fsdp_version", 1) == 1 and not getattr(plugin, "use_orig_params", False):
            raise MometasInputError(
                "--sampler gradient: FSDP1 without use_orig_params keeps the encoder's parameters in flat shards "
                "that Gb cannot tell from the heads'; set fsdp_use_orig_params: true or fsdp_version: 2 in the "
                "Accelerate config, or use another --sampler")


def to_device(batch: dict, device) -> dict:
    """Move a batch of CPU tensors; on CUDA through pinned memory, so that ``non_blocking`` really overlaps.

    A copy from pageable memory blocks the host whatever ``non_blocking`` says. Pinning costs a
    host copy, which buys nothing on a CPU or other devices, so it is done for CUDA only.
    """
    cuda = torch.device(device).type == "cuda"
    moved = {}
    for key, value in batch.items():
        if cuda and not value.is_pinned():
            value = value.pin_memory()
        moved[key] = value.to(device, non_blocking=cuda)
    return moved


__all__ = ["check_parallel_support", "distributed_type", "local_tensor", "loss_scaled", "shards_parameters",
           "to_device"]

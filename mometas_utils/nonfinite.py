"""What a run does about NaN and infinity: stop, or skip the step; the same in the script and the Trainer.

A step whose loss (or, outside fp16, whose gradient norm) is not finite is skipped while
``skip_nonfinite_steps`` allows it: no optimizer step, no schedule step, the draw kept in the
window's rollout with no loss. Once the skips are spent (or with none allowed) the run stops with
:class:`NonFiniteError` before the step is applied, and weights are checked before every save
(:func:`check_finite_weights`), so no checkpoint or model holds NaN. The front ends turn the error
into :func:`failure_message` and exit code :data:`NONFINITE_EXIT_CODE`.

Used by ``run_mometas_pretraining.py`` and :class:`~mometas_utils.trainer.MometasTrainer`.
"""

from __future__ import annotations

import logging
import math

import torch

from .parallel import local_tensor

logger = logging.getLogger(__name__)

#: A run that started and cannot finish correctly (bad input exits with 2).
NONFINITE_EXIT_CODE = 1


class NonFiniteError(RuntimeError):
    """Training produced NaN or infinity at ``step``: the run stops without saving a model.

    ``skips_spent``: a non-finite step came after --skip_nonfinite_steps N (N > 0) had been used up.
    """

    def __init__(self, message, step, skips_spent=False):
        super().__init__(message)
        self.step = step
        self.skips_spent = skips_spent


def nonfinite_reason(loss: float, grad_norm, loss_scaled: bool) -> str | None:
    """What is not finite about a step ("loss nan", "gradient norm inf"), or None when it may be applied.

    Under fp16 (``loss_scaled``) an infinite gradient is the loss scaler's business: it skips the step
    and lowers the scale, so only the loss is judged.
    """
    grad_norm = None if grad_norm is None else float(grad_norm)
    if not math.isfinite(loss):
        return f"loss {loss}"
    if grad_norm is not None and not loss_scaled and not math.isfinite(grad_norm):
        return f"gradient norm {grad_norm}"
    return None


def skip_or_stop(tracker, *, limit: int, step: int, objective: str, loss: float, grad_norm, loss_scaled: bool,
                 warn=None) -> bool:
    """True when this step must be skipped (counted in ``tracker.skipped_steps``); False when it is finite.

    Raises :class:`NonFiniteError` once ``limit`` skips are spent. ``warn`` logs the skip (default: this
    module's logger).
    """
    bad = nonfinite_reason(loss, grad_norm, loss_scaled)
    if bad is None:
        return False
    if tracker.skipped_steps < limit:
        tracker.skipped_steps += 1
        (warn or logger.warning)(f"step {step} (objective {objective}): {bad}; skipped ({tracker.skipped_steps} of "
                                 f"--skip_nonfinite_steps {limit})")
        return True
    raise NonFiniteError(f"step {step} (objective {objective}): {bad}", step, skips_spent=limit > 0)


def check_finite_weights(accelerator, model, step, objective):
    """Non-finite weights stop the run before they reach a checkpoint or the output (a collective).

    Each process checks the weights it holds: everything under DDP, its shards under FSDP, its
    partition under ZeRO-3 (where the parameters themselves are empty placeholders).
    """
    bad = sum(int(not torch.isfinite(local_tensor(p)).all()) for p in model.parameters())
    if accelerator.reduce(torch.tensor(bad, device=accelerator.device), reduction="sum").item():
        raise NonFiniteError(f"step {step} (objective {objective}): the weights hold NaN or infinity", step)


def failure_message(error: NonFiniteError, *, skip_limit: int, last_checkpoint) -> str:
    """The line after ``error: ``: what happened, what was kept, what to do.

    ``last_checkpoint``: the newest complete checkpoint from before the failing step, or None.
    """
    kept = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "there is no checkpoint"
    if error.skips_spent:
        advice = (f"all {skip_limit} steps --skip_nonfinite_steps allows were already skipped; "
                  "lower --learning_rate or raise --skip_nonfinite_steps")
    elif skip_limit:  # the weights went non-finite: no skip would have caught that step
        advice = "lower --learning_rate"
    else:
        advice = "lower --learning_rate or pass --skip_nonfinite_steps N to skip such steps"
    return f"{error}; no model was saved and {kept}; {advice}"


__all__ = ["NONFINITE_EXIT_CODE", "NonFiniteError", "check_finite_weights", "failure_message", "nonfinite_reason",
           "skip_or_stop"]

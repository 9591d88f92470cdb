"""The parts of :class:`~mometas_utils.trainer.MometasTrainer` that are not the ``Trainer`` subclass itself.

``run_mometas_pretraining.py`` owns its loop; the Trainer's loop belongs to transformers. The
pieces here let the Trainer refuse the same launches as the script (:func:`check_trainer_launch`,
the shared :func:`~mometas_utils.parallel.check_parallel_support`), skip a step as the script does
(:func:`gate_optimizer_step`: a step the non-finite policy skips takes neither the optimizer's nor
the schedule's step), keep each process's sampler state in its checkpoints (and refuse one saved
by another number of processes), and write the script's history rows.
"""

from __future__ import annotations

import glob
import os
import types
from collections.abc import Mapping

import torch

from .errors import MometasInputError
from .parallel import check_parallel_support

#: Per process: the sampler, the collators' generators and the tracker, beside the Trainer's own files.
STATE_FILENAME = "mometas_state_{process}.pt"
#: The update's reward statistics a history row carries when the sampler returns them (as the script's rows).
REWARD_FIELDS = ("reward_terms", "reward_floored", "advantage", "reward_baseline", "reward_scale", "entropy_lambda")


def history_row(sampler, window: Mapping, *, step: int, update: Mapping | None, val_losses: Mapping | None,
                seconds: float | None, elapsed: float, learning_rate: float, num_processes: int) -> dict:
    """One row of ``sampler_history.jsonl``, key for key the row of ``run_mometas_pretraining.py``:
    the sampler after its update and the window of steps before it (``StepTracker.close_window``)."""
    row = {
        "step": step, "sampler": sampler.name, "objectives": sampler.objectives,
        "probabilities": sampler.probabilities, "entropy": sampler.entropy(),
        "reward": update.get("reward") if update else None, "val_loss": val_losses,
        **{key: update[key] for key in REWARD_FIELDS if update and key in update},
        **{key: window[key] for key in ("train_loss", "counts", "rollout", "tokens_seen", "mean_probabilities")},
        "meta_test_seconds": seconds, "elapsed_seconds": elapsed,
        "learning_rate": learning_rate, "num_processes": num_processes,
    }
    if "process_rollouts" in window:
        row["process_rollouts"] = window["process_rollouts"]
    return row


def tracker_logs(row: Mapping) -> dict:
    """What the trackers get from a row: the names the script logs (``sampler/p_<objective>``, ...)."""
    logs = {f"sampler/p_{n}": p for n, p in row["probabilities"].items()}
    logs.update({f"tokens/{n}": v for n, v in row["tokens_seen"].items()})
    logs.update({"sampler/entropy": row["entropy"], "time/meta_test_seconds": row["meta_test_seconds"] or 0.0})
    if row["reward"] is not None:
        logs["sampler/reward"] = row["reward"]
    logs.update({f"val/loss_{n}": v for n, v in (row["val_loss"] or {}).items()})
    return logs


def check_trainer_launch(accelerator, args, *, sampler: str, skip_nonfinite_steps: int, head_warmup_steps: int):
    """The script's launch check with the Trainer's settings (``args``: its ``TrainingArguments``).

    Under DeepSpeed the config's ``gradient_clipping`` takes ``max_grad_norm`` when it is "auto" (as
    transformers' own DeepSpeed integration sets it); a number that differs is refused.
    """
    check_parallel_support(accelerator, sampler=sampler, skip_nonfinite_steps=skip_nonfinite_steps,
                           max_grad_norm=args.max_grad_norm, head_warmup_steps=head_warmup_steps)


def check_trainer_args(args) -> None:
    """TrainingArguments the sampler's bookkeeping cannot follow."""
    if getattr(args, "auto_find_batch_size", False):
        # find_executable_batch_size runs the whole loop again after an out-of-memory error.
        raise MometasInputError(
            "auto_find_batch_size: after an out-of-memory error the Trainer restarts its loop with the sampler, "
            "the collators and the history already advanced (a second step-0 meta-test, the collators' seeds "
            "offset again, the failed attempt's draws in the window); set per_device_train_batch_size instead")


def state_file(folder, process_index: int) -> str:
    return os.path.join(folder, STATE_FILENAME.format(process=process_index))


def check_resume_processes(folder, num_processes: int) -> None:
    """A checkpoint holds one sampler state per process that saved it: resume with that many processes.

    With fewer, each process would find its own file and continue, and the missing processes' collator
    noise and token counts would be lost without a word.
    """
    saved = sorted(os.path.basename(path) for path in glob.glob(state_file(glob.escape(str(folder)), "*")))
    if not saved:
        raise MometasInputError(f"resume_from_checkpoint: {folder} holds no sampler state "
                                f"({STATE_FILENAME.format(process=0)}): it was not saved by a MometasTrainer")
    expected = sorted(STATE_FILENAME.format(process=index) for index in range(num_processes))
    if saved != expected:
        raise MometasInputError(f"resume_from_checkpoint: {folder} holds the sampler states of {len(saved)} "
                                f"process(es) ({', '.join(saved)}); this run has {num_processes}: resume it with "
                                f"{len(saved)}")


def save_process_state(folder, process_index: int, *, sampler, tracker, collators: Mapping, warmup_sampler=None):
    """``mometas_state_<process>.pt``: the sampler, the tracker, each training collator's generator (and the
    warm-up's sampler), what a resumed run needs to draw, learn and reward as the uninterrupted one."""
    state = {"sampler": sampler.state_dict(), "tracker": tracker.state_dict(),
             "collators": {name: c.state_dict() for name, c in collators.items()}}
    if warmup_sampler is not None:
        state["warmup_sampler"] = warmup_sampler.state_dict()
    torch.save(state, state_file(folder, process_index))


def load_process_state(folder, process_index: int, *, sampler, tracker, collators: Mapping, warmup_sampler=None):
    state = torch.load(state_file(folder, process_index), weights_only=True)
    sampler.load_state_dict(state["sampler"])
    tracker.load_state_dict(state["tracker"])
    if sorted(state["collators"]) != sorted(collators):
        raise MometasInputError(f"resume_from_checkpoint: {folder} was trained with the objectives "
                                f"{list(state['collators'])}, not {list(collators)}")
    for name, collator in collators.items():
        collator.load_state_dict(state["collators"][name])
    if warmup_sampler is not None:
        if "warmup_sampler" not in state:
            raise MometasInputError(f"resume_from_checkpoint: {folder} was saved without a head warm-up; resume "
                                    "with the same head_warmup_steps")
        warmup_sampler.load_state_dict(state["warmup_sampler"])


def gate_optimizer_step(optimizer, skip) -> None:
    """Make the prepared ``optimizer.step()`` skip the step while ``skip()`` is true, as an fp16 overflow does.

    The Trainer calls ``optimizer.step()`` itself, then steps the schedule only when
    ``accelerator.optimizer_step_was_skipped`` is false, which reads the prepared optimizer's
    overflow mark (``AcceleratedOptimizer.step_was_skipped``). The gate sets that mark for a skipped
    step, so it takes neither the update nor the schedule's step, as in the script. A bound method, so
    that a schedule built on the optimizer later can still wrap it (torch's schedulers wrap
    ``optimizer.step`` to track its calls).
    """
    if getattr(optimizer.step, "_mometas_gate", False):
        return
    original = optimizer.step

    def step(self, *args, **kwargs):
        if skip():
            self._is_overflow = True
            return None
        self._is_overflow = False  # Accelerate's own step sets it again under a loss scaler
        return original(*args, **kwargs)

    step._mometas_gate = True
    # torch's schedulers mark the optimizer.step they wrapped, and warn when it is replaced; this gate still calls it.
    if hasattr(original, "_wrapped_by_lr_sched"):
        step._wrapped_by_lr_sched = True
    optimizer.step = types.MethodType(step, optimizer)


__all__ = ["REWARD_FIELDS", "STATE_FILENAME", "check_resume_processes", "check_trainer_args", "check_trainer_launch",
           "gate_optimizer_step", "history_row", "load_process_state", "save_process_state", "state_file", "tracker_logs"]

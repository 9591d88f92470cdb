"""MOMETAS, or any registered sampler, inside a Hugging Face ``Trainer``.

    trainer = MometasTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=validation,
                             processing_class=tokenizer, sampler=sampler, collators=collators)
    trainer.train()

The datasets hold tokenized sequences (``input_ids``, and ``entity_ids`` for EMLM); the data
collator only pads them (:class:`~mometas_utils.objectives.PadCollator`). Each optimizer step
draws one objective T_t, and every micro-batch of the step goes through T_t's collator inside
:meth:`MometasTrainer.training_step` (meta-train). Every K steps (the meta length) every
objective is evaluated on ``eval_dataset`` (meta-test), the sampler takes its reward and
update, and a row goes to ``<output_dir>/sampler_history.jsonl`` in the format of
``run_mometas_pretraining.py``. docs/library.md lists the Trainer's traps and how each is met.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Mapping

import torch
from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback
from transformers.utils import logging
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from .errors import MometasInputError
from .head_warmup import (check_head_warmup, check_trainer_warmup, set_encoder_trainable, split_optimizer_groups,
                          trainer_scheduler)
from .history import HISTORY_FILENAME, HistoryWriter, drop_superseded, read_history, rewind_history
from .meta_test import meta_test, meta_test_batches, unscaled_encoder_grad_norm
from .nonfinite import check_finite_weights, skip_or_stop
from .objectives import PadCollator
from .parallel import loss_scaled
from .plots import plot_history
from .samplers import build_sampler
from .tracker import StepTracker
from .trainer_support import (REWARD_FIELDS, STATE_FILENAME, check_resume_processes, check_trainer_args,
                              check_trainer_launch, gate_optimizer_step, history_row, load_process_state,
                              save_process_state, tracker_logs)

logger = logging.get_logger(__name__)


class _SamplerCallback(TrainerCallback):
    """The Trainer's only hooks after an optimizer step and around training; the work is the trainer's."""

    def __init__(self, trainer: MometasTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._begin()

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._end_of_step()

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer._finish()


class MometasTrainer(Trainer):
    """A ``Trainer`` whose every optimizer step trains the objective its sampler draws (Algorithm 1).

    Args (beyond the ``Trainer``'s):
        sampler: any :func:`~mometas_utils.samplers.build_sampler` sampler; seed it identically on every
            process (its own generator makes the draws, so they are then the same everywhere).
        collators: objective name -> collator (:func:`~mometas_utils.build_objectives`), the sampler's objectives.
        meta_eval_batches: validation batches of ``per_device_eval_batch_size`` per process and meta-test.
        meta_eval_fixed: measure every meta-test on the same batches (b_i and a_i on the same text).
        baseline_meta_test: meta-test every K steps even for samplers that do not need it (uniform,
            fixed, gradient, loss), to record their validation losses and rewards.
        head_warmup_steps, head_warmup_objectives, head_warmup_learning_rate: the first N optimizer steps
            train only the heads (the encoder frozen, its rate 0) on objectives drawn uniformly from
            ``head_warmup_objectives`` (the ones whose heads the checkpoint lacks), at their own rate; the
            Trainer's schedule and the sampler start at step N (:mod:`~mometas_utils.head_warmup`).
        skip_nonfinite_steps: skip up to N steps whose loss (or gradient norm, outside fp16) is NaN or
            infinite, as the script's flag does; one more raises :class:`~mometas_utils.nonfinite.NonFiniteError`,
            as does any such step without it (:mod:`~mometas_utils.nonfinite`).
        cse_gather: CSE takes its negatives from the sequences of every process (the script's ``--cse_gather``).

    ``eval_dataset`` is the meta-test set; :meth:`evaluate` reports a meta-test there.
    ``data_collator`` defaults to a :class:`PadCollator` for ``processing_class``.
    """

    # The model's loss is a per-batch mean: the Trainer must divide it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, sampler, collators: Mapping, meta_eval_batches: int = 1, meta_eval_fixed: bool = True,
                 baseline_meta_test: bool = False, head_warmup_steps: int = 0, head_warmup_objectives=None,
                 head_warmup_learning_rate: float = 1e-3, skip_nonfinite_steps: int = 0, cse_gather: bool = False,
                 **kwargs):
        if sorted(collators) != sorted(sampler.objectives):
            raise MometasInputError(f"collators: expected one per objective of the sampler {sampler.objectives}, "
                                    f"got {list(collators)}")
        if not isinstance(meta_eval_batches, int) or meta_eval_batches < 1:
            raise MometasInputError(f"meta_eval_batches: expected a positive integer, got {meta_eval_batches!r}")
        if not isinstance(skip_nonfinite_steps, int) or skip_nonfinite_steps < 0:
            raise MometasInputError(f"skip_nonfinite_steps: expected an integer >= 0, got {skip_nonfinite_steps!r}")
        if isinstance(kwargs.get("data_collator"), DataCollatorForLanguageModeling):
            raise MometasInputError("data_collator: the objective collators mask, insert and delete; a "
                                    "DataCollatorForLanguageModeling would corrupt every batch once more. Leave "
                                    "data_collator unset (the batches are only padded)")
        if kwargs.get("data_collator") is None:
            tokenizer = kwargs.get("processing_class")
            if getattr(tokenizer, "pad_token_id", None) is None:
                raise MometasInputError("processing_class: pass the tokenizer (its pad token pads the batches) "
                                        "or a data_collator")
            kwargs["data_collator"] = PadCollator(tokenizer.pad_token_id)
        super().__init__(*args, **kwargs)
        check_trainer_args(self.args)
        heads = getattr(getattr(self.model, "config", None), "objectives", None)
        if heads is not None and any(name not in heads for name in sampler.objectives):
            raise MometasInputError(f"model: it has heads for {list(heads)}, the sampler draws {sampler.objectives}")
        if self.args.ddp_find_unused_parameters is False:
            raise MometasInputError("ddp_find_unused_parameters: one objective per step leaves the other heads "
                                    "without gradients, so DDP must look for unused parameters; leave it unset")
        # forward(**kwargs) makes the Trainer think the model normalises its loss by num_items_in_batch
        # (and stop dividing by the accumulation steps); it swallows that argument and returns a batch mean.
        self.model_accepts_loss_kwargs = False
        self.sampler = sampler
        self.skip_nonfinite_steps, self.cse_gather = skip_nonfinite_steps, bool(cse_gather)
        self.collators = dict(collators)
        # Meta-test reseeds its collators at every meta-test; copies keep the training noise untouched.
        self.eval_collators = {name: _with_own_generator(c) for name, c in self.collators.items()}
        self.meta_eval_batches, self.meta_eval_fixed = meta_eval_batches, bool(meta_eval_fixed)
        self.run_meta_test = sampler.requires_meta_test or baseline_meta_test
        if self.run_meta_test and self.eval_dataset is None:
            raise MometasInputError(f"eval_dataset: the {sampler.name} sampler meta-tests every objective on held-out "
                                    "sequences every meta length; pass eval_dataset")
        self.tracker = StepTracker(sampler.objectives)
        warm = check_trainer_warmup(head_warmup_steps, head_warmup_objectives, head_warmup_learning_rate,
                                    sampler_objectives=sampler.objectives, max_steps=self.args.max_steps)
        self.head_warmup_steps, self.head_warmup_learning_rate = head_warmup_steps, float(head_warmup_learning_rate)
        # Its own generator: the sampler's draws start where its learning does.
        self.warmup_sampler = build_sampler("uniform", warm, seed=self.args.seed + 1) if head_warmup_steps else None
        self.history: HistoryWriter | None = None
        self._resume_path = None
        self._reset_step()
        self.add_callback(_SamplerCallback(self))

    # ------------------------------------------------------------------ the Trainer's traps

    def _build_accelerator_args(self, **kwargs):
        # The Trainer turns find_unused_parameters off under activation checkpointing; DDP would then wait
        # forever for the gradients of the heads this step did not use.
        args = super()._build_accelerator_args(**kwargs)
        for handler in args.get("kwargs_handlers", []):
            if hasattr(handler, "find_unused_parameters"):
                handler.find_unused_parameters = True
        return args

    def _remove_unused_columns(self, dataset, description=None):
        # The columns feed the objective collators (entity_ids for EMLM), not forward(); PadCollator
        # reads only what it needs.
        return dataset

    def _get_collator_with_removed_columns(self, data_collator, description=None):
        return data_collator

    def get_train_dataloader(self):
        # The collators corrupt on the CPU: the padded batches stay there and move to the device once,
        # corrupted, in training_step (Accelerate would move them, and training_step back). Dispatched
        # batches (an IterableDataset under dispatch_batches) must be placed by Accelerate.
        if self.args.accelerator_config.dispatch_batches:
            return super().get_train_dataloader()
        placement, self.accelerator.device_placement = self.accelerator.device_placement, False
        try:
            return super().get_train_dataloader()
        finally:
            self.accelerator.device_placement = placement

    def _get_grad_norm(self, model, grad_norm=None):
        # The Trainer's last call before the optimizer step, on every process: the step is judged here.
        grad_norm = super()._get_grad_norm(model, grad_norm)
        self._judge_step(grad_norm)
        return grad_norm

    # ------------------------------------------------------------------ meta-train

    def warming_up(self) -> bool:
        return self.state.global_step < self.head_warmup_steps

    def draw_objective(self) -> str:
        """T_t of the coming optimizer step: the one place where objectives are drawn.

        Called once per optimizer step on every process, so the sampler's generator stays in step.
        During a head warm-up the draws are uniform over the heads being warmed up."""
        if self.warming_up():
            objective = self.warmup_sampler.sample()
            self.warmup_sampler.rollout.clear()  # nothing learns from the warm-up's draws
            self._drawn_with = self.warmup_sampler.drawn_with
            return objective
        objective = self.sampler.sample()
        self._drawn_with = self.sampler.drawn_with
        return objective

    # ------------------------------------------------------------------ the head warm-up's rates

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model) if model is not None else super().create_optimizer()
        if self.head_warmup_steps:
            split_optimizer_groups(self.optimizer, self.model)  # the encoder's and the heads' rates
        return optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if not self.head_warmup_steps:
            return super().create_scheduler(num_training_steps, optimizer)
        # An epoch-based run's length is known only now, before any step: the script's error, not a run of heads.
        check_head_warmup(self.head_warmup_steps, num_training_steps, None)
        if self.lr_scheduler is None:
            self.lr_scheduler = trainer_scheduler(self.args, optimizer or self.optimizer, num_training_steps,
                                                  self.head_warmup_steps, self.head_warmup_learning_rate)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def _reset_step(self):
        self._drawn_at, self._objective = None, None
        self._step_loss, self._step_tokens, self._micro_batches, self._grad_norm = 0.0, 0, 0, None
        self._mean_loss, self._skip_update = None, False

    def _judge_step(self, grad_norm):
        """The script's non-finite policy, after the step's gradients are complete and before it is applied:
        skip it (no optimizer or schedule step) while ``skip_nonfinite_steps`` allows, else stop the run."""
        loss = torch.as_tensor(self._step_loss, dtype=torch.float32, device=self.args.device)
        reduced = self.accelerator.reduce(loss, reduction="mean") if self.accelerator.num_processes > 1 else loss
        self._mean_loss = reduced.item()
        self._skip_update = skip_or_stop(
            self.tracker, limit=self.skip_nonfinite_steps, step=self.state.global_step + 1, objective=self._objective,
            loss=self._mean_loss, grad_norm=grad_norm, loss_scaled=loss_scaled(self.accelerator),
            warn=logger.warning if self.args.process_index == 0 else logger.debug)
        if self._skip_update and self.accelerator.scaler is not None:
            # The gradients were unscaled for the norm; without an optimizer step nothing would close the
            # scaler's step, and the next unscale_() would raise. update() closes it as an overflow does.
            self.accelerator.scaler.update()

    def training_step(self, model, inputs, num_items_in_batch=None):
        # The DataLoader collates ahead (prefetch, workers, the accumulation window), so the objective is
        # chosen here, when the step's first micro-batch is trained, and applied to the padded batch.
        if self._drawn_at != self.state.global_step:
            self._drawn_at, self._objective = self.state.global_step, self.draw_objective()
        objective = self._objective
        # The collators draw their noise from CPU generators: corrupt on the CPU, then the Trainer moves it.
        padded = {k: v.cpu() if torch.is_tensor(v) else v for k, v in inputs.items()}
        batch = self.collators[objective](padded)
        self._step_tokens += int(batch["attention_mask"].sum())
        loss = super().training_step(model, {"objective": objective, "cse_gather": self.cse_gather, **batch},
                                     num_items_in_batch)
        self._step_loss = self._step_loss + loss  # each is divided by the step's micro-batches: a mean
        self._micro_batches += 1
        if (self._micro_batches == self.current_gradient_accumulation_steps and self.sampler.requires_grad_norm
                and not self.warming_up()):
            # After the step's last backward (gradients synchronised), before the Trainer clips them.
            self._grad_norm = unscaled_encoder_grad_norm(self.accelerator, model)
        return loss

    # ------------------------------------------------------------------ meta-test

    def _meta_test(self, dataset=None) -> tuple[dict, float]:
        """Validation loss of every objective (Algorithm 1, lines 9-10), averaged over processes, and its seconds."""
        tic = time.perf_counter()
        batches = meta_test_batches(
            self.eval_dataset if dataset is None else dataset, batch_size=self.args.per_device_eval_batch_size,
            num_batches=self.meta_eval_batches, seed=self.args.seed, step=self.state.global_step,
            process_index=self.accelerator.process_index, pad=self.data_collator, fixed=self.meta_eval_fixed)
        reduce = (lambda t: self.accelerator.reduce(t, reduction="mean")) if self.accelerator.num_processes > 1 else None
        losses = meta_test(self.model_wrapped, batches, self.eval_collators, seed=self.args.seed,
                           device=self.args.device, reduce=reduce)
        return losses, time.perf_counter() - tic

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        """A meta-test on ``eval_dataset`` (default: the meta-test set): ``eval_loss`` is the mean over
        objectives, ``eval_loss_<objective>`` each one. It neither updates the sampler nor draws randomness."""
        if eval_dataset is None and self.eval_dataset is None:
            raise MometasInputError("eval_dataset: evaluate() needs sequences to meta-test on")
        losses, _ = self._meta_test(eval_dataset)
        metrics = {f"{metric_key_prefix}_loss": sum(losses.values()) / len(losses),
                   **{f"{metric_key_prefix}_loss_{n}": v for n, v in losses.items()}}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)
        return metrics

    # ------------------------------------------------------------------ the loop around the steps

    def train(self, resume_from_checkpoint=None, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise MometasInputError(f"resume_from_checkpoint: no checkpoint in {self.args.output_dir}")
        check_trainer_launch(self.accelerator, self.args, sampler=self.sampler.name,
                             skip_nonfinite_steps=self.skip_nonfinite_steps, head_warmup_steps=self.head_warmup_steps)
        if resume_from_checkpoint:
            check_resume_processes(resume_from_checkpoint, self.accelerator.num_processes)
        if not resume_from_checkpoint and os.path.isfile(os.path.join(self.args.output_dir, HISTORY_FILENAME)):
            raise MometasInputError(f"output_dir: {self.args.output_dir} holds the {HISTORY_FILENAME} of another run; "
                                    "resume it (resume_from_checkpoint) or choose another output_dir")
        self._resume_path = resume_from_checkpoint or None
        return super().train(resume_from_checkpoint=resume_from_checkpoint or None, **kwargs)

    def _begin(self):
        self._started = time.perf_counter()
        self._reset_step()
        gate_optimizer_step(self.optimizer, lambda: self._skip_update)
        if self._resume_path is not None:
            self._load_state(self._resume_path)
        elif self.accelerator.process_index > 0:
            # Every process's collators were seeded alike; without this they would corrupt the same positions.
            for collator in self.collators.values():
                collator.generator.manual_seed(collator.generator.initial_seed() + 1_000_003 * self.accelerator.process_index)
        if self.args.should_save:
            os.makedirs(self.args.output_dir, exist_ok=True)
            if self._resume_path is not None:
                # Rows after the checkpoint are set aside until this run saves a checkpoint of its own.
                rewind_history(self.args.output_dir, self.state.global_step)
            self.history = HistoryWriter(self.args.output_dir)
        if self.warming_up():
            # After the optimizer was built (it takes only parameters that require gradients).
            set_encoder_trainable(self.accelerator.unwrap_model(self.model_wrapped), False)
        # With a warm-up, the first meta-test waits for trained heads: random heads' losses are no baselines.
        if self.run_meta_test and self.state.global_step == 0 and not self.head_warmup_steps:
            val_losses, seconds = self._meta_test()
            self._write_row(self.sampler.update(val_losses, learning_rate=self._learning_rate()), val_losses, seconds)  # the baselines b_i

    def _end_of_step(self):
        """After the optimizer step: the sampler observes it; every K steps, meta-test and update (lines 9-12).

        A skipped step is drawn but not trained: the window keeps its draw with no loss, the sampler
        does not observe it, and it counts towards the warm-up and K like any other step, as in the script."""
        objective, skipped, mean_loss = self._objective, self._skip_update, self._mean_loss
        step = self.state.global_step
        warmed_up = self.head_warmup_steps and step == self.head_warmup_steps
        if not skipped and step > self.head_warmup_steps:
            self.sampler.observe(objective, mean_loss, self._grad_norm)
        self.tracker.record(objective, None if skipped else mean_loss, self._step_tokens, self._drawn_with)
        self._last_objective = objective
        self._step_loss, self._step_tokens, self._micro_batches, self._grad_norm = 0.0, 0, 0, None
        self._skip_update = False
        if warmed_up:
            # Everything trains from now on, at the schedule's first rate; the sampler's first meta-test
            # gives its baselines b_i.
            set_encoder_trainable(self.accelerator.unwrap_model(self.model_wrapped), True)
            self.lr_scheduler.end_warmup()
            val_losses, seconds = self._meta_test() if self.run_meta_test else (None, None)
            self._write_row(self.sampler.update(val_losses, learning_rate=self._learning_rate()), val_losses, seconds, extra={"head_warmup_end": True})
        elif step > self.head_warmup_steps and (step - self.head_warmup_steps) % self.sampler.meta_length == 0:
            val_losses, seconds = self._meta_test() if self.run_meta_test else (None, None)
            self._write_row(self.sampler.update(val_losses, learning_rate=self._learning_rate()), val_losses, seconds)
        elif step == self.state.max_steps:
            self._write_row(None, None, None)  # the last steps fill no window: no sampler update

    def _write_row(self, update, val_losses, seconds, extra=None) -> dict:
        """A collective (the window's draws and tokens are gathered); the main process writes."""
        window = self.tracker.close_window(self.accelerator)
        row = history_row(self.sampler, window, step=self.state.global_step, update=update, val_losses=val_losses,
                          seconds=seconds, elapsed=time.perf_counter() - self._started,
                          learning_rate=self._learning_rate(), num_processes=self.accelerator.num_processes)
        row.update(extra or {})
        if self.history is not None:
            self.history.write(row)
        self.log(tracker_logs(row))
        return row

    def _learning_rate(self) -> float:
        # The rate of the next step, as the script's rows report it (the scheduler stepped already).
        if self.lr_scheduler is not None:
            return float(self.lr_scheduler.get_last_lr()[0])
        return float(self.args.learning_rate)

    def _finish(self):
        if self.args.should_save:
            drop_superseded(self.args.output_dir)
            if self.history is not None and self.history.path.is_file():
                plot_history(read_history(self.args.output_dir), self.args.output_dir)

    # ------------------------------------------------------------------ checkpoints

    def _check_finite_weights(self):
        # A collective; the objective named is the last one trained.
        check_finite_weights(self.accelerator, self.model_wrapped, self.state.global_step,
                             getattr(self, "_last_objective", None))

    def save_model(self, output_dir=None, _internal_call=False):
        """The Trainer's save, refused (:class:`~mometas_utils.nonfinite.NonFiniteError`) for weights holding NaN."""
        if not _internal_call:
            self._check_finite_weights()
        return super().save_model(output_dir, _internal_call)

    def _save_checkpoint(self, model, trial):
        self._check_finite_weights()  # before any file of the checkpoint
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        self.tracker.sync_tokens(self.accelerator)  # a collective: the totals of every process
        # Written before the Trainer's files, so a checkpoint that has a trainer_state.json has it too.
        os.makedirs(folder, exist_ok=True)
        save_process_state(folder, self.args.process_index, sampler=self.sampler, tracker=self.tracker,
                           collators=self.collators, warmup_sampler=self.warmup_sampler)
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            drop_superseded(self.args.output_dir)  # this run's own checkpoint replaces the rows set aside

    def _load_state(self, folder):
        load_process_state(folder, self.args.process_index, sampler=self.sampler, tracker=self.tracker,
                           collators=self.collators, warmup_sampler=self.warmup_sampler)


def _with_own_generator(collator):
    clone = copy.copy(collator)
    clone.generator = torch.Generator()
    return clone


__all__ = ["MometasTrainer", "history_row", "tracker_logs", "REWARD_FIELDS", "STATE_FILENAME"]

#!/usr/bin/env python
"""Fine-tune a BERT checkpoint on multiple-choice data (DREAM, αNLI, SWAG-style) with 🤗 Accelerate.

The shape of transformers' ``examples/pytorch/multiple-choice/run_swag_no_trainer.py``: one
flat loop, evaluation after every epoch. Data in the original formats:

* DREAM's JSON (a list of ``[turns, questions, dialogue_id]``): one example per question, the
  dialogue turns joined as the context, each choice encoded as ``(dialogue, question + choice)``,
  the label the index of the ``answer`` text among the choices;
* αNLI JSON lines (``observation_1``, ``observation_2``, ``hypothesis_1``, ``hypothesis_2``,
  ``label`` 1 or 2): each choice is ``(observation_1, hypothesis_i + observation_2)``;
* SWAG-style CSV/JSON (``sent1``, ``sent2``, ``ending0`` … ``endingN``, ``label``).

The number of choices comes from the data. Metric: accuracy. Shared plumbing lives in
``mometas_utils/finetuning.py``, the readers in ``mometas_utils/finetune_data.py``.
"""

import argparse
import math
import os

import datasets
import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import (
    AutoModelForMultipleChoice,
    AutoTokenizer,
    DataCollatorForMultipleChoice,
    default_data_collator,
    get_scheduler,
)

from mometas_utils import finetune_data as fd
from mometas_utils import finetuning as ft
from mometas_utils.errors import MometasInputError

logger = get_logger(__name__)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Fine-tune a BERT encoder on a multiple-choice task.", allow_abbrev=False
    )
    parser.add_argument(
        "--dataset_format",
        type=str,
        default="auto",
        choices=list(fd.MC_FORMATS),
        help="Format of the local files; 'auto' tells DREAM JSON, αNLI JSON lines and SWAG-style columns apart.",
    )
    ft.add_common_arguments(parser, max_length_aliases=["--max_seq_length"])
    args = ft.parse_args_tracking_explicit(parser, argv)
    ft.validate_common_args(args)
    if args.dataset_name is None and args.train_file is None and args.validation_file is None and args.test_file is None:
        raise MometasInputError("need --dataset_name or local --train_file/--validation_file")
    return args


def load_splits(args):
    """Records per split: (format, {split: (records, path)})."""
    files = {"train": args.train_file, "validation": args.validation_file, "test": args.test_file}
    splits, formats = {}, set()
    if any(files.values()):
        for split, path in files.items():
            if path:
                fmt, records = fd.read_multiple_choice(path, split, args.dataset_format)
                formats.add(fmt)
                splits[split] = (records, path)
    else:
        raw = datasets.load_dataset(args.dataset_name, args.dataset_config_name)
        for split in ("train", "validation", "test"):
            if split in raw:
                where = f"{args.dataset_name}[{split}]"
                records = list(enumerate(raw[split].to_list(), start=1))
                fmt, records = fd.read_multiple_choice(where, split, args.dataset_format, hub_records=records)
                formats.add(fmt)
                splits[split] = (records, where)
    if len(formats) > 1:
        raise MometasInputError(f"the data files are in different formats ({', '.join(sorted(formats))}); use one task")
    return formats.pop(), splits


def main(argv=None):
    args = parse_args(argv)
    hub_token = ft.pop_hub_token(args)  # from here on, args holds no secret

    accelerator_log_kwargs = {}
    if args.with_tracking:
        accelerator_log_kwargs["log_with"] = args.report_to
        accelerator_log_kwargs["project_dir"] = args.output_dir
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        **accelerator_log_kwargs,
    )
    ft.configure_logging(accelerator, logger)
    set_seed(args.seed)
    if accelerator.is_main_process and args.output_dir is not None:
        os.makedirs(args.output_dir, exist_ok=True)
    accelerator.wait_for_everyone()

    # ---- Data ------------------------------------------------------------------------------------
    data_format, splits = load_splits(args)
    limits = {"train": args.max_train_samples, "validation": args.max_eval_samples, "test": args.max_predict_samples}
    splits = {split: (records[: limits[split]], path) for split, (records, path) in splits.items()}
    num_choices = fd.number_of_choices({s: r for s, (r, _) in splits.items()}, {s: p for s, (_, p) in splits.items()})
    do_train = "train" in splits
    logger.info(f"Format {data_format}, {num_choices} choices per example")
    if args.hparams == "paper":
        if data_format not in ("dream", "anli"):
            raise MometasInputError(f"--hparams paper has settings for DREAM and αNLI only, not {data_format}")
        applied = ft.apply_paper_hparams(args, data_format, accelerator.num_processes)
        logger.info(f"--hparams paper for {data_format}: {applied} (explicit flags kept: {args.user_set_flags})")

    # ---- Model and tokenizer --------------------------------------------------------------------------
    config = ft.load_config(args.config_name or args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(
        args.tokenizer_name or args.model_name_or_path,
        use_fast=not args.use_slow_tokenizer,
        trust_remote_code=args.trust_remote_code,
    )
    model = AutoModelForMultipleChoice.from_pretrained(
        args.model_name_or_path, config=config, trust_remote_code=args.trust_remote_code
    )

    # ---- Tokenize once with datasets.map: n (first, second) pairs per example ---------------------------
    padding = "max_length" if args.pad_to_max_length else False

    def preprocess_function(examples):
        first = [text for choices in examples["first"] for text in choices]
        second = [text for choices in examples["second"] for text in choices]
        # Truncate the longer text of each pair first: in practice the context (the dialogue).
        tokenized = tokenizer(first, second, max_length=args.max_length, padding=padding, truncation=True)
        result = {k: [v[i : i + num_choices] for i in range(0, len(v), num_choices)] for k, v in tokenized.items()}
        result["labels"] = examples["label"]
        return result

    processed = {}
    for split, (records, _) in splits.items():
        columns = {
            "first": [r["first"] for r in records],
            "second": [r["second"] for r in records],
            # Unlabeled test examples get a placeholder 0: the collator needs a label, nothing reads it.
            "label": [r["label"] if r["label"] is not None else 0 for r in records],
        }
        with accelerator.main_process_first():
            processed[split] = datasets.Dataset.from_dict(columns).map(
                preprocess_function, batched=True, remove_columns=list(columns), desc=f"Running tokenizer on {split}"
            )

    if args.pad_to_max_length:
        data_collator = default_data_collator
    else:
        pad_to = 8 if accelerator.mixed_precision in ("fp16", "bf16") else None
        data_collator = DataCollatorForMultipleChoice(tokenizer, pad_to_multiple_of=pad_to)
    eval_dataloaders = {
        split: DataLoader(processed[split], collate_fn=data_collator, batch_size=args.per_device_eval_batch_size)
        for split in ("validation", "test")
        if split in processed
    }

    def predict(split):
        model.eval()
        outputs = []
        for batch in eval_dataloaders[split]:
            with torch.no_grad():
                logits = model(**batch).logits
            outputs.append(accelerator.gather_for_metrics(logits.argmax(dim=-1)).cpu())
        return torch.cat(outputs).numpy()

    def evaluate():
        if "validation" not in splits:
            return {}, None
        preds = predict("validation")
        labels = np.asarray([r["label"] for r in splits["validation"][0]])
        return {"accuracy": ft.accuracy(preds, labels)}, preds

    completed_steps = 0
    epoch = -1
    results, predictions = {}, None
    if do_train:
        train_dataloader = DataLoader(
            processed["train"],
            shuffle=True,
            collate_fn=data_collator,
            batch_size=args.per_device_train_batch_size,
            generator=torch.Generator().manual_seed(args.seed),
        )
        optimizer = torch.optim.AdamW(ft.optimizer_grouped_parameters(model, args.weight_decay), lr=args.learning_rate)

        # Scheduler and math around the number of training steps.
        num_update_steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
        if args.max_train_steps is None:
            args.max_train_steps = args.num_train_epochs * num_update_steps_per_epoch
        else:
            args.num_train_epochs = math.ceil(args.max_train_steps / num_update_steps_per_epoch)
        num_warmup_steps = ft.warmup_steps(args, args.max_train_steps)
        lr_scheduler = get_scheduler(
            name=args.lr_scheduler_type,
            optimizer=optimizer,
            num_warmup_steps=num_warmup_steps * accelerator.num_processes,
            num_training_steps=args.max_train_steps * accelerator.num_processes,
        )

        model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
            model, optimizer, train_dataloader, lr_scheduler
        )
        eval_dataloaders = {split: accelerator.prepare(dl) for split, dl in eval_dataloaders.items()}

        if args.with_tracking:
            accelerator.init_trackers("multiple_choice_no_trainer", ft.safe_config(args, [hub_token]))

        total_batch_size = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
        logger.info("***** Running training *****")
        logger.info(f"  Num examples = {len(processed['train'])}")
        logger.info(f"  Num Epochs = {args.num_train_epochs}")
        logger.info(f"  Instantaneous batch size per device = {args.per_device_train_batch_size}")
        logger.info(f"  Total train batch size (w. parallel, distributed & accumulation) = {total_batch_size}")
        logger.info(f"  Gradient Accumulation steps = {args.gradient_accumulation_steps}")
        logger.info(f"  Total optimization steps = {args.max_train_steps}, warmup = {num_warmup_steps}")
        logger.info(f"  Learning rate = {args.learning_rate}, weight decay = {args.weight_decay}, max length = {args.max_length}")
        progress_bar = tqdm(range(args.max_train_steps), disable=not accelerator.is_local_main_process)
        starting_epoch, resume_batches = 0, 0

        checkpoint = ft.resolve_resume_checkpoint(args.resume_from_checkpoint, args.output_dir)
        if checkpoint is not None:
            accelerator.print(f"Resumed from checkpoint: {checkpoint}")
            accelerator.load_state(checkpoint)
            completed_steps, starting_epoch, resume_batches = ft.resume_position(
                checkpoint, num_update_steps_per_epoch, args.gradient_accumulation_steps
            )
            progress_bar.update(completed_steps)

        for epoch in range(starting_epoch, args.num_train_epochs):
            if completed_steps >= args.max_train_steps:
                break
            model.train()
            train_dataloader.set_epoch(epoch)
            total_loss, num_batches = 0.0, 0
            if epoch == starting_epoch and resume_batches:
                active_dataloader = accelerator.skip_first_batches(train_dataloader, resume_batches)
            else:
                active_dataloader = train_dataloader
            for batch in active_dataloader:
                with accelerator.accumulate(model):
                    outputs = model(**batch)
                    loss = outputs.loss
                    total_loss += loss.detach().float().item()
                    num_batches += 1
                    accelerator.backward(loss)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad()

                if accelerator.sync_gradients:
                    progress_bar.update(1)
                    completed_steps += 1
                    if isinstance(args.checkpointing_steps, int) and completed_steps % args.checkpointing_steps == 0:
                        ft.save_checkpoint(
                            accelerator,
                            args.output_dir,
                            f"step_{completed_steps}",
                            completed_steps=completed_steps,
                            num_update_steps_per_epoch=num_update_steps_per_epoch,
                        )
                if completed_steps >= args.max_train_steps:
                    break

            results, predictions = evaluate()
            logger.info(f"epoch {epoch}: {results}")
            if args.with_tracking:
                accelerator.log(
                    {**results, "train_loss": total_loss / max(1, num_batches), "epoch": epoch, "step": completed_steps},
                    step=completed_steps,
                )
            if args.checkpointing_steps == "epoch":
                ft.save_checkpoint(
                    accelerator,
                    args.output_dir,
                    f"epoch_{epoch}",
                    completed_steps=completed_steps,
                    num_update_steps_per_epoch=num_update_steps_per_epoch,
                )
        if args.with_tracking:
            accelerator.end_training()
    else:
        model = accelerator.prepare(model)
        eval_dataloaders = {split: accelerator.prepare(dl) for split, dl in eval_dataloaders.items()}
    if not results and "validation" in splits:
        results, predictions = evaluate()
        logger.info(f"evaluation: {results}")

    # ---- Save, results, predictions ------------------------------------------------------------------------
    if args.output_dir is None:
        return results
    accelerator.wait_for_everyone()
    if do_train:
        accelerator.unwrap_model(model).save_pretrained(
            args.output_dir, is_main_process=accelerator.is_main_process, save_function=accelerator.save
        )
    test_predictions = predict("test") if "test" in splits else None
    if not accelerator.is_main_process:
        return results

    tokenizer.save_pretrained(args.output_dir)
    ft.save_args(args.output_dir, args, [hub_token])
    all_results = ft.prefixed(results, "eval")
    if "validation" in splits:
        all_results["eval_samples"] = len(splits["validation"][0])
    if do_train:
        all_results.update({"epoch": epoch, "train_samples": len(splits["train"][0]), "train_steps": completed_steps})
    if test_predictions is not None and all(r["label"] is not None for r in splits["test"][0]):
        labels = np.asarray([r["label"] for r in splits["test"][0]])
        all_results["test_accuracy"] = ft.accuracy(test_predictions, labels)
    ft.write_json(os.path.join(args.output_dir, "all_results.json"), all_results)

    # One JSON line per example: its id, the predicted choice (0-based; αNLI's own 1/2 too) and the gold label.
    for split, preds in (("validation", predictions), ("test", test_predictions)):
        if preds is None:
            continue
        rows = []
        for record, pred in zip(splits[split][0], preds):
            row = {"idx": record["idx"], "prediction": int(pred), "label": record["label"]}
            if data_format == "anli":
                row["prediction_label"] = int(pred) + 1
            rows.append(row)
        ft.write_jsonl(os.path.join(args.output_dir, f"predictions_{split}.jsonl"), rows)
    if do_train:
        data = args.dataset_name or f"{data_format} ({os.path.basename(args.train_file)})"
        ft.write_model_card(
            args.output_dir,
            base_model=args.model_name_or_path,
            task=data_format,
            pipeline_tag="multiple-choice",
            results=all_results,
            config=ft.safe_config(args, [hub_token]),
            data=str(data),
        )
        if args.push_to_hub:
            ft.push_to_hub(args.output_dir, args.hub_model_id, hub_token)
    return results


if __name__ == "__main__":
    ft.run_main(main)

#!/usr/bin/env python
"""Fine-tune a BERT checkpoint on GLUE, SICK or PAWS-QQP with 🤗 Accelerate.

The shape of transformers' ``examples/pytorch/text-classification/run_glue_no_trainer.py``:
one flat loop, evaluation after every epoch. What MOMETAS adds:

* ``--task_name`` cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, sick, paws_qqp, with local files
  in their original layouts (GLUE TSVs, the 12-column SICK file, CSV/JSON) or Hub datasets;
* ``--hparams paper`` for the paper's settings (Table 7 / ALBERT's GLUE settings);
* metrics from scikit-learn / scipy, ``all_results.json`` and prediction files;
* atomic, resumable checkpoints.

Any BERT folder works as ``--model_name_or_path``, e.g. the output of
``run_mometas_pretraining.py``. PAWS-QQP is zero-shot: give a QQP-trained model and only
``--validation_file``. Shared plumbing lives in ``mometas_utils/finetuning.py`` and the file
readers in ``mometas_utils/finetune_data.py``.
"""

import argparse
import math
import os
import random

import datasets
import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    default_data_collator,
    get_scheduler,
)

from mometas_utils import finetune_data as fd
from mometas_utils import finetuning as ft
from mometas_utils.errors import MometasInputError

logger = get_logger(__name__)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Fine-tune a BERT encoder on a GLUE-style sentence(-pair) task.", allow_abbrev=False
    )
    parser.add_argument(
        "--task_name",
        type=str,
        default=None,
        help=f"One of: {', '.join(fd.GLUE_TASKS)}. Without it, local files are read with generic column rules.",
    )
    parser.add_argument(
        "--validation_mismatched_file",
        type=str,
        default=None,
        help="MNLI only: the mismatched dev file (dev_mismatched.tsv); --validation_file is the matched one.",
    )
    parser.add_argument("--sentence1_key", type=str, default=None, help="Column (name or 0-based position) of the first text.")
    parser.add_argument("--sentence2_key", type=str, default=None, help="Column of the second text, for pair tasks.")
    parser.add_argument("--label_column", type=str, default=None, help="Column of the label.")
    parser.add_argument(
        "--ignore_mismatched_sizes",
        action="store_true",
        help="Load a checkpoint whose classifier head has another number of labels (the head is re-initialized).",
    )
    ft.add_common_arguments(parser)
    args = ft.parse_args_tracking_explicit(parser, argv)

    ft.validate_common_args(args)
    if args.validation_mismatched_file is not None and not os.path.isfile(args.validation_mismatched_file):
        raise MometasInputError(f"--validation_mismatched_file: no such file: {args.validation_mismatched_file}")
    task = fd.get_glue_task(args.task_name)  # raises for an unknown --task_name
    args.task_name = task.name if task is not None else None
    has_files = any((args.train_file, args.validation_file, args.test_file))
    if task is None and not has_files and args.dataset_name is None:
        raise MometasInputError("need --task_name, --dataset_name or local --train_file/--validation_file")
    if task is None and args.train_file is None:
        raise MometasInputError("without --task_name, --train_file is needed (the labels come from the training data)")
    if task is not None and task.name == "paws_qqp":
        if args.train_file is not None:
            raise MometasInputError(
                "--task_name paws_qqp is zero-shot: pass a QQP-trained --model_name_or_path with --validation_file "
                "only (to train, use --task_name qqp)"
            )
        if args.validation_file is None and args.test_file is None:
            raise MometasInputError("--task_name paws_qqp needs --validation_file (PAWS-QQP is not on the Hub)")
    if args.hparams == "paper" and task is None:
        raise MometasInputError("--hparams paper needs --task_name (the settings are per task)")
    return args


def load_splits(args, task):
    """Records per split: {split: (records, path)}; splits are train, validation(_mismatched), test."""
    keys = fd.ColumnKeys(args.sentence1_key, args.sentence2_key, args.label_column)
    files = {
        "train": args.train_file,
        "validation": args.validation_file,
        "validation_mismatched": args.validation_mismatched_file,
        "test": args.test_file,
    }
    if any(files.values()):
        return {
            split: (fd.read_glue_file(path, task, "test" if split == "test" else split, keys), path)
            for split, path in files.items()
            if path is not None
        }
    # A Hub dataset (needs a network): --dataset_name, or the task's default (nyu-mll/glue).
    name, config = (args.dataset_name, args.dataset_config_name) if args.dataset_name else task.hub
    raw = datasets.load_dataset(name, config)
    hub_splits = {"train": "train", "validation": "validation", "test": "test"}
    if task is not None and task.name == "mnli":
        hub_splits = {
            "train": "train",
            "validation": "validation_matched",
            "validation_mismatched": "validation_mismatched",
            "test": "test_matched",
        }
    splits = {}
    for split, hub_split in hub_splits.items():
        if hub_split in raw:
            where = f"{name}[{hub_split}]"
            table = fd.hub_split_to_table(raw[hub_split])
            splits[split] = (fd.read_glue_file(where, task, split, keys, hub_table=table), where)
    return splits


def compute_metrics(task, preds, labels):
    metric = task.metric if task is not None else None
    if metric == "correlation" or (task is None and preds.ndim == 1 and preds.dtype.kind == "f"):
        return ft.regression_metrics(preds, labels)
    return ft.classification_metrics(preds, labels, f1=metric == "accuracy_f1", matthews=metric == "matthews")


def main(argv=None):
    args = parse_args(argv)
    hub_token = ft.pop_hub_token(args)  # from here on, args holds no secret
    task = fd.get_glue_task(args.task_name)

    # Initialize the accelerator. It handles device placement, mixed precision
    # (`accelerate launch --mixed_precision fp16`) and gradient accumulation. The seedable
    # sampler makes the data order a function of (seed, epoch), so a resumed run sees the
    # same batches as an uninterrupted one.
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
    if task is not None:
        applied = ft.apply_paper_hparams(args, task.name, accelerator.num_processes)
        if applied:
            logger.info(f"--hparams paper for {task.name}: {applied} (explicit flags kept: {args.user_set_flags})")
    set_seed(args.seed)
    if accelerator.is_main_process and args.output_dir is not None:
        os.makedirs(args.output_dir, exist_ok=True)
    accelerator.wait_for_everyone()

    # ---- Data ----------------------------------------------------------------------------
    splits = load_splits(args, task)
    limits = {"train": args.max_train_samples, "test": args.max_predict_samples}
    splits = {  # --max_*_samples keep the first N examples, as in the transformers examples
        split: (records[: limits.get(split, args.max_eval_samples)], path) for split, (records, path) in splits.items()
    }
    do_train = "train" in splits
    label_list = fd.glue_label_list(task, splits["train"][0] if do_train else None)
    is_regression = label_list is None
    labels_by_split = {
        split: fd.encode_glue_labels(records, task, label_list, path) for split, (records, path) in splits.items()
    }
    eval_splits = [s for s in ("validation", "validation_mismatched") if s in splits]
    if not do_train and not eval_splits and "test" not in splits:
        raise MometasInputError("nothing to do: give --train_file, --validation_file or --test_file")

    # ---- Model and tokenizer -----------------------------------------------------------------
    num_labels = 1 if is_regression else len(label_list)
    config = ft.load_config(
        args.config_name or args.model_name_or_path,
        trust_remote_code=args.trust_remote_code,
        **({"num_labels": num_labels, "finetuning_task": args.task_name} if do_train else {}),
    )
    if do_train:
        names = task.label_names if task is not None and task.label_names else label_list
        if not is_regression:
            config.id2label = {i: str(name) for i, name in enumerate(names)}
            config.label2id = {str(name): i for i, name in enumerate(names)}
        config.problem_type = "regression" if is_regression else "single_label_classification"
    elif config.num_labels != num_labels:
        raise MometasInputError(
            f"--model_name_or_path {args.model_name_or_path} has {config.num_labels} output labels but "
            f"{args.task_name} needs {num_labels}; evaluate a model fine-tuned on a matching task"
        )
    tokenizer = AutoTokenizer.from_pretrained(
        args.tokenizer_name or args.model_name_or_path,
        use_fast=not args.use_slow_tokenizer,
        trust_remote_code=args.trust_remote_code,
    )
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model_name_or_path,
        config=config,
        ignore_mismatched_sizes=args.ignore_mismatched_sizes,
        trust_remote_code=args.trust_remote_code,
    )

    # ---- Tokenize once with datasets.map ---------------------------------------------------------
    padding = "max_length" if args.pad_to_max_length else False
    is_pair = any(r["sentence2"] is not None for records, _ in splits.values() for r in records[:1])

    def preprocess_function(examples):
        texts = (examples["sentence1"],) if not is_pair else (examples["sentence1"], examples["sentence2"])
        result = tokenizer(*texts, padding=padding, max_length=args.max_length, truncation=True)
        if "label" in examples:
            result["labels"] = examples["label"]
        return result

    processed = {}
    for split, (records, _) in splits.items():
        columns = {"sentence1": [r["sentence1"] for r in records]}
        if is_pair:
            columns["sentence2"] = [r["sentence2"] or "" for r in records]
        if all(y is not None for y in labels_by_split[split]):
            columns["label"] = [float(y) if is_regression else int(y) for y in labels_by_split[split]]
        with accelerator.main_process_first():
            processed[split] = datasets.Dataset.from_dict(columns).map(
                preprocess_function,
                batched=True,
                remove_columns=list(columns),
                desc=f"Running tokenizer on {split}",
            )
    if do_train:
        for index in random.sample(range(len(processed["train"])), min(2, len(processed["train"]))):
            logger.info(f"Sample {index} of the training set: {processed['train'][index]}.")

    # DataLoaders creation. Dynamic padding unless --pad_to_max_length; multiples of 8 help
    # tensor cores under fp16/bf16.
    if args.pad_to_max_length:
        data_collator = default_data_collator
    else:
        pad_to = 8 if accelerator.mixed_precision in ("fp16", "bf16") else None
        data_collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to)
    eval_dataloaders = {
        split: DataLoader(processed[split], collate_fn=data_collator, batch_size=args.per_device_eval_batch_size)
        for split in eval_splits + (["test"] if "test" in splits else [])
    }

    def predict(dataloader):
        model.eval()
        outputs = []
        for batch in dataloader:
            with torch.no_grad():
                logits = model(**batch).logits
            outputs.append(accelerator.gather_for_metrics(logits).float().cpu())
        logits = torch.cat(outputs).numpy()
        return logits[:, 0] if is_regression else logits.argmax(axis=-1)

    def evaluate():
        results, predictions = {}, {}
        for split in eval_splits:
            preds = predict(eval_dataloaders[split])
            predictions[split] = preds
            metrics = compute_metrics(task, preds, np.asarray(labels_by_split[split], dtype=float if is_regression else int))
            suffix = "_mm" if split == "validation_mismatched" else ""
            results.update({f"{k}{suffix}": v for k, v in metrics.items()})
        if task is not None and task.name == "mnli" and "accuracy_mm" in results:
            results["accuracy_avg"] = (results["accuracy"] + results["accuracy_mm"]) / 2  # the paper's MNLI figure
        return results, predictions

    completed_steps = 0
    epoch = -1
    results, predictions = {}, {}
    if do_train:
        train_dataloader = DataLoader(
            processed["train"],
            shuffle=True,
            collate_fn=data_collator,
            batch_size=args.per_device_train_batch_size,
            generator=torch.Generator().manual_seed(args.seed),
        )

        # Optimizer: no weight decay on biases and LayerNorm weights.
        optimizer = torch.optim.AdamW(
            ft.optimizer_grouped_parameters(model, args.weight_decay), lr=args.learning_rate
        )

        # Scheduler and math around the number of training steps.
        num_update_steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
        if args.max_train_steps is None:
            args.max_train_steps = args.num_train_epochs * num_update_steps_per_epoch
        else:
            args.num_train_epochs = math.ceil(args.max_train_steps / num_update_steps_per_epoch)
        num_warmup_steps = ft.warmup_steps(args, args.max_train_steps)
        # The prepared scheduler steps once per process, hence the factor.
        lr_scheduler = get_scheduler(
            name=args.lr_scheduler_type,
            optimizer=optimizer,
            num_warmup_steps=num_warmup_steps * accelerator.num_processes,
            num_training_steps=args.max_train_steps * accelerator.num_processes,
        )

        # Prepare everything with our `accelerator`.
        model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
            model, optimizer, train_dataloader, lr_scheduler
        )
        eval_dataloaders = {split: accelerator.prepare(dl) for split, dl in eval_dataloaders.items()}

        # Trackers get the effective settings, without the Hub token.
        if args.with_tracking:
            accelerator.init_trackers("glue_no_trainer", ft.safe_config(args, [hub_token]))

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

        # Potentially load in the weights and states from a previous save.
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
                # Skip the batches the checkpointed run had already seen in this epoch.
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

                # Checks if the accelerator has performed an optimization step behind the scenes
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
    if not results and eval_splits:  # evaluation only, or resumed after the last update
        results, predictions = evaluate()
        logger.info(f"evaluation: {results}")

    # ---- Save, results, predictions ----------------------------------------------------------------
    if args.output_dir is None:
        return results
    accelerator.wait_for_everyone()
    if do_train:
        unwrapped_model = accelerator.unwrap_model(model)
        unwrapped_model.save_pretrained(
            args.output_dir, is_main_process=accelerator.is_main_process, save_function=accelerator.save
        )
    test_predictions = predict(eval_dataloaders["test"]) if "test" in splits else None
    if not accelerator.is_main_process:
        return results

    tokenizer.save_pretrained(args.output_dir)
    ft.save_args(args.output_dir, args, [hub_token])
    all_results = ft.prefixed(results, "eval")
    if eval_splits:
        all_results["eval_samples"] = len(splits["validation"][0]) if "validation" in splits else 0
    if do_train:
        all_results.update({"epoch": epoch, "train_samples": len(splits["train"][0]), "train_steps": completed_steps})
    if test_predictions is not None and all(y is not None for y in labels_by_split["test"]):
        y = np.asarray(labels_by_split["test"], dtype=float if is_regression else int)
        all_results.update(ft.prefixed(compute_metrics(task, test_predictions, y), "test"))
    ft.write_json(os.path.join(args.output_dir, "all_results.json"), all_results)

    def label_text(value):
        return float(value) if is_regression else label_list[int(value)]

    for split, preds in list(predictions.items()) + ([("test", test_predictions)] if test_predictions is not None else []):
        records, _ = splits[split]
        has_gold = all(y is not None for y in labels_by_split[split])
        name = {"validation": "validation", "validation_mismatched": "validation_mismatched", "test": "test"}[split]
        if task is not None and task.name == "mnli" and split == "validation":
            name = "validation_matched"
        ft.write_tsv(
            os.path.join(args.output_dir, f"predictions_{name}.tsv"),
            ["index", "prediction"] + (["label"] if has_gold else []),
            (
                [r["idx"], label_text(p)] + ([label_text(y)] if has_gold else [])
                for r, p, y in zip(records, preds, labels_by_split[split])
            ),
        )
    if do_train:
        data = args.dataset_name or (f"{args.task_name} ({os.path.basename(args.train_file)})" if args.train_file else args.task_name)
        ft.write_model_card(
            args.output_dir,
            base_model=args.model_name_or_path,
            task=args.task_name or "text-classification",
            pipeline_tag="text-classification",
            results=all_results,
            config=ft.safe_config(args, [hub_token]),
            data=str(data),
        )
        if args.push_to_hub:
            ft.push_to_hub(args.output_dir, args.hub_model_id, hub_token)
    return results


if __name__ == "__main__":
    ft.run_main(main)

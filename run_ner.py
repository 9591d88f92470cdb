#!/usr/bin/env python
"""Fine-tune a BERT checkpoint for named-entity recognition (CoNLL-2003, WNUT-17) with 🤗 Accelerate.

The shape of transformers' ``examples/pytorch/token-classification/run_ner_no_trainer.py``:
one flat loop, evaluation after every epoch. Data: CoNLL files (``token ... tag`` per line,
blank lines between sentences; CoNLL-2003's 4 columns or WNUT's 2), JSON lines with
``tokens``/``ner_tags``, or a Hub dataset. The label list comes from the training data.
Word-level labels are put on the first wordpiece of each word (``--label_all_tokens``: on
every wordpiece, B- turned into I- after the first); evaluation is always per word, with
seqeval's entity-level precision, recall and F1 (per type with
``--return_entity_level_metrics``). Words cut off by ``--max_length`` count as predicted ``O``.

Shared plumbing lives in ``mometas_utils/finetuning.py``, the readers in
``mometas_utils/finetune_data.py``.
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
from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import (
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorForTokenClassification,
    get_scheduler,
)

from mometas_utils import finetune_data as fd
from mometas_utils import finetuning as ft
from mometas_utils.errors import MometasInputError

logger = get_logger(__name__)

HUB_TO_PAPER_TASK = {"conll2003": "conll2003", "eriktks/conll2003": "conll2003", "wnut_17": "wnut17", "leondz/wnut_17": "wnut17"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Fine-tune a BERT encoder for named-entity recognition.", allow_abbrev=False
    )
    parser.add_argument("--text_column_name", type=str, default="tokens", help="JSON/Hub column with the words.")
    parser.add_argument("--label_column_name", type=str, default="ner_tags", help="JSON/Hub column with the tags.")
    parser.add_argument(
        "--label_all_tokens",
        action="store_true",
        help="Train on every wordpiece of a word (B- becomes I- after the first) instead of the first only.",
    )
    parser.add_argument(
        "--return_entity_level_metrics",
        action="store_true",
        help="Also report precision/recall/F1 per entity type.",
    )
    parser.add_argument(
        "--paper_task",
        type=str,
        default=None,
        choices=["conll2003", "wnut17"],
        help="Which Table 7 column --hparams paper uses; guessed from the entity types if not given.",
    )
    parser.add_argument("--ignore_mismatched_sizes", action="store_true", help="Re-initialize a mismatched head.")
    ft.add_common_arguments(parser)
    args = ft.parse_args_tracking_explicit(parser, argv)
    ft.validate_common_args(args)
    if args.dataset_name is None and args.train_file is None and args.validation_file is None and args.test_file is None:
        raise MometasInputError("need --dataset_name or local --train_file/--validation_file")
    return args


def read_split(path, split, args):
    if path.lower().endswith((".json", ".jsonl")):
        return fd.read_ner_json(path, split, args.text_column_name, args.label_column_name)
    return fd.read_conll(path, split)


def load_splits(args):
    """Sentences per split: {split: (sentences, path)}; a sentence is {tokens, tags, line}."""
    files = {"train": args.train_file, "validation": args.validation_file, "test": args.test_file}
    if any(files.values()):
        return {split: (read_split(path, split, args), path) for split, path in files.items() if path}
    raw = datasets.load_dataset(args.dataset_name, args.dataset_config_name)
    splits = {}
    for split in ("train", "validation", "test"):
        if split in raw:
            feature = raw[split].features.get(args.label_column_name)
            names = getattr(getattr(feature, "feature", None), "names", None)
            where = f"{args.dataset_name}[{split}]"
            records = list(enumerate(raw[split].to_list(), start=1))
            splits[split] = (
                fd.ner_records(records, where, split, args.text_column_name, args.label_column_name, names),
                where,
            )
    return splits


def compute_metrics(true_tags, pred_tags, entity_level):
    results = {
        "precision": precision_score(true_tags, pred_tags, zero_division=0),
        "recall": recall_score(true_tags, pred_tags, zero_division=0),
        "f1": f1_score(true_tags, pred_tags, zero_division=0),
        "accuracy": accuracy_score(true_tags, pred_tags),
    }
    if entity_level:
        report = classification_report(true_tags, pred_tags, output_dict=True, zero_division=0)
        for entity_type, scores in report.items():
            if entity_type.endswith(" avg"):
                continue
            results[f"{entity_type}_precision"] = scores["precision"]
            results[f"{entity_type}_recall"] = scores["recall"]
            results[f"{entity_type}_f1"] = scores["f1-score"]
            results[f"{entity_type}_number"] = int(scores["support"])
    return {k: float(v) if not isinstance(v, int) else v for k, v in results.items()}


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

    # ---- Data ----------------------------------------------------------------------------------
    splits = load_splits(args)
    limits = {"train": args.max_train_samples, "validation": args.max_eval_samples, "test": args.max_predict_samples}
    splits = {split: (sentences[: limits[split]], path) for split, (sentences, path) in splits.items()}
    do_train = "train" in splits

    config = ft.load_config(args.config_name or args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    if do_train:
        label_list = fd.ner_label_list(splits["train"][0])  # the label list comes from the training data
    else:
        label_list = [config.id2label[i] for i in range(config.num_labels)]
        if not all(fd.TAG_RE.match(str(tag)) for tag in label_list):
            raise MometasInputError(
                f"--model_name_or_path {args.model_name_or_path} has no NER labels in its config "
                f"({label_list}); give --train_file to fine-tune it first"
            )
    for split, (sentences, path) in splits.items():
        fd.check_ner_labels(sentences, label_list, path)
    label_to_id = {tag: i for i, tag in enumerate(label_list)}
    # B-X -> I-X for the later wordpieces of a word under --label_all_tokens.
    b_to_i_label = [
        label_to_id.get("I-" + tag[2:], i) if tag.startswith("B-") else i for i, tag in enumerate(label_list)
    ]

    if args.hparams == "paper":
        paper_task = args.paper_task or HUB_TO_PAPER_TASK.get(args.dataset_name or "") or fd.guess_ner_paper_task(label_list)
        if paper_task is None:
            raise MometasInputError(
                f"--hparams paper: cannot tell CoNLL-2003 from WNUT-17 by the tags {label_list}; set --paper_task"
            )
        applied = ft.apply_paper_hparams(args, paper_task, accelerator.num_processes)
        logger.info(f"--hparams paper for {paper_task}: {applied} (explicit flags kept: {args.user_set_flags})")

    # ---- Model and tokenizer ---------------------------------------------------------------------------
    if do_train:
        config = ft.load_config(
            args.config_name or args.model_name_or_path,
            num_labels=len(label_list),
            id2label=dict(enumerate(label_list)),
            label2id=label_to_id,
            finetuning_task="ner",
            trust_remote_code=args.trust_remote_code,
        )
    tokenizer = AutoTokenizer.from_pretrained(
        args.tokenizer_name or args.model_name_or_path,
        use_fast=True,  # word_ids() needs a fast tokenizer
        trust_remote_code=args.trust_remote_code,
    )
    if args.use_slow_tokenizer:
        logger.warning("--use_slow_tokenizer ignored: aligning labels to wordpieces needs a fast tokenizer")
    model = AutoModelForTokenClassification.from_pretrained(
        args.model_name_or_path,
        config=config,
        ignore_mismatched_sizes=args.ignore_mismatched_sizes,
        trust_remote_code=args.trust_remote_code,
    )

    # ---- Tokenize once with datasets.map, aligning word labels to wordpieces -------------------------------
    padding = "max_length" if args.pad_to_max_length else False

    def tokenize_and_align_labels(examples, label_all_tokens):
        tokenized = tokenizer(
            examples["tokens"], max_length=args.max_length, padding=padding, truncation=True, is_split_into_words=True
        )
        labels, first_pieces = [], []
        for i, tag_ids in enumerate(examples["tag_ids"]):
            word_ids = tokenized.word_ids(batch_index=i)
            previous, label_ids, words = None, [], []
            for word_id in word_ids:
                if word_id is None:  # [CLS], [SEP], padding
                    label_ids.append(-100)
                elif word_id != previous:  # the first wordpiece of a word
                    label_ids.append(tag_ids[word_id])
                    words.append(word_id)
                else:
                    label_ids.append(b_to_i_label[tag_ids[word_id]] if label_all_tokens else -100)
                previous = word_id
            labels.append(label_ids)
            first_pieces.append(words)
        tokenized["labels"] = labels
        tokenized["word_index"] = first_pieces  # which word each labelled position belongs to (evaluation)
        return tokenized

    processed = {}
    for split, (sentences, _) in splits.items():
        columns = {
            "tokens": [s["tokens"] for s in sentences],
            # Unlabeled test sentences get placeholder ids: they only mark the word positions.
            "tag_ids": [[label_to_id[t] for t in s["tags"]] if s["tags"] else [0] * len(s["tokens"]) for s in sentences],
        }
        with accelerator.main_process_first():
            processed[split] = datasets.Dataset.from_dict(columns).map(
                tokenize_and_align_labels,
                batched=True,
                remove_columns=list(columns),
                fn_kwargs={"label_all_tokens": args.label_all_tokens and split == "train"},
                desc=f"Running tokenizer on {split}",
            )
    word_index = {split: ds["word_index"] for split, ds in processed.items()}
    processed = {split: ds.remove_columns("word_index") for split, ds in processed.items()}

    pad_to = 8 if accelerator.mixed_precision in ("fp16", "bf16") else None
    data_collator = DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=pad_to)
    eval_dataloaders = {
        split: DataLoader(processed[split], collate_fn=data_collator, batch_size=args.per_device_eval_batch_size)
        for split in ("validation", "test")
        if split in processed
    }

    def predict(split):
        """Word-level predicted tags for every sentence of ``split`` (``O`` for words cut off)."""
        model.eval()
        rows = []
        for batch in eval_dataloaders[split]:
            with torch.no_grad():
                logits = model(**batch).logits
            preds = accelerator.pad_across_processes(logits.argmax(dim=-1), dim=1, pad_index=-100)
            labels = accelerator.pad_across_processes(batch["labels"], dim=1, pad_index=-100)
            preds, labels = accelerator.gather_for_metrics((preds, labels))
            for p, lab in zip(preds.cpu().numpy(), labels.cpu().numpy()):
                rows.append(p[lab != -100])
        out = []
        for sentence, p, words in zip(splits[split][0], rows, word_index[split]):
            tags = ["O"] * len(sentence["tokens"])
            for word, label_id in zip(words, p):
                tags[word] = label_list[int(label_id)]
            out.append(tags)
        return out

    def evaluate():
        if "validation" not in splits:
            return {}, None
        predictions = predict("validation")
        gold = [s["tags"] for s in splits["validation"][0]]
        return compute_metrics(gold, predictions, args.return_entity_level_metrics), predictions

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
            accelerator.init_trackers("ner_no_trainer", ft.safe_config(args, [hub_token]))

        total_batch_size = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
        logger.info("***** Running training *****")
        logger.info(f"  Num examples = {len(processed['train'])}, labels = {label_list}")
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

    # ---- Save, results, predictions ----------------------------------------------------------------------
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
    test_sentences = splits["test"][0] if "test" in splits else []
    if test_predictions is not None and all(s["tags"] for s in test_sentences):
        gold = [s["tags"] for s in test_sentences]
        all_results.update(ft.prefixed(compute_metrics(gold, test_predictions, args.return_entity_level_metrics), "test"))
    ft.write_json(os.path.join(args.output_dir, "all_results.json"), all_results)

    # CoNLL-style predictions, one word per line: token [gold] predicted (conlleval reads `token gold predicted`).
    for split, preds in (("validation", predictions), ("test", test_predictions)):
        if preds is None:
            continue
        with open(os.path.join(args.output_dir, f"predictions_{split}.conll"), "w", encoding="utf-8") as f:
            for sentence, tags in zip(splits[split][0], preds):
                gold = sentence["tags"] or [None] * len(tags)
                for token, g, p in zip(sentence["tokens"], gold, tags):
                    f.write(f"{token} {g} {p}\n" if g is not None else f"{token} {p}\n")
                f.write("\n")
    if do_train:
        data = args.dataset_name or os.path.basename(args.train_file)
        ft.write_model_card(
            args.output_dir,
            base_model=args.model_name_or_path,
            task="ner",
            pipeline_tag="token-classification",
            results=all_results,
            config=ft.safe_config(args, [hub_token]),
            data=str(data),
        )
        if args.push_to_hub:
            ft.push_to_hub(args.output_dir, args.hub_model_id, hub_token)
    return results


if __name__ == "__main__":
    ft.run_main(main)

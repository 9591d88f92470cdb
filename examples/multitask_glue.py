#!/usr/bin/env python
"""Multi-task fine-tuning on GLUE with an objective sampler: the tasks are the objectives.

One encoder, one head per task (a classifier; a regressor for STS-B). Every step the sampler
draws one task and the model takes one optimiser step on a batch of that task. Every K steps
(``--meta_length``) a meta-test measures each task's validation loss on examples held out of
that task's TRAIN split, and ``sampler.update(val_losses)`` takes its step: for MOMETAS the
reward is the summed relative drop of those losses (Eq. 3 of Wu et al., 2022) and the task
distribution takes one REINFORCE step (Eqs. 2 and 4). The dev sets are touched only once, at
the end, and are the reported scores.

    python examples/multitask_glue.py --model_name_or_path $MODEL --tasks sst2,mrpc,rte,cola,stsb \\
        --sampler mometas --meta_length 20 --max_train_steps 500 --output_dir out/multitask

Samplers (``mometas_utils.build_sampler``): ``uniform``; ``proportional``, the usual multi-task
baseline p_i ∝ n_i^(1/T) (the ``fixed`` sampler with those weights; ``--temperature`` T,
``--task_sizes`` n_i); ``mometas``; the rule-based ``gradient`` and ``loss``; ``fixed`` with
``--task_weights``.

The shape is that of transformers' ``run_glue_no_trainer.py``: argparse, then one explicit loop.
Data: ``--data_dir`` holds ``<task>/train.tsv`` and ``<task>/dev.tsv`` in the original GLUE
layouts (the shared slices, or GLUE itself). Dev metrics are computed as ``run_glue.py`` does
(scikit-learn, scipy). Outputs in ``--output_dir``: the encoder (``AutoModel.from_pretrained``),
the tokenizer, ``heads.safetensors`` + ``heads.json``, ``sampler_history.jsonl`` (the row format
of ``run_mometas_pretraining.py``: ``plot_sampler_history.py`` draws it), ``all_results.json``,
``multitask_args.json`` and ``plots/``. Reference: docs/multitask.md.
"""

import argparse
import csv
import json
import logging
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from safetensors.torch import save_file
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel, AutoTokenizer, DataCollatorWithPadding, get_scheduler

REPO_ROOT = Path(__file__).resolve().parents[1]
if (REPO_ROOT / "mometas_utils").is_dir() and str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # run from a checkout: its own library, not another installed copy

from mometas_utils.errors import MometasInputError  # noqa: E402
from mometas_utils.history import HistoryWriter, read_history, summarize_distribution  # noqa: E402
from mometas_utils.meta_test import unscaled_encoder_grad_norm  # noqa: E402
from mometas_utils.paper import SAMPLER_DEFAULTS  # noqa: E402
from mometas_utils.rewards import PAPER_REWARD  # noqa: E402
from mometas_utils.samplers import build_sampler  # noqa: E402
from mometas_utils.tracker import StepTracker  # noqa: E402

logger = get_logger(__name__)


@dataclass(frozen=True)
class GlueTask:
    sentence1: tuple  # accepted header names (case-insensitive), as in run_glue.py
    sentence2: tuple | None
    label: tuple
    label_values: tuple | None  # as written in the files, in class-id order; None: regression
    metric: str  # accuracy | accuracy_f1 | matthews | correlation (run_glue.py's names)
    primary: str  # the one number per task that the average uses
    headerless: tuple | None = None  # (sentence1, sentence2, label) positions in a file without a header


# The columns and label orders of run_glue.py's TASKS. Primary metrics: those of docs/study.md's
# table (the paper's Table 2): accuracy, MRPC accuracy, CoLA Matthews, STS-B Spearman.
TASKS = {
    "sst2": GlueTask(("sentence", "content", "text"), None, ("label",), ("0", "1"), "accuracy", "accuracy"),
    "mrpc": GlueTask(("#1 String", "sentence1"), ("#2 String", "sentence2"), ("Quality", "label"), ("0", "1"),
                     "accuracy_f1", "accuracy"),
    "rte": GlueTask(("sentence1",), ("sentence2",), ("label",), ("entailment", "not_entailment"), "accuracy",
                    "accuracy"),
    "cola": GlueTask(("sentence",), None, ("label",), ("0", "1"), "matthews", "matthews_correlation",
                     headerless=(3, None, 1)),
    "stsb": GlueTask(("sentence1",), ("sentence2",), ("score", "label"), None, "correlation", "spearmanr"),
}  # fmt: skip

# Training-set sizes of full GLUE, for --task_sizes glue: the proportional baseline's weights on the
# real benchmark (the shared slices hold 2000 training rows per task, so their own sizes are equal).
GLUE_TRAIN_SIZES = {"cola": 8551, "sst2": 67349, "mrpc": 3668, "stsb": 5749, "rte": 2490}

SAMPLER_CHOICES = ["uniform", "proportional", "mometas", "gradient", "loss", "fixed"]
REWARD_FIELDS = ("reward_terms", "reward_floored", "advantage", "reward_baseline", "reward_scale", "entropy_lambda")
# What a run writes in --output_dir; --overwrite_output_dir deletes these and nothing else.
RUN_FILES = ("config.json", "model.safetensors", "heads.safetensors", "heads.json", "sampler_history.jsonl",
             "all_results.json", "multitask_args.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
             "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "plots")


class InputError(Exception):
    """Bad flags, data or folders: one line ``error: ...`` and exit code 2, before any training."""


class RunFailed(Exception):
    """The run started but cannot finish correctly (a non-finite loss): exit code 1, nothing saved."""


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------
class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def _float_or_none(text):
    return None if text.strip().lower() == "none" else float(text)


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                            allow_abbrev=False)
    data = parser.add_argument_group("model and data")
    data.add_argument("--model_name_or_path", type=str, required=True, help="The encoder: a local folder or a Hub id.")
    data.add_argument("--tasks", type=str, default="sst2,mrpc,rte,cola,stsb",
                      help=f"Comma-separated tasks, from {', '.join(TASKS)}.")
    data.add_argument("--data_dir", type=str, default=None,
                      help="Folder with <task>/train.tsv and <task>/dev.tsv (default: $MOMETAS_DATA_DIR/glue, "
                      "else ../shared/data/glue next to the repository).")
    data.add_argument("--max_seq_length", type=int, default=128, help="Tokens per (pair of) sentence(s), truncated.")
    data.add_argument("--max_train_samples", type=int, default=None,
                      help="Use the first N training rows of each task (before the meta-test rows are held out).")
    data.add_argument("--max_eval_samples", type=int, default=None, help="Score the first N dev rows of each task.")
    data.add_argument("--meta_test_examples", type=int, default=32,
                      help="Rows held out of each task's TRAIN split (a seeded draw) on which every meta-test "
                      "measures that task's validation loss; the same rows at every meta-test.")

    sam = parser.add_argument_group("task sampler (mometas_utils.build_sampler)")
    sam.add_argument("--sampler", type=str, default="mometas", choices=SAMPLER_CHOICES,
                     help="How the task of each step is drawn.")
    sam.add_argument("--temperature", type=float, default=2.0, help="T of --sampler proportional: p_i ∝ n_i^(1/T).")
    sam.add_argument("--task_sizes", type=str, default="train",
                     help="n_i of --sampler proportional: 'train' (the training rows each task uses here), 'glue' "
                     "(the full GLUE training sets) or 'sst2=67349,mrpc=3668,...'.")
    sam.add_argument("--task_weights", type=str, default=None, help="For --sampler fixed: 'sst2=2,mrpc=1,...'.")
    sam.add_argument("--meta_length", type=int, default=SAMPLER_DEFAULTS["meta_length"],
                     help="K: training steps between two meta-tests (sampler updates).")
    sam.add_argument("--meta_step_size", type=float, default=SAMPLER_DEFAULTS["meta_step_size"],
                     help="β: step size of MOMETAS's REINFORCE update.")
    sam.add_argument("--entropy_lambda", type=float, default=SAMPLER_DEFAULTS["entropy_lambda"],
                     help="λ: weight of the entropy bonus (Eq. 4).")
    sam.add_argument("--entropy_lambda_schedule", type=str, default="constant", choices=["constant", "learning_rate"],
                     help="constant: λ at every update (the paper). learning_rate: λ × the learning rate over its "
                     "peak so far (not in the paper).")
    sam.add_argument("--reward", type=str, default="relative", choices=["relative", "overall", "hard"],
                     help="R(τ): relative loss drops (Eq. 3), drop of the summed loss, or ±1 per task.")
    sam.add_argument("--reward_floor", type=_float_or_none, default=-1.0,
                     help="Lower bound of each task's relative reward term (authors' code); 'none': literal Eq. 3.")
    sam.add_argument("--reward_dead_zone", type=float, default=1e-3,
                     help="A validation-loss change |b_i - a_i| at most this counts as 0.")
    sam.add_argument("--reward_baseline", type=str, default="ema", choices=["none", "ema"],
                     help="REINFORCE baseline: R - b, b a moving average of earlier rewards (paper: none).")
    sam.add_argument("--reward_baseline_decay", type=float, default=0.9, help="Decay of the reward moving averages.")
    sam.add_argument("--reward_normalize", dest="reward_normalize", action="store_true", default=True,
                     help="Divide the centred reward by its running standard deviation.")
    sam.add_argument("--no_reward_normalize", dest="reward_normalize", action="store_false", default=argparse.SUPPRESS,
                     help="Turn --reward_normalize off.")
    sam.add_argument("--reward_tasks", type=str, default=None,
                     help="Comma-separated tasks whose validation losses make the reward (default: all).")
    sam.add_argument("--min_probability", type=float, default=0.0,
                     help="Draw from (1 - m*eps) softmax(psi) + eps so no task is starved (paper: 0).")
    sam.add_argument("--paper_reward", action="store_true",
                     help="Eqs. 2-4 literally: --reward_floor none --reward_dead_zone 0 --reward_baseline none "
                     "--no_reward_normalize --min_probability 0. Explicit flags win.")
    sam.add_argument("--baseline_meta_test", action="store_true",
                     help="Meta-test every K steps for samplers that do not need it too, to record their "
                     "validation losses and reward (it does not change their training).")

    tr = parser.add_argument_group("training")
    tr.add_argument("--per_device_train_batch_size", type=int, default=16, help="Examples per training step.")
    tr.add_argument("--per_device_eval_batch_size", type=int, default=64, help="Examples per meta-test/dev batch.")
    tr.add_argument("--learning_rate", type=float, default=5e-5, help="AdamW peak learning rate.")
    tr.add_argument("--weight_decay", type=float, default=0.01, help="AdamW weight decay (not on biases, LayerNorm).")
    tr.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping; 0 turns it off.")
    tr.add_argument("--max_train_steps", type=int, default=1000, help="Training steps, over all tasks together.")
    tr.add_argument("--lr_scheduler_type", type=str, default="linear",
                    choices=["linear", "cosine", "constant", "constant_with_warmup"], help="Learning-rate schedule.")
    tr.add_argument("--warmup_ratio", type=float, default=0.06, help="Share of the steps spent warming up.")
    tr.add_argument("--num_warmup_steps", type=int, default=None, help="Warmup steps; overrides --warmup_ratio.")
    tr.add_argument("--seed", type=int, default=42,
                    help="Seed of the held-out rows, each task's batch order, the dropout and the sampler.")

    out = parser.add_argument_group("output")
    out.add_argument("--output_dir", type=str, required=True, help="Folder of the run.")
    out.add_argument("--overwrite_output_dir", action="store_true",
                     help="Replace another run's outputs in --output_dir (only the files this script writes).")
    out.add_argument("--logging_steps", type=int, default=10, help="Steps between progress-bar updates.")

    args = parser.parse_args(argv)
    if args.paper_reward:
        for key, value in PAPER_REWARD.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    return args


INT_MINIMA = dict(per_device_train_batch_size=1, per_device_eval_batch_size=1, max_train_steps=1, meta_length=1,
                  logging_steps=1, max_seq_length=8, meta_test_examples=1, max_train_samples=2, max_eval_samples=1,
                  num_warmup_steps=0, seed=0)
FLOAT_RANGES = {
    "learning_rate": ("> 0", lambda v: v > 0),
    "weight_decay": (">= 0", lambda v: v >= 0),
    "max_grad_norm": (">= 0 (0: no clipping)", lambda v: v >= 0),
    "warmup_ratio": ("in [0, 1]", lambda v: 0 <= v <= 1),
    "temperature": ("> 0", lambda v: v > 0),
}


def parse_task_values(text, tasks, flag, *, allow_zero):
    """'sst2=2,mrpc=1' -> {task: float} naming exactly ``tasks``."""
    values = {}
    for item in [s.strip() for s in text.split(",") if s.strip()]:
        name, sep, number = item.partition("=")
        name = name.strip()
        if not sep or name not in tasks:
            raise InputError(f"--{flag} {text!r}: expected task=number for each of {','.join(tasks)}, got {item!r}")
        try:
            value = float(number)
        except ValueError:
            raise InputError(f"--{flag}: {name}={number!r} is not a number") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise InputError(f"--{flag}: {name}={number} must be a finite number {'>= 0' if allow_zero else '> 0'}")
        values[name] = value
    missing = [t for t in tasks if t not in values]
    if missing:
        raise InputError(f"--{flag}: no value for {','.join(missing)}; expected task=number for each of {','.join(tasks)}")
    return values


def validate_args(args):
    """Every check that needs no model, before anything is loaded or written."""
    for name, low in INT_MINIMA.items():
        value = getattr(args, name)
        if value is not None and value < low:
            raise InputError(f"--{name}: expected an integer >= {low}, got {value}")
    for name, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"--{name}: expected a finite number, got {value}")
    for name, (text, ok) in FLOAT_RANGES.items():
        if not ok(getattr(args, name)):
            raise InputError(f"--{name}: expected a number {text}, got {getattr(args, name)}")
    args.task_list = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in args.task_list if t not in TASKS]
    if not args.task_list or unknown:
        raise InputError(f"--tasks {args.tasks!r}: expected a comma-separated list from {','.join(TASKS)}"
                         + (f"; unknown {','.join(unknown)}" if unknown else ""))
    duplicates = sorted({t for t in args.task_list if args.task_list.count(t) > 1})
    if duplicates:
        raise InputError(f"--tasks: each task once, got {','.join(duplicates)} more than once")
    if args.data_dir is None:
        base = os.environ.get("MOMETAS_DATA_DIR") or str(REPO_ROOT.parent / "shared" / "data")
        args.data_dir = os.path.join(base, "glue")
    for task in args.task_list:
        for split in ("train", "dev"):
            path = os.path.join(args.data_dir, task, f"{split}.tsv")
            if not os.path.isfile(path):
                raise InputError(f"--data_dir {args.data_dir}: no {task}/{split}.tsv there; expected a folder with "
                                 "<task>/train.tsv and <task>/dev.tsv (set --data_dir or MOMETAS_DATA_DIR)")
    if args.task_weights is not None and args.sampler != "fixed":
        raise InputError(f"--task_weights is for --sampler fixed, not {args.sampler}")
    if args.sampler == "fixed" and args.task_weights is None:
        raise InputError("--sampler fixed needs --task_weights task=weight,...")
    if args.sampler == "fixed":
        args.task_weight_values = parse_task_values(args.task_weights, args.task_list, "task_weights", allow_zero=True)
        if not any(args.task_weight_values.values()):
            raise InputError("--task_weights: at least one weight must be positive")
    if args.task_sizes != "train" and args.sampler != "proportional":
        raise InputError(f"--task_sizes is for --sampler proportional, not {args.sampler}")
    if args.task_sizes not in ("train", "glue"):
        parse_task_values(args.task_sizes, args.task_list, "task_sizes", allow_zero=False)
    if args.max_train_samples is not None and args.meta_test_examples >= args.max_train_samples:
        raise InputError(f"--meta_test_examples {args.meta_test_examples}: must be below --max_train_samples "
                         f"{args.max_train_samples} (the rest is trained on)")
    check_output_dir(args)


def check_output_dir(args):
    """The folder must be writable and hold no other run, unless --overwrite_output_dir."""
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--output_dir {out}: is a file; expected a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_test_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise InputError(f"--output_dir {out}: cannot write there ({err.strerror or err})") from None
    held = sorted(p.name for p in out.iterdir() if not p.name.startswith(".write_test_"))
    if held and not args.overwrite_output_dir:
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise InputError(f"--output_dir {out} already holds files ({shown}); pass --overwrite_output_dir to replace a "
                         "previous run's outputs, or choose another folder")
    if args.overwrite_output_dir and os.path.exists(args.model_name_or_path):
        model, folder = os.path.realpath(args.model_name_or_path), os.path.realpath(out)
        if model == folder or model.startswith(folder + os.sep):
            raise InputError(f"--overwrite_output_dir would delete --model_name_or_path {args.model_name_or_path}, "
                             f"which is in --output_dir {out}; choose another --output_dir")


def clear_run_files(output_dir):
    import shutil

    for name in RUN_FILES:
        path = Path(output_dir) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


# Library errors start with the Python argument; say the flag instead.
ARGUMENT_FLAGS = {"objectives": "tasks", "weights": "task_weights", "reward_objectives": "reward_tasks",
                  "objective": "tasks"}


def flag_message(error, args):
    message = " ".join(str(error).split())
    head, sep, rest = message.partition(":")
    name = ARGUMENT_FLAGS.get(head, head)
    if sep and " " not in head and hasattr(args, name):
        return f"--{name}:{rest}"
    return message


# ---------------------------------------------------------------------------------------------
# Data: the GLUE TSVs, read as run_glue.py reads them (tab-separated, csv.QUOTE_NONE, UTF-8)
# ---------------------------------------------------------------------------------------------
def _find(header, names):
    lowered = [h.strip().lower() for h in header]
    for name in names:
        if name.lower() in lowered:
            return lowered.index(name.lower())
    return None


def read_task_file(path, task_name):
    """[(sentence1, sentence2 or None, label)] of one GLUE file; label a class id or a float (STS-B)."""
    task = TASKS[task_name]
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            lines = [row for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    except UnicodeDecodeError:
        raise InputError(f"--data_dir: {path}: not UTF-8 text") from None
    numbered = [(n, row) for n, row in enumerate(lines, start=1) if any(cell.strip() for cell in row)]
    if not numbered:
        raise InputError(f"--data_dir: {path}: the file is empty")
    header = numbered[0][1]
    names = {n.lower() for n in task.sentence1 + (task.sentence2 or ()) + task.label}
    if any(cell.strip().lower() in names for cell in header):
        positions = (_find(header, task.sentence1), _find(header, task.sentence2) if task.sentence2 else None,
                     _find(header, task.label))
        if positions[0] is None or positions[2] is None or (task.sentence2 and positions[1] is None):
            wanted = [names[0] for names in (task.sentence1, task.sentence2, task.label) if names]
            raise InputError(f"--data_dir: {path}: the header lacks a {task_name} column; expected "
                             f"{', '.join(wanted)}, got {', '.join(header)}")
        body = numbered[1:]
    elif task.headerless is not None:
        positions, body = task.headerless, numbered
    else:
        raise InputError(f"--data_dir: {path}: no header row with the {task_name} columns "
                         f"({', '.join(task.sentence1 + task.label)})")
    lookup = {v.lower(): i for i, v in enumerate(task.label_values)} if task.label_values else None
    rows = []
    for number, row in body:
        if max(p for p in positions if p is not None) >= len(row):
            raise InputError(f"--data_dir: {path}: line {number}: {len(row)} fields, too few for {task_name}")
        raw = row[positions[2]].strip()
        if lookup is None:
            try:
                label = float(raw)
            except ValueError:
                raise InputError(f"--data_dir: {path}: line {number}: score {raw!r} is not a number") from None
        else:
            key = raw.lower()
            if re.fullmatch(r"\d+(\.0*)?", key):  # "1", "1.0"
                key = str(int(float(key)))
            label = lookup.get(key)
            if label is None:
                raise InputError(f"--data_dir: {path}: line {number}: unknown label {raw!r}; expected one of "
                                 f"{', '.join(task.label_values)}")
        rows.append((row[positions[0]], row[positions[1]] if positions[1] is not None else None, label))
    if not rows:
        raise InputError(f"--data_dir: {path}: a header but no rows")
    return rows


def tokenize(rows, tokenizer, max_length):
    first = [r[0] for r in rows]
    second = [r[1] for r in rows] if rows[0][1] is not None else None
    encoded = tokenizer(first, second, truncation=True, max_length=max_length)
    return [{**{k: encoded[k][i] for k in encoded.keys()}, "labels": rows[i][2]} for i in range(len(rows))]


def forever(dataloader):
    """A task's training batches, epoch after epoch (each epoch reshuffled by the loader's own generator)."""
    while True:
        yield from dataloader


# ---------------------------------------------------------------------------------------------
# Model: one shared encoder, one head per task
# ---------------------------------------------------------------------------------------------
class MultiTaskModel(nn.Module):
    """``encoder`` (any AutoModel) and ``heads[task]``: dropout, then a linear layer on the pooled output
    (BERT's pooler, else the first token), as in BertForSequenceClassification. A head with one output is
    a regressor (MSE loss), the others classifiers (cross-entropy)."""

    def __init__(self, encoder, num_labels):
        super().__init__()
        self.encoder = encoder
        config = encoder.config
        dropout = getattr(config, "classifier_dropout", None)
        dropout = dropout if dropout is not None else getattr(config, "hidden_dropout_prob", 0.1)
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({task: nn.Linear(config.hidden_size, n) for task, n in num_labels.items()})
        for head in self.heads.values():
            nn.init.normal_(head.weight, std=getattr(config, "initializer_range", 0.02))
            nn.init.zeros_(head.bias)

    def forward(self, task, labels=None, **inputs):
        outputs = self.encoder(**inputs)
        pooled = getattr(outputs, "pooler_output", None)
        if pooled is None:
            pooled = outputs.last_hidden_state[:, 0]
        logits = self.heads[task](self.dropout(pooled))
        loss = None
        if labels is not None:
            if logits.shape[-1] == 1:
                loss = nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
            else:
                loss = nn.functional.cross_entropy(logits, labels.long())
        return loss, logits


# ---------------------------------------------------------------------------------------------
# Metrics, exactly those of run_glue.py's compute_metrics
# ---------------------------------------------------------------------------------------------
def compute_metrics(metric, preds, labels):
    if metric == "correlation":
        preds, labels = np.asarray(preds, dtype=float), np.asarray(labels, dtype=float)
        constant = len(preds) < 2 or np.ptp(preds) == 0 or np.ptp(labels) == 0
        pearson = float("nan") if constant else float(pearsonr(preds, labels)[0])
        spearman = float("nan") if constant else float(spearmanr(preds, labels)[0])
        return {"pearson": pearson, "spearmanr": spearman, "combined_score": (pearson + spearman) / 2,
                "mse": float(np.mean((preds - labels) ** 2))}
    result = {"accuracy": float(accuracy_score(labels, preds))}
    if metric == "accuracy_f1":
        result["f1"] = float(f1_score(labels, preds, zero_division=0))
    if metric == "matthews":
        result["matthews_correlation"] = float(matthews_corrcoef(labels, preds))
    return result


def finite_or_none(value):
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def main(argv=None):
    args = None
    try:
        args = parse_args(argv)
        validate_args(args)
        return run(args)
    except InputError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(2)
    except MometasInputError as err:
        print(f"error: {flag_message(err, args)}", file=sys.stderr)
        sys.exit(2)
    except RunFailed as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(1)


def run(args):
    # Heads that a step does not use get no gradient: DDP must be told.
    accelerator = Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        level=logging.INFO)
    if accelerator.is_local_main_process:
        transformers.utils.logging.set_verbosity_warning()
    else:
        transformers.utils.logging.set_verbosity_error()
    set_seed(args.seed)
    tasks = args.task_list

    # ---- Data: held-out meta-test rows come out of TRAIN; dev is scored once, at the end ----------
    train_rows, heldout_rows, dev_rows = {}, {}, {}
    for index, task in enumerate(tasks):
        rows = read_task_file(os.path.join(args.data_dir, task, "train.tsv"), task)
        rows = rows[: args.max_train_samples] if args.max_train_samples else rows
        if args.meta_test_examples >= len(rows):
            raise InputError(f"--meta_test_examples {args.meta_test_examples}: {task} has only {len(rows)} training rows")
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(args.seed * 1000 + index)).tolist()
        held = set(order[: args.meta_test_examples])
        heldout_rows[task] = [rows[i] for i in sorted(held)]
        train_rows[task] = [row for i, row in enumerate(rows) if i not in held]
        dev = read_task_file(os.path.join(args.data_dir, task, "dev.tsv"), task)
        dev_rows[task] = dev[: args.max_eval_samples] if args.max_eval_samples else dev
    sizes = {t: len(train_rows[t]) for t in tasks}

    # ---- Model and tokenizer -------------------------------------------------------------------
    try:
        config = AutoConfig.from_pretrained(args.model_name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
        encoder = AutoModel.from_pretrained(args.model_name_or_path, config=config)
    except (OSError, ValueError) as err:
        raise InputError(f"--model_name_or_path {args.model_name_or_path}: cannot load it "
                         f"({' '.join(str(err).split())[:300]})") from None
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and args.max_seq_length > positions:
        raise InputError(f"--max_seq_length {args.max_seq_length}: the model has only {positions} positions")
    num_labels = {t: 1 if TASKS[t].label_values is None else len(TASKS[t].label_values) for t in tasks}
    model = MultiTaskModel(encoder, num_labels)

    # ---- The sampler, built by the library ----------------------------------------------------
    weights = None
    if args.sampler == "proportional":
        if args.task_sizes == "train":
            n = sizes
        elif args.task_sizes == "glue":
            n = {t: GLUE_TRAIN_SIZES[t] for t in tasks}
        else:
            n = parse_task_values(args.task_sizes, tasks, "task_sizes", allow_zero=False)
        weights = proportional_weights(n, args.temperature)
    elif args.sampler == "fixed":
        weights = args.task_weight_values
    sampler = build_sampler(
        "fixed" if args.sampler == "proportional" else args.sampler, tasks,
        meta_length=args.meta_length, seed=args.seed, reward=args.reward, meta_step_size=args.meta_step_size,
        entropy_lambda=args.entropy_lambda,
        entropy_lambda_schedule=args.entropy_lambda_schedule, weights=weights, reward_floor=args.reward_floor,
        reward_dead_zone=args.reward_dead_zone, reward_objectives=args.reward_tasks,
        reward_baseline=args.reward_baseline, reward_baseline_decay=args.reward_baseline_decay,
        reward_normalize=args.reward_normalize, min_probability=args.min_probability,
    )
    run_meta_test = sampler.requires_meta_test or args.baseline_meta_test

    # Every input is valid: now, and only now, a previous run's outputs may go.
    if args.overwrite_output_dir and accelerator.is_main_process:
        clear_run_files(args.output_dir)
    accelerator.wait_for_everyone()

    # ---- Batches -------------------------------------------------------------------------------
    collator = DataCollatorWithPadding(tokenizer)
    train_loaders, heldout_loaders, dev_loaders = {}, {}, {}
    for index, task in enumerate(tasks):
        # Each task has its own shuffling generator, so with one seed task t's k-th batch is the same
        # whatever the sampler drew before it: runs with different samplers see the same batches.
        train_loaders[task] = DataLoader(
            tokenize(train_rows[task], tokenizer, args.max_seq_length), shuffle=True, collate_fn=collator,
            batch_size=args.per_device_train_batch_size, generator=torch.Generator().manual_seed(args.seed + 7919 * index),
        )
        # Evaluation loaders get generators of their own too: starting a loader without one draws from the
        # global generator, and a meta-test would then shift the dropout masks of the training that follows.
        # Each process meta-tests its share of the held-out rows; meta_test() sums over processes.
        share = heldout_rows[task][accelerator.process_index::accelerator.num_processes]
        heldout_loaders[task] = DataLoader(tokenize(share, tokenizer, args.max_seq_length),
                                           collate_fn=collator, batch_size=args.per_device_eval_batch_size,
                                           generator=torch.Generator())
        dev_loaders[task] = DataLoader(tokenize(dev_rows[task], tokenizer, args.max_seq_length),
                                       collate_fn=collator, batch_size=args.per_device_eval_batch_size,
                                       generator=torch.Generator())

    # ---- Optimiser and schedule ------------------------------------------------------------------
    no_decay = ["bias", "LayerNorm.weight", "layer_norm.weight"]
    grouped = [
        {"params": [p for n, p in model.named_parameters() if not any(nd in n for nd in no_decay)],
         "weight_decay": args.weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(grouped, lr=args.learning_rate)
    warmup = args.num_warmup_steps if args.num_warmup_steps is not None else math.ceil(args.warmup_ratio * args.max_train_steps)
    lr_scheduler = get_scheduler(args.lr_scheduler_type, optimizer=optimizer,
                                 num_warmup_steps=warmup * accelerator.num_processes,
                                 num_training_steps=args.max_train_steps * accelerator.num_processes)
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    for loaders in (train_loaders, dev_loaders):
        for task in tasks:
            loaders[task] = accelerator.prepare_data_loader(loaders[task])
    streams = {task: forever(train_loaders[task]) for task in tasks}

    def meta_test():
        """Each task's mean loss over its held-out training rows (the same rows every time).

        Every process scores its share and the sums are added up over processes, so every process's
        sampler takes the same update from the loss over all the rows, whatever the number of processes."""
        started = time.perf_counter()
        model.eval()
        sums = torch.zeros(len(tasks), 2, dtype=torch.float64, device=accelerator.device)  # (loss x rows, rows)
        # The shares may differ by a batch: the module itself, whose forward has no DDP collective to wait on.
        module = accelerator.unwrap_model(model)
        with torch.no_grad():
            for index, task in enumerate(tasks):
                for batch in heldout_loaders[task]:
                    batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                    loss, _ = module(task, **batch)
                    sums[index, 0] += loss.item() * len(batch["labels"])
                    sums[index, 1] += len(batch["labels"])
        sums = accelerator.reduce(sums, reduction="sum")
        model.train()
        return {task: (sums[i, 0] / sums[i, 1]).item() for i, task in enumerate(tasks)}, time.perf_counter() - started

    tracker = StepTracker(tasks)
    history = HistoryWriter(args.output_dir) if accelerator.is_main_process else None
    started = time.perf_counter()

    def write_row(step, update, val_losses, seconds):
        """One row of sampler_history.jsonl, with the keys of run_mometas_pretraining.py's rows."""
        window = tracker.close_window(accelerator)
        row = {
            "step": step, "sampler": args.sampler, "objectives": list(tasks),
            "probabilities": sampler.probabilities, "entropy": sampler.entropy(),
            "reward": update.get("reward") if update else None, "val_loss": val_losses,
            **{key: update[key] for key in REWARD_FIELDS if update and key in update},
            **{key: window[key] for key in ("train_loss", "counts", "rollout", "tokens_seen", "mean_probabilities")},
            "meta_test_seconds": seconds, "elapsed_seconds": time.perf_counter() - started,
            "learning_rate": lr_scheduler.get_last_lr()[0], "num_processes": accelerator.num_processes,
        }
        if "process_rollouts" in window:  # every process's draws, as the script's rows hold them
            row["process_rollouts"] = window["process_rollouts"]
        if history is not None:
            history.write(row)

    logger.info(f"***** Multi-task fine-tuning: tasks {tasks} (training rows {sizes}, {args.meta_test_examples} "
                f"held out of each for meta-test), sampler {args.sampler} {sampler.probabilities}, "
                f"K={args.meta_length}, {args.max_train_steps} steps of {args.per_device_train_batch_size} examples *****")
    if run_meta_test:
        val_losses, seconds = meta_test()
        write_row(0, sampler.update(val_losses, learning_rate=lr_scheduler.get_last_lr()[0]), val_losses, seconds)  # step 0: the baselines b_i

    model.train()
    progress = tqdm(range(args.max_train_steps), disable=not accelerator.is_local_main_process)
    for step in range(1, args.max_train_steps + 1):
        # Meta-train: draw the task of this step, one optimiser step on a batch of it.
        task = sampler.sample()
        batch = next(streams[task])
        loss, _ = model(task, **batch)
        accelerator.backward(loss)
        step_loss = accelerator.reduce(loss.detach(), reduction="mean").item()
        if not math.isfinite(step_loss):
            raise RunFailed(f"step {step} ({task}): the loss is {step_loss}; nothing was saved")
        # Under fp16 the gradients still carry the loss scale here: Gb reads the norm of the true gradients.
        grad_norm = (unscaled_encoder_grad_norm(accelerator, model, encoder=accelerator.unwrap_model(model).encoder)
                     if sampler.requires_grad_norm else None)
        if args.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        sampler.observe(task, step_loss, grad_norm)
        tracker.record(task, step_loss, int(batch["attention_mask"].sum()), sampler.drawn_with)
        progress.update(1)
        if step % args.logging_steps == 0:
            progress.set_postfix(task=task, loss=f"{step_loss:.3f}",
                                 p=" ".join(f"{t}={p:.2f}" for t, p in sampler.probabilities.items()))

        if step % args.meta_length == 0:
            # Meta-test: every task's validation loss, then the sampler's update (MOMETAS: reward, REINFORCE).
            val_losses, seconds = meta_test() if run_meta_test else (None, None)
            write_row(step, sampler.update(val_losses, learning_rate=lr_scheduler.get_last_lr()[0]), val_losses, seconds)
        elif step == args.max_train_steps:
            write_row(step, None, None, None)  # the last steps fill no window: no sampler update
    progress.close()
    train_seconds = time.perf_counter() - started

    # ---- Dev evaluation, as run_glue.py computes it ------------------------------------------------
    model.eval()
    dev_metrics = {}
    for task in tasks:
        outputs, labels = [], []
        for batch in dev_loaders[task]:
            with torch.no_grad():
                _, logits = model(task, **batch)
            logits, gold = accelerator.gather_for_metrics((logits, batch["labels"]))
            outputs.append(logits.float().cpu())
            labels.append(gold.cpu())
        logits, gold = torch.cat(outputs).numpy(), torch.cat(labels).numpy()
        preds = logits[:, 0] if num_labels[task] == 1 else logits.argmax(axis=-1)
        dev_metrics[task] = compute_metrics(TASKS[task].metric, preds, gold.tolist())
        logger.info(f"{task} dev: {dev_metrics[task]}")
    primary = {t: dev_metrics[t][TASKS[t].primary] for t in tasks}
    average = sum(primary.values()) / len(primary) if all(math.isfinite(v) for v in primary.values()) else float("nan")

    # ---- Outputs ---------------------------------------------------------------------------------
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.encoder.save_pretrained(args.output_dir)
        tokenizer.save_pretrained(args.output_dir)
        save_file({f"{t}.{k}": v.detach().cpu().contiguous() for t, head in unwrapped.heads.items()
                   for k, v in head.state_dict().items()}, os.path.join(args.output_dir, "heads.safetensors"))
        heads = {t: {"num_labels": num_labels[t], "problem_type": "regression" if num_labels[t] == 1 else
                     "single_label_classification", "labels": list(TASKS[t].label_values or [])} for t in tasks}
        write_json(os.path.join(args.output_dir, "heads.json"), heads)
        counts = {t: 0 for t in tasks}
        for row in read_history(args.output_dir):
            for t, c in (row.get("counts") or {}).items():
                counts[t] += c
        results = {
            "dev": dev_metrics, "primary_metric": {t: TASKS[t].primary for t in tasks}, "primary": primary,
            "average": average, "steps": args.max_train_steps, "steps_per_task": counts,
            "train_rows": sizes, "meta_test_rows": {t: len(heldout_rows[t]) for t in tasks},
            "dev_rows": {t: len(dev_rows[t]) for t in tasks}, "final_probabilities": sampler.probabilities,
            "train_seconds": train_seconds, "total_seconds": time.perf_counter() - started,
            # CPU time of this process (all its threads): the cost on a shared machine, where wall time is not.
            "cpu_seconds": time.process_time(),
        }
        write_json(os.path.join(args.output_dir, "all_results.json"), results)
        write_json(os.path.join(args.output_dir, "multitask_args.json"),
                   {k: v for k, v in vars(args).items() if k not in ("task_weight_values",)})
        from mometas_utils.plots import plot_history

        plot_history(read_history(args.output_dir), Path(args.output_dir) / "plots")
        print(summarize_distribution(read_history(args.output_dir), total_steps=args.max_train_steps))
        print("dev " + ", ".join(f"{t} {TASKS[t].primary} {100 * v:.1f}" for t, v in primary.items())
              + f"; average {100 * average:.1f}")
        print(f"Encoder, heads, history and results saved in {args.output_dir}")
    accelerator.wait_for_everyone()
    return results if accelerator.is_main_process else None


def proportional_weights(sizes, temperature):
    """p_i ∝ n_i^(1/T), normalised: T = 1 is size-proportional, T -> infinity uniform."""
    raw = {t: float(n) ** (1.0 / temperature) for t, n in sizes.items()}
    total = sum(raw.values())
    return {t: v / total for t, v in raw.items()}


def write_json(path, data):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(finite_or_none(data), f, indent=1, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Fine-tune a BERT encoder on GLUE, SICK or PAWS-QQP with 🤗 Accelerate.

The shape of transformers' ``examples/pytorch/text-classification/run_glue_no_trainer.py``: one
flat script that imports only installed packages, so it can be copied alone and changed. On top
of that example it has what the MOMETAS paper's evaluation needs:

* ``--task_name`` cola, sst2, mrpc, stsb, qqp, mnli (matched, mismatched and their average),
  qnli, rte, sick, paws_qqp, read from the original files (GLUE's TSVs and SICK's 12-column file
  through ``datasets``' csv loader with ``quoting=csv.QUOTE_NONE``; CSV; JSON) or a Hub dataset;
* ``--hparams paper``: the paper's settings for the task (flags you type win);
* metrics from scikit-learn and scipy (``evaluate.load`` needs the Hub);
* atomic checkpoints, ``--resume_from_checkpoint PATH|latest`` that refuses to continue with
  settings that change the batches, and ``--checkpoints_total_limit``;
* a non-finite loss stops the run instead of saving a NaN model;
* bad input ends in one line ``error: ...`` and exit code 2, before any training.

PAWS-QQP is zero-shot: give a QQP-trained ``--model_name_or_path`` and only ``--validation_file``.
Reference: docs/finetuning.md; every error: docs/errors.md.
"""

import argparse
import csv
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
import transformers
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, set_seed
from huggingface_hub import HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, filter_repo_objects, validate_repo_id
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    default_data_collator,
    get_scheduler,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

logger = get_logger(__name__)


@dataclass(frozen=True)
class Task:
    sentence1: tuple  # accepted column names (case-insensitive), the original file's first
    sentence2: tuple | None
    label: tuple
    label_values: tuple | None  # as written in the original files, in the Hub's id order; None: regression
    label_names: tuple | None  # readable names, same order (config.id2label)
    metric: str  # accuracy | accuracy_f1 | matthews | correlation
    layout: str  # the original layout, for error messages
    hub: tuple | None = None  # load_dataset(name, config) when no file is given
    headerless: tuple | None = None  # (sentence1, sentence2, label) positions in a file without a header row
    index: tuple = ("index", "idx", "id", "pair_id")


TASKS = {
    "cola": Task(("sentence",), None, ("label",), ("0", "1"), ("unacceptable", "acceptable"), "matthews",
                 "no header row; columns: source, label, author's mark, sentence", ("nyu-mll/glue", "cola"),
                 headerless=(3, None, 1)),
    "sst2": Task(("sentence", "content", "text"), None, ("label",), ("0", "1"), ("negative", "positive"), "accuracy",
                 "a header row: sentence, label (any order)", ("nyu-mll/glue", "sst2")),
    "mrpc": Task(("#1 String", "sentence1"), ("#2 String", "sentence2"), ("Quality", "label"), ("0", "1"),
                 ("not_equivalent", "equivalent"), "accuracy_f1",
                 "a header row: Quality, #1 ID, #2 ID, #1 String, #2 String", ("nyu-mll/glue", "mrpc")),
    "stsb": Task(("sentence1",), ("sentence2",), ("score", "label"), None, None, "correlation",
                 "a header row: index, genre, filename, year, old_index, source1, source2, sentence1, sentence2, score",
                 ("nyu-mll/glue", "stsb")),
    "qqp": Task(("question1",), ("question2",), ("is_duplicate", "label"), ("0", "1"), ("not_duplicate", "duplicate"),
                "accuracy_f1", "a header row: id, qid1, qid2, question1, question2, is_duplicate", ("nyu-mll/glue", "qqp")),
    "mnli": Task(("sentence1", "premise"), ("sentence2", "hypothesis"), ("gold_label", "label"),
                 ("entailment", "neutral", "contradiction"), ("entailment", "neutral", "contradiction"), "accuracy",
                 "a header row: index, promptID, pairID, genre, ..., sentence1, sentence2, ..., gold_label",
                 ("nyu-mll/glue", "mnli")),
    "qnli": Task(("question",), ("sentence",), ("label",), ("entailment", "not_entailment"),
                 ("entailment", "not_entailment"), "accuracy", "a header row: index, question, sentence, label",
                 ("nyu-mll/glue", "qnli")),
    "rte": Task(("sentence1",), ("sentence2",), ("label",), ("entailment", "not_entailment"),
                ("entailment", "not_entailment"), "accuracy", "a header row: index, sentence1, sentence2, label",
                ("nyu-mll/glue", "rte")),
    "sick": Task(("sentence_A",), ("sentence_B",), ("entailment_label", "label"), ("ENTAILMENT", "NEUTRAL", "CONTRADICTION"),
                 ("entailment", "neutral", "contradiction"), "accuracy",
                 "the original 12-column SICK file: pair_ID, sentence_A, sentence_B, entailment_label, ...",
                 ("RobZamp/sick", None), index=("pair_id", "id", "index", "idx")),
    "paws_qqp": Task(("sentence1",), ("sentence2",), ("label",), ("0", "1"), ("not_paraphrase", "paraphrase"),
                     "accuracy_f1", "a header row: id, sentence1, sentence2, label (from PAWS' qqp_generate_data.py)"),
}  # fmt: skip

# The MOMETAS paper's fine-tuning settings (Wu et al., EMNLP 2022 Findings). The batch size is the
# total one, split over processes and accumulation steps; weight decay is 0.01 everywhere (Table 7).
# Table 7 lists MNLI, SICK, QQP and STS-B; for the other GLUE tasks §4.4 follows ALBERT (Lan et al.,
# 2020, Table 14: lr and batch size) with 3 epochs (10 for RTE and STS-B); warmup 0.06 and length
# 128 as for the Table 7 GLUE tasks. PAWS-QQP is evaluated zero-shot with a QQP model (QQP's row).
PAPER_HPARAMS = {
    #          batch  lr     max_length  warmup  epochs
    "mnli":     (128, 3e-5, 128, 0.06, 3),   # Table 7
    "qqp":      (128, 5e-5, 128, 0.06, 3),   # Table 7
    "paws_qqp": (128, 5e-5, 128, 0.06, 3),   # = qqp
    "stsb":     (16,  5e-5, 128, 0.06, 10),  # Table 7
    "sick":     (32,  5e-5, 128, 0.06, 3),   # Table 7
    "cola":     (16,  1e-5, 128, 0.06, 3),   # ALBERT lr/batch, §4.4 epochs
    "sst2":     (32,  1e-5, 128, 0.06, 3),   # ALBERT lr/batch, §4.4 epochs
    "mrpc":     (32,  2e-5, 128, 0.06, 3),   # ALBERT lr/batch, §4.4 epochs
    "qnli":     (32,  1e-5, 128, 0.06, 3),   # ALBERT lr/batch, §4.4 epochs
    "rte":      (32,  3e-5, 128, 0.06, 10),  # ALBERT lr/batch, §4.4 epochs
}  # fmt: skip
PAPER_WEIGHT_DECAY = 0.01

CHECKPOINT_RE = re.compile(r"^(step|epoch)_(\d+)$")
CHECKPOINT_STATE = "mometas_state.json"  # written last: a step_N/epoch_N folder without it is not complete
HUB_IGNORE_PATTERNS = ["step_*", "epoch_*", ".tmp_*", ".trash_*"]
SCHEDULERS = ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"]
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "spiece.model", "vocab.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# Settings that change which examples make up which batch, or their tokens: a checkpoint can only be
# continued with the same ones (unless --allow_config_change).
RESUME_SETTINGS = (
    "task_name", "train_data", "dataset_name", "dataset_config_name", "max_train_samples", "sentence1_key",
    "sentence2_key", "label_column", "model", "tokenizer_name", "use_slow_tokenizer", "max_length",
    "pad_to_max_length", "per_device_train_batch_size", "gradient_accumulation_steps", "num_processes", "seed",
)  # fmt: skip


class InputError(Exception):
    """A problem with the command line, the data or the folders: one line, exit code 2."""


class RunFailed(Exception):
    """The run started but cannot finish correctly (non-finite loss, failed push): exit code 1."""


class ArgumentParser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # argparse takes "-1e-5" for a flag; read it as a (negative) number so the type check can refuse it.
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    def error(self, message):
        # argparse prints the whole usage first; keep bad flags to one line like every other input error.
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def number(kind, low=None, *, above=False, below=None):
    """An argparse type: an int or a finite float within bounds."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if low is not None and (value <= low if above else value < low):
            raise argparse.ArgumentTypeError(f"expected a number {'>' if above else '>='} {low}, got {text!r}")
        if below is not None and value >= below:
            raise argparse.ArgumentTypeError(f"expected a number < {below}, got {text!r}")
        return value

    return parse


def checkpointing_steps(text):
    if text.strip().lower() == "epoch":
        return "epoch"
    if not re.fullmatch(r"\s*[+-]?\d+\s*", text):
        raise argparse.ArgumentTypeError(f"expected a number of updates or 'epoch', got {text!r}")
    return number(int, 1)(text)


def parse_args(argv=None):
    parser = ArgumentParser(
        description="Fine-tune a BERT encoder on a GLUE-style sentence(-pair) classification or regression task.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--task_name", type=str, default=None, choices=list(TASKS),
                      help="The task; without it, local files are read with the generic column rules.")
    data.add_argument("--train_file", type=str, default=None, help="Training data: .tsv/.txt, .csv, .json or .jsonl.")
    data.add_argument("--validation_file", type=str, default=None, help="Validation data (MNLI: the matched set).")
    data.add_argument("--validation_mismatched_file", type=str, default=None,
                      help="MNLI only: the mismatched dev set; the average of both is the paper's MNLI figure.")
    data.add_argument("--test_file", type=str, default=None, help="Test data; labels are optional.")
    data.add_argument("--dataset_name", type=str, default=None,
                      help="A Hub dataset instead of files (needs a network); default with --task_name: nyu-mll/glue.")
    data.add_argument("--dataset_config_name", type=str, default=None, help="The configuration of --dataset_name.")
    data.add_argument("--sentence1_key", type=str, default=None, help="Column of the first text (a name, or a 0-based position).")
    data.add_argument("--sentence2_key", type=str, default=None, help="Column of the second text, for pair tasks.")
    data.add_argument("--label_column", type=str, default=None, help="Column of the label.")
    data.add_argument("--max_train_samples", type=number(int, 1), default=None, help="Keep the first N training examples.")
    data.add_argument("--max_eval_samples", type=number(int, 1), default=None, help="Keep the first N validation examples.")
    data.add_argument("--max_predict_samples", type=number(int, 1), default=None, help="Keep the first N test examples.")
    data.add_argument("--max_length", type=number(int, 1), default=128,
                      help="Maximum tokenized length; longer inputs are truncated.")
    data.add_argument("--pad_to_max_length", action="store_true",
                      help="Pad every input to --max_length instead of padding each batch to its longest.")

    model = parser.add_argument_group("model")
    model.add_argument("--model_name_or_path", type=str, required=True,
                       help="Required. A local BERT folder (e.g. run_mometas_pretraining.py's output) or a Hub model id.")
    model.add_argument("--config_name", type=str, default=None, help="Config name or path, if not the model's.")
    model.add_argument("--tokenizer_name", type=str, default=None, help="Tokenizer name or path, if not the model's.")
    model.add_argument("--use_slow_tokenizer", action="store_true", help="Use a slow (Python) tokenizer.")
    model.add_argument("--trust_remote_code", action="store_true",
                       help="Allow custom model code from the model's folder or repo.")
    model.add_argument("--ignore_mismatched_sizes", action="store_true",
                       help="Load a checkpoint whose classifier has another number of labels (it is re-initialised).")

    train = parser.add_argument_group("training")
    train.add_argument("--per_device_train_batch_size", type=number(int, 1), default=8, help="Training batch size per device.")
    train.add_argument("--per_device_eval_batch_size", type=number(int, 1), default=8, help="Evaluation batch size per device.")
    train.add_argument("--learning_rate", type=number(float, 0, above=True), default=5e-5, help="Peak learning rate (after warmup).")
    train.add_argument("--weight_decay", type=number(float, 0), default=0.0, help="AdamW weight decay (not on biases and LayerNorm).")
    train.add_argument("--num_train_epochs", type=number(int, 1), default=3, help="Number of training epochs.")
    train.add_argument("--max_train_steps", type=number(int, 1), default=None,
                       help="Total number of optimizer updates; overrides --num_train_epochs.")
    train.add_argument("--gradient_accumulation_steps", type=number(int, 1), default=1,
                       help="Batches accumulated (accelerator.accumulate) into one update.")
    train.add_argument("--lr_scheduler_type", type=str, default="linear", choices=SCHEDULERS, help="Learning-rate schedule.")
    train.add_argument("--num_warmup_steps", type=number(int, 0), default=0, help="Warmup updates; wins over --warmup_ratio if > 0.")
    train.add_argument("--warmup_ratio", type=number(float, 0, below=1), default=0.0,
                       help="Warmup as a proportion of all updates (the paper's 'warmup proportion').")
    train.add_argument("--seed", type=number(int, 0, below=2**32), default=42, help="Seed for the classifier's initialisation, dropout and data order.")
    train.add_argument("--hparams", type=str, default=None, choices=["paper"],
                       help="'paper': the MOMETAS paper's settings for --task_name; flags you type win.")
    train.add_argument("--skip_nonfinite_steps", type=number(int, 0), default=0,
                       help="Skip up to N updates whose loss is not finite; one more stops the run.")

    out = parser.add_argument_group("output and checkpoints")
    out.add_argument("--output_dir", type=str, default=None, help="Where the model, results and checkpoints go.")
    out.add_argument("--overwrite_output_dir", action="store_true",
                     help="Replace the run in --output_dir: all of it, checkpoints included, once the inputs are valid.")
    out.add_argument("--checkpointing_steps", type=checkpointing_steps, default=None,
                     help="Save a resumable checkpoint every N updates, or 'epoch' after each epoch.")
    out.add_argument("--checkpoints_total_limit", type=number(int, 1), default=None,
                     help="Keep at most N checkpoints: the oldest complete ones are deleted.")
    out.add_argument("--resume_from_checkpoint", type=str, default=None,
                     help="A step_N/epoch_N folder, or 'latest': the newest complete checkpoint in --output_dir.")
    out.add_argument("--allow_config_change", action="store_true",
                     help="Resume even if settings that change the batches (seed, batch size, data, ...) differ.")
    out.add_argument("--with_tracking", action="store_true", help="Log metrics to the trackers of --report_to.")
    out.add_argument("--report_to", type=str, default="all",
                     help="Trackers for --with_tracking: tensorboard, wandb, comet_ml, clearml, mlflow, ... or 'all'.")

    hub = parser.add_argument_group("hub")
    hub.add_argument("--push_to_hub", action="store_true", help="Upload the final model folder (checkpoints excluded).")
    hub.add_argument("--hub_model_id", type=str, default=None, help="Repo name or id; default: the name of --output_dir.")
    hub.add_argument("--hub_token", type=str, default=None, help="Hub token (or set HF_TOKEN); never logged or saved.")
    hub.add_argument("--hub_private_repo", action="store_true", help="Create the repo as private.")
    hub.add_argument("--hub_strategy", type=str, default="end", choices=["end", "every_save"],
                     help="'end': upload once at the end; 'every_save': also after each checkpoint, in the background.")

    args, _ = parser.parse_known_args(argv)
    if args.hparams == "paper":
        if args.task_name is None:
            parser.error("--hparams paper needs --task_name (the settings are per task)")
        batch, lr, max_length, warmup, epochs = PAPER_HPARAMS[args.task_name]
        per_device = max(1, batch // (PartialState().num_processes * args.gradient_accumulation_steps))
        parser.set_defaults(per_device_train_batch_size=per_device, learning_rate=lr, max_length=max_length,
                            warmup_ratio=warmup, num_train_epochs=epochs, weight_decay=PAPER_WEIGHT_DECAY)  # fmt: skip
    args = parser.parse_args(argv)
    hub_token = args.hub_token or os.environ.get("HF_TOKEN") or None
    del args.hub_token  # from here on, args can be logged, saved and sent to trackers
    validate_args(args)
    return args, hub_token


def validate_args(args):
    for flag in ("train_file", "validation_file", "validation_mismatched_file", "test_file"):
        path = getattr(args, flag)
        if path is not None and not os.path.isfile(path):
            raise InputError(f"--{flag} {path}: {'is a folder' if os.path.isdir(path) else 'no such file'}; expected a data file")
    if args.validation_mismatched_file is not None and args.task_name != "mnli":
        raise InputError("--validation_mismatched_file is for --task_name mnli only")
    has_files = any((args.train_file, args.validation_file, args.test_file))
    if has_files and args.dataset_name is not None:
        raise InputError("give --dataset_name or local files (--train_file, ...), not both")
    if args.task_name is None and args.train_file is None:
        raise InputError("without --task_name, --train_file is needed (the labels come from the training data)")
    if args.task_name == "paws_qqp":
        if args.train_file is not None:
            raise InputError("--task_name paws_qqp is zero-shot: give a QQP-trained --model_name_or_path and "
                             "--validation_file only (to train, use --task_name qqp)")  # fmt: skip
        if args.validation_file is None and args.test_file is None:
            raise InputError("--task_name paws_qqp needs --validation_file (PAWS-QQP is not on the Hub)")
    if args.output_dir is None:
        for flag in ("checkpointing_steps", "resume_from_checkpoint", "push_to_hub", "overwrite_output_dir"):
            if getattr(args, flag):
                raise InputError(f"--{flag} needs --output_dir")
    if args.hub_model_id is not None or args.push_to_hub:
        name = args.hub_model_id or Path(args.output_dir).absolute().name
        try:
            validate_repo_id(name)
        except HFValidationError as err:
            flag = "--hub_model_id" if args.hub_model_id else "--push_to_hub (the repo is named after --output_dir)"
            raise InputError(f"{flag}: {name!r} is not a valid Hub repo id: {one_line(err)}") from None


def one_line(error):
    return " ".join(str(error).split()) or type(error).__name__


# ---------------------------------------------------------------------------------------------
# The output folder belongs to one run
# ---------------------------------------------------------------------------------------------
def check_output_dir(args):
    """Refuse a folder that is a file, not writable, or holds another run; find the checkpoint to resume."""
    out = args.output_dir
    if out is None:
        return None
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"--output_dir {out}: is a file; expected a folder")
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".write_test_{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as err:
        raise InputError(f"--output_dir {out}: cannot write there ({err.strerror or one_line(err)})") from None
    held = sorted(n for n in os.listdir(out) if not n.startswith(".write_test_"))
    checkpoint = None
    if args.resume_from_checkpoint is not None:
        checkpoint = find_checkpoint(args.resume_from_checkpoint, out)
        inside = os.path.realpath(os.path.dirname(os.path.abspath(checkpoint))) == os.path.realpath(out)
        if held and not inside:
            raise InputError(f"--output_dir {out} holds another run ({', '.join(held[:4])}) and "
                             f"--resume_from_checkpoint {checkpoint} is not in it; continue the run in its own "
                             "--output_dir, or resume into an empty one")  # fmt: skip
    elif held and not args.overwrite_output_dir:
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise InputError(f"--output_dir {out} already holds a run ({shown}); pass --overwrite_output_dir to replace it "
                         "(everything in it is deleted) or --resume_from_checkpoint latest to continue it")  # fmt: skip
    if args.overwrite_output_dir and held:
        for flag in ("train_file", "validation_file", "validation_mismatched_file", "test_file",
                     "model_name_or_path", "config_name", "tokenizer_name"):  # fmt: skip
            value = getattr(args, flag, None)
            if value and os.path.exists(value) and is_inside(value, out):
                raise InputError(f"--overwrite_output_dir would delete --{flag} {value}, which is inside "
                                 f"--output_dir {out}; move it out or choose another --output_dir")  # fmt: skip
    return checkpoint


def is_inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder + os.sep)


def clear_output_dir(out):
    """Delete everything of the previous run; entries are renamed away first so none is left half deleted."""
    trash = os.path.join(out, f".trash_{os.getpid()}")
    os.makedirs(trash, exist_ok=True)
    for name in os.listdir(out):
        if name != os.path.basename(trash):
            os.replace(os.path.join(out, name), os.path.join(trash, name))
    shutil.rmtree(trash)


# ---------------------------------------------------------------------------------------------
# Checkpoints: step_N/ or epoch_N/ with accelerator.save_state files and a state file written last
# ---------------------------------------------------------------------------------------------
def list_checkpoints(output_dir):
    """Folders named step_N/epoch_N holding a state file, as (completed_steps, path), oldest first."""
    found = []
    for entry in os.scandir(output_dir) if output_dir and os.path.isdir(output_dir) else []:
        state_file = os.path.join(entry.path, CHECKPOINT_STATE)
        if entry.is_dir() and CHECKPOINT_RE.match(entry.name) and os.path.isfile(state_file):
            try:
                steps = int(json.loads(Path(state_file).read_text())["completed_steps"])
            except (ValueError, KeyError, TypeError):
                steps = int(CHECKPOINT_RE.match(entry.name).group(2)) if entry.name.startswith("step_") else -1
            found.append((steps, entry.name, entry.path))
    return [(steps, path) for steps, _, path in sorted(found)]


def find_checkpoint(value, output_dir):
    if value == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise InputError(f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir}; "
                             "drop the flag to start a new run")  # fmt: skip
        return found[-1][1]
    if not os.path.isdir(value):
        raise InputError(f"--resume_from_checkpoint {value}: {'is a file' if os.path.exists(value) else 'no such folder'}; "
                         "expected a step_N or epoch_N checkpoint folder, or 'latest'")  # fmt: skip
    if not os.path.isfile(os.path.join(value, CHECKPOINT_STATE)):
        raise InputError(f"--resume_from_checkpoint {value}: not a complete checkpoint (no {CHECKPOINT_STATE})")
    return value


def read_checkpoint_state(checkpoint):
    """The state file, after checking that every file still has the size it was saved with."""
    try:
        state = json.loads(Path(checkpoint, CHECKPOINT_STATE).read_text())
        int(state["completed_steps"]), dict(state["files"]), dict(state["settings"])
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"--resume_from_checkpoint {checkpoint}: {CHECKPOINT_STATE} is damaged ({one_line(err)}); "
                         "resume from another checkpoint") from None  # fmt: skip
    for name, size in state["files"].items():
        path = os.path.join(checkpoint, name)
        actual = os.path.getsize(path) if os.path.isfile(path) else None
        if actual != size:
            found = "missing" if actual is None else f"{actual} bytes, saved with {size}"
            raise InputError(f"--resume_from_checkpoint {checkpoint}: {name} is damaged ({found}); "
                             "resume from another checkpoint")  # fmt: skip
    return state


def file_digest(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resume_settings(args, num_processes):
    """What a checkpoint must share with the run that continues it (RESUME_SETTINGS)."""
    settings = {key: getattr(args, key, None) for key in RESUME_SETTINGS}
    settings["train_data"] = file_digest(args.train_file) if args.train_file else None
    model = args.model_name_or_path
    settings["model"] = os.path.realpath(model) if os.path.exists(model) else model
    settings["num_processes"] = num_processes
    return settings


def compare_settings(checkpoint, saved, current):
    differences = [
        f"{key} {saved.get(key)!r} -> {current[key]!r}" for key in RESUME_SETTINGS if saved.get(key) != current[key]
    ]
    if differences:
        raise InputError(f"--resume_from_checkpoint {checkpoint} was saved with other settings that change the "
                         f"batches: {'; '.join(differences)}; run with the checkpoint's settings, or pass "
                         "--allow_config_change to continue anyway")  # fmt: skip


def fsync_file(path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save_checkpoint(accelerator, output_dir, name, state):
    """accelerator.save_state into .tmp_<name>, the state file last, then one rename: a kill leaves no half checkpoint."""
    final, tmp = os.path.join(output_dir, name), os.path.join(output_dir, f".tmp_{name}")
    if accelerator.is_main_process and os.path.exists(tmp):
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {}
        for path in sorted(Path(tmp).rglob("*")):
            if path.is_file():
                fsync_file(path)
                files[str(path.relative_to(tmp))] = path.stat().st_size
        write_json(os.path.join(tmp, CHECKPOINT_STATE), {**state, "files": files})
        if os.path.exists(final):  # the same name again: keep one complete copy at every instant
            trash = os.path.join(output_dir, f".trash_{name}")
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash)
        else:
            os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def delete_checkpoints(paths):
    for path in paths:
        trash = os.path.join(os.path.dirname(path), f".trash_{os.path.basename(path)}")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(path, trash)  # a killed rmtree must not leave a folder that still looks complete
        shutil.rmtree(trash)


# ---------------------------------------------------------------------------------------------
# Data: GLUE/SICK TSVs, CSV and JSON through datasets' loaders, or a Hub dataset
# ---------------------------------------------------------------------------------------------
@dataclass
class Split:
    data: datasets.Dataset
    source: str  # a file path or "name[split]", for messages
    columns: dict  # role (sentence1, sentence2, label, idx) -> column name or None
    where: list  # row -> "line N" / "record N", for messages


def read_text(path, flag):
    """The file's text, checked to be UTF-8 (the loaders would fail with a traceback)."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise InputError(f"--{flag} {path}: line {line}: not UTF-8 (byte 0x{raw[err.start]:02x}); "
                         "save the file as UTF-8") from None  # fmt: skip
    if not text.strip():
        raise InputError(f"--{flag} {path}: the file is empty")
    return text


def file_kind(path, flag):
    lower = path.lower()
    for kind, endings in (("tsv", (".tsv", ".txt")), ("csv", (".csv",)), ("json", (".json", ".jsonl"))):
        if lower.endswith(endings):
            return kind
    raise InputError(f"--{flag} {path}: unknown file type; expected .tsv/.txt (tab-separated), .csv, .json or .jsonl")


def find_column(columns, names):
    lowered = [str(c).strip().lower() for c in columns]
    for name in names:
        if str(name).lower() in lowered:
            return columns[lowered.index(str(name).lower())]
    return None


def looks_like_header(cells, task, args):
    names = set()
    if task is not None:
        names.update(n.lower() for n in task.sentence1 + (task.sentence2 or ()) + task.label + task.index)
    keys = (args.sentence1_key, args.sentence2_key, args.label_column)
    names.update(k.lower() for k in keys if k and not k.isdigit())
    return task is None or any(c.strip().lower() in names for c in cells)


def load_data_file(path, flag, task, args):
    """A file as (dataset with string columns (JSON keeps its types), row -> location)."""
    kind = file_kind(path, flag)
    text = read_text(path, flag)
    if kind == "json":
        lines = [n for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        is_list = text.lstrip().startswith("[")
        try:
            dataset = datasets.load_dataset("json", data_files={"data": path}, split="data")
        except Exception as err:  # pyarrow's and json's errors name neither file nor flag
            raise InputError(f"--{flag} {path}: not valid JSON lines or a JSON list of records ({one_line(err.__cause__ or err)})") from None
        return dataset, [f"record {i + 1}" if is_list else f"line {lines[i]}" for i in range(len(dataset))]

    lines = text.splitlines()
    if kind == "csv":
        header = next(csv.reader([next(line for line in lines if line.strip())]))
        options, where = {"encoding": "utf-8-sig"}, None
    else:
        # pandas skips lines that are empty or hold only spaces; rows are the other lines, one each.
        numbers = [n for n, line in enumerate(lines, 1) if "\t" in line or line.strip()]
        cells = lines[numbers[0] - 1].split("\t")
        has_header = looks_like_header(cells, task, args)
        if not has_header and task is not None and task.headerless is None and not any(
            k is not None for k in (args.sentence1_key, args.sentence2_key, args.label_column)
        ):
            raise InputError(f"--{flag} {path}: no header row with the columns --task_name {task_name_of(task)} reads; "
                             f"expected {task.layout}, or set --sentence1_key/--sentence2_key/--label_column")  # fmt: skip
        header = cells if has_header else [str(i) for i in range(len(cells))]
        if len(numbers) == int(has_header):
            raise InputError(f"--{flag} {path}: the file has a header but no rows")
        for number_ in numbers[1 if has_header else 0 :]:
            found = lines[number_ - 1].count("\t") + 1
            if found > len(header):
                raise InputError(f"--{flag} {path}: line {number_}: {found} tab-separated fields, but the "
                                 f"{'header has' if has_header else 'first line has'} {len(header)}")  # fmt: skip
        options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE, "encoding": "utf-8-sig"}  # MRPC holds bare '"'
        if not has_header:
            options["column_names"] = header
        where = [f"line {n}" for n in numbers[1 if has_header else 0 :]]
    if len(set(header)) != len(header):
        raise InputError(f"--{flag} {path}: the header repeats a column name ({header})")
    features = datasets.Features({name: datasets.Value("string") for name in header})
    try:
        dataset = datasets.load_dataset("csv", data_files={"data": path}, split="data", features=features,
                                        keep_default_na=False, na_filter=False, **options)  # fmt: skip
    except Exception as err:
        raise InputError(f"--{flag} {path}: cannot be read as {kind.upper()} ({one_line(err.__cause__ or err)})") from None
    if where is None or len(where) != len(dataset):
        where = [f"row {i + 1}" for i in range(len(dataset))]
    if len(dataset) == 0:
        raise InputError(f"--{flag} {path}: the file has a header but no rows")
    return dataset, where


def task_name_of(task):
    return next(name for name, t in TASKS.items() if t is task)


def resolve_columns(columns, task, args, source, labeled):
    """Which column holds each role: the user's keys, else the task's names, else the transformers rule."""

    def user_column(key, flag):
        found = find_column(columns, [key])
        if found is None and key.isdigit() and int(key) < len(columns):
            found = columns[int(key)]
        if found is None:
            raise InputError(f"{flag} {key!r} is not a column of {source} (its columns: {', '.join(map(str, columns))})")
        return found

    headerless = columns == [str(i) for i in range(len(columns))]
    desc = f"--task_name {task_name_of(task)}" if task is not None else "files without --task_name"

    def role(name, key, flag, candidates, required):
        if key is not None:
            return user_column(key, flag)
        if headerless and task is not None and task.headerless is not None:
            position = dict(zip(("sentence1", "sentence2", "label"), task.headerless))[name]
            if position is not None and position >= len(columns) and required:
                raise InputError(f"{source}: {len(columns)} columns, but {desc} reads the {name} from column "
                                 f"{position} (0-based); expected {task.layout}, or set {flag}")  # fmt: skip
            return None if position is None or position >= len(columns) else columns[position]
        found = find_column(columns, candidates) if candidates else None
        if found is None and required:
            looked = ", ".join(repr(c) for c in candidates or ())
            layout = task.layout if task is not None else "named columns"
            raise InputError(f"{source}: no {name} column for {desc} (looked for {looked}); its columns are "
                             f"{', '.join(map(str, columns))}. Expected {layout}, or set {flag}")  # fmt: skip
        return found

    if task is not None:
        s1, s2, label = task.sentence1, task.sentence2, task.label
        index = task.index
    else:  # the transformers rule: sentence1/sentence2, else the first two columns that are not the label
        label = (args.label_column or "label",)
        index = ("index", "idx", "id")
        others = [c for c in columns if str(c).lower() not in {label[0].lower(), *index}]
        if find_column(columns, ["sentence1"]) is not None:
            s1, s2 = ("sentence1",), ("sentence2",) if find_column(columns, ["sentence2"]) is not None else None
        else:
            s1, s2 = tuple(others[:1]) or ("sentence1",), tuple(others[1:2]) or None
    result = {"sentence1": role("sentence1", args.sentence1_key, "--sentence1_key", s1, True)}
    wants_s2 = args.sentence2_key is not None or s2 is not None
    result["sentence2"] = role("sentence2", args.sentence2_key, "--sentence2_key", s2, True) if wants_s2 else None
    result["label"] = role("label", args.label_column, "--label_column", label, labeled)
    result["idx"] = None if headerless else find_column(columns, index)
    return result


def load_splits(args, task):
    """{split: Split}; splits are train, validation, validation_mismatched (MNLI) and test."""
    files = {
        "train": ("train_file", args.train_file),
        "validation": ("validation_file", args.validation_file),
        "validation_mismatched": ("validation_mismatched_file", args.validation_mismatched_file),
        "test": ("test_file", args.test_file),
    }
    loaded = {}
    if any(path for _, path in files.values()):
        for split, (flag, path) in files.items():
            if path is not None:
                dataset, where = load_data_file(path, flag, task, args)
                loaded[split] = (dataset, f"--{flag} {path}", where)
    else:
        name, config = (args.dataset_name, args.dataset_config_name) if args.dataset_name else task.hub
        try:
            raw = datasets.load_dataset(name, config)
        except Exception as err:
            raise InputError(f"--dataset_name {name}: cannot load it ({one_line(err)})") from None
        hub_splits = {"train": "train", "validation": "validation", "test": "test"}
        if task is TASKS["mnli"]:
            hub_splits = {"train": "train", "validation": "validation_matched",
                          "validation_mismatched": "validation_mismatched", "test": "test_matched"}  # fmt: skip
        for split, hub_split in hub_splits.items():
            if hub_split in raw:
                loaded[split] = (raw[hub_split], f"{name}[{hub_split}]", [f"row {i + 1}" for i in range(len(raw[hub_split]))])
    limits = {"train": args.max_train_samples, "test": args.max_predict_samples}
    splits = {}
    for split, (dataset, source, where) in loaded.items():
        limit = limits.get(split, args.max_eval_samples)
        if limit is not None and limit < len(dataset):
            dataset, where = dataset.select(range(limit)), where[:limit]  # the first N, as in the HF examples
        columns = resolve_columns(list(dataset.column_names), task, args, source, labeled=split != "test")
        for role in ("sentence1", "sentence2"):
            feature = dataset.features[columns[role]] if columns[role] else None
            if feature is not None and getattr(feature, "dtype", None) not in ("string", "large_string"):
                kind = getattr(feature, "dtype", type(feature).__name__.lower())
                raise InputError(f"{source}: column {columns[role]!r} ({role}) holds {kind}, expected text")
        splits[split] = Split(dataset, source, columns, where)
    return splits


def label_vocabulary(task, train):
    """The label list (None: regression): the task's, or the sorted labels of the training data."""
    if task is not None:
        return None if task.label_values is None else list(task.label_values)
    values = sorted({str(v).strip() for v in train.data[train.columns["label"]] if v is not None and str(v).strip()})
    if values and all(re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", v) for v in values):
        if not all(re.fullmatch(r"[+-]?\d+", v) for v in values):
            return None  # non-integer numbers: regression, like the transformers example
        return sorted(values, key=int)
    return values


def label_encoder(task, label_list):
    """raw label -> class id: the values as written in the files, their readable names, or Hub class ids."""
    lookup = {v.lower(): i for i, v in enumerate(label_list)}
    if task is not None and task.label_names:
        lookup.update({n.lower(): i for i, n in enumerate(task.label_names)})
    if not all(re.fullmatch(r"\d+", v) for v in label_list):
        lookup.update({str(i): i for i in range(len(label_list))})  # the Hub's ClassLabel ids

    def encode(raw):
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        text = str(raw).strip().lower()
        if re.fullmatch(r"[+-]?\d+\.0*", text):
            text = str(int(float(text)))
        return lookup.get(text)

    return encode


def check_labels(split, name, task, label_list):
    """Every label is known (or a finite number for regression); unlabeled test rows give None."""
    column = split.columns["label"]
    raw = split.data[column] if column is not None else [None] * len(split.data)
    encode = label_encoder(task, label_list) if label_list is not None else None
    labels = []
    for row, value in enumerate(raw):
        missing = value is None or str(value).strip() == "" or (name == "test" and str(value).strip() == "-1")
        if missing:
            if name != "test":
                raise InputError(f"{split.source}: {split.where[row]}: missing label in the {name} data")
            labels.append(None)
            continue
        if label_list is None:
            try:
                number_ = float(value)
            except (TypeError, ValueError):
                raise InputError(f"{split.source}: {split.where[row]}: label {value!r} is not a number "
                                 "(regression scores expected)") from None  # fmt: skip
            if not math.isfinite(number_):
                raise InputError(f"{split.source}: {split.where[row]}: label {value!r} is not a finite number")
            labels.append(number_)
            continue
        label_id = encode(value)
        if label_id is None:
            source = f"--task_name {task_name_of(task)}" if task is not None else "the training data"
            raise InputError(f"{split.source}: {split.where[row]}: unknown label {value!r}; expected one of "
                             f"{', '.join(label_list)} (from {source})")  # fmt: skip
        labels.append(label_id)
    if name == "test" and any(y is None for y in labels):
        return [None] * len(labels)  # a partly labeled test file is scored nowhere
    return labels


BYTES_LITERAL = re.compile(r"""^b(['"])(.*)\1$""", re.S)


def clean_text(value, unwrap):
    text = "" if value is None else str(value)
    if unwrap:  # PAWS-QQP's generation script writes Python bytes reprs: b'How do I ...'
        match = BYTES_LITERAL.match(text)
        text = match.group(2) if match else text
    return text


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
def check_model_source(name, flag):
    """A local folder must hold a config; anything else is taken for a Hub id."""
    if os.path.isfile(name):
        raise InputError(f"{flag} {name}: is a file; expected a model folder or a Hub model id")
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise InputError(f"{flag} {name}: not a model folder (no config.json)")
        return
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise InputError(f"{flag} {name}: no such folder, and not a Hub model id") from None


def load_config(args, **kwargs):
    """The built-in config class when the model type is built in.

    A MOMETAS pre-training folder holds a remote MometasConfig (a BertConfig subclass, model_type
    "bert") and an auto_map to its code; a task model loads as the plain built-in class.
    """
    name = args.config_name or args.model_name_or_path
    flag = "--config_name" if args.config_name else "--model_name_or_path"
    check_model_source(name, flag)
    try:
        config_dict, _ = transformers.PretrainedConfig.get_config_dict(name)
        model_type = config_dict.get("model_type")
        if model_type in CONFIG_MAPPING:
            return CONFIG_MAPPING[model_type].from_pretrained(name, **kwargs)
        return AutoConfig.from_pretrained(name, trust_remote_code=args.trust_remote_code, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"{flag} {name}: cannot load its config ({one_line(err)})") from None


def load_tokenizer(args):
    name = args.tokenizer_name or args.model_name_or_path
    flag = "--tokenizer_name" if args.tokenizer_name else "--model_name_or_path"
    if args.tokenizer_name:
        check_model_source(name, flag)
    if os.path.isdir(name) and not any(os.path.isfile(os.path.join(name, f)) for f in TOKENIZER_FILES):
        raise InputError(f"{flag} {name}: holds no tokenizer ({', '.join(TOKENIZER_FILES[:2])}); pass --tokenizer_name")
    try:
        return AutoTokenizer.from_pretrained(name, use_fast=not args.use_slow_tokenizer, trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError, ImportError) as err:
        raise InputError(f"{flag} {name}: cannot load its tokenizer ({one_line(err)})") from None


def load_model(args, config):
    name = args.model_name_or_path
    if os.path.isdir(name) and not any(os.path.isfile(os.path.join(name, f)) for f in WEIGHT_FILES):
        raise InputError(f"--model_name_or_path {name}: holds no weights ({', '.join(WEIGHT_FILES[:3])})")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            name, config=config, ignore_mismatched_sizes=args.ignore_mismatched_sizes, trust_remote_code=args.trust_remote_code
        )
    except (OSError, ValueError, RuntimeError) as err:
        hint = "; pass --ignore_mismatched_sizes for a new classifier" if "size mismatch" in str(err) else ""
        raise InputError(f"--model_name_or_path {name}: cannot load it for sequence classification ({one_line(err)}){hint}") from None
    if type(model).__module__.startswith("transformers."):
        # A built-in class needs no remote code: an auto_map left over from a MOMETAS folder would
        # send trust_remote_code=True loaders to *_mometas.py files that this folder does not hold.
        model.config.__dict__.pop("auto_map", None)
    return model


# ---------------------------------------------------------------------------------------------
# Metrics and outputs
# ---------------------------------------------------------------------------------------------
def compute_metrics(metric, preds, labels):
    if metric == "correlation":
        preds, labels = np.asarray(preds, dtype=float), np.asarray(labels, dtype=float)
        constant = len(preds) < 2 or np.ptp(preds) == 0 or np.ptp(labels) == 0
        # A constant prediction has no correlation: undefined (null in JSON), not 0.
        pearson = float("nan") if constant else float(pearsonr(preds, labels)[0])
        spearman = float("nan") if constant else float(spearmanr(preds, labels)[0])
        return {"pearson": pearson, "spearmanr": spearman, "combined_score": (pearson + spearman) / 2,
                "mse": float(np.mean((preds - labels) ** 2))}  # fmt: skip
    result = {"accuracy": float(accuracy_score(labels, preds))}
    if metric == "accuracy_f1":
        result["f1"] = float(f1_score(labels, preds, zero_division=0))
    if metric == "matthews":
        result["matthews_correlation"] = float(matthews_corrcoef(labels, preds))
    return result


def finite_or_none(value):
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN: a bare NaN makes the file unreadable for strict parsers
    return value


def write_json(path, data):
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(finite_or_none(data), f, indent=2, sort_keys=True, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def public_settings(args, secrets=()):
    """vars(args) for trackers, training_args.json and the card: scalars only, no secret."""
    secrets = [s for s in (*secrets, os.environ.get("HF_TOKEN")) if s]
    settings = {}
    for key, value in sorted(vars(args).items()):
        if value is None or (isinstance(value, str) and any(s in value for s in secrets)):
            continue
        settings[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return settings


def is_hub_id(name):
    if os.path.exists(name) or name.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(name)
        return True
    except HFValidationError:
        return False


CARD_SETTINGS = ("task_name", "hparams", "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
                 "num_train_epochs", "max_train_steps", "lr_scheduler_type", "num_warmup_steps", "warmup_ratio",
                 "weight_decay", "max_length", "seed")  # fmt: skip


def write_model_card(args, output_dir, results, data_note, datasets_ids):
    """README.md for the Hub; nothing in it names a local path."""
    base_model = args.model_name_or_path if is_hub_id(args.model_name_or_path) else None
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-classification",
        base_model=base_model,
        datasets=datasets_ids or None,
        tags=["text-classification", "mometas"] + ([args.task_name] if args.task_name else []),
        model_name=Path(output_dir).absolute().name,
    )
    source = f"[{base_model}](https://huggingface.co/{base_model})" if base_model else "A local BERT checkpoint"
    lines = [f"# {Path(output_dir).absolute().name}", "",
             f"{source} fine-tuned on {data_note} with `run_glue.py` of the MOMETAS toolkit.", "",
             "## Results", "", "| metric | value |", "|---|---|"]  # fmt: skip
    lines += [f"| {k} | {'n/a' if v is None else round(v, 4) if isinstance(v, float) else v} |"
              for k, v in sorted(finite_or_none(results).items())]  # fmt: skip
    lines += ["", "## Settings", "", "| flag | value |", "|---|---|"]
    lines += [f"| {k} | {getattr(args, k)} |" for k in CARD_SETTINGS if getattr(args, k, None) is not None]
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
    card.save(os.path.join(output_dir, "README.md"))


def push_command(repo_id, output_dir):
    excludes = " ".join(f"--exclude '{p}'" for p in HUB_IGNORE_PATTERNS)
    return f"hf upload {repo_id} {output_dir} . {excludes}"


def create_hub_repo(args, hub_token):
    """The repo id with its namespace, created (or found writable) before any training."""
    name = args.hub_model_id or Path(args.output_dir).absolute().name
    try:
        return HfApi(token=hub_token).create_repo(name, private=args.hub_private_repo or None, exist_ok=True).repo_id
    except Exception as err:  # offline, refused, no token, no write access: all one line
        raise InputError(f"--push_to_hub: cannot create or write the Hub repo {name!r} ({one_line(err)}); check the "
                         "network, --hub_token or HF_TOKEN, and --hub_model_id, or drop --push_to_hub") from None  # fmt: skip


def all_finite(value, accelerator):
    return accelerator.reduce((~torch.isfinite(value)).float(), reduction="sum").item() == 0


def parameters_finite(model, accelerator):
    """True when no process holds a NaN or inf weight (a collective).

    Each process checks what it holds: under ZeRO-3 a parameter is an empty placeholder and its
    partition is ``param.ds_tensor``; under FSDP2 a parameter is a DTensor and this process holds
    its local shard.
    """
    bad = torch.zeros((), device=accelerator.device)
    for param in model.parameters():
        held = getattr(param, "ds_tensor", None)
        if held is None:
            held = param.to_local() if hasattr(param, "to_local") else param
        bad += (~torch.isfinite(held.detach())).any().float()
    return accelerator.reduce(bad, reduction="sum").item() == 0


def check_launch(args, accelerator):
    """Refuse, before any work, what this loop cannot do under the launch: one line, exit code 2."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED and args.skip_nonfinite_steps:
        raise InputError(f"--skip_nonfinite_steps {args.skip_nonfinite_steps}: under DeepSpeed accelerator.backward "
                         "applies the update before its loss can be checked, so no update can be skipped; drop the "
                         "flag (a non-finite loss then stops the run), or launch with DDP or FSDP")  # fmt: skip


def start_upload(output_dir, repo_id, hub_token, step, uploads):
    """--hub_strategy every_save: upload the folder as it is at this save, from a copy, in the background.

    From the folder itself, an upload still running when the next save rewrites the model would
    send files of two steps in one commit. The copy leaves out what the upload ignores; the
    previous upload is waited for first, so the commits land in the order of the steps and at
    most one copy is on disk.
    """
    finish_uploads(uploads)
    for stale in Path(output_dir).glob(".tmp_hub_upload_step_*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    snapshot = os.path.join(output_dir, f".tmp_hub_upload_step_{step}")
    files = sorted(p.relative_to(output_dir).as_posix() for p in Path(output_dir).rglob("*") if p.is_file())
    for relative in filter_repo_objects(files, ignore_patterns=HUB_IGNORE_PATTERNS):
        os.makedirs(os.path.dirname(os.path.join(snapshot, relative)), exist_ok=True)
        shutil.copy2(os.path.join(output_dir, relative), os.path.join(snapshot, relative))
    future = HfApi(token=hub_token).upload_folder(
        repo_id=repo_id, folder_path=snapshot, commit_message=f"Training in progress, step {step}",
        ignore_patterns=HUB_IGNORE_PATTERNS, run_as_future=True,
    )  # fmt: skip
    uploads.append((future, snapshot))


def finish_uploads(uploads):
    """Wait for the background uploads and delete their copies; a failed one is raised again by its result()."""
    for future, snapshot in uploads:
        if os.path.isdir(snapshot):
            try:
                future.result()
            except Exception as err:  # the final push raises it again and fails the run; training goes on
                logger.warning(f"a background upload failed ({one_line(err)}); the push at the end reports it")
            shutil.rmtree(snapshot, ignore_errors=True)


def main(argv=None):
    hub_token = None
    try:
        args, hub_token = parse_args(None if argv is None else [str(a) for a in argv])
        return run(args, hub_token)
    except InputError as err:
        print(f"error: {scrub(one_line(err), hub_token)}", file=sys.stderr)
        sys.exit(2)
    except RunFailed as err:
        print(f"error: {scrub(one_line(err), hub_token)}", file=sys.stderr)
        sys.exit(1)


def scrub(text, secret):
    return text.replace(secret, "***") if secret else text


def run(args, hub_token):
    task = TASKS.get(args.task_name)

    # The seedable sampler makes the data order a function of (seed, epoch): a resumed run sees
    # the same batches as an uninterrupted one.
    accelerator_log_kwargs = {"log_with": args.report_to, "project_dir": args.output_dir} if args.with_tracking else {}
    try:
        accelerator = Accelerator(
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
            **accelerator_log_kwargs,
        )
    except (ValueError, ImportError) as err:
        raise InputError(f"--report_to {args.report_to}: {one_line(err)}") from None
    check_launch(args, accelerator)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        level=logging.INFO)  # fmt: skip
    logger.info(accelerator.state, main_process_only=False)
    if accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    # The csv loader logs its parse errors before raising them (the error line says it once), and
    # Accelerate logs every file of every checkpoint.
    logging.getLogger("datasets.packaged_modules.csv.csv").setLevel(logging.CRITICAL)
    logging.getLogger("accelerate.checkpointing").setLevel(logging.WARNING)
    if args.hparams == "paper":
        logger.info(f"--hparams paper for {args.task_name}: lr {args.learning_rate}, per-device batch "
                    f"{args.per_device_train_batch_size}, max length {args.max_length}, warmup {args.warmup_ratio}, "
                    f"{args.num_train_epochs} epochs, weight decay {args.weight_decay} (flags you typed win)")  # fmt: skip

    # ---- Checks that need no data: the output folder, the checkpoint to resume, the Hub repo ----
    checkpoint = check_output_dir(args)
    resume_state = read_checkpoint_state(checkpoint) if checkpoint else None
    settings = resume_settings(args, accelerator.num_processes) if (args.checkpointing_steps or checkpoint) else None
    if resume_state is not None and not args.allow_config_change:
        compare_settings(checkpoint, resume_state["settings"], settings)
    repo_id = create_hub_repo(args, hub_token) if args.push_to_hub and accelerator.is_main_process else None
    set_seed(args.seed)

    # ---- Data ----------------------------------------------------------------------------------
    splits = load_splits(args, task)
    do_train = "train" in splits
    label_list = label_vocabulary(task, splits.get("train"))
    is_regression = label_list is None
    labels = {name: check_labels(split, name, task, label_list) for name, split in splits.items()}
    eval_splits = [s for s in ("validation", "validation_mismatched") if s in splits]
    if not do_train and not eval_splits and "test" not in splits:
        raise InputError("nothing to do: give --train_file, --validation_file or --test_file")

    # ---- Model and tokenizer --------------------------------------------------------------------
    num_labels = 1 if is_regression else len(label_list)
    config_kwargs = {"num_labels": num_labels, "finetuning_task": args.task_name} if do_train else {}
    config = load_config(args, **config_kwargs)
    if do_train:
        names = task.label_names if task is not None and task.label_names else label_list
        if not is_regression:
            config.id2label = {i: str(name) for i, name in enumerate(names)}
            config.label2id = {str(name): i for i, name in enumerate(names)}
        config.problem_type = "regression" if is_regression else "single_label_classification"
    elif config.num_labels != num_labels:
        raise InputError(f"--model_name_or_path {args.model_name_or_path} has {config.num_labels} output labels but "
                         f"{args.task_name or 'the data'} needs {num_labels}; evaluate a model fine-tuned on a matching task")  # fmt: skip
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and args.max_length > positions:
        raise InputError(f"--max_length {args.max_length}: the model has only {positions} positions")
    tokenizer = load_tokenizer(args)
    model = load_model(args, config)

    # Every input is valid: now, and only now, the previous run in --output_dir may go.
    if args.overwrite_output_dir and checkpoint is None and accelerator.is_main_process and os.listdir(args.output_dir):
        logger.info(f"--overwrite_output_dir: deleting the previous run in {args.output_dir}")
        clear_output_dir(args.output_dir)
    accelerator.wait_for_everyone()

    # ---- Tokenize once, with datasets' cache ---------------------------------------------------------------
    padding = "max_length" if args.pad_to_max_length else False
    is_pair = any(split.columns["sentence2"] is not None for split in splits.values())
    unwrap = args.task_name == "paws_qqp"
    encode = label_encoder(task, label_list) if not is_regression else None

    def preprocess_function(examples, columns, with_labels):
        texts = [[clean_text(t, unwrap) for t in examples[columns["sentence1"]]]]
        if is_pair:
            second = examples[columns["sentence2"]] if columns["sentence2"] else [""] * len(texts[0])
            texts.append([clean_text(t, unwrap) for t in second])
        result = tokenizer(*texts, padding=padding, max_length=args.max_length, truncation=True)
        if with_labels:
            raw = examples[columns["label"]]
            result["labels"] = [float(v) for v in raw] if is_regression else [encode(v) for v in raw]
        return result

    processed = {}
    for name, split in splits.items():
        with accelerator.main_process_first():
            processed[name] = split.data.map(
                preprocess_function,
                batched=True,
                remove_columns=split.data.column_names,
                fn_kwargs={"columns": split.columns, "with_labels": labels[name][:1] != [None] and bool(labels[name])},
                desc=f"Running tokenizer on {name}",
            )
    if do_train:
        for index in random.sample(range(len(processed["train"])), min(2, len(processed["train"]))):
            logger.info(f"Sample {index} of the training set: {processed['train'][index]}.")

    # Dynamic padding unless --pad_to_max_length; multiples of 8 suit tensor cores under fp16/bf16.
    if args.pad_to_max_length:
        data_collator = default_data_collator
    else:
        pad_to = 8 if accelerator.mixed_precision in ("fp16", "bf16") else None
        data_collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to)
    eval_dataloaders = {
        name: DataLoader(processed[name], collate_fn=data_collator, batch_size=args.per_device_eval_batch_size,
                         generator=torch.Generator())  # fmt: skip
        for name in eval_splits + (["test"] if "test" in splits else [])
    }

    def predict(dataloader):
        model.eval()
        outputs = []
        for batch in dataloader:
            batch.pop("labels", None)
            with torch.no_grad():
                logits = model(**batch).logits
            outputs.append(accelerator.gather_for_metrics(logits).float().cpu())
        logits = torch.cat(outputs).numpy()
        return logits[:, 0] if is_regression else logits.argmax(axis=-1)

    metric = task.metric if task is not None else ("correlation" if is_regression else "accuracy")

    def evaluate():
        results, predictions = {}, {}
        for name in eval_splits:
            predictions[name] = predict(eval_dataloaders[name])
            suffix = "_mm" if name == "validation_mismatched" else ""
            metrics = compute_metrics(metric, predictions[name], labels[name])
            results.update({f"{k}{suffix}": v for k, v in metrics.items()})
        if "accuracy_mm" in results:
            results["accuracy_avg"] = (results["accuracy"] + results["accuracy_mm"]) / 2  # the paper's MNLI figure
        return results, predictions

    completed_steps, epoch = 0, -1
    results, predictions = {}, {}
    if do_train:
        # Own generators for every DataLoader: starting one draws a seed from its generator, and a draw
        # from the global one would shift the dropout masks of a resumed run against an uninterrupted one.
        train_dataloader = DataLoader(
            processed["train"], shuffle=True, collate_fn=data_collator, batch_size=args.per_device_train_batch_size,
            generator=torch.Generator().manual_seed(args.seed),
        )  # fmt: skip
        # No weight decay on biases and LayerNorm weights.
        no_decay = ["bias", "LayerNorm.weight", "layer_norm.weight"]
        optimizer_grouped_parameters = [
            {"params": [p for n, p in model.named_parameters() if not any(nd in n for nd in no_decay)],
             "weight_decay": args.weight_decay},
            {"params": [p for n, p in model.named_parameters() if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
        ]  # fmt: skip
        optimizer = torch.optim.AdamW(optimizer_grouped_parameters, lr=args.learning_rate)

        # Scheduler and math around the number of training steps. Once prepared, the DataLoader gives
        # each process every num_processes-th batch (the last ones padded to a full round).
        batches_per_process = math.ceil(len(train_dataloader) / accelerator.num_processes)
        num_update_steps_per_epoch = math.ceil(batches_per_process / args.gradient_accumulation_steps)
        if args.max_train_steps is None:
            args.max_train_steps = args.num_train_epochs * num_update_steps_per_epoch
        else:
            args.num_train_epochs = math.ceil(args.max_train_steps / num_update_steps_per_epoch)
        num_warmup_steps = args.num_warmup_steps or math.ceil(args.warmup_ratio * args.max_train_steps)
        # The prepared scheduler steps once per process, hence the factor.
        lr_scheduler = get_scheduler(
            name=args.lr_scheduler_type,
            optimizer=optimizer,
            num_warmup_steps=num_warmup_steps * accelerator.num_processes,
            num_training_steps=args.max_train_steps * accelerator.num_processes,
        )
        model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
            model, optimizer, train_dataloader, lr_scheduler
        )
        eval_dataloaders = {name: accelerator.prepare(dl) for name, dl in eval_dataloaders.items()}

        if args.with_tracking:
            accelerator.init_trackers("glue_no_trainer", public_settings(args, [hub_token]))

        total_batch_size = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
        logger.info("***** Running training *****")
        logger.info(f"  Num examples = {len(processed['train'])}")
        logger.info(f"  Num Epochs = {args.num_train_epochs}")
        logger.info(f"  Instantaneous batch size per device = {args.per_device_train_batch_size}")
        logger.info(f"  Total train batch size (w. parallel, distributed & accumulation) = {total_batch_size}")
        logger.info(f"  Gradient Accumulation steps = {args.gradient_accumulation_steps}")
        logger.info(f"  Total optimization steps = {args.max_train_steps}, warmup = {num_warmup_steps}")
        progress_bar = tqdm(range(args.max_train_steps), disable=not accelerator.is_local_main_process)
        starting_epoch, resume_batches, skipped_steps, stale = 0, 0, 0, []

        if checkpoint is not None:
            accelerator.print(f"Resumed from checkpoint: {checkpoint}")
            try:
                accelerator.load_state(checkpoint)
            except Exception as err:  # sizes matched but a file does not parse: still a damaged checkpoint
                raise InputError(f"--resume_from_checkpoint {checkpoint}: cannot load it ({one_line(err)})") from None
            completed_steps = int(resume_state["completed_steps"])
            skipped_steps = int(resume_state.get("skipped_nonfinite_steps", 0))
            starting_epoch = completed_steps // num_update_steps_per_epoch
            resume_batches = (completed_steps % num_update_steps_per_epoch) * args.gradient_accumulation_steps
            progress_bar.update(completed_steps)
            # Checkpoints past this one belong to the abandoned continuation: once this run saves its
            # own, they go, so that 'latest' can never pick them up.
            stale = [path for steps, path in list_checkpoints(args.output_dir) if steps > completed_steps]

        def checkpoint_now(name):
            if not parameters_finite(model, accelerator):
                progress_bar.close()
                raise RunFailed(f"step {completed_steps}: the weights are not finite; stopped without saving "
                                f"{name} or a model. {last_good(args.output_dir)}")  # fmt: skip
            state = {"completed_steps": completed_steps, "epoch": epoch, "skipped_nonfinite_steps": skipped_steps,
                     "num_update_steps_per_epoch": num_update_steps_per_epoch, "settings": settings}  # fmt: skip
            save_checkpoint(accelerator, args.output_dir, name, state)
            if accelerator.is_main_process:
                delete_checkpoints([p for p in stale if os.path.basename(p) != name and os.path.isdir(p)])
                if args.checkpoints_total_limit is not None:
                    found = [path for _, path in list_checkpoints(args.output_dir)]
                    keep = found[-args.checkpoints_total_limit :] + [os.path.join(args.output_dir, name)]
                    delete_checkpoints([p for p in found if p not in keep])
            stale.clear()
            if args.push_to_hub and args.hub_strategy == "every_save":
                export_model(accelerator, model, tokenizer, args.output_dir)
                if repo_id is not None:  # in the background: training goes on while it uploads
                    start_upload(args.output_dir, repo_id, hub_token, completed_steps, hub_uploads)
            accelerator.wait_for_everyone()

        hub_uploads = []
        for epoch in range(starting_epoch, args.num_train_epochs):
            if completed_steps >= args.max_train_steps:
                break
            model.train()
            train_dataloader.set_epoch(epoch)
            total_loss, num_updates = torch.zeros((), device=accelerator.device), 0
            if epoch == starting_epoch and resume_batches:
                # Skip the batches the checkpointed run had already seen in this epoch.
                active_dataloader = accelerator.skip_first_batches(train_dataloader, resume_batches)
            else:
                active_dataloader = train_dataloader
            step_loss = torch.zeros((), device=accelerator.device)
            for batch in active_dataloader:
                with accelerator.accumulate(model):
                    loss = model(**batch).loss
                    step_loss += loss.detach().float()
                    accelerator.backward(loss)
                    # A non-finite loss in any micro-batch of any process spoils the update: decide together.
                    finite = not accelerator.sync_gradients or all_finite(step_loss, accelerator)
                    if finite:
                        optimizer.step()
                        lr_scheduler.step()
                        optimizer.zero_grad()
                    else:
                        # Neither the weights nor the schedule move: only an update advances the learning rate,
                        # as Accelerate does for an update the fp16 loss scaler skips, so the rates the weights
                        # see do not depend on how many updates were skipped (the same rule in
                        # run_mometas_pretraining.py). Nothing unscaled the gradients (no clipping here), so the
                        # loss scaler's step needs no closing.
                        optimizer.zero_grad()
                        skipped_steps += 1
                        if skipped_steps > args.skip_nonfinite_steps:
                            progress_bar.close()
                            if args.skip_nonfinite_steps:
                                advice = (f"All {args.skip_nonfinite_steps} updates --skip_nonfinite_steps allows "
                                          "were already skipped: lower --learning_rate, check the data, or raise "
                                          "--skip_nonfinite_steps")  # fmt: skip
                            else:
                                advice = ("Lower --learning_rate, check the data, or skip such steps with "
                                          "--skip_nonfinite_steps N")  # fmt: skip
                            raise RunFailed(f"step {completed_steps + 1}: the training loss is not finite; stopped "
                                            f"without saving a model. {last_good(args.output_dir)} {advice}")  # fmt: skip
                        logger.warning(f"step {completed_steps + 1}: the loss is not finite, update skipped "
                                       f"({skipped_steps} of --skip_nonfinite_steps {args.skip_nonfinite_steps})")  # fmt: skip

                # Checks if the accelerator has performed an optimization step behind the scenes
                if accelerator.sync_gradients:
                    if finite:
                        total_loss, num_updates = total_loss + step_loss, num_updates + 1
                    step_loss = torch.zeros((), device=accelerator.device)
                    progress_bar.update(1)
                    completed_steps += 1
                    if isinstance(args.checkpointing_steps, int) and completed_steps % args.checkpointing_steps == 0:
                        checkpoint_now(f"step_{completed_steps}")
                if completed_steps >= args.max_train_steps:
                    break

            results, predictions = evaluate()
            logger.info(f"epoch {epoch}: {results}")
            if args.with_tracking:
                accelerator.log({**results, "train_loss": total_loss.item() / max(1, num_updates), "epoch": epoch,
                                 "step": completed_steps}, step=completed_steps)  # fmt: skip
            if args.checkpointing_steps == "epoch":
                checkpoint_now(f"epoch_{epoch}")
        if args.with_tracking:
            accelerator.end_training()
        progress_bar.close()
        if not parameters_finite(model, accelerator):
            raise RunFailed(f"step {completed_steps}: the weights are not finite; stopped without saving a model. "
                            f"{last_good(args.output_dir)}")  # fmt: skip
    else:
        model = accelerator.prepare(model)
        eval_dataloaders = {name: accelerator.prepare(dl) for name, dl in eval_dataloaders.items()}
        hub_uploads = []
    if not results and eval_splits:  # evaluation only, or resumed after the last update
        results, predictions = evaluate()
        logger.info(f"evaluation: {results}")

    # ---- Save the model, results and predictions --------------------------------------------------
    if args.output_dir is None:
        return results
    test_predictions = predict(eval_dataloaders["test"]) if "test" in splits else None
    if do_train:
        export_model(accelerator, model, tokenizer, args.output_dir)
    if not accelerator.is_main_process:
        return results
    if not do_train:
        tokenizer.save_pretrained(args.output_dir)
    settings_out = public_settings(args, [hub_token])
    write_json(os.path.join(args.output_dir, "training_args.json"), settings_out)
    all_results = {f"eval_{k}": v for k, v in results.items()}
    if eval_splits:
        all_results["eval_samples"] = len(splits[eval_splits[0]].data)
    if do_train:
        all_results.update({"epoch": epoch, "train_samples": len(splits["train"].data), "train_steps": completed_steps})
    if test_predictions is not None and labels["test"][:1] != [None]:
        all_results.update({f"test_{k}": v for k, v in compute_metrics(metric, test_predictions, labels["test"]).items()})
    write_json(os.path.join(args.output_dir, "all_results.json"), all_results)

    def label_text(value):
        return f"{float(value):.6g}" if is_regression else label_list[int(value)]

    outputs = list(predictions.items()) + ([("test", test_predictions)] if test_predictions is not None else [])
    for name, preds in outputs:
        split, gold = splits[name], labels[name]
        ids = split.data[split.columns["idx"]] if split.columns["idx"] else range(len(preds))
        has_gold = gold[:1] != [None]
        file_name = "validation_matched" if args.task_name == "mnli" and name == "validation" else name
        with open(os.path.join(args.output_dir, f"predictions_{file_name}.tsv"), "w", encoding="utf-8") as f:
            f.write("index\tprediction" + ("\tlabel" if has_gold else "") + "\n")
            for idx, pred, y in zip(ids, preds, gold):
                f.write(f"{idx}\t{label_text(pred)}" + (f"\t{label_text(y)}" if has_gold else "") + "\n")
    if do_train:
        if args.dataset_name:
            data_note, hub_datasets = f"[{args.dataset_name}](https://huggingface.co/datasets/{args.dataset_name})", [args.dataset_name]
        else:
            files = ", ".join(f"`{os.path.basename(p)}`" for p in (args.train_file, args.validation_file) if p)
            data_note = f"{args.task_name or 'local'} data ({files})" if files else args.task_name
            hub_datasets = [task.hub[0]] if task is not None and task.hub else []
        write_model_card(args, args.output_dir, all_results, data_note, hub_datasets)
    if repo_id is not None:
        finish_uploads(hub_uploads)
        try:
            for upload, _ in hub_uploads:
                upload.result()
            HfApi(token=hub_token).upload_folder(repo_id=repo_id, folder_path=args.output_dir, commit_message="End of training",
                                                 ignore_patterns=HUB_IGNORE_PATTERNS)  # fmt: skip
        except Exception as err:
            raise RunFailed(f"the push to {repo_id} failed ({one_line(err)}); the model and results are kept in "
                            f"{args.output_dir}; push them again with: {push_command(repo_id, args.output_dir)}") from None  # fmt: skip
        logger.info(f"Pushed {args.output_dir} to https://huggingface.co/{repo_id}")
    return results


def last_good(output_dir):
    found = list_checkpoints(output_dir)
    return f"The last good checkpoint is {found[-1][1]}." if found else "There is no checkpoint of this run."


def export_model(accelerator, model, tokenizer, output_dir):
    """The HF-format model and tokenizer; get_state_dict gathers the weights under FSDP and ZeRO-3."""
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.save_pretrained(
        output_dir, is_main_process=accelerator.is_main_process, save_function=accelerator.save, state_dict=state_dict
    )
    if accelerator.is_main_process:
        tokenizer.save_pretrained(output_dir)


if __name__ == "__main__":
    main()

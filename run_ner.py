#!/usr/bin/env python
"""Fine-tune a BERT encoder for named-entity recognition (CoNLL-2003, WNUT-17) with 🤗 Accelerate.

The shape of transformers' ``examples/pytorch/token-classification/run_ner_no_trainer.py``: one
flat script that imports only installed packages, so it can be copied alone and changed.

* Data: CoNLL files (``token ... tag`` per line, blank lines between sentences: CoNLL-2003's
  4 columns or WNUT-17's 2), JSON lines with ``tokens``/``ner_tags`` (``datasets``' json
  loader), or a Hub dataset. The label list comes from the training data.
* Word labels go on the first wordpiece of each word (``--label_all_tokens``: on every
  wordpiece, B- turned into I- after the first). Evaluation is per word with seqeval's
  entity-level precision, recall and F1 (per type with ``--return_entity_level_metrics``);
  words cut off by ``--max_length`` count as predicted ``O``.
* ``--hparams paper``: the paper's settings (Table 7), the row guessed from the entity types.
* Atomic checkpoints, ``--resume_from_checkpoint PATH|latest`` that refuses to continue with
  settings that change the batches, ``--checkpoints_total_limit``; a non-finite loss stops the
  run; bad input ends in one line ``error: ...`` and exit code 2, before any training.

Reference: docs/finetuning.md; every error: docs/errors.md.
"""

import argparse
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
import torch
import transformers
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, set_seed
from huggingface_hub import HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, filter_repo_objects, validate_repo_id
from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification, get_scheduler
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

# Copied from run_glue.logger
logger = get_logger(__name__)

# The MOMETAS paper's fine-tuning settings (Wu et al., EMNLP 2022 Findings, Table 7). The batch
# size is the total one, split over processes and accumulation steps; weight decay is 0.01.
# Not a copy of run_glue.PAPER_HPARAMS: the paper's settings for CoNLL-2003 and WNUT-17
PAPER_HPARAMS = {
    #            batch  lr   max_length  warmup  epochs
    "conll2003": (32, 5e-5, 128, 0.1, 3),
    "wnut17":    (16, 5e-5, 64,  0.1, 5),
}  # fmt: skip
# Copied from run_glue.PAPER_WEIGHT_DECAY
PAPER_WEIGHT_DECAY = 0.01
PAPER_TASK_OF_DATASET = {"conll2003": "conll2003", "eriktks/conll2003": "conll2003", "wnut_17": "wnut17",
                         "leondz/wnut_17": "wnut17"}  # fmt: skip
ENTITY_TYPES = {"conll2003": {"per", "org", "loc", "misc"},
                "wnut17": {"person", "location", "corporation", "product", "creative-work", "group"}}  # fmt: skip
TAG_RE = re.compile(r"^(O|[BIESLU]-\S+)$")

# Copied from run_glue.CHECKPOINT_RE
CHECKPOINT_RE = re.compile(r"^(step|epoch)_(\d+)$")
# Copied from run_glue.CHECKPOINT_STATE
CHECKPOINT_STATE = "mometas_state.json"  # written last: a step_N/epoch_N folder without it is not complete
# Copied from run_glue.HUB_IGNORE_PATTERNS
HUB_IGNORE_PATTERNS = ["step_*", "epoch_*", ".tmp_*", ".trash_*"]
# Copied from run_glue.SCHEDULERS
SCHEDULERS = ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"]
# Copied from run_glue.TOKENIZER_FILES
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "spiece.model", "vocab.json")
# Copied from run_glue.WEIGHT_FILES
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# Settings that change which examples make up which batch, or their tokens and labels: a checkpoint
# can only be continued with the same ones (unless --allow_config_change).
# Not a copy of run_glue.RESUME_SETTINGS: the flags that change NER batches
RESUME_SETTINGS = (
    "train_data", "dataset_name", "dataset_config_name", "text_column_name", "label_column_name", "max_train_samples",
    "label_all_tokens", "model", "tokenizer_name", "max_length", "pad_to_max_length", "per_device_train_batch_size",
    "gradient_accumulation_steps", "num_processes", "seed",
)  # fmt: skip
# Not a copy of run_glue.CARD_SETTINGS: the NER flags the model card shows
CARD_SETTINGS = ("paper_task", "hparams", "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
                 "num_train_epochs", "max_train_steps", "lr_scheduler_type", "num_warmup_steps", "warmup_ratio",
                 "weight_decay", "max_length", "label_all_tokens", "seed")  # fmt: skip


# Copied from run_glue.InputError
class InputError(Exception):
    """A problem with the command line, the data or the folders: one line, exit code 2."""


# Copied from run_glue.RunFailed
class RunFailed(Exception):
    """The run started but cannot finish correctly (non-finite loss, failed push): exit code 1."""


# Copied from run_glue.ArgumentParser
class ArgumentParser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # argparse takes "-1e-5" for a flag; read it as a (negative) number so the type check can refuse it.
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    def error(self, message):
        # argparse prints the whole usage first; keep bad flags to one line like every other input error.
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


# Copied from run_glue.number
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


# Copied from run_glue.checkpointing_steps
def checkpointing_steps(text):
    if text.strip().lower() == "epoch":
        return "epoch"
    if not re.fullmatch(r"\s*[+-]?\d+\s*", text):
        raise argparse.ArgumentTypeError(f"expected a number of updates or 'epoch', got {text!r}")
    return number(int, 1)(text)


# Not a copy of run_glue.parse_args: the NER flags
def parse_args(argv=None):
    parser = ArgumentParser(
        description="Fine-tune a BERT encoder for named-entity recognition.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--train_file", type=str, default=None,
                      help="Training data: a CoNLL file (token ... tag per line) or .json/.jsonl with token and tag lists.")
    data.add_argument("--validation_file", type=str, default=None, help="Validation data, same formats.")
    data.add_argument("--test_file", type=str, default=None, help="Test data; a CoNLL file with one column is unlabeled.")
    data.add_argument("--dataset_name", type=str, default=None, help="A Hub dataset instead of files (needs a network).")
    data.add_argument("--dataset_config_name", type=str, default=None, help="The configuration of --dataset_name.")
    data.add_argument("--text_column_name", type=str, default="tokens", help="JSON/Hub column with the words.")
    data.add_argument("--label_column_name", type=str, default="ner_tags", help="JSON/Hub column with the tags.")
    data.add_argument("--max_train_samples", type=number(int, 1), default=None, help="Keep the first N training sentences.")
    data.add_argument("--max_eval_samples", type=number(int, 1), default=None, help="Keep the first N validation sentences.")
    data.add_argument("--max_predict_samples", type=number(int, 1), default=None, help="Keep the first N test sentences.")
    data.add_argument("--max_length", type=number(int, 1), default=128,
                      help="Maximum tokenized length; words cut off count as predicted O.")
    data.add_argument("--pad_to_max_length", action="store_true",
                      help="Pad every input to --max_length instead of padding each batch to its longest.")
    data.add_argument("--label_all_tokens", action="store_true",
                      help="Train on every wordpiece of a word (B- becomes I- after the first), not the first only.")
    data.add_argument("--return_entity_level_metrics", action="store_true",
                      help="Also report precision, recall and F1 per entity type.")

    model = parser.add_argument_group("model")
    model.add_argument("--model_name_or_path", type=str, required=True,
                       help="Required. A local BERT folder (e.g. run_mometas_pretraining.py's output) or a Hub model id.")
    model.add_argument("--config_name", type=str, default=None, help="Config name or path, if not the model's.")
    model.add_argument("--tokenizer_name", type=str, default=None,
                       help="Tokenizer name or path, if not the model's; it must be a fast tokenizer (word ids).")
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
    train.add_argument("--seed", type=number(int, 0, below=2**32), default=42,
                       help="Seed for the classifier's initialisation, dropout and data order.")
    train.add_argument("--hparams", type=str, default=None, choices=["paper"],
                       help="'paper': the MOMETAS paper's settings (Table 7) for --paper_task; flags you type win.")
    train.add_argument("--paper_task", type=str, default=None, choices=list(PAPER_HPARAMS),
                       help="The Table 7 column for --hparams paper; guessed from the entity types if not given.")
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
        validate_args(args)  # the guess below reads --train_file
        row = args.paper_task or PAPER_TASK_OF_DATASET.get(args.dataset_name or "") or guess_paper_task(args)
        if row is None:
            parser.error("--hparams paper: cannot tell CoNLL-2003 from WNUT-17 by the entity types; set --paper_task")
        batch, lr, max_length, warmup, epochs = PAPER_HPARAMS[row]
        per_device = max(1, batch // (PartialState().num_processes * args.gradient_accumulation_steps))
        parser.set_defaults(per_device_train_batch_size=per_device, learning_rate=lr, max_length=max_length,
                            warmup_ratio=warmup, num_train_epochs=epochs, weight_decay=PAPER_WEIGHT_DECAY, paper_task=row)  # fmt: skip
    args = parser.parse_args(argv)
    hub_token = args.hub_token or os.environ.get("HF_TOKEN") or None
    del args.hub_token  # from here on, args can be logged, saved and sent to trackers
    validate_args(args)
    return args, hub_token


def guess_paper_task(args):
    if args.train_file is None:
        return None
    types = {tag.split("-", 1)[1].lower() for s in read_split(args.train_file, "train_file", "train", args) for tag in s["tags"]
             if "-" in tag}  # fmt: skip
    return next((task for task, known in ENTITY_TYPES.items() if types and types <= known), None)


# Not a copy of run_glue.validate_args: the NER data flags
def validate_args(args):
    for flag in ("train_file", "validation_file", "test_file"):
        path = getattr(args, flag)
        if path is not None and not os.path.isfile(path):
            raise InputError(f"--{flag} {path}: {'is a folder' if os.path.isdir(path) else 'no such file'}; expected a data file")
    has_files = any((args.train_file, args.validation_file, args.test_file))
    if has_files and args.dataset_name is not None:
        raise InputError("give --dataset_name or local files (--train_file, ...), not both")
    if not has_files and args.dataset_name is None:
        raise InputError("need --train_file, --validation_file or --test_file, or --dataset_name")
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


# Copied from run_glue.one_line
def one_line(error):
    return " ".join(str(error).split()) or type(error).__name__


# ---------------------------------------------------------------------------------------------
# The output folder belongs to one run
# ---------------------------------------------------------------------------------------------
# Copied from run_glue.check_output_dir
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


# Copied from run_glue.is_inside
def is_inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder + os.sep)


# Copied from run_glue.clear_output_dir
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
# Copied from run_glue.list_checkpoints
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


# Copied from run_glue.find_checkpoint
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


# Copied from run_glue.read_checkpoint_state
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


# Copied from run_glue.file_digest
def file_digest(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Copied from run_glue.resume_settings
def resume_settings(args, num_processes):
    """What a checkpoint must share with the run that continues it (RESUME_SETTINGS)."""
    settings = {key: getattr(args, key, None) for key in RESUME_SETTINGS}
    settings["train_data"] = file_digest(args.train_file) if args.train_file else None
    model = args.model_name_or_path
    settings["model"] = os.path.realpath(model) if os.path.exists(model) else model
    settings["num_processes"] = num_processes
    return settings


# Copied from run_glue.compare_settings
def compare_settings(checkpoint, saved, current):
    differences = [
        f"{key} {saved.get(key)!r} -> {current[key]!r}" for key in RESUME_SETTINGS if saved.get(key) != current[key]
    ]
    if differences:
        raise InputError(f"--resume_from_checkpoint {checkpoint} was saved with other settings that change the "
                         f"batches: {'; '.join(differences)}; run with the checkpoint's settings, or pass "
                         "--allow_config_change to continue anyway")  # fmt: skip


# Copied from run_glue.fsync_file
def fsync_file(path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


# Copied from run_glue.save_checkpoint
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


# Copied from run_glue.delete_checkpoints
def delete_checkpoints(paths):
    for path in paths:
        trash = os.path.join(os.path.dirname(path), f".trash_{os.path.basename(path)}")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(path, trash)  # a killed rmtree must not leave a folder that still looks complete
        shutil.rmtree(trash)


# Copied from run_glue.read_text
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


# ---------------------------------------------------------------------------------------------
# Data: CoNLL files (read here), JSON lines (datasets' json loader) or a Hub dataset
# ---------------------------------------------------------------------------------------------
# Not a copy of run_glue.Split: a split is a list of tagged sentences, not a table
@dataclass
class Split:
    sentences: list  # {"tokens": [str], "tags": [str] or None (unlabeled), "where": "line N"}
    source: str  # the flag and file, or "name[split]", for messages


def read_conll(path, flag, split):
    """CoNLL: the token in the first column, the tag in the last; -DOCSTART- lines are skipped.

    Lines holding only whitespace (WNUT's single TAB) end a sentence. A file with a single
    column is unlabeled (test files only).
    """
    text = read_text(path, flag)
    sentences, tokens, tags, start, width = [], [], [], None, None
    for number, line in enumerate(text.splitlines() + [""], 1):
        if not line.strip():
            if tokens:
                sentences.append({"tokens": tokens, "tags": None if width == 1 else tags, "where": f"sentence at line {start}"})
            tokens, tags, start = [], [], None
            continue
        parts = [p.strip() for p in (line.split("\t") if "\t" in line else line.split())]
        if parts[0] == "-DOCSTART-":
            continue
        width = width or len(parts)
        if len(parts) != width:
            raise InputError(f"--{flag} {path}: line {number}: {len(parts)} columns, but the lines before have "
                             f"{width} (token ... tag)")  # fmt: skip
        if width == 1 and split != "test":
            raise InputError(f"--{flag} {path}: line {number}: a single column; expected `token ... tag` lines "
                             "(a token and an IOB tag)")  # fmt: skip
        if width > 1 and not TAG_RE.match(parts[-1]):
            raise InputError(f"--{flag} {path}: line {number}: last column {parts[-1]!r} is not an IOB tag; expected "
                             "`token ... tag` lines with tags like O, B-PER, I-PER")  # fmt: skip
        start = start or number
        tokens.append(parts[0])
        tags.append(parts[-1])
    if not sentences:
        raise InputError(f"--{flag} {path}: no sentences; expected CoNLL `token ... tag` lines")
    return sentences


def sentences_from_records(data, source, where, split, args, tag_names=None):
    """Sentences from a table with a word-list column and a tag-list column (JSON lines, a Hub dataset)."""
    words, tags_column = args.text_column_name, args.label_column_name
    for column, flag in ((words, "--text_column_name"), (tags_column, "--label_column_name")):
        if column not in data.column_names and (column == words or split != "test"):
            raise InputError(f"{source}: no {column!r} column (its columns: {', '.join(data.column_names)}); set {flag}")
    all_tags = data[tags_column] if tags_column in data.column_names else [None] * len(data)
    sentences = []
    for row, (tokens, tags) in enumerate(zip(data[words], all_tags)):
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise InputError(f"{source}: {where[row]}: {words!r} must be a list of words")
        if tags is not None:
            if tag_names is not None:  # a Hub ClassLabel: ids to names
                tags = [tag_names[t] if isinstance(t, int) and 0 <= t < len(tag_names) else t for t in tags]
            if not isinstance(tags, list) or len(tags) != len(tokens):
                raise InputError(f"{source}: {where[row]}: {words!r} and {tags_column!r} must be lists of the same length")
            bad = next((t for t in tags if not isinstance(t, str) or not TAG_RE.match(t)), None)
            if bad is not None:
                raise InputError(f"{source}: {where[row]}: tag {bad!r} is not an IOB tag; expected tags like O, B-PER")
        elif split != "test":
            raise InputError(f"{source}: {where[row]}: no {tags_column!r} in the {split} data")
        if tokens:
            sentences.append({"tokens": tokens, "tags": tags, "where": where[row]})
    if not sentences:
        raise InputError(f"{source}: no sentences")
    return sentences


def read_split(path, flag, split, args):
    if not path.lower().endswith((".json", ".jsonl")):
        return read_conll(path, flag, split)
    text = read_text(path, flag)
    try:
        data = datasets.load_dataset("json", data_files={"data": path}, split="data")
    except Exception as err:  # pyarrow's and json's errors name neither file nor flag
        raise InputError(f"--{flag} {path}: not valid JSON lines or a JSON list of records ({one_line(err.__cause__ or err)})") from None
    lines = [n for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    is_list = text.lstrip().startswith("[")
    where = [f"record {i + 1}" if is_list or i >= len(lines) else f"line {lines[i]}" for i in range(len(data))]
    return sentences_from_records(data, f"--{flag} {path}", where, split, args)


# Not a copy of run_glue.load_splits: CoNLL/WNUT column files and JSON lines
def load_splits(args):
    files = {"train": ("train_file", args.train_file), "validation": ("validation_file", args.validation_file),
             "test": ("test_file", args.test_file)}  # fmt: skip
    loaded = {}
    if any(path for _, path in files.values()):
        for split, (flag, path) in files.items():
            if path is not None:
                loaded[split] = Split(read_split(path, flag, split, args), f"--{flag} {path}")
    else:
        try:
            raw = datasets.load_dataset(args.dataset_name, args.dataset_config_name)
        except Exception as err:
            raise InputError(f"--dataset_name {args.dataset_name}: cannot load it ({one_line(err)})") from None
        for split in ("train", "validation", "test"):
            if split in raw:
                feature = raw[split].features.get(args.label_column_name)
                names = getattr(getattr(feature, "feature", None), "names", None)
                source, where = f"{args.dataset_name}[{split}]", [f"row {i + 1}" for i in range(len(raw[split]))]
                loaded[split] = Split(sentences_from_records(raw[split], source, where, split, args, names), source)
    limits = {"train": args.max_train_samples, "validation": args.max_eval_samples, "test": args.max_predict_samples}
    for name, split in loaded.items():
        split.sentences = split.sentences[: limits[name]]  # the first N, as in the HF examples
    return loaded


def paper_task_of(label_list):
    types = {tag.split("-", 1)[1].lower() for tag in label_list if "-" in tag}
    return next((task for task, known in ENTITY_TYPES.items() if types and types <= known), None)


def check_tags(split, label_list):
    known = set(label_list)
    for sentence in split.sentences:
        unknown = next((t for t in sentence["tags"] or [] if t not in known), None)
        if unknown is not None:
            raise InputError(f"{split.source}: {sentence['where']}: unknown tag {unknown!r}; expected one of the "
                             f"training tags: {', '.join(label_list)}")  # fmt: skip


# Not a copy of run_glue.compute_metrics: entity-level scores from seqeval
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
            if not entity_type.endswith(" avg"):
                results.update({f"{entity_type}_precision": scores["precision"], f"{entity_type}_recall": scores["recall"],
                                f"{entity_type}_f1": scores["f1-score"], f"{entity_type}_number": int(scores["support"])})  # fmt: skip
    return {k: v if isinstance(v, int) else float(v) for k, v in results.items()}


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
# Copied from run_glue.check_model_source
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


# Copied from run_glue.load_config
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


# Not a copy of run_glue.load_tokenizer: tags follow wordpieces by word_ids, which only fast tokenizers have
def load_tokenizer(args):
    name = args.tokenizer_name or args.model_name_or_path
    flag = "--tokenizer_name" if args.tokenizer_name else "--model_name_or_path"
    if args.tokenizer_name:
        check_model_source(name, flag)
    if os.path.isdir(name) and not any(os.path.isfile(os.path.join(name, f)) for f in TOKENIZER_FILES):
        raise InputError(f"{flag} {name}: holds no tokenizer ({', '.join(TOKENIZER_FILES[:2])}); pass --tokenizer_name")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, use_fast=True, trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError, ImportError) as err:
        raise InputError(f"{flag} {name}: cannot load its tokenizer ({one_line(err)})") from None
    if not tokenizer.is_fast:
        raise InputError(f"{flag} {name}: has no fast tokenizer, which aligning tags to wordpieces needs (word_ids)")
    return tokenizer


# Copied from run_glue.load_model with SequenceClassification->TokenClassification, sequence->token
def load_model(args, config):
    name = args.model_name_or_path
    if os.path.isdir(name) and not any(os.path.isfile(os.path.join(name, f)) for f in WEIGHT_FILES):
        raise InputError(f"--model_name_or_path {name}: holds no weights ({', '.join(WEIGHT_FILES[:3])})")
    try:
        model = AutoModelForTokenClassification.from_pretrained(
            name, config=config, ignore_mismatched_sizes=args.ignore_mismatched_sizes, trust_remote_code=args.trust_remote_code
        )
    except (OSError, ValueError, RuntimeError) as err:
        hint = "; pass --ignore_mismatched_sizes for a new classifier" if "size mismatch" in str(err) else ""
        raise InputError(f"--model_name_or_path {name}: cannot load it for token classification ({one_line(err)}){hint}") from None
    if type(model).__module__.startswith("transformers."):
        # A built-in class needs no remote code: an auto_map left over from a MOMETAS folder would
        # send trust_remote_code=True loaders to *_mometas.py files that this folder does not hold.
        model.config.__dict__.pop("auto_map", None)
    return model


# ---------------------------------------------------------------------------------------------
# Outputs and the Hub
# ---------------------------------------------------------------------------------------------
# Copied from run_glue.finite_or_none
def finite_or_none(value):
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN: a bare NaN makes the file unreadable for strict parsers
    return value


# Copied from run_glue.write_json
def write_json(path, data):
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(finite_or_none(data), f, indent=2, sort_keys=True, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# Copied from run_glue.public_settings
def public_settings(args, secrets=()):
    """vars(args) for trackers, training_args.json and the card: scalars only, no secret."""
    secrets = [s for s in (*secrets, os.environ.get("HF_TOKEN")) if s]
    settings = {}
    for key, value in sorted(vars(args).items()):
        if value is None or (isinstance(value, str) and any(s in value for s in secrets)):
            continue
        settings[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return settings


# Copied from run_glue.is_hub_id
def is_hub_id(name):
    if os.path.exists(name) or name.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(name)
        return True
    except HFValidationError:
        return False


# Not a copy of run_glue.write_model_card: this task's pipeline tag and tags
def write_model_card(args, output_dir, results, data_note, datasets_ids):
    """README.md for the Hub; nothing in it names a local path."""
    base_model = args.model_name_or_path if is_hub_id(args.model_name_or_path) else None
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="token-classification",
        base_model=base_model,
        datasets=datasets_ids or None,
        tags=["token-classification", "ner", "mometas"],
        model_name=Path(output_dir).absolute().name,
    )
    source = f"[{base_model}](https://huggingface.co/{base_model})" if base_model else "A local BERT checkpoint"
    lines = [f"# {Path(output_dir).absolute().name}", "",
             f"{source} fine-tuned on {data_note} with `run_ner.py` of the MOMETAS toolkit.", "",
             "## Results", "", "| metric | value |", "|---|---|"]  # fmt: skip
    lines += [f"| {k} | {'n/a' if v is None else round(v, 4) if isinstance(v, float) else v} |"
              for k, v in sorted(finite_or_none(results).items())]  # fmt: skip
    lines += ["", "## Settings", "", "| flag | value |", "|---|---|"]
    lines += [f"| {k} | {getattr(args, k)} |" for k in CARD_SETTINGS if getattr(args, k, None) is not None]
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
    card.save(os.path.join(output_dir, "README.md"))


# Copied from run_glue.push_command
def push_command(repo_id, output_dir):
    excludes = " ".join(f"--exclude '{p}'" for p in HUB_IGNORE_PATTERNS)
    return f"hf upload {repo_id} {output_dir} . {excludes}"


# Copied from run_glue.create_hub_repo
def create_hub_repo(args, hub_token):
    """The repo id with its namespace, created (or found writable) before any training."""
    name = args.hub_model_id or Path(args.output_dir).absolute().name
    try:
        return HfApi(token=hub_token).create_repo(name, private=args.hub_private_repo or None, exist_ok=True).repo_id
    except Exception as err:  # offline, refused, no token, no write access: all one line
        raise InputError(f"--push_to_hub: cannot create or write the Hub repo {name!r} ({one_line(err)}); check the "
                         "network, --hub_token or HF_TOKEN, and --hub_model_id, or drop --push_to_hub") from None  # fmt: skip


# Copied from run_glue.all_finite
def all_finite(value, accelerator):
    return accelerator.reduce((~torch.isfinite(value)).float(), reduction="sum").item() == 0


# Copied from run_glue.parameters_finite
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


# Copied from run_glue.check_launch
def check_launch(args, accelerator):
    """Refuse, before any work, what this loop cannot do under the launch: one line, exit code 2."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED and args.skip_nonfinite_steps:
        raise InputError(f"--skip_nonfinite_steps {args.skip_nonfinite_steps}: under DeepSpeed accelerator.backward "
                         "applies the update before its loss can be checked, so no update can be skipped; drop the "
                         "flag (a non-finite loss then stops the run), or launch with DDP or FSDP")  # fmt: skip


# Copied from run_glue.start_upload
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


# Copied from run_glue.finish_uploads
def finish_uploads(uploads):
    """Wait for the background uploads and delete their copies; a failed one is raised again by its result()."""
    for future, snapshot in uploads:
        if os.path.isdir(snapshot):
            try:
                future.result()
            except Exception as err:  # the final push raises it again and fails the run; training goes on
                logger.warning(f"a background upload failed ({one_line(err)}); the push at the end reports it")
            shutil.rmtree(snapshot, ignore_errors=True)


# Copied from run_glue.main
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


# Copied from run_glue.scrub
def scrub(text, secret):
    return text.replace(secret, "***") if secret else text


# Not a copy of run_glue.run: the NER data, labels and predictions
def run(args, hub_token):
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
        logger.info(f"--hparams paper for {args.paper_task}: lr {args.learning_rate}, per-device batch "
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
    splits = load_splits(args)
    do_train = "train" in splits
    if do_train:
        label_list = sorted({tag for s in splits["train"].sentences for tag in s["tags"]})  # from the training data
        config = load_config(args, num_labels=len(label_list), id2label=dict(enumerate(label_list)),
                             label2id={t: i for i, t in enumerate(label_list)}, finetuning_task="ner")  # fmt: skip
    else:
        config = load_config(args)
        label_list = [str(config.id2label[i]) for i in range(config.num_labels)]
        if not all(TAG_RE.match(tag) for tag in label_list):
            raise InputError(f"--model_name_or_path {args.model_name_or_path} has no NER labels in its config "
                             f"({', '.join(label_list)}); give --train_file to fine-tune it first")  # fmt: skip
    for split in splits.values():
        check_tags(split, label_list)
    label_to_id = {tag: i for i, tag in enumerate(label_list)}
    # B-X -> I-X for the later wordpieces of a word under --label_all_tokens.
    b_to_i_label = [label_to_id.get("I-" + tag[2:], i) if tag.startswith("B-") else i for i, tag in enumerate(label_list)]
    eval_splits = ["validation"] if "validation" in splits else []

    # ---- Model and tokenizer --------------------------------------------------------------------
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

    # ---- Tokenize once, aligning the word labels to wordpieces ---------------------------------------------
    padding = "max_length" if args.pad_to_max_length else False

    def tokenize_and_align_labels(examples, label_all_tokens):
        tokenized = tokenizer(
            examples["tokens"], max_length=args.max_length, padding=padding, truncation=True, is_split_into_words=True
        )
        labels, first_pieces = [], []
        for i, tag_ids in enumerate(examples["tag_ids"]):
            previous, label_ids, words = None, [], []
            for word_id in tokenized.word_ids(batch_index=i):
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
        tokenized["word_index"] = first_pieces  # the word of each labelled position, for word-level evaluation
        return tokenized

    processed = {}
    for name, split in splits.items():
        columns = {
            "tokens": [s["tokens"] for s in split.sentences],
            # Unlabeled test sentences get placeholder ids: they only mark the word positions.
            "tag_ids": [[label_to_id[t] for t in s["tags"]] if s["tags"] else [0] * len(s["tokens"]) for s in split.sentences],
        }
        with accelerator.main_process_first():
            processed[name] = datasets.Dataset.from_dict(columns).map(
                tokenize_and_align_labels,
                batched=True,
                remove_columns=list(columns),
                fn_kwargs={"label_all_tokens": args.label_all_tokens and name == "train"},
                desc=f"Running tokenizer on {name}",
            )
    word_index = {name: ds["word_index"] for name, ds in processed.items()}
    processed = {name: ds.remove_columns("word_index") for name, ds in processed.items()}
    if do_train:
        for index in random.sample(range(len(processed["train"])), min(2, len(processed["train"]))):
            logger.info(f"Sample {index} of the training set: {processed['train'][index]}.")

    # Multiples of 8 suit tensor cores under fp16/bf16.
    pad_to = 8 if accelerator.mixed_precision in ("fp16", "bf16") else None
    data_collator = DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=pad_to)
    eval_dataloaders = {
        name: DataLoader(processed[name], collate_fn=data_collator, batch_size=args.per_device_eval_batch_size,
                         generator=torch.Generator())  # fmt: skip
        for name in eval_splits + (["test"] if "test" in splits else [])
    }

    def predict(name):
        """Word-level predicted tags for every sentence of the split (O for words cut off)."""
        model.eval()
        rows = []
        for batch in eval_dataloaders[name]:
            with torch.no_grad():
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            preds = accelerator.pad_across_processes(logits.argmax(dim=-1), dim=1, pad_index=-100)
            labels = accelerator.pad_across_processes(batch["labels"], dim=1, pad_index=-100)
            preds, labels = accelerator.gather_for_metrics((preds, labels))
            rows.extend(p[lab != -100] for p, lab in zip(preds.cpu().numpy(), labels.cpu().numpy()))
        predicted = []
        for sentence, p, words in zip(splits[name].sentences, rows, word_index[name]):
            tags = ["O"] * len(sentence["tokens"])
            for word, label_id in zip(words, p):
                tags[word] = label_list[int(label_id)]
            predicted.append(tags)
        return predicted

    def evaluate():
        if not eval_splits:
            return {}, {}
        predictions = predict("validation")
        gold = [s["tags"] for s in splits["validation"].sentences]
        return compute_metrics(gold, predictions, args.return_entity_level_metrics), {"validation": predictions}

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
            accelerator.init_trackers("ner_no_trainer", public_settings(args, [hub_token]))

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
    test_predictions = predict("test") if "test" in splits else None
    if do_train:
        export_model(accelerator, model, tokenizer, args.output_dir)
    if not accelerator.is_main_process:
        return results
    if not do_train:
        tokenizer.save_pretrained(args.output_dir)
    write_json(os.path.join(args.output_dir, "training_args.json"), public_settings(args, [hub_token]))
    all_results = {f"eval_{k}": v for k, v in results.items()}
    if eval_splits:
        all_results["eval_samples"] = len(splits["validation"].sentences)
    if do_train:
        all_results.update({"epoch": epoch, "train_samples": len(splits["train"].sentences), "train_steps": completed_steps})
    test_gold = [s["tags"] for s in splits["test"].sentences] if "test" in splits else []
    if test_predictions is not None and all(test_gold):
        metrics = compute_metrics(test_gold, test_predictions, args.return_entity_level_metrics)
        all_results.update({f"test_{k}": v for k, v in metrics.items()})
    write_json(os.path.join(args.output_dir, "all_results.json"), all_results)

    # CoNLL-style predictions, one word per line: token [gold] predicted (conlleval reads `token gold predicted`).
    outputs = list(predictions.items()) + ([("test", test_predictions)] if test_predictions is not None else [])
    for name, predicted in outputs:
        with open(os.path.join(args.output_dir, f"predictions_{name}.conll"), "w", encoding="utf-8") as f:
            for sentence, tags in zip(splits[name].sentences, predicted):
                gold = sentence["tags"] or [None] * len(tags)
                for token, g, p in zip(sentence["tokens"], gold, tags):
                    f.write(f"{token} {g} {p}\n" if g is not None else f"{token} {p}\n")
                f.write("\n")
    if do_train:
        paper_task = args.paper_task or paper_task_of(label_list)
        if args.dataset_name:
            data_note, hub_datasets = f"[{args.dataset_name}](https://huggingface.co/datasets/{args.dataset_name})", [args.dataset_name]
        else:
            files = ", ".join(f"`{os.path.basename(p)}`" for p in (args.train_file, args.validation_file) if p)
            data_note = f"{paper_task or 'local'} data ({files})"
            hub_datasets = [{"conll2003": "eriktks/conll2003", "wnut17": "leondz/wnut_17"}[paper_task]] if paper_task else []
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


# Copied from run_glue.last_good
def last_good(output_dir):
    found = list_checkpoints(output_dir)
    return f"The last good checkpoint is {found[-1][1]}." if found else "There is no checkpoint of this run."


# Copied from run_glue.export_model
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

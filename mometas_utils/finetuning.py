"""Plumbing shared by ``run_glue.py``, ``run_ner.py`` and ``run_multiple_choice.py``.

The three scripts keep their Accelerate training loop in plain sight, top to bottom, like
transformers' ``examples/pytorch/*_no_trainer.py``. What would otherwise be copied three
times lives here:

* the common command-line flags (:func:`add_common_arguments`), which flags the user typed
  (:func:`parse_args_tracking_explicit`) and the ``--hparams paper`` table (:data:`PAPER_HPARAMS`,
  :func:`apply_paper_hparams`);
* optimizer parameter groups and warmup steps;
* atomic checkpoints and ``--resume_from_checkpoint PATH|latest`` (:func:`save_checkpoint`,
  :func:`resolve_resume_checkpoint`, :func:`resume_position`);
* metrics from scikit-learn / scipy (seqeval is used by ``run_ner.py`` directly);
* ``all_results.json``, prediction files, a model card, secret-free tracker config and
  ``--push_to_hub`` through ``huggingface_hub.HfApi``;
* :func:`run_main`, which turns :class:`~mometas_utils.errors.MometasInputError` into
  ``error: <message>`` and exit code 2.

Nothing in here holds on to the Hub token: :func:`pop_hub_token` takes it out of ``args``
right after parsing, so saved args, tracker config, logs and the model card never see it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .errors import MometasInputError

logger = logging.getLogger(__name__)

SCHEDULER_CHOICES = [
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
]

# Folders the scripts write checkpoints into; never pushed to the Hub.
CHECKPOINT_DIR_RE = re.compile(r"^(step|epoch)_(\d+)$")
CHECKPOINT_MARKER = "mometas_checkpoint.json"
TMP_PREFIX = ".tmp_"
HUB_IGNORE_PATTERNS = ["step_*", "epoch_*", f"{TMP_PREFIX}*", ".trash_*", "*.tmp"]

# ---------------------------------------------------------------------------------------
# --hparams paper
# ---------------------------------------------------------------------------------------
# Fine-tuning settings of the MOMETAS paper (Wu et al., EMNLP 2022 Findings).
#
# Batch sizes are the *total* batch size of the paper; weight decay is 0.01 everywhere
# (Table 7). FP16 is not set here: use `accelerate launch --mixed_precision fp16`.
#
# | task      | batch | lr   | max len | warmup | epochs | source                                        |
# |-----------|-------|------|---------|--------|--------|-----------------------------------------------|
# | mnli      | 128   | 3e-5 | 128     | 0.06   | 3      | Table 7                                       |
# | sick      | 32    | 5e-5 | 128     | 0.06   | 3      | Table 7                                       |
# | qqp       | 128   | 5e-5 | 128     | 0.06   | 3      | Table 7                                       |
# | paws_qqp  | 128   | 5e-5 | 128     | 0.06   | 3      | = qqp (PAWS-QQP is evaluated zero-shot)       |
# | stsb      | 16    | 5e-5 | 128     | 0.06   | 10     | Table 7 (10 epochs also in §4.4)              |
# | conll2003 | 32    | 5e-5 | 128     | 0.1    | 3      | Table 7                                       |
# | wnut17    | 16    | 5e-5 | 64      | 0.1    | 5      | Table 7                                       |
# | dream     | 16    | 3e-5 | 128     | 0.06   | 6      | Table 7                                       |
# | anli      | 64    | 5e-5 | 128     | 0.06   | 3      | Table 7 (αNLI)                                |
# | cola      | 16    | 1e-5 | 128     | 0.06   | 3      | lr/batch: ALBERT (Lan et al. 2020) Table 14;  |
# | sst2      | 32    | 1e-5 | 128     | 0.06   | 3      |   epochs: §4.4 ("3 epochs, except 10 for RTE  |
# | mrpc      | 32    | 2e-5 | 128     | 0.06   | 3      |   and STS-B"); warmup 0.06 and max length 128 |
# | qnli      | 32    | 1e-5 | 128     | 0.06   | 3      |   as for the GLUE tasks of Table 7 (ALBERT    |
# | rte       | 32    | 3e-5 | 128     | 0.06   | 10     |   used 512 tokens and fixed warmup steps).    |
PAPER_HPARAMS: dict[str, dict[str, float | int]] = {
    "mnli": dict(batch_size=128, learning_rate=3e-5, max_length=128, warmup_ratio=0.06, num_train_epochs=3),
    "sick": dict(batch_size=32, learning_rate=5e-5, max_length=128, warmup_ratio=0.06, num_train_epochs=3),
    "qqp": dict(batch_size=128, learning_rate=5e-5, max_length=128, warmup_ratio=0.06, num_train_epochs=3),
    "paws_qqp": dict(batch_size=128, learning_rate=5e-5, max_length=128, warmup_ratio=0.06, num_train_epochs=3),
    "stsb": dict(batch_size=16, learning_rate=5e-5, max_length=128, warmup_ratio=0.06, num_train_epochs=10),
    "conll2003": dict(batch_size=32, learning_rate=5e-5, max_length=128, warmup_ratio=0.1, num_train_epochs=3),
    "wnut17": dict(batch_size=16, learning_rate=5e-5, max_length=64, warmup_ratio=0.1, num_train_epochs=5),
    "dream": dict(batch_size=16, learning_rate=3e-5, max_length=128, warmup_ratio=0.06, num_train_epochs=6),
    "anli": dict(batch_size=64, learning_rate=5e-5, max_length=128, warmup_ratio=0.06, num_train_epochs=3),
    "cola": dict(batch_size=16, learning_rate=1e-5, max_length=128, warmup_ratio=0.06, num_train_epochs=3),
    "sst2": dict(batch_size=32, learning_rate=1e-5, max_length=128, warmup_ratio=0.06, num_train_epochs=3),
    "mrpc": dict(batch_size=32, learning_rate=2e-5, max_length=128, warmup_ratio=0.06, num_train_epochs=3),
    "qnli": dict(batch_size=32, learning_rate=1e-5, max_length=128, warmup_ratio=0.06, num_train_epochs=3),
    "rte": dict(batch_size=32, learning_rate=3e-5, max_length=128, warmup_ratio=0.06, num_train_epochs=10),
}
PAPER_WEIGHT_DECAY = 0.01


# ---------------------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------------------
def add_common_arguments(parser: argparse.ArgumentParser, *, max_length_aliases: Sequence[str] = ()) -> None:
    """Add the flags every fine-tuning script shares (names as in transformers' no_trainer examples)."""
    g = parser.add_argument_group("data")
    g.add_argument("--dataset_name", type=str, default=None, help="A dataset on the Hugging Face Hub (needs a network).")
    g.add_argument("--dataset_config_name", type=str, default=None, help="Configuration of --dataset_name.")
    g.add_argument("--train_file", type=str, default=None, help="Local training file (formats: see the README).")
    g.add_argument("--validation_file", type=str, default=None, help="Local validation file.")
    g.add_argument("--test_file", type=str, default=None, help="Local test file; labels are optional.")
    g.add_argument("--max_train_samples", type=int, default=None, help="Keep only the first N training examples.")
    g.add_argument("--max_eval_samples", type=int, default=None, help="Keep only the first N validation examples.")
    g.add_argument("--max_predict_samples", type=int, default=None, help="Keep only the first N test examples.")
    g.add_argument(
        "--max_length",
        *max_length_aliases,
        dest="max_length",
        type=int,
        default=128,
        help="Maximum tokenized length; longer inputs are truncated.",
    )
    g.add_argument(
        "--pad_to_max_length",
        action="store_true",
        help="Pad every input to --max_length instead of padding each batch dynamically.",
    )

    g = parser.add_argument_group("model")
    g.add_argument(
        "--model_name_or_path",
        type=str,
        required=True,
        help="A local model folder (e.g. a MOMETAS pre-training output) or a Hub model id.",
    )
    g.add_argument("--config_name", type=str, default=None, help="Config name or path if not the model's.")
    g.add_argument("--tokenizer_name", type=str, default=None, help="Tokenizer name or path if not the model's.")
    g.add_argument("--use_slow_tokenizer", action="store_true", help="Use a slow (Python) tokenizer.")
    g.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="Allow custom code from the Hub for the model, tokenizer and dataset.",
    )

    g = parser.add_argument_group("training")
    g.add_argument("--per_device_train_batch_size", type=int, default=8, help="Training batch size per device.")
    g.add_argument("--per_device_eval_batch_size", type=int, default=8, help="Evaluation batch size per device.")
    g.add_argument("--learning_rate", type=float, default=5e-5, help="Peak learning rate (after warmup).")
    g.add_argument("--weight_decay", type=float, default=0.0, help="AdamW weight decay (not on biases/LayerNorm).")
    g.add_argument("--num_train_epochs", type=int, default=3, help="Number of training epochs.")
    g.add_argument(
        "--max_train_steps",
        type=int,
        default=None,
        help="Total number of optimizer updates; overrides --num_train_epochs.",
    )
    g.add_argument(
        "--gradient_accumulation_steps",
        type=int,
        default=1,
        help="Batches to accumulate (through accelerator.accumulate) before an optimizer update.",
    )
    g.add_argument(
        "--lr_scheduler_type",
        type=str,
        default="linear",
        choices=SCHEDULER_CHOICES,
        help="Learning-rate schedule.",
    )
    g.add_argument("--num_warmup_steps", type=int, default=0, help="Warmup steps; wins over --warmup_ratio if > 0.")
    g.add_argument(
        "--warmup_ratio",
        type=float,
        default=0.0,
        help="Warmup as a proportion of the total number of updates (the paper's 'warmup proportion').",
    )
    g.add_argument("--seed", type=int, default=42, help="Seed for model init, dropout and data order.")
    g.add_argument(
        "--hparams",
        type=str,
        default=None,
        choices=["paper"],
        help="'paper': the MOMETAS paper's fine-tuning settings for the task (Table 7 / ALBERT). "
        "Flags you pass explicitly win.",
    )

    g = parser.add_argument_group("output, checkpoints and tracking")
    g.add_argument("--output_dir", type=str, default=None, help="Where to write the model, results and checkpoints.")
    g.add_argument(
        "--checkpointing_steps",
        type=str,
        default=None,
        help="Save a resumable checkpoint every N updates (an integer), or 'epoch' after each epoch.",
    )
    g.add_argument(
        "--resume_from_checkpoint",
        type=str,
        default=None,
        help="A checkpoint folder (…/step_N or …/epoch_N), or 'latest' for the newest one in --output_dir.",
    )
    g.add_argument("--with_tracking", action="store_true", help="Log metrics to the trackers of --report_to.")
    g.add_argument(
        "--report_to",
        type=str,
        default="all",
        help="Trackers for --with_tracking: tensorboard, wandb, comet_ml, clearml, mlflow, … or 'all'.",
    )

    g = parser.add_argument_group("hub")
    g.add_argument("--push_to_hub", action="store_true", help="Upload the final model folder to the Hub.")
    g.add_argument("--hub_model_id", type=str, default=None, help="Repository id; default: the output_dir's name.")
    g.add_argument(
        "--hub_token",
        type=str,
        default=None,
        help="Hub token (or set HF_TOKEN). It is never logged or saved.",
    )


def parse_args_tracking_explicit(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv`` and record in ``args.user_set_flags`` the destinations the user typed.

    ``--hparams paper`` only fills in what is not in that list. The parser must be built
    with ``allow_abbrev=False`` so that ``--learning`` cannot stand for ``--learning_rate``.
    """
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]  # allow Path objects from Python callers
    args = parser.parse_args(argv)
    typed = set()
    for item in argv:
        if item.startswith("--"):
            typed.add(item.split("=", 1)[0])
    explicit = set()
    for action in parser._actions:  # argparse has no public API for "was this given?"
        if any(opt in typed for opt in action.option_strings):
            explicit.add(action.dest)
    args.user_set_flags = sorted(explicit)
    return args


def validate_common_args(args: argparse.Namespace) -> None:
    """Check the common flags; raise :class:`MometasInputError` naming the flag."""
    for flag in ("train_file", "validation_file", "test_file"):
        path = getattr(args, flag, None)
        if path is not None and not os.path.isfile(path):
            raise MometasInputError(f"--{flag}: no such file: {path}")
    for flag in (
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
        "max_length",
        "num_train_epochs",
    ):
        value = getattr(args, flag)
        if value is None or value < 1:
            raise MometasInputError(f"--{flag} must be a positive integer, got {value}")
    for flag in ("max_train_steps", "max_train_samples", "max_eval_samples", "max_predict_samples"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise MometasInputError(f"--{flag} must be a positive integer, got {value}")
    if args.num_warmup_steps < 0:
        raise MometasInputError(f"--num_warmup_steps must be >= 0, got {args.num_warmup_steps}")
    if not 0.0 <= args.warmup_ratio < 1.0:
        raise MometasInputError(f"--warmup_ratio must be in [0, 1), got {args.warmup_ratio}")
    args.checkpointing_steps = parse_checkpointing_steps(args.checkpointing_steps)
    if args.checkpointing_steps is not None and args.output_dir is None:
        raise MometasInputError("--checkpointing_steps needs --output_dir (checkpoints are saved inside it)")
    if args.resume_from_checkpoint == "latest" and args.output_dir is None:
        raise MometasInputError("--resume_from_checkpoint latest needs --output_dir (it is searched for checkpoints)")
    if args.push_to_hub and args.output_dir is None:
        raise MometasInputError("--push_to_hub needs --output_dir (the folder that is uploaded)")


def parse_checkpointing_steps(value: str | int | None) -> int | str | None:
    if value is None or value == "":
        return None
    if isinstance(value, int):
        steps = value
    elif str(value).strip().lower() == "epoch":
        return "epoch"
    elif str(value).strip().isdigit():
        steps = int(str(value).strip())
    else:
        raise MometasInputError(f"--checkpointing_steps expects an integer or 'epoch', got {value!r}")
    if steps < 1:
        raise MometasInputError(f"--checkpointing_steps must be >= 1 or 'epoch', got {value!r}")
    return steps


def apply_paper_hparams(args: argparse.Namespace, task: str, num_processes: int = 1) -> dict:
    """Fill in the paper's settings for ``task`` where the user gave no explicit flag.

    Returns what was applied (flag -> value), for logging. The paper's batch size is the
    total batch size: it is divided by ``num_processes * gradient_accumulation_steps``.
    """
    if args.hparams != "paper":
        return {}
    if task not in PAPER_HPARAMS:
        raise MometasInputError(
            f"--hparams paper: no paper settings for task {task!r}; known: {', '.join(sorted(PAPER_HPARAMS))}"
        )
    table = PAPER_HPARAMS[task]
    explicit = set(getattr(args, "user_set_flags", []))
    applied = {}

    def put(dest, value):
        if dest not in explicit:
            setattr(args, dest, value)
            applied[dest] = value

    put("learning_rate", table["learning_rate"])
    put("max_length", table["max_length"])
    put("warmup_ratio", table["warmup_ratio"])
    put("num_train_epochs", table["num_train_epochs"])
    put("weight_decay", PAPER_WEIGHT_DECAY)
    if "per_device_train_batch_size" not in explicit:
        divisor = max(1, num_processes) * args.gradient_accumulation_steps
        per_device = max(1, table["batch_size"] // divisor)
        if per_device * divisor != table["batch_size"]:
            logger.warning(
                "--hparams paper: total batch size %d is not divisible by %d processes x %d accumulation steps; "
                "using %d per device",
                table["batch_size"],
                num_processes,
                args.gradient_accumulation_steps,
                per_device,
            )
        put("per_device_train_batch_size", per_device)
    return applied


# ---------------------------------------------------------------------------------------
# Secrets and tracker config
# ---------------------------------------------------------------------------------------
def pop_hub_token(args: argparse.Namespace) -> str | None:
    """Return the Hub token (``--hub_token`` or ``HF_TOKEN``) and remove it from ``args``.

    After this call ``vars(args)`` can be logged, saved or sent to a tracker.
    """
    token = args.hub_token or os.environ.get("HF_TOKEN") or None
    args.hub_token = None
    return token


def safe_config(args: argparse.Namespace, secrets: Iterable[str | None] = ()) -> dict:
    """``vars(args)`` reduced to plain scalars, without the Hub token or any value equal to a secret.

    Trackers such as TensorBoard only take int/float/str/bool, so lists become strings.
    """
    secret_values = {s for s in secrets if s}
    env_token = os.environ.get("HF_TOKEN")
    if env_token:
        secret_values.add(env_token)
    config = {}
    for key, value in sorted(vars(args).items()):
        if key == "hub_token":
            continue
        if value is None:
            continue
        if hasattr(value, "value") and not isinstance(value, (int, float, str, bool)):
            value = value.value  # enums
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        if not isinstance(value, (int, float, str, bool)):
            value = str(value)
        if isinstance(value, str) and any(s in value for s in secret_values):
            continue
        config[key] = value
    return config


def configure_logging(accelerator, logger_: logging.Logger) -> None:
    """The no_trainer examples' logging set-up: info on the main process, errors elsewhere."""
    import datasets
    import transformers

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        level=logging.INFO,
    )
    logger_.info(accelerator.state, main_process_only=False)
    if accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()


# ---------------------------------------------------------------------------------------
# Optimizer and schedule
# ---------------------------------------------------------------------------------------
def load_config(name_or_path: str, *, trust_remote_code: bool = False, **kwargs):
    """``AutoConfig.from_pretrained`` that keeps MOMETAS folders usable with ``--trust_remote_code``.

    A MOMETAS folder's remote ``MometasConfig`` subclasses ``BertConfig`` with ``model_type``
    "bert". The task ``Auto*`` classes know only the built-in class, so for such a config the
    plain built-in one is loaded instead; the encoder weights are the same either way.
    """
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)
    builtin = CONFIG_MAPPING[config.model_type] if config.model_type in CONFIG_MAPPING else None
    if builtin is not None and type(config) is not builtin and isinstance(config, builtin):
        config = builtin.from_pretrained(name_or_path, **kwargs)
    return config


def optimizer_grouped_parameters(model, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weight decay on weights, none on biases and LayerNorm weights."""
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    decay, no = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no if any(nd in name for nd in no_decay) else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no, "weight_decay": 0.0},
    ]


def warmup_steps(args: argparse.Namespace, max_train_steps: int) -> int:
    """``--num_warmup_steps`` if set (> 0), else ``ceil(--warmup_ratio * max_train_steps)``."""
    if args.num_warmup_steps > 0:
        return args.num_warmup_steps
    return math.ceil(args.warmup_ratio * max_train_steps)


# ---------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------
def save_checkpoint(
    accelerator,
    output_dir: str,
    name: str,
    *,
    completed_steps: int,
    num_update_steps_per_epoch: int,
    extra: dict | None = None,
) -> str:
    """Save ``accelerator.save_state`` into ``output_dir/name`` atomically.

    The state goes into ``output_dir/.tmp_<name>`` first, then a marker file
    (``mometas_checkpoint.json``) is written last, then the folder is renamed into place with
    ``os.replace``. A run killed half-way leaves only a ``.tmp_`` folder, which is never
    resumed from and is removed by the next save; earlier checkpoints are never touched.
    """
    final = os.path.join(output_dir, name)
    tmp = os.path.join(output_dir, f"{TMP_PREFIX}{name}")
    if accelerator.is_main_process:
        os.makedirs(output_dir, exist_ok=True)
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        marker = {
            "completed_steps": completed_steps,
            "num_update_steps_per_epoch": num_update_steps_per_epoch,
            **(extra or {}),
        }
        marker_path = os.path.join(tmp, CHECKPOINT_MARKER)
        with open(marker_path + ".tmp", "w") as f:
            json.dump(marker, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(marker_path + ".tmp", marker_path)
        if os.path.exists(final):
            # Same name saved again (e.g. a re-run): move the old one aside first, so that at
            # every instant one complete copy exists under some name.
            trash = os.path.join(output_dir, f".trash_{name}")
            if os.path.exists(trash):
                shutil.rmtree(trash)
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def _checkpoint_completed_steps(path: str, num_update_steps_per_epoch: int | None = None) -> int | None:
    marker = os.path.join(path, CHECKPOINT_MARKER)
    if os.path.isfile(marker):
        with open(marker) as f:
            return int(json.load(f)["completed_steps"])
    return None


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints in ``output_dir`` as ``(completed_steps, path)``, oldest first."""
    found = []
    if not output_dir or not os.path.isdir(output_dir):
        return found
    for entry in os.scandir(output_dir):
        if entry.is_dir() and CHECKPOINT_DIR_RE.match(entry.name):
            steps = _checkpoint_completed_steps(entry.path)
            if steps is not None:
                found.append((steps, entry.path))
    found.sort()
    return found


def resolve_resume_checkpoint(value: str | None, output_dir: str | None) -> str | None:
    """Turn ``--resume_from_checkpoint`` into a folder, or None to start fresh.

    ``latest`` picks the newest complete checkpoint in ``--output_dir`` and starts fresh when
    there is none (so a job script can always pass it).
    """
    if not value:
        return None
    if value == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            logger.info("--resume_from_checkpoint latest: no checkpoint in %s yet, starting from scratch", output_dir)
            return None
        return found[-1][1]
    if not os.path.isdir(value):
        raise MometasInputError(f"--resume_from_checkpoint: no such checkpoint folder: {value}")
    if not os.path.isfile(os.path.join(value, CHECKPOINT_MARKER)) and not CHECKPOINT_DIR_RE.match(
        os.path.basename(os.path.normpath(value))
    ):
        raise MometasInputError(
            f"--resume_from_checkpoint: {value} is not a checkpoint (expected a step_N or epoch_N folder "
            f"holding {CHECKPOINT_MARKER})"
        )
    return value


def resume_position(
    checkpoint: str, num_update_steps_per_epoch: int, gradient_accumulation_steps: int
) -> tuple[int, int, int]:
    """Where to continue: ``(completed_steps, starting_epoch, batches_to_skip_in_that_epoch)``.

    Works for our own checkpoints (marker file) and for plain no_trainer ones named
    ``step_N`` / ``epoch_N``.
    """
    marker_path = os.path.join(checkpoint, CHECKPOINT_MARKER)
    if os.path.isfile(marker_path):
        with open(marker_path) as f:
            marker = json.load(f)
        completed_steps = int(marker["completed_steps"])
        saved_per_epoch = marker.get("num_update_steps_per_epoch")
        if saved_per_epoch is not None and int(saved_per_epoch) != num_update_steps_per_epoch:
            raise MometasInputError(
                f"--resume_from_checkpoint: {checkpoint} was saved with {saved_per_epoch} updates per epoch but this "
                f"run has {num_update_steps_per_epoch}; use the same data, batch size and --gradient_accumulation_steps"
            )
    else:
        kind, number = CHECKPOINT_DIR_RE.match(os.path.basename(os.path.normpath(checkpoint))).groups()
        number = int(number)
        completed_steps = (number + 1) * num_update_steps_per_epoch if kind == "epoch" else number
    starting_epoch = completed_steps // num_update_steps_per_epoch
    skip = (completed_steps % num_update_steps_per_epoch) * gradient_accumulation_steps
    return completed_steps, starting_epoch, skip


# ---------------------------------------------------------------------------------------
# Metrics (scikit-learn / scipy; no evaluate.load, which needs the Hub)
# ---------------------------------------------------------------------------------------
def accuracy(preds, labels) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(labels, preds))


def classification_metrics(preds, labels, *, f1: bool = False, matthews: bool = False) -> dict:
    from sklearn.metrics import f1_score, matthews_corrcoef

    result = {"accuracy": accuracy(preds, labels)}
    if f1:
        result["f1"] = float(f1_score(labels, preds))
    if matthews:
        result["matthews_correlation"] = float(matthews_corrcoef(labels, preds))
    return result


def regression_metrics(preds, labels) -> dict:
    import numpy as np
    from scipy.stats import pearsonr, spearmanr

    preds = np.asarray(preds, dtype=float)
    labels = np.asarray(labels, dtype=float)
    if len(preds) < 2 or np.std(preds) == 0 or np.std(labels) == 0:
        pearson = spearman = 0.0  # correlation is undefined for a constant; report no correlation
    else:
        pearson = float(pearsonr(preds, labels)[0])
        spearman = float(spearmanr(preds, labels)[0])
    return {
        "pearson": pearson,
        "spearmanr": spearman,
        "combined_score": (pearson + spearman) / 2,
        "mse": float(np.mean((preds - labels) ** 2)),
    }


# ---------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------
def prefixed(metrics: dict, prefix: str = "eval") -> dict:
    return {(k if k.startswith(f"{prefix}_") else f"{prefix}_{k}"): v for k, v in metrics.items()}


def write_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def write_tsv(path: str, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(_tsv_cell(c) for c in row) + "\n")


def _tsv_cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("\t", " ").replace("\n", " ")


def write_jsonl(path: str, records: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def write_model_card(
    output_dir: str,
    *,
    base_model: str,
    task: str,
    pipeline_tag: str,
    results: dict,
    config: dict,
    data: str,
) -> None:
    """A short README.md for the Hub: base model, data, results, hyperparameters (no secrets)."""
    lines = [
        "---",
        "library_name: transformers",
        f"pipeline_tag: {pipeline_tag}",
        "tags:",
        "- mometas",
        f"- {task}",
        "---",
        "",
        f"# {os.path.basename(os.path.normpath(output_dir))}",
        "",
        f"`{base_model}` fine-tuned on {data} with the MOMETAS fine-tuning scripts.",
        "",
        "## Results",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(results.items())]
    lines += ["", "## Hyperparameters", "", "| flag | value |", "|---|---|"]
    skip = {"output_dir", "hub_model_id", "push_to_hub", "user_set_flags"}
    lines += [f"| {k} | {v} |" for k, v in sorted(config.items()) if k not in skip]
    with open(os.path.join(output_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def push_to_hub(output_dir: str, repo_id: str | None, token: str | None, commit_message: str = "End of training"):
    """Create the repo (if needed) and upload ``output_dir`` without checkpoint folders."""
    from huggingface_hub import HfApi

    api = HfApi()
    repo_id = repo_id or Path(output_dir).absolute().name
    repo_id = api.create_repo(repo_id, exist_ok=True, token=token).repo_id
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=output_dir,
        commit_message=commit_message,
        token=token,
        repo_type="model",
        ignore_patterns=HUB_IGNORE_PATTERNS,
    )


def save_args(output_dir: str, args: argparse.Namespace, secrets: Iterable[str | None] = ()) -> None:
    """``training_args.json``: the effective settings, after --hparams paper, without secrets."""
    write_json(os.path.join(output_dir, "training_args.json"), safe_config(args, secrets))


def select_first(dataset, n: int | None):
    """``dataset.select(range(n))`` when ``n`` is set (the transformers examples' --max_*_samples)."""
    if n is None or n >= len(dataset):
        return dataset
    return dataset.select(range(n))


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------
def run_main(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> None:
    """Run ``main``; bad input becomes ``error: <message>`` on stderr and exit code 2."""
    try:
        main(argv)
    except MometasInputError as err:
        message = " ".join(str(err).split())  # one line
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)

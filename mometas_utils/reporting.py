"""Sampler history, plots, model card and Hub upload for a MOMETAS run.

The training script appends one JSON row to ``<output_dir>/sampler_history.jsonl`` at step 0
(initial meta-test, if any), after every meta-test / sampler update (every meta length K
steps) and possibly once at the end. This module writes and reads that file, computes the
quantities of §6 of the paper (Figure 2: average sampling weight per objective; Figure 3:
cumulative reward R(τ) of MOMETAS minus a uniform run), draws them, writes the model card and
pushes the output folder to the Hugging Face Hub without ever leaking the token.

Command line (also ``python plot_sampler_history.py``)::

    python -m mometas_utils.reporting RUN_DIR [--baseline UNIFORM_RUN_DIR] [--output_dir DIR]

Heavy imports (matplotlib, huggingface_hub) happen inside the functions that need them, so the
training script can import :class:`HistoryWriter` and :func:`public_args` cheaply.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import logging
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mometas_utils.errors import MometasInputError

logger = logging.getLogger(__name__)

HISTORY_FILENAME = "sampler_history.jsonl"
PLOT_FILENAMES = ("probabilities.png", "average_weights.png", "validation_loss.png", "cumulative_reward.png")
DEFAULT_IGNORE_PATTERNS = ("step_*", "epoch_*", "checkpoint*", "*.tmp*")
MODEL_CARD_TAGS = ["mometas", "bert", "continual-pretraining", "multi-objective"]

# Environment variables huggingface_hub reads a token from; their values are redacted too.
TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
# A Hugging Face user access token: "hf_" then ~34 letters and digits.
_HF_TOKEN_RE = re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{20,}")
# Words in an argument name that mark its value as a secret. "token" is matched after removing
# the harmless compounds below, so that tokenizer_name or max_tokens stay in the saved args.
_SECRET_WORDS = ("token", "password", "passwd", "secret", "api_key", "apikey", "access_key",
                 "private_key", "credential")
_HARMLESS_TOKEN_WORDS = ("tokenizer", "tokenization", "tokenize", "tokens")
# Secrets shorter than this are not replaced in free text: they would garble it, and real
# tokens are far longer.
_MIN_SECRET_LEN = 4

PAPER_CITATION = """@inproceedings{wu-etal-2022-forging,
    title = "Forging Multiple Training Objectives for Pre-trained Language Models via Meta-Learning",
    author = "Wu, Hongqiu and Ding, Ruixue and Zhao, Hai and Chen, Boli and Xie, Pengjun and Huang, Fei and Zhang, Min",
    booktitle = "Findings of the Association for Computational Linguistics: EMNLP 2022",
    year = "2022",
    pages = "6483--6495",
}"""

OBJECTIVE_DESCRIPTIONS = {
    "mlm": "Masked Language Modeling: predict 15% of tokens replaced by [MASK]",
    "cse": "Contrastive learning of Sentence Embeddings (SimCSE): two dropout views of a sentence, in-batch negatives",
    "atd": "Added Token Detection: find the random tokens inserted at 15% of the positions",
    "dtd": "Deleted Token Detection: find where tokens were removed",
    "emlm": "Entity-guided Masked Language Modeling: predict masked entity tokens",
}

# Paper names for the sampler settings the training script may pass under various flag names.
_SETTING_NAMES = {
    "meta_length": "meta length K",
    "meta_len": "meta length K",
    "k": "meta length K",
    "meta_step_size": "meta step size β",
    "meta_lr": "meta step size β",
    "meta_learning_rate": "meta step size β",
    "beta": "meta step size β",
    "entropy": "entropy weight λ",
    "entropy_weight": "entropy weight λ",
    "entropy_lambda": "entropy weight λ",
    "entropy_coef": "entropy weight λ",
    "lambda": "entropy weight λ",
    "reward": "reward R(τ)",
    "reward_fn": "reward R(τ)",
    "reward_type": "reward R(τ)",
}


# --------------------------------------------------------------------------------------------
# JSON safety and secrets
# --------------------------------------------------------------------------------------------


def _json_safe(obj: Any, *, nonfinite: str = "null") -> Any:
    """A copy of ``obj`` that ``json.dumps(..., allow_nan=False)`` accepts.

    ``nonfinite="null"`` turns NaN/inf into None (history rows: the plots treat them as
    missing), ``"str"`` into "nan"/"inf" (arguments: the value stays readable).
    """
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return None if nonfinite == "null" else str(obj)
    if isinstance(obj, enum.Enum):
        return _json_safe(obj.value, nonfinite=nonfinite)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v, nonfinite=nonfinite) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v, nonfinite=nonfinite) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((_json_safe(v, nonfinite=nonfinite) for v in obj), key=repr)
    # numpy / torch scalars and arrays
    if hasattr(obj, "tolist"):
        try:
            return _json_safe(obj.tolist(), nonfinite=nonfinite)
        except (TypeError, ValueError, RuntimeError):
            pass
    if hasattr(obj, "item"):
        try:
            return _json_safe(obj.item(), nonfinite=nonfinite)
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(obj)


def is_secret_key(key: str) -> bool:
    """True for argument names whose value must never be saved or shown (``hub_token``...)."""
    name = str(key).lower()
    for harmless in _HARMLESS_TOKEN_WORDS:
        name = name.replace(harmless, "")
    return any(word in name for word in _SECRET_WORDS)


def _env_secrets() -> list[str]:
    return [v for v in (os.environ.get(name) for name in TOKEN_ENV_VARS) if v]


def redact(text: str, secrets: str | Iterable[str | None] | None = None) -> str:
    """``text`` with every given secret, the ``HF_TOKEN`` env value and any ``hf_...`` token
    replaced by ``***``."""
    if isinstance(secrets, str):
        secrets = [secrets]
    candidates = {s for s in list(secrets or []) + _env_secrets() if isinstance(s, str)}
    # Longest first, so a secret that contains another is replaced whole.
    for secret in sorted(candidates, key=len, reverse=True):
        if len(secret) >= _MIN_SECRET_LEN:
            text = text.replace(secret, "***")
    return _HF_TOKEN_RE.sub("***", text)


def _as_dict(args_or_dict: Any) -> dict:
    if args_or_dict is None:
        return {}
    if isinstance(args_or_dict, Mapping):
        return dict(args_or_dict)
    if isinstance(args_or_dict, argparse.Namespace):
        return dict(vars(args_or_dict))
    if dataclasses.is_dataclass(args_or_dict) and not isinstance(args_or_dict, type):
        return {f.name: getattr(args_or_dict, f.name) for f in dataclasses.fields(args_or_dict)}
    if hasattr(args_or_dict, "to_dict"):
        return dict(args_or_dict.to_dict())
    return dict(vars(args_or_dict))


def _collect_secrets(obj: Any, found: list[str]) -> None:
    """Values stored under secret keys, at any depth, so they can be redacted elsewhere too."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if is_secret_key(k) and isinstance(v, str):
                found.append(v)
            else:
                _collect_secrets(v, found)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _collect_secrets(v, found)


def _strip(obj: Any, secrets: list[str]) -> Any:
    if isinstance(obj, Mapping):
        return {k: _strip(v, secrets) for k, v in obj.items() if not is_secret_key(k)}
    if isinstance(obj, list):
        return [_strip(v, secrets) for v in obj]
    if isinstance(obj, str):
        return redact(obj, secrets)
    return obj


def public_args(args_or_dict: Any) -> dict:
    """A JSON-safe copy of the run's arguments that is safe to save, log or publish.

    Accepts an ``argparse.Namespace``, a dataclass, a mapping or an object with ``to_dict()``.
    Drops every key, at any depth, naming a secret (``hub_token``, ``*password*``, ``*secret*``,
    any name containing "token" other than via "tokenizer"/"tokens", API keys), and replaces
    those secrets, the ``HF_TOKEN`` env value and ``hf_...`` tokens in the remaining string
    values by ``***``.
    """
    raw = _as_dict(args_or_dict)
    secrets: list[str] = []
    _collect_secrets(raw, secrets)
    safe = _json_safe(raw, nonfinite="str")
    return _strip(safe, secrets)


# --------------------------------------------------------------------------------------------
# History file
# --------------------------------------------------------------------------------------------


def history_path(path_or_run_dir: str | os.PathLike) -> Path:
    """``RUN_DIR/sampler_history.jsonl`` for a run directory, the path itself for a file.

    A path that does not exist yet is a file if it ends in ``.jsonl``/``.json``, else a run
    directory (the training script creates its output directory lazily).
    """
    path = Path(path_or_run_dir)
    if path.is_dir() or (not path.exists() and path.suffix not in (".jsonl", ".json")):
        return path / HISTORY_FILENAME
    return path


def _parse_lines(path: Path, text: str) -> list[tuple[str, dict]]:
    """(raw line, row) pairs. A torn last line (no newline: the run was killed mid-write) is
    skipped with a warning; any other bad line is an error naming the file and line."""
    lines = text.split("\n")
    torn_tail = not text.endswith("\n")
    parsed = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        is_tail = torn_tail and lineno == len(lines)
        try:
            row = json.loads(line)
            _check_row(row)
        except (json.JSONDecodeError, ValueError) as exc:
            if is_tail:
                logger.warning("%s: ignoring an incomplete last line (the run was interrupted while writing it)", path)
                continue
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise MometasInputError(f"{path}:{lineno}: expected one JSON object per line with a numeric 'step' ({reason})") from None
        parsed.append((line, row))
    return parsed


def _check_row(row: Any) -> None:
    if not isinstance(row, dict):
        raise ValueError("line is not a JSON object")
    step = row.get("step")
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step):
        raise ValueError(f"'step' is {step!r}")
    for key in ("probabilities", "val_loss", "train_loss", "counts", "tokens_seen"):
        if row.get(key) is not None and not isinstance(row[key], dict):
            raise ValueError(f"'{key}' is not an object or null")


def read_history(path_or_run_dir: str | os.PathLike) -> list[dict]:
    """The rows of a run's ``sampler_history.jsonl``, sorted by step (stable).

    Raises :class:`MometasInputError` naming the file if it is missing, empty or malformed.
    """
    path = history_path(path_or_run_dir)
    if not path.is_file():
        raise MometasInputError(
            f"{path}: not found; expected a run directory containing {HISTORY_FILENAME} or the file itself")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MometasInputError(f"{path}: cannot read it as UTF-8 text ({exc.__class__.__name__})") from None
    rows = [row for _, row in _parse_lines(path, text)]
    if not rows:
        raise MometasInputError(f"{path}: no rows; expected one JSON object per line written during training")
    return _by_step(rows)


def truncate_history(path: str | os.PathLike, max_step: float) -> int:
    """Drop the rows with ``step > max_step`` (and a torn last line); returns how many went.

    Used on resume from the checkpoint at ``max_step`` so the history has no duplicate steps.
    The file is rewritten to a temporary file and swapped in with ``os.replace``, so a crash
    leaves either the old or the new history, never half of one. A missing file is a no-op.
    """
    path = history_path(path)
    if not path.is_file():
        return 0
    text = path.read_text(encoding="utf-8")
    parsed = _parse_lines(path, text)
    kept = [line for line, row in parsed if row["step"] <= max_step]
    new_text = "".join(line + "\n" for line in kept)
    if new_text == text:
        return 0
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(new_text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return len(parsed) - len(kept)


class HistoryWriter:
    """Appends rows to ``sampler_history.jsonl``; ``path`` may be the file or the run directory.

    Each :meth:`write` opens, appends one line and closes, so every row is on disk (flushed)
    as soon as it is written and :meth:`truncate_after` can swap the file safely. A resumed
    run keeps appending to the same file: call ``truncate_after(checkpoint_step)`` first.
    ``fresh=True`` starts a new history, discarding an old one in the same directory.
    NaN/inf values are written as null (strict JSON; the plots treat them as missing).
    """

    def __init__(self, path: str | os.PathLike, *, fresh: bool = False):
        self.path = history_path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fresh and self.path.exists():
            self.path.unlink()
        # A torn last line from a killed run would otherwise be glued to the next row.
        truncate_history(self.path, math.inf)
        self._last_step = self._read_last_step()

    def _read_last_step(self) -> float | None:
        if not self.path.is_file():
            return None
        steps = [row["step"] for _, row in _parse_lines(self.path, self.path.read_text(encoding="utf-8"))]
        return max(steps) if steps else None

    def write(self, row: Mapping[str, Any]) -> None:
        """Append ``row`` (must have a numeric ``step``) as one JSON line and flush it."""
        safe = _json_safe(dict(row), nonfinite="null")
        _check_row(safe)
        step = safe["step"]
        if self._last_step is not None and step < self._last_step:
            logger.warning("%s: writing step %s after step %s; on resume call truncate_after(checkpoint_step) first",
                           self.path, step, self._last_step)
        line = json.dumps(safe, allow_nan=False)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
        self._last_step = step if self._last_step is None else max(step, self._last_step)

    def truncate_after(self, step: float) -> int:
        """Drop rows with a step after ``step`` (the resumed checkpoint); see :func:`truncate_history`."""
        dropped = truncate_history(self.path, step)
        self._last_step = self._read_last_step()
        return dropped

    def close(self) -> None:
        """Nothing is held open; present so the writer can be used like a file."""

    def __enter__(self) -> HistoryWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# Quantities of §6
# --------------------------------------------------------------------------------------------


def _by_step(rows: Iterable[Mapping]) -> list[dict]:
    return sorted((dict(r) for r in rows), key=lambda r: r["step"])


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def objective_names(rows: Iterable[Mapping]) -> list[str]:
    """Objectives in a stable order: the first row's ``objectives``, then any others seen."""
    names: list[str] = []
    for row in rows:
        for source in (row.get("objectives") or [], row.get("probabilities") or {},
                       row.get("val_loss") or {}):
            for name in source:
                if name not in names:
                    names.append(name)
    return names


def _has_probabilities(row: Mapping) -> bool:
    return isinstance(row.get("probabilities"), dict) and bool(row["probabilities"])


def average_distribution(rows: Iterable[Mapping], *, total_steps: int | None = None) -> dict[str, float]:
    """Average sampling weight per objective over training (Figure 2 of the paper).

    Each row's ``probabilities`` are in force from its step until the next row that has
    probabilities, and are weighted by that number of steps. The last distribution is in force
    until the last row's step, or until ``total_steps`` when given (the training may run past
    the last meta-test). Steps before the first row are not covered (the script's step-0 row
    covers them). If no step is covered at all (a single row), the last distribution is
    returned. Returns ``{}`` when no row has probabilities.
    """
    rows = _by_step(rows)
    with_p = [r for r in rows if _has_probabilities(r)]
    if not with_p:
        return {}
    names = objective_names(rows)
    end = max(r["step"] for r in rows)
    if total_steps is not None:
        end = max(end, total_steps)
    sums = dict.fromkeys(names, 0.0)
    covered = 0.0
    for i, row in enumerate(with_p):
        until = with_p[i + 1]["step"] if i + 1 < len(with_p) else end
        weight = until - row["step"]
        if weight <= 0:
            continue
        covered += weight
        for name in names:
            sums[name] += weight * (_number(row["probabilities"].get(name)) or 0.0)
    if covered == 0:
        return {n: _number(with_p[-1]["probabilities"].get(n)) or 0.0 for n in names}
    return {n: s / covered for n, s in sums.items()}


def final_probabilities(rows: Iterable[Mapping]) -> dict[str, float] | None:
    """The last recorded sampling distribution, or None if no row has one."""
    with_p = [r for r in _by_step(rows) if _has_probabilities(r)]
    if not with_p:
        return None
    return {n: _number(p) or 0.0 for n, p in with_p[-1]["probabilities"].items()}


def cumulative_reward(rows: Iterable[Mapping]) -> tuple[list[float], list[float]]:
    """(steps, cumulative sum of R(τ)) over the meta-tests that have a reward; nulls skipped."""
    steps: list[float] = []
    cumsum: list[float] = []
    total = 0.0
    for row in _by_step(rows):
        reward = _number(row.get("reward"))
        if reward is None:
            continue
        total += reward
        steps.append(row["step"])
        cumsum.append(total)
    return steps, cumsum


def reward_difference(rows: Iterable[Mapping], baseline_rows: Iterable[Mapping]) -> tuple[list[float], list[float]]:
    """Cumulative reward of this run minus the baseline's, on the baseline's steps (Figure 3).

    The runs may have different meta lengths K, so this run's cumulative reward is linearly
    interpolated at each baseline step lying within this run's rewarded step range (no
    extrapolation). With equal K the steps coincide and the difference is exact.
    """
    steps, cum = cumulative_reward(rows)
    base_steps, base_cum = cumulative_reward(baseline_rows)
    if not steps or not base_steps:
        return [], []
    out_steps, diff = [], []
    j = 0
    for s, b in zip(base_steps, base_cum):
        if s < steps[0] or s > steps[-1]:
            continue
        while j + 1 < len(steps) and steps[j + 1] < s:
            j += 1
        if steps[j] == s or j + 1 >= len(steps):
            value = cum[j]
        else:
            s0, s1 = steps[j], steps[j + 1]
            value = cum[j] + (cum[j + 1] - cum[j]) * (s - s0) / (s1 - s0)
        out_steps.append(s)
        diff.append(value - b)
    return out_steps, diff


def _run_label(rows: list[Mapping], default: str) -> str:
    for row in rows:
        if row.get("sampler"):
            return str(row["sampler"])
    return default


def summarize_distribution(rows: Iterable[Mapping], *, total_steps: int | None = None) -> str:
    """A printable table of the learned average distribution (Figure 2) and the final one."""
    rows = _by_step(rows)
    avg = average_distribution(rows, total_steps=total_steps)
    if not avg:
        return "No sampling probabilities recorded in the history."
    final = final_probabilities(rows) or {}
    n_updates = sum(1 for r in rows if _has_probabilities(r))
    first, last = rows[0]["step"], max(total_steps or 0, rows[-1]["step"])
    width = max(len("objective"), *(len(n) for n in avg))
    lines = [
        f"{_run_label(rows, 'sampler')} sampling distribution, steps {first:g}-{last:g}, {n_updates} recorded distributions",
        f"{'objective':<{width}}  {'average':>8}  {'final':>8}",
    ]
    for name, value in avg.items():
        fin = final.get(name)
        lines.append(f"{name:<{width}}  {value:>8.3f}  {('-' if fin is None else f'{fin:.3f}'):>8}")
    health = sampler_health(rows)
    if health["smallest_probability"] is not None:
        lines.append(
            f"smallest probability {health['smallest_probability']:.3f} ({health['smallest_objective']} at step "
            f"{health['smallest_step']:g}); {health['updates_below_0.01']} of {health['updates']} updates left some "
            f"p < 0.01; the reward floor clipped {health['floored_updates']} updates"
        )
    return "\n".join(lines)


def sampler_health(rows: Iterable[Mapping]) -> dict:
    """Whether the sampler starved an objective: the smallest probability reached (objective and
    step), how many updates left some probability below 0.01, and in how many updates the reward
    floor clipped at least one term."""
    rows = _by_step(rows)
    smallest = (None, None, None)
    below = updates = floored = 0
    for row in rows:
        if not _has_probabilities(row):
            continue
        probs = {n: p for n, p in row["probabilities"].items() if _number(p) is not None}
        if probs:
            name = min(probs, key=probs.get)
            if smallest[0] is None or probs[name] < smallest[0]:
                smallest = (probs[name], name, row["step"])
        if row.get("reward") is not None:
            updates += 1
            below += any(p < 0.01 for p in probs.values())
            floored += bool(row.get("reward_floored"))
    return {"smallest_probability": smallest[0], "smallest_objective": smallest[1], "smallest_step": smallest[2],
            "updates": updates, "updates_below_0.01": below, "floored_updates": floored}


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _figure(nrows: int = 1, height: float = 4.0):
    # A bare Figure renders through Agg without pyplot: no display, no global backend switch.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, 1, sharex=nrows > 1, squeeze=False)[:, 0]
    return fig, list(axes)


def _colors(names: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def _plot_probabilities(rows, names, colors, label, path: Path) -> bool:
    with_p = [r for r in rows if _has_probabilities(r)]
    if not with_p:
        return False
    entropy = [(r["step"], _number(r.get("entropy"))) for r in rows if _number(r.get("entropy")) is not None]
    fig, axes = _figure(2 if entropy else 1)
    steps = [r["step"] for r in with_p]
    for name in names:
        values = [_number(r["probabilities"].get(name)) for r in with_p]
        # A distribution holds from its update until the next one: draw it as a step function.
        axes[0].step(steps, [v if v is not None else float("nan") for v in values], where="post",
                     label=name, color=colors[name])
    axes[0].set_ylabel("sampling probability")
    axes[0].set_ylim(bottom=0)
    axes[0].set_title(f"{label}: sampling distribution after each update")
    axes[0].legend(loc="best", fontsize="small")
    axes[0].grid(alpha=0.3)
    if entropy:
        axes[1].step([s for s, _ in entropy], [e for _, e in entropy], where="post", color="black")
        axes[1].set_ylabel("entropy H")
        axes[1].grid(alpha=0.3)
    axes[-1].set_xlabel("training step")
    fig.savefig(path, dpi=100)
    return True


def _plot_average(rows, names, colors, label, path: Path) -> bool:
    avg = average_distribution(rows)
    if not avg:
        return False
    fig, (ax,) = _figure(1)
    bars = ax.bar(list(avg), list(avg.values()), color=[colors.get(n, "gray") for n in avg])
    ax.bar_label(bars, fmt="%.3f", fontsize="small")
    ax.axhline(1 / len(avg), color="gray", linestyle="--", linewidth=1, label="uniform")
    ax.set_ylabel("average sampling weight")
    ax.set_title(f"{label}: sampling weights averaged over training (Figure 2)")
    ax.legend(loc="best", fontsize="small")
    fig.savefig(path, dpi=100)
    return True


def _plot_val_loss(rows, names, colors, label, path: Path) -> bool:
    series = {}
    for name in names:
        points = [(r["step"], _number((r.get("val_loss") or {}).get(name))) for r in rows]
        points = [(s, v) for s, v in points if v is not None]
        if points:
            series[name] = points
    if not series:
        return False
    fig, (ax,) = _figure(1)
    for name, points in series.items():
        ax.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=3,
                label=name, color=colors[name])
    ax.set_xlabel("training step")
    ax.set_ylabel("validation loss (meta-test)")
    ax.set_title(f"{label}: validation loss per objective")
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)
    return True


def _plot_reward(rows, baseline_rows, label, base_label, path: Path) -> bool:
    steps, cum = cumulative_reward(rows)
    if not steps:
        return False
    base_steps, base_cum = cumulative_reward(baseline_rows or [])
    diff_steps, diff = reward_difference(rows, baseline_rows) if base_steps else ([], [])
    fig, axes = _figure(2 if diff_steps else 1)
    axes[0].plot(steps, cum, label=label, color="C0")
    if base_steps:
        axes[0].plot(base_steps, base_cum, label=base_label, color="C1")
    axes[0].set_ylabel("cumulative reward ΣR(τ)")
    axes[0].set_title("Cumulative reward over meta-tests")
    axes[0].legend(loc="best", fontsize="small")
    axes[0].grid(alpha=0.3)
    if diff_steps:
        axes[1].plot(diff_steps, diff, color="C0", label=f"{label} − {base_label}")
        axes[1].axhline(0, color="C1", linewidth=1, label=base_label)
        axes[1].set_ylabel("difference of cumulative reward")
        axes[1].set_title(f"{label} minus {base_label} (Figure 3)")
        axes[1].legend(loc="best", fontsize="small")
        axes[1].grid(alpha=0.3)
    elif baseline_rows is not None:
        logger.warning("baseline has no rewards overlapping this run's steps; cumulative_reward.png shows this run only")
    axes[-1].set_xlabel("training step")
    fig.savefig(path, dpi=100)
    return True


def plot_history(rows: Iterable[Mapping], output_dir: str | os.PathLike,
                 baseline_rows: Iterable[Mapping] | None = None) -> list[Path]:
    """Write the PNG plots of a run's history to ``output_dir``; returns the files written.

    - ``probabilities.png``: sampling probability per objective vs step (plus entropy).
    - ``average_weights.png``: average sampling weight per objective (Figure 2).
    - ``validation_loss.png``: meta-test validation loss per objective vs step.
    - ``cumulative_reward.png``: cumulative R(τ); with ``baseline_rows`` (a uniform run) also
      the baseline and the difference run − baseline on the baseline's steps (Figure 3, see
      :func:`reward_difference` for the alignment).

    A plot whose data is absent from the history (no probabilities, no validation losses, no
    rewards) is skipped with an info message rather than drawn empty.
    """
    rows = _by_step(rows)
    baseline = _by_step(baseline_rows) if baseline_rows is not None else None
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = objective_names(rows + (baseline or []))
    colors = _colors(names)
    label = _run_label(rows, "run")
    base_label = _run_label(baseline, "baseline") if baseline is not None else "baseline"
    if baseline is not None and base_label == label:
        base_label += " (baseline)"

    written = []
    jobs = [
        ("probabilities.png", lambda p: _plot_probabilities(rows, names, colors, label, p)),
        ("average_weights.png", lambda p: _plot_average(rows, names, colors, label, p)),
        ("validation_loss.png", lambda p: _plot_val_loss(rows, names, colors, label, p)),
        ("cumulative_reward.png", lambda p: _plot_reward(rows, baseline, label, base_label, p)),
    ]
    for filename, draw in jobs:
        path = out / filename
        if draw(path):
            written.append(path)
        else:
            logger.info("skipping %s: the history has no data for it", filename)
    return written


# --------------------------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("|", "\\|")


def build_model_card(*, args_dict: Any, objectives: Iterable[str], sampler_name: str,
                     sampler_settings: Mapping[str, Any], average_distribution: Mapping[str, float],
                     base_model: str, final_probabilities: Mapping[str, float] | None = None,
                     metrics: Mapping[str, Any] | None = None, repo_id: str | None = None):
    """A ``huggingface_hub.ModelCard`` for a MOMETAS continual pre-training run.

    Metadata: language en, library transformers, the MOMETAS tags, ``base_model`` (when it is
    a Hub id, not a local path); no license (the user picks one). Body: what MOMETAS is, the objectives, the sampler settings (meta
    length K, meta step size β, entropy weight λ, reward R(τ)), the learned average
    distribution (Figure 2) with the final probabilities, optional metrics, how to load the
    encoder and the heads (from ``repo_id``, else ``args_dict["hub_model_id"]``, else a
    placeholder), the public training arguments and
    the citation. Secrets in ``args_dict`` and ``HF_TOKEN`` never reach the card.
    """
    from huggingface_hub import ModelCard, ModelCardData
    from huggingface_hub.utils import validate_repo_id

    raw_args = _as_dict(args_dict)
    secrets: list[str] = []
    _collect_secrets(raw_args, secrets)
    args_public = public_args(raw_args)
    objectives = list(objectives)
    repo = repo_id or args_public.get("hub_model_id") or "path/or/repo-id"

    try:
        validate_repo_id(base_model)
        is_hub_id = True
    except ValueError:
        is_hub_id = False
    # The Hub rejects a base_model that is not a model id, e.g. a local path.
    data = ModelCardData(language="en", license=None, library_name="transformers",
                         tags=list(MODEL_CARD_TAGS), base_model=base_model if is_hub_id else None)
    is_mometas = str(sampler_name).lower() == "mometas"
    base_ref = f"[`{base_model}`](https://huggingface.co/{base_model})" if is_hub_id else f"`{base_model}`"
    intro = (
        f"This model is {base_ref} continually pre-trained on "
        f"{len(objectives)} objectives at once; at each step one objective is drawn from a sampling "
        f"distribution ({'MOMETAS' if is_mometas else f'the `{sampler_name}` sampler'})."
    )
    parts = [
        "# BERT encoder continually pre-trained with MOMETAS" if is_mometas
        else f"# BERT encoder continually pre-trained with {sampler_name} objective sampling",
        intro,
        "MOMETAS (Wu et al., 2022, *Forging Multiple Training Objectives for Pre-trained Language Models "
        "via Meta-Learning*, Findings of EMNLP 2022) is a meta-learned objective sampler: every K steps "
        "(meta length) it evaluates every objective on validation data and updates its distribution with "
        "REINFORCE, rewarded by R(τ), the summed relative drop of the validation losses.",
        "## Objectives",
        "| objective | description |\n|---|---|\n" + "\n".join(
            f"| {_fmt(o)} | {OBJECTIVE_DESCRIPTIONS.get(str(o).lower(), '')} |" for o in objectives),
        "## Sampler settings",
        "| setting | value |\n|---|---|\n| sampler | " + _fmt(sampler_name) + " |\n" + "\n".join(
            f"| {_SETTING_NAMES.get(str(k).lower(), _fmt(k))} | {_fmt(v)} |"
            for k, v in public_args(sampler_settings).items()),
    ]
    if average_distribution:
        final = final_probabilities or {}
        header = "| objective | average weight |" + (" final probability |" if final else "")
        sep = "|---|---|" + ("---|" if final else "")
        table_rows = []
        for name, value in average_distribution.items():
            row = f"| {_fmt(name)} | {value:.3f} |"
            if final:
                fin = final.get(name)
                row += f" {'-' if fin is None else f'{fin:.3f}'} |"
            table_rows.append(row)
        parts += [
            "## Learned sampling distribution",
            "Average sampling weight per objective over training, each distribution weighted by the "
            "number of steps it was in force (Figure 2 of the paper)"
            + ("; the last column is the distribution at the end of training." if final else "."),
            "\n".join([header, sep, *table_rows]),
        ]
    if metrics:
        parts += ["## Metrics", "| metric | value |\n|---|---|\n" + "\n".join(
            f"| {_fmt(k)} | {_fmt(v)} |" for k, v in public_args(metrics).items())]
    parts += [
        "## How to use",
        "```python\nfrom transformers import AutoModel, AutoModelForPreTraining\n\n"
        f'encoder = AutoModel.from_pretrained("{repo}")  # the BERT encoder, for fine-tuning\n'
        f'model = AutoModelForPreTraining.from_pretrained("{repo}", trust_remote_code=True)  # encoder and all objective heads\n```',
        "## Training arguments",
        "<details><summary>Arguments of the run (secrets removed)</summary>\n\n```json\n"
        + json.dumps(args_public, indent=2, sort_keys=True) + "\n```\n\n</details>",
        "## License",
        "No license was set for this model; the uploader should add one (and respect the base "
        "model's and the training data's licenses).",
        "## Citation",
        "```bibtex\n" + PAPER_CITATION + "\n```",
    ]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(parts) + "\n"
    return ModelCard(redact(content, secrets))


def save_model_card(card: Any, output_dir: str | os.PathLike) -> Path:
    """Write ``card`` to ``output_dir/README.md`` (the Hub shows it as the model page)."""
    path = Path(output_dir) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(redact(str(card)), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Hub upload
# --------------------------------------------------------------------------------------------


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError]  # HfHubHTTPError and requests' errors are OSErrors
    for module, name in (("huggingface_hub.errors", "HfHubHTTPError"), ("httpx2", "HTTPError"),
                         ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            errors.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def push_output_dir(output_dir: str | os.PathLike, repo_id: str, *, token: str | None = None,
                    commit_message: str = "Upload MOMETAS continual pre-training run",
                    private: bool = False,
                    ignore_patterns: Iterable[str] = DEFAULT_IGNORE_PATTERNS) -> str:
    """Create ``repo_id`` if needed and upload ``output_dir`` to it; returns the repo URL.

    Intermediate checkpoints (``step_*``, ``epoch_*``, ``checkpoint*``) and temporary files are
    left out by ``ignore_patterns``. ``token=None`` lets huggingface_hub use ``HF_TOKEN`` or
    the cached login. A network or Hub failure raises ``RuntimeError("--push_to_hub: could not
    upload ...")`` whose message, like every log line here, never contains the token.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.utils import validate_repo_id

    folder = Path(output_dir)
    if not folder.is_dir():
        raise MometasInputError(f"--output_dir: {folder} is not a directory; nothing to push")
    try:
        validate_repo_id(repo_id)
    except ValueError as exc:
        raise MometasInputError(f"--push_to_hub: {repo_id!r} is not a valid repo id ({exc})") from None
    patterns = list(ignore_patterns)
    secrets = [token] if token else []
    url = f"{constants.ENDPOINT}/{repo_id}"
    logger.info("Pushing %s to %s (private=%s, ignoring %s)", folder, url, private, patterns)
    try:
        api = HfApi(token=token)
        repo_url = api.create_repo(repo_id, exist_ok=True, private=private)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=commit_message,
                          ignore_patterns=patterns)
    except _network_errors() as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        reason = redact(f"{exc.__class__.__name__}: {detail}", secrets)[:300]
        logger.debug("upload of %s to %s failed: %s", folder, repo_id, reason)
        # `from None`: the chained original could carry request details we do not control.
        raise RuntimeError(f"--push_to_hub: could not upload {folder} to {repo_id}: {reason}") from None
    if isinstance(repo_url, str):
        url = str(repo_url)
    logger.info("Pushed %s to %s", folder, url)
    return url


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Plot a training run's sampler history (RUN_DIR/sampler_history.jsonl): sampling "
            "probabilities per objective (probabilities.png), the average sampling weights over "
            "training (average_weights.png, Figure 2 of the MOMETAS paper), the meta-test "
            "validation losses (validation_loss.png) and the cumulative reward R(τ) "
            "(cumulative_reward.png; with --baseline also the difference run minus baseline, "
            "Figure 3). Prints the learned average distribution."),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="output directory of a training run, or its sampler_history.jsonl")
    parser.add_argument("--baseline", metavar="UNIFORM_RUN_DIR", default=None,
                        help="a comparison run (e.g. uniform sampling) to subtract in the reward plot")
    parser.add_argument("--output_dir", metavar="DIR", default=None,
                        help="where to write the PNGs (default: RUN_DIR/plots)")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        try:
            rows = read_history(args.run_dir)
        except MometasInputError as exc:
            raise MometasInputError(f"RUN_DIR: {exc}") from None
        baseline = None
        if args.baseline is not None:
            try:
                baseline = read_history(args.baseline)
            except MometasInputError as exc:
                raise MometasInputError(f"--baseline: {exc}") from None
        run = Path(args.run_dir)
        output_dir = Path(args.output_dir) if args.output_dir else (run if run.is_dir() else run.parent) / "plots"
        written = plot_history(rows, output_dir, baseline_rows=baseline)
    except MometasInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summarize_distribution(rows))
    print()
    for path in written:
        print(f"wrote {path}")
    for name in PLOT_FILENAMES:
        if output_dir / name not in written:
            print(f"skipped {name}: the history has no data for it")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    sys.exit(main(prog="python -m mometas_utils.reporting"))

"""The sampler history of a run: ``<output_dir>/sampler_history.jsonl``, its rows and what §6 of the paper reads off them.

The training script appends one JSON row at step 0 (the first meta-test, if any), after every
meta-test / sampler update (every meta length K steps) and once at the end when the last
steps do not fill a window. A row holds ``step``, ``sampler``, ``objectives``,
``probabilities``, ``entropy``, ``reward`` (R(τ), null without one), ``reward_terms``,
``reward_floored``, ``advantage``, ``reward_baseline``, ``reward_scale``, ``entropy_lambda`` (the λ
of a MOMETAS update), ``val_loss``,
``train_loss`` (mean per objective over the window), ``counts`` and ``rollout`` (the draws of the
window), ``mean_probabilities`` (the mean distribution the window's draws were made from; for a
sampler that moves every step, such as exp3, what was really drawn from), ``tokens_seen`` (cumulative non-pad tokens per objective, all processes),
``meta_test_seconds``, ``elapsed_seconds``, ``learning_rate``, ``num_processes`` and, with several
processes, ``process_rollouts``.

A resumed run never loses rows: :func:`rewind_history` sets the rows after the checkpoint aside in
``sampler_history.superseded.json`` and :func:`drop_superseded` deletes them only once the
resumed run has saved its own checkpoint; until then :func:`restore_superseded` puts them back.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .atomic import atomic_write_json, atomic_write_text
from .errors import MometasInputError
from .scrub import json_safe

logger = logging.getLogger(__name__)

HISTORY_FILENAME = "sampler_history.jsonl"
SUPERSEDED_FILENAME = "sampler_history.superseded.json"


def history_path(path_or_run_dir: str | os.PathLike) -> Path:
    """``RUN_DIR/sampler_history.jsonl`` for a run folder, the path itself for a file.

    A path that does not exist yet is a file if it ends in ``.jsonl``/``.json``, else a run folder.
    """
    path = Path(path_or_run_dir)
    if path.is_dir() or (not path.exists() and path.suffix not in (".jsonl", ".json")):
        return path / HISTORY_FILENAME
    return path


def _check_row(row: Any) -> None:
    if not isinstance(row, dict):
        raise ValueError("line is not a JSON object")
    step = row.get("step")
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step):
        raise ValueError(f"'step' is {step!r}")
    for key in ("probabilities", "val_loss", "train_loss", "counts", "tokens_seen"):
        if row.get(key) is not None and not isinstance(row[key], dict):
            raise ValueError(f"'{key}' is not an object or null")


def _parse_lines(path: Path, text: str) -> list[tuple[str, dict]]:
    """(raw line, row) pairs. A torn last line (no newline: the run was killed mid-write) is
    skipped with a warning; any other bad line is an error naming the file and line."""
    lines = text.split("\n")
    torn_tail = not text.endswith("\n")
    parsed = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            _check_row(row)
        except (json.JSONDecodeError, ValueError) as exc:
            if torn_tail and lineno == len(lines):
                logger.warning("%s: ignoring an incomplete last line (the run was interrupted while writing it)", path)
                continue
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise MometasInputError(
                f"{path}:{lineno}: expected one JSON object per line with a numeric 'step' ({reason})") from None
        parsed.append((line, row))
    return parsed


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MometasInputError(f"{path}: cannot read it as UTF-8 text ({exc.__class__.__name__})") from None


def read_history(path_or_run_dir: str | os.PathLike) -> list[dict]:
    """The rows of a run's history, sorted by step (stable); an error naming the file if it is missing, empty or malformed."""
    path = history_path(path_or_run_dir)
    if not path.is_file():
        raise MometasInputError(
            f"{path}: not found; expected a run folder containing {HISTORY_FILENAME} or the file itself")
    rows = [row for _, row in _parse_lines(path, _read_text(path))]
    if not rows:
        raise MometasInputError(f"{path}: no rows; expected one JSON object per line written during training")
    return by_step(rows)


def truncate_history(path: str | os.PathLike, max_step: float) -> int:
    """Drop the rows after ``max_step`` (and a torn last line), atomically; returns how many went."""
    path = history_path(path)
    if not path.is_file():
        return 0
    text = _read_text(path)
    parsed = _parse_lines(path, text)
    kept = [line for line, row in parsed if row["step"] <= max_step]
    new_text = "".join(line + "\n" for line in kept)
    if new_text != text:
        atomic_write_text(path, new_text)
    return len(parsed) - len(kept)


def restore_superseded(run_dir: str | os.PathLike) -> int:
    """Undo an earlier :func:`rewind_history` whose run never saved a checkpoint; returns the rows put back.

    The history keeps its rows up to the earlier resume point and gets the set-aside rows back;
    rows written by the run that was killed after that point are dropped (no checkpoint holds them).
    """
    side = Path(run_dir) / SUPERSEDED_FILENAME
    if not side.is_file():
        return 0
    try:
        saved = json.loads(_read_text(side))
        resume_step, rows = saved["resume_step"], saved["rows"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise MometasInputError(f"{side}: not a set-aside history (expected resume_step and rows)") from None
    path = history_path(run_dir)
    parsed = _parse_lines(path, _read_text(path)) if path.is_file() else []
    kept = [line for line, row in parsed if row["step"] <= resume_step]
    atomic_write_text(path, "".join(line + "\n" for line in kept + [json.dumps(r, allow_nan=False) for r in rows]))
    side.unlink()
    return len(rows)


def rewind_history(run_dir: str | os.PathLike, step: float) -> int:
    """Resume from the checkpoint at ``step``: set the later rows aside, then cut the history there.

    The set-aside rows are written first, so a crash at any instant leaves every row in the
    history or in ``sampler_history.superseded.json``. Returns how many rows were set aside.
    """
    restore_superseded(run_dir)
    path = history_path(run_dir)
    if not path.is_file():
        return 0
    later = [row for _, row in _parse_lines(path, _read_text(path)) if row["step"] > step]
    if later:
        atomic_write_json(Path(run_dir) / SUPERSEDED_FILENAME, {"resume_step": step, "rows": later})
    truncate_history(path, step)
    return len(later)


def drop_superseded(run_dir: str | os.PathLike) -> bool:
    """The resumed run saved a checkpoint of its own: the set-aside rows now belong to no checkpoint."""
    side = Path(run_dir) / SUPERSEDED_FILENAME
    if side.is_file():
        side.unlink()
        return True
    return False


class HistoryWriter:
    """Appends rows to ``sampler_history.jsonl``; ``path`` may be the file or the run folder.

    Each :meth:`write` opens, appends one flushed line and closes, so a killed run loses at most
    the row it was writing (a torn last line, skipped and repaired here). NaN/inf are written as
    null (strict JSON; the plots treat them as missing).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = history_path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A torn last line from a killed run would otherwise be glued to the next row.
        truncate_history(self.path, math.inf)

    def write(self, row: Mapping[str, Any]) -> None:
        """Append ``row`` (it must have a numeric ``step``) as one JSON line and flush it."""
        safe = json_safe(dict(row), nonfinite="null")
        _check_row(safe)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(safe, allow_nan=False) + "\n")
            f.flush()


# ---------------------------------------------------------------------------- quantities of §6


def by_step(rows: Iterable[Mapping]) -> list[dict]:
    return sorted((dict(r) for r in rows), key=lambda r: r["step"])


def number(x: Any) -> float | None:
    """``x`` as a float when it is a finite number, else None."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def objective_names(rows: Iterable[Mapping]) -> list[str]:
    """Objectives in a stable order: the first row's ``objectives``, then any others seen."""
    names: list[str] = []
    for row in rows:
        for source in (row.get("objectives") or [], row.get("probabilities") or {}, row.get("val_loss") or {}):
            for name in source:
                if name not in names:
                    names.append(name)
    return names


def has_probabilities(row: Mapping) -> bool:
    return isinstance(row.get("probabilities"), dict) and bool(row["probabilities"])


def average_distribution(rows: Iterable[Mapping], *, total_steps: int | None = None) -> dict[str, float]:
    """Average sampling weight per objective over training (Figure 2 of the paper).

    Each row's probabilities are in force from its step until the next row that has some,
    weighted by that number of steps; the last until the last row's step, or ``total_steps``.
    With no step covered (a single row) the last distribution is returned; ``{}`` without any.
    """
    rows = by_step(rows)
    with_p = [r for r in rows if has_probabilities(r)]
    if not with_p:
        return {}
    names = objective_names(rows)
    end = max(max(r["step"] for r in rows), total_steps or 0)
    sums = dict.fromkeys(names, 0.0)
    covered = 0.0
    for i, row in enumerate(with_p):
        weight = (with_p[i + 1]["step"] if i + 1 < len(with_p) else end) - row["step"]
        if weight <= 0:
            continue
        covered += weight
        for name in names:
            sums[name] += weight * (number(row["probabilities"].get(name)) or 0.0)
    if covered == 0:
        return {n: number(with_p[-1]["probabilities"].get(n)) or 0.0 for n in names}
    return {n: s / covered for n, s in sums.items()}


def final_probabilities(rows: Iterable[Mapping]) -> dict[str, float] | None:
    """The last recorded sampling distribution, or None if no row has one."""
    with_p = [r for r in by_step(rows) if has_probabilities(r)]
    if not with_p:
        return None
    return {n: number(p) or 0.0 for n, p in with_p[-1]["probabilities"].items()}


def cumulative_reward(rows: Iterable[Mapping]) -> tuple[list[float], list[float]]:
    """(steps, cumulative sum of R(τ)) over the meta-tests that have a reward; nulls skipped."""
    steps: list[float] = []
    cumsum: list[float] = []
    total = 0.0
    for row in by_step(rows):
        reward = number(row.get("reward"))
        if reward is None:
            continue
        total += reward
        steps.append(row["step"])
        cumsum.append(total)
    return steps, cumsum


def reward_difference(rows: Iterable[Mapping], baseline_rows: Iterable[Mapping]) -> tuple[list[float], list[float]]:
    """Cumulative reward of this run minus the baseline's, on the baseline's steps (Figure 3).

    The runs may have different meta lengths, so this run's cumulative reward is linearly
    interpolated at each baseline step within its rewarded range (no extrapolation).
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


def run_label(rows: Iterable[Mapping], default: str) -> str:
    for row in rows:
        if row.get("sampler"):
            return str(row["sampler"])
    return default


def sampler_health(rows: Iterable[Mapping]) -> dict:
    """Whether the sampler starved an objective: the smallest probability reached (objective and
    step), how many updates left some probability below 0.01, and in how many updates the reward
    floor clipped at least one term."""
    smallest = (None, None, None)
    below = updates = floored = 0
    for row in by_step(rows):
        if not has_probabilities(row):
            continue
        probs = {n: p for n, p in row["probabilities"].items() if number(p) is not None}
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


def health_line(rows: Iterable[Mapping]) -> str | None:
    """:func:`sampler_health` as one sentence, or None without probabilities."""
    health = sampler_health(rows)
    if health["smallest_probability"] is None:
        return None
    return (f"smallest probability {health['smallest_probability']:.3f} ({health['smallest_objective']} at step "
            f"{health['smallest_step']:g}); {health['updates_below_0.01']} of {health['updates']} updates left some "
            f"p < 0.01; the reward floor clipped {health['floored_updates']} updates")


def summarize_distribution(rows: Iterable[Mapping], *, total_steps: int | None = None) -> str:
    """A printable table of the learned average distribution (Figure 2), the final one and the health line."""
    rows = by_step(rows)
    avg = average_distribution(rows, total_steps=total_steps)
    if not avg:
        return "No sampling probabilities recorded in the history."
    final = final_probabilities(rows) or {}
    n_updates = sum(1 for r in rows if has_probabilities(r))
    first, last = rows[0]["step"], max(total_steps or 0, rows[-1]["step"])
    width = max(len("objective"), *(len(n) for n in avg))
    lines = [
        f"{run_label(rows, 'sampler')} sampling distribution, steps {first:g}-{last:g}, {n_updates} recorded distributions",
        f"{'objective':<{width}}  {'average':>8}  {'final':>8}",
    ]
    for name, value in avg.items():
        fin = final.get(name)
        lines.append(f"{name:<{width}}  {value:>8.3f}  {('-' if fin is None else f'{fin:.3f}'):>8}")
    health = health_line(rows)
    if health:
        lines.append(health)
    return "\n".join(lines)


__all__ = [
    "HISTORY_FILENAME", "SUPERSEDED_FILENAME", "HistoryWriter", "average_distribution", "cumulative_reward",
    "drop_superseded", "final_probabilities", "health_line", "history_path", "objective_names", "read_history",
    "restore_superseded", "reward_difference", "rewind_history", "sampler_health", "summarize_distribution",
    "truncate_history",
]

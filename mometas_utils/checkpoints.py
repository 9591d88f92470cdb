"""Checkpoints of a training run: atomic saves, the one meaning of ``latest``, rotation, integrity and compatibility.

A checkpoint is ``<output_dir>/step_N``: ``accelerator.save_state`` plus the marker file
``mometas_checkpoint.json`` (the step, the data position, the settings that fix the data
order, and the size of every file). It is written into ``.step_N.tmp`` and renamed into place
only once the marker is in it, so a folder named ``step_N`` that holds the marker is complete
and a killed save never damages an earlier checkpoint. ``latest`` is the complete checkpoint
with the highest step; with none it is an error, never a silent fresh start.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import zipfile
from pathlib import Path

from .atomic import atomic_write_json
from .errors import MometasInputError
from .scrub import json_safe

CHECKPOINT_PREFIX = "step_"
CHECKPOINT_MARKER = "mometas_checkpoint.json"
# The marker of checkpoints written before the tracker's state was part of them; they cannot be resumed.
LEGACY_MARKER = "mometas_state.json"
_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """N for a folder named ``step_N``, else None."""
    match = _NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def complete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The complete checkpoints in ``output_dir``, oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and checkpoint_step(p) is not None and (p / CHECKPOINT_MARKER).is_file()]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path:
    """The newest complete checkpoint; an error naming ``resume_from_checkpoint`` when there is none."""
    found = complete_checkpoints(output_dir)
    if not found:
        if any(Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*/{LEGACY_MARKER}")):
            raise MometasInputError(
                f"resume_from_checkpoint: the checkpoints in {output_dir} were written by an earlier version of the "
                f"script ({LEGACY_MARKER}) and cannot be resumed; start afresh with overwrite_output_dir")
        raise MometasInputError(f"resume_from_checkpoint: 'latest' found no complete checkpoint in {output_dir}")
    return found[-1]


def _file_sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def save_checkpoint(accelerator, output_dir: str | os.PathLike, step: int, marker: dict) -> Path:
    """``accelerator.save_state`` into ``output_dir/step_<step>``, atomically; every process must call it.

    ``marker`` (JSON-safe) is stored in ``mometas_checkpoint.json`` with the step and the size of
    every file, which :func:`verify_checkpoint` checks on resume.
    """
    output_dir = Path(output_dir)
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = output_dir / f".{final.name}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / CHECKPOINT_MARKER, json_safe({**marker, "step": step, "files": _file_sizes(tmp)}))
        if final.exists():
            # Saved again under the same name: move the old one aside first, so that at every
            # instant one complete copy exists under some name.
            trash = output_dir / f".trash_{final.name}"
            if trash.exists():
                shutil.rmtree(trash)
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def rotate_checkpoints(output_dir: str | os.PathLike, total_limit: int | None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond ``total_limit``; never the only complete one."""
    if not total_limit:
        return []
    found = complete_checkpoints(output_dir)
    doomed = found[: max(0, len(found) - max(1, total_limit))]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def remove_checkpoints_after(output_dir: str | os.PathLike, step: int, keep: str | os.PathLike) -> list[Path]:
    """Delete the complete checkpoints after ``step`` except ``keep``: they belong to a run this one replaced."""
    doomed = [p for p in complete_checkpoints(output_dir) if checkpoint_step(p) > step and p != Path(keep)]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def _check_safetensors(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file, or None."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > size - 8:
                return "its header is cut off"
            header = json.loads(f.read(header_len))
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError):
        return "its header is not readable"
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    expected = 8 + header_len + max(ends, default=0)
    return None if size == expected else f"it holds {size} bytes, its header describes {expected}"


def verify_checkpoint(path: str | os.PathLike) -> dict:
    """The marker of the checkpoint at ``path`` once its files look whole; else an error naming ``resume_from_checkpoint``."""
    path = Path(path)
    where = f"resume_from_checkpoint: {path}"
    if not path.is_dir():
        raise MometasInputError(f"{where} is not a folder")
    marker_file = path / CHECKPOINT_MARKER
    if not marker_file.is_file():
        raise MometasInputError(f"{where} is not a complete checkpoint (no {CHECKPOINT_MARKER})")
    try:
        marker = json.loads(marker_file.read_text(encoding="utf-8"))
        int(marker["step"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise MometasInputError(f"{where}: {CHECKPOINT_MARKER} is corrupted ({exc.__class__.__name__})") from None
    for name, size in (marker.get("files") or {}).items():
        file = path / name
        if not file.is_file():
            raise MometasInputError(f"{where}: {name} is missing")
        if file.stat().st_size != size:
            raise MometasInputError(
                f"{where}: {name} holds {file.stat().st_size} bytes, {size} were saved (truncated or corrupted)")
    for file in sorted(path.rglob("*")):
        if file.suffix == ".safetensors":
            problem = _check_safetensors(file)
        elif file.suffix in (".bin", ".pkl", ".pt") and file.is_file():
            problem = None if zipfile.is_zipfile(file) else "it is not a whole torch file"
        else:
            continue
        if problem:
            raise MometasInputError(f"{where}: {file.name} is truncated or corrupted ({problem})")
    return marker


def config_differences(saved: dict, current: dict) -> list[str]:
    """``name: checkpoint value -> this run's value`` for every setting that differs (both JSON-safe)."""
    current = json_safe(current)
    return [f"{key}: {saved.get(key)!r} -> {current.get(key)!r}"
            for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]


__all__ = ["CHECKPOINT_MARKER", "CHECKPOINT_PREFIX", "checkpoint_step", "complete_checkpoints", "config_differences",
           "latest_checkpoint", "remove_checkpoints_after", "rotate_checkpoints", "save_checkpoint", "verify_checkpoint"]


class PerProcessState:
    """Checkpoints objects whose state differs from process to process: the collators' noise generators.

    Accelerate saves a registered object's ``state_dict()`` from the main process only, so on
    resume every process would load process 0's generators and corrupt its batches differently
    from the uninterrupted run. Registered in their place, this gathers every process's states
    (``state_dict`` is a collective: Accelerate calls it on every process) and gives each process
    its own back on load.
    """

    def __init__(self, accelerator, objects):
        self.accelerator = accelerator
        self.objects = list(objects)

    def state_dict(self) -> dict:
        from accelerate.utils import gather_object

        local = [obj.state_dict() for obj in self.objects]
        every = gather_object([local]) if self.accelerator.num_processes > 1 else [local]
        return {"per_process": every}

    def load_state_dict(self, state: dict) -> None:
        every = state.get("per_process") if isinstance(state, dict) else None
        if every is None or len(every) != self.accelerator.num_processes:
            found = "none" if every is None else f"{len(every)} processes"
            raise MometasInputError(
                f"resume_from_checkpoint: the checkpoint holds the collators' states of {found}, this run has "
                f"{self.accelerator.num_processes} processes (a checkpoint of an older version cannot be resumed)"
            )
        for obj, obj_state in zip(self.objects, every[self.accelerator.process_index]):
            obj.load_state_dict(obj_state)

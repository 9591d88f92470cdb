"""An output folder belongs to one run: what a pre-training run writes there, and how to tell or clear it.

:func:`run_outputs` lists what another run left in a folder (model, history, arguments,
checkpoints, temporary folders), :func:`clear_run_outputs` deletes exactly those files of
a run and nothing else the folder holds, :func:`check_writable_dir` fails early on a folder
that is a file or cannot be written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from fnmatch import fnmatch
from pathlib import Path

from .errors import MometasInputError
from .history import HISTORY_FILENAME, SUPERSEDED_FILENAME
from .plots import PLOT_FILENAMES

ARGS_FILENAME = "mometas_args.json"
TRACKER_PROJECT = "mometas_pretraining"

#: Files and folders that show the folder already holds a run.
RUN_EVIDENCE = (HISTORY_FILENAME, SUPERSEDED_FILENAME, ARGS_FILENAME, "model.safetensors", "model-*.safetensors",
                "model.safetensors.index.json", "pytorch_model.bin", "config.json", "step_*", ".step_*.tmp")
#: Everything a run writes (cleared by --overwrite_output_dir). Inputs the run keeps there
#: (the demo corpus) are not in it.
RUN_FILES = RUN_EVIDENCE + (
    "README.md", "generation_config.json", "configuration_mometas.py", "modeling_mometas.py", "tokenizer.json",
    "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
    *PLOT_FILENAMES, TRACKER_PROJECT, ".export.tmp", ".trash_step_*", f".{HISTORY_FILENAME}.*.tmp",
    ".hub_upload.step_*.tmp",
)


def _matching(folder: Path, patterns) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if any(fnmatch(p.name, pattern) for pattern in patterns))


def run_outputs(output_dir: str | os.PathLike) -> list[str]:
    """Names of what another run left in ``output_dir`` (empty for a new or unrelated folder)."""
    return [p.name for p in _matching(Path(output_dir), RUN_EVIDENCE)]


def clear_run_outputs(output_dir: str | os.PathLike) -> list[str]:
    """Delete every file and folder a run writes (checkpoints included); returns their names."""
    removed = []
    for path in _matching(Path(output_dir), RUN_FILES):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path.name)
    return removed


def check_writable_dir(output_dir: str | os.PathLike) -> Path:
    """Create ``output_dir`` if needed and prove a file can be written there; else an error naming ``output_dir``."""
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise MometasInputError(f"output_dir: {folder} is a file; expected a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_test_"):
            pass
    except OSError as exc:
        raise MometasInputError(f"output_dir: cannot write in {folder} ({exc.strerror or exc.__class__.__name__})") from None
    return folder


__all__ = ["ARGS_FILENAME", "RUN_EVIDENCE", "RUN_FILES", "TRACKER_PROJECT", "check_writable_dir", "clear_run_outputs",
           "run_outputs"]

"""The Hugging Face Hub as a run meets it: the repo is checked before training, the folder is pushed after.

:func:`prepare_repo` runs before any training: it validates the repo id, creates the repo
(or finds it) and checks that the token may write to it, and returns the full id with its
namespace (``create_repo(...).repo_id``: ``my-model`` becomes ``user/my-model``).
:func:`push_folder` uploads an output folder without its checkpoints, blocking or as a
background future. :class:`BackgroundUploads` is ``--hub_strategy every_save``: each save is
uploaded from a copy taken when it was saved. None of them ever shows the token.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from .errors import MometasInputError
from .scrub import redact

logger = logging.getLogger(__name__)

#: Checkpoints, temporary folders and the set-aside history stay local.
HUB_IGNORE_PATTERNS = ("step_*", "epoch_*", "checkpoint*", ".*", "*.tmp*", "sampler_history.superseded.json",
                       "demo_corpus.txt")


class HubPushError(RuntimeError):
    """An upload that failed after training; the message says how to push the kept outputs again."""


def _reason(exc: BaseException, secrets: Iterable[str | None]) -> str:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return redact(f"{exc.__class__.__name__}{': ' + detail if detail else ''}", secrets)[:300]


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def check_repo_id(repo_id: str) -> None:
    """An error naming ``hub_model_id`` when ``repo_id`` is not a valid Hub repo id."""
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except ValueError as exc:
        raise MometasInputError(f"hub_model_id: {repo_id!r} is not a valid repo id ({str(exc).splitlines()[0]})") from None


def prepare_repo(repo_id: str, *, token: str | None = None, private: bool = False) -> str:
    """Create ``repo_id`` if needed, check write access, and return its full id (with namespace).

    Every failure is a :class:`MometasInputError` naming ``hub_model_id``: an invalid id, no
    connection (including ``HF_HUB_OFFLINE=1``), or a token that may not write there.
    """
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    secrets = [token]
    api = HfApi(token=token)
    try:
        full_id = api.create_repo(repo_id, exist_ok=True, private=private).repo_id
        api.auth_check(full_id, write=True)
    except OSError as exc:  # HfHubHTTPError, connection and offline errors are all OSErrors
        status = _status(exc)
        if status in (401, 403) or exc.__class__.__name__ in ("GatedRepoError", "RepositoryNotFoundError"):
            raise MometasInputError(
                f"hub_model_id: the token cannot create or write to {repo_id} ({_reason(exc, secrets)}); "
                "log in with `hf auth login`, pass a write token, or choose a repo you own") from None
        raise MometasInputError(
            f"hub_model_id: cannot reach the Hub to create or check {repo_id} ({_reason(exc, secrets)}); "
            "check the connection (HF_HUB_OFFLINE must be unset) or do without the upload") from None
    logger.info("Hub repo %s is ready (private=%s)", full_id, private)
    return full_id


def push_command(repo_id: str, folder: str | os.PathLike) -> str:
    """The command that uploads ``folder`` by hand, as the run would have."""
    return f"hf upload {repo_id} {folder} . --exclude 'step_*' --exclude '.*'"


def push_folder(output_dir: str | os.PathLike, repo_id: str, *, token: str | None = None,
                commit_message: str = "Upload MOMETAS continual pre-training run", run_as_future: bool = False):
    """Upload ``output_dir`` to ``repo_id`` (a full id from :func:`prepare_repo`) without checkpoints.

    Returns the ``CommitInfo``, or a ``Future`` of it with ``run_as_future``. A failure raises
    :class:`HubPushError`, whose message says the outputs are kept and how to push them again.
    """
    from huggingface_hub import HfApi

    folder = Path(output_dir)
    try:
        return HfApi(token=token).upload_folder(
            repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
            ignore_patterns=list(HUB_IGNORE_PATTERNS), run_as_future=run_as_future)
    except OSError as exc:
        raise HubPushError(upload_failure(exc, repo_id, folder, token)) from None


#: The copy one background upload sends (matched by ".*" in HUB_IGNORE_PATTERNS, so never uploaded itself).
SNAPSHOT_PATTERN = ".hub_upload.step_*.tmp"


def snapshot_folder(output_dir: str | os.PathLike, snapshot: str | os.PathLike) -> Path:
    """Copy into ``snapshot`` exactly what an upload of ``output_dir`` sends (HUB_IGNORE_PATTERNS left out)."""
    from huggingface_hub.utils import filter_repo_objects

    source, snapshot = Path(output_dir), Path(snapshot)
    files = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
    for relative in filter_repo_objects(files, ignore_patterns=list(HUB_IGNORE_PATTERNS)):
        target = snapshot / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / relative, target)
    return snapshot


class BackgroundUploads:
    """``--hub_strategy every_save``: each save goes to the Hub in the background, from its own copy.

    Uploading the output folder itself raced with training: while it uploaded, the next export
    rewrote the model and the history grew, so one Hub commit could mix two steps. Each save is
    therefore copied (without checkpoints) when it is made, and uploaded from the copy. An upload
    starts only once the one before has finished, so the commits land in the order of the steps
    and at most one copy is on disk; the copy is deleted when its upload ends.
    """

    def __init__(self, output_dir: str | os.PathLike, repo_id: str, *, token: str | None = None):
        self.output_dir, self.repo_id, self.token = Path(output_dir), repo_id, token
        self._pending = None

    def start(self, step: int) -> None:
        """Upload the folder as it is now, as the commit of ``step``; call it right after the export."""
        self.wait()
        for stale in self.output_dir.glob(SNAPSHOT_PATTERN):  # a killed run's copy
            shutil.rmtree(stale, ignore_errors=True)
        snapshot = snapshot_folder(self.output_dir, self.output_dir / SNAPSHOT_PATTERN.replace("*", str(step)))
        try:
            future = push_folder(snapshot, self.repo_id, token=self.token, run_as_future=True,
                                 commit_message=f"step {step}")
        except HubPushError as exc:
            shutil.rmtree(snapshot, ignore_errors=True)
            logger.warning(str(exc))
            return
        self._pending = (future, snapshot)

    def wait(self) -> None:
        """Let the upload under way finish; a failure is logged (training goes on, the final push sends all)."""
        if self._pending is None:
            return
        future, snapshot = self._pending
        self._pending = None
        try:
            future.result()
        except OSError as exc:
            logger.warning(upload_failure(exc, self.repo_id, self.output_dir, self.token))
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)


def upload_failure(exc: BaseException, repo_id: str, folder: str | os.PathLike, token: str | None = None) -> str:
    """The one line that reports a failed upload and how to redo it."""
    return (f"could not upload {folder} to {repo_id} ({_reason(exc, [token])}); the outputs are kept in {folder}: "
            f"push them again with `{push_command(repo_id, folder)}`")


__all__ = ["HUB_IGNORE_PATTERNS", "SNAPSHOT_PATTERN", "BackgroundUploads", "HubPushError", "check_repo_id",
           "prepare_repo", "push_command", "push_folder", "snapshot_folder", "upload_failure"]

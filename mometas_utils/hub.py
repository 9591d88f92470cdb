"""The Hugging Face Hub as a run meets it: the repo is checked before training, the folder is pushed after.

:func:`prepare_repo` runs before any training: it validates the repo id, creates the repo
(or finds it) and checks that the token may write to it, and returns the full id with its
namespace (``create_repo(...).repo_id``: ``my-model`` becomes ``user/my-model``).
:func:`push_folder` uploads an output folder without its checkpoints, blocking or as a
background future (``--hub_strategy every_save``). Neither ever shows the token.
"""

from __future__ import annotations

import logging
import os
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


def upload_failure(exc: BaseException, repo_id: str, folder: str | os.PathLike, token: str | None = None) -> str:
    """The one line that reports a failed upload and how to redo it."""
    return (f"could not upload {folder} to {repo_id} ({_reason(exc, [token])}); the outputs are kept in {folder}: "
            f"push them again with `{push_command(repo_id, folder)}`")


__all__ = ["HUB_IGNORE_PATTERNS", "HubPushError", "check_repo_id", "prepare_repo", "push_command", "push_folder",
           "upload_failure"]

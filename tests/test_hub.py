"""mometas_utils.hub: the repo is checked before training, the folder pushed after; the token never shows."""

import logging
from concurrent.futures import Future
from unittest import mock

import httpx2
import pytest
from huggingface_hub import CommitInfo, RepoUrl
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import filter_repo_objects

from mometas_utils.errors import MometasInputError
from mometas_utils.hub import HUB_IGNORE_PATTERNS, HubPushError, prepare_repo, push_folder

SECRET = "hf_SECRETabcdefghijklmnopqrstuvwxyz0123"


def http_error(status):
    request = httpx2.Request("POST", "https://huggingface.co/api/repos/create")
    return HfHubHTTPError(f"{status} Client Error: token {SECRET}", response=httpx2.Response(status, request=request))


def commit(repo_id="alice/bert-mometas"):
    return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/abc123", commit_message="m",
                      commit_description="", oid="abc123")


def test_prepare_repo_returns_the_namespaced_id_and_checks_write_access():
    with mock.patch("huggingface_hub.HfApi") as api_cls:
        api = api_cls.return_value
        api.create_repo.return_value = RepoUrl("https://huggingface.co/alice/bert-mometas")
        assert prepare_repo("bert-mometas", token=SECRET, private=True) == "alice/bert-mometas"
    api_cls.assert_called_once_with(token=SECRET)
    api.create_repo.assert_called_once_with("bert-mometas", exist_ok=True, private=True)
    api.auth_check.assert_called_once_with("alice/bert-mometas", write=True)


def test_prepare_repo_offline_is_one_line_without_a_mock(monkeypatch):
    # The suite runs with HF_HUB_OFFLINE=1: the real client refuses, and the refusal is one line.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MometasInputError) as err:
        prepare_repo("org/bert-mometas", token=SECRET)
    message = str(err.value)
    assert message.startswith("hub_model_id: cannot reach the Hub") and "HF_HUB_OFFLINE" in message
    assert "\n" not in message and SECRET not in message


@pytest.mark.parametrize("status", [401, 403])
def test_prepare_repo_refused_is_one_line(status):
    with mock.patch("huggingface_hub.HfApi") as api_cls:
        api_cls.return_value.create_repo.side_effect = http_error(status)
        with pytest.raises(MometasInputError) as err:
            prepare_repo("org/bert-mometas", token=SECRET)
    message = str(err.value)
    assert message.startswith("hub_model_id: the token cannot create or write to org/bert-mometas")
    assert SECRET not in message and "\n" not in message and err.value.__cause__ is None


def test_prepare_repo_rejects_a_bad_id_before_any_request():
    with mock.patch("huggingface_hub.HfApi") as api_cls:
        with pytest.raises(MometasInputError, match="hub_model_id: 'not a/valid//id' is not a valid repo id"):
            prepare_repo("not a/valid//id")
    api_cls.assert_not_called()


def test_push_folder_uploads_without_checkpoints(tmp_path, caplog):
    with mock.patch("huggingface_hub.HfApi") as api_cls, caplog.at_level(logging.DEBUG):
        api_cls.return_value.upload_folder.return_value = commit()
        info = push_folder(tmp_path, "alice/bert-mometas", token=SECRET, commit_message="final")
    assert info.commit_url.endswith("/commit/abc123")
    kwargs = api_cls.return_value.upload_folder.call_args.kwargs
    assert kwargs["repo_id"] == "alice/bert-mometas" and kwargs["folder_path"] == str(tmp_path)
    assert kwargs["run_as_future"] is False and SECRET not in caplog.text
    files = ["model.safetensors", "README.md", "sampler_history.jsonl", "mometas_pretraining/events.out",
             "step_500/model.safetensors", "epoch_1/optimizer.bin", "checkpoint-3/x", ".step_7.tmp/model.safetensors",
             ".export.tmp/config.json", "sampler_history.superseded.json", "demo_corpus.txt"]
    kept = list(filter_repo_objects(files, ignore_patterns=list(HUB_IGNORE_PATTERNS)))
    assert kept == ["model.safetensors", "README.md", "sampler_history.jsonl", "mometas_pretraining/events.out"]


def test_push_folder_as_a_future_does_not_block():
    future = Future()
    with mock.patch("huggingface_hub.HfApi") as api_cls:
        api_cls.return_value.upload_folder.return_value = future
        assert push_folder("out", "alice/x", run_as_future=True) is future
    assert api_cls.return_value.upload_folder.call_args.kwargs["run_as_future"] is True


def test_push_failure_keeps_outputs_and_says_how_to_push_again(tmp_path):
    with mock.patch("huggingface_hub.HfApi") as api_cls:
        api_cls.return_value.upload_folder.side_effect = http_error(500)
        with pytest.raises(HubPushError) as err:
            push_folder(tmp_path, "alice/bert-mometas", token=SECRET)
    message = str(err.value)
    assert f"the outputs are kept in {tmp_path}" in message
    assert f"hf upload alice/bert-mometas {tmp_path} ." in message
    assert SECRET not in message and "\n" not in message


def test_snapshot_copies_what_an_upload_sends_and_nothing_else(tmp_path):
    from mometas_utils.hub import snapshot_folder

    out = tmp_path / "out"
    for name in ("model.safetensors", "README.md", "mometas_pretraining/events.out", "step_2/model.safetensors",
                 ".export.tmp/config.json", "sampler_history.superseded.json", ".hub_upload.step_2.tmp/README.md"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(name)
    snapshot = snapshot_folder(out, out / ".hub_upload.step_4.tmp")
    copied = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())
    assert copied == ["README.md", "model.safetensors", "mometas_pretraining/events.out"]
    (out / "model.safetensors").write_text("the next save")
    assert (snapshot / "model.safetensors").read_text() == "model.safetensors", "a copy, not a link"

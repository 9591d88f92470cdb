"""mometas_utils.checkpoints: atomic saves, 'latest', rotation, integrity and compatibility."""

import json
import os
from unittest import mock

import pytest
import torch
from accelerate import Accelerator

from mometas_utils import checkpoints
from mometas_utils.checkpoints import (
    CHECKPOINT_MARKER,
    complete_checkpoints,
    config_differences,
    latest_checkpoint,
    remove_checkpoints_after,
    rotate_checkpoints,
    save_checkpoint,
    verify_checkpoint,
)
from mometas_utils.errors import MometasInputError


@pytest.fixture(scope="module")
def prepared():
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    return accelerator, model


def names(folder):
    return [p.name for p in complete_checkpoints(folder)]


def test_save_is_complete_and_latest_is_the_highest_step(tmp_path, prepared):
    accelerator, model = prepared
    for step in (9, 10, 2):
        save_checkpoint(accelerator, tmp_path, step, {"epoch": 0})
    (tmp_path / "step_11").mkdir()  # an incomplete folder (no marker) is never 'latest'
    assert names(tmp_path) == ["step_2", "step_9", "step_10"]
    assert latest_checkpoint(tmp_path).name == "step_10"
    marker = verify_checkpoint(tmp_path / "step_10")
    assert marker["step"] == 10 and marker["epoch"] == 0
    assert marker["files"]["model.safetensors"] == (tmp_path / "step_10" / "model.safetensors").stat().st_size
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_latest_without_a_checkpoint_is_an_error(tmp_path):
    with pytest.raises(MometasInputError, match="resume_from_checkpoint: 'latest' found no complete checkpoint"):
        latest_checkpoint(tmp_path)
    (tmp_path / "step_5").mkdir()
    (tmp_path / "step_5" / "mometas_state.json").write_text("{}")  # an earlier version's checkpoint
    with pytest.raises(MometasInputError, match="earlier version of the script"):
        latest_checkpoint(tmp_path)


def test_a_save_killed_half_way_leaves_earlier_checkpoints_whole(tmp_path, prepared):
    accelerator, model = prepared
    save_checkpoint(accelerator, tmp_path, 1, {})
    before = {p.name: p.read_bytes() for p in (tmp_path / "step_1").iterdir()}
    with mock.patch.object(checkpoints, "atomic_write_json", side_effect=KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(accelerator, tmp_path, 2, {})
    assert names(tmp_path) == ["step_1"] and (tmp_path / ".step_2.tmp").is_dir()
    # Saving step 1 again, killed between moving the old copy aside and moving the new one in:
    # a complete copy of the old checkpoint still exists.
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_replace(src, dst)

    with mock.patch.object(checkpoints.os, "replace", side_effect=replace):
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(accelerator, tmp_path, 1, {})
    assert {p.name: p.read_bytes() for p in (tmp_path / ".trash_step_1").iterdir()} == before
    save_checkpoint(accelerator, tmp_path, 3, {})  # the next save cleans its own temporary folder
    assert latest_checkpoint(tmp_path).name == "step_3"


def test_rotation_keeps_the_newest_and_never_the_last_one(tmp_path, prepared):
    accelerator, model = prepared
    for step in (1, 2, 3, 4):
        save_checkpoint(accelerator, tmp_path, step, {})
    assert [p.name for p in rotate_checkpoints(tmp_path, 2)] == ["step_1", "step_2"]
    assert names(tmp_path) == ["step_3", "step_4"]
    assert rotate_checkpoints(tmp_path, None) == []
    rotate_checkpoints(tmp_path, 0)  # 0 means no limit, never "delete all"
    assert names(tmp_path) == ["step_3", "step_4"]
    rotate_checkpoints(tmp_path, 1)
    assert names(tmp_path) == ["step_4"]
    assert remove_checkpoints_after(tmp_path, 2, keep=tmp_path / "step_4") == []
    assert [p.name for p in remove_checkpoints_after(tmp_path, 2, keep=tmp_path / "step_9")] == ["step_4"]


@pytest.mark.parametrize("damage, expected", [
    ("truncate_weights", "model.safetensors holds"),
    ("truncate_optimizer", "optimizer.bin holds"),
    ("marker_json", "mometas_checkpoint.json is corrupted"),
    ("no_marker", "not a complete checkpoint"),
    ("missing_file", "model.safetensors is missing"),
    ("weights_without_manifest", "model.safetensors is truncated or corrupted"),
])
def test_a_damaged_checkpoint_is_one_line_naming_it(tmp_path, prepared, damage, expected):
    accelerator, model = prepared
    path = save_checkpoint(accelerator, tmp_path, 5, {})
    weights, marker = path / "model.safetensors", path / CHECKPOINT_MARKER
    if damage == "truncate_weights":
        os.truncate(weights, weights.stat().st_size - 7)
    elif damage == "truncate_optimizer":
        os.truncate(path / "optimizer.bin", 100)
    elif damage == "marker_json":
        marker.write_text(marker.read_text()[:40])
    elif damage == "no_marker":
        marker.unlink()
    elif damage == "missing_file":
        weights.unlink()
    else:  # an older marker without the file sizes: the safetensors header still gives the truncation away
        data = json.loads(marker.read_text())
        del data["files"]
        marker.write_text(json.dumps(data))
        os.truncate(weights, weights.stat().st_size - 7)
    with pytest.raises(MometasInputError) as err:
        verify_checkpoint(path)
    assert str(err.value).startswith(f"resume_from_checkpoint: {path}") and expected in str(err.value)
    assert "\n" not in str(err.value)


def test_config_differences_list_each_setting():
    saved = {"seed": 1, "max_seq_length": 128, "objectives": ["mlm"]}
    assert config_differences(saved, {"seed": 1, "max_seq_length": 128, "objectives": ("mlm",)}) == []
    assert config_differences(saved, {"seed": 2, "max_seq_length": 128, "objectives": ["mlm"], "new": True}) == [
        "new: None -> True", "seed: 1 -> 2"]

"""A MOMETAS output folder fine-tunes like any BERT, with or without --trust_remote_code."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig

from mometas_utils import finetuning as ft
from mometas_utils.configuration_mometas import MometasConfig
from mometas_utils.modeling_mometas import MometasForPreTraining


@pytest.fixture
def mometas_folder(tmp_path):
    torch.manual_seed(0)
    model = MometasForPreTraining(MometasConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=37))
    model.save_pretrained(tmp_path / "mometas")
    return tmp_path / "mometas", model


@pytest.mark.parametrize("trust_remote_code", [False, True])
def test_task_model_loads_from_a_mometas_folder(mometas_folder, trust_remote_code, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    folder, pretrained = mometas_folder
    config = ft.load_config(str(folder), trust_remote_code=trust_remote_code, num_labels=3)
    assert type(config) is BertConfig and config.num_labels == 3
    model = AutoModelForSequenceClassification.from_pretrained(folder, config=config, trust_remote_code=trust_remote_code)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert torch.equal(model.bert.encoder.layer[0].output.dense.weight, pretrained.bert.encoder.layer[0].output.dense.weight)

"""mometas_utils.card: the model card's metadata, body, and what it must never hold."""

import argparse

from huggingface_hub import ModelCard

from mometas_utils.card import build_model_card, is_hub_id, save_model_card
from mometas_utils.objectives import OBJECTIVES

SECRET = "hf_SECRETabcdefghijklmnopqrstuvwxyz0123"
ENV_SECRET = "hf_ENVSECRETzyxwvutsrqponmlkjihgf98765"
NAMES = ["mlm", "cse", "atd", "dtd", "emlm"]
SETTINGS = {"meta_length": 100, "meta_step_size": 0.1, "entropy_lambda": 2.0, "reward": "relative"}


def card(tmp_path, rows, **overrides):
    venv_model = tmp_path / "venv" / "lib" / "site-packages" / "minilm"
    venv_model.mkdir(parents=True)
    args = argparse.Namespace(model_name_or_path=str(venv_model), train_file=str(tmp_path / "corpus.txt"),
                              output_dir=str(tmp_path / "out"), note=f"pushed with {ENV_SECRET}", learning_rate=5e-5)
    kwargs = dict(base_model=str(venv_model), objectives=NAMES, sampler_name="mometas", sampler_settings=SETTINGS,
                  rows=rows, total_steps=600, args=args, repo_id="me/bert-mometas", secrets=[SECRET])
    return build_model_card(**{**kwargs, **overrides})


def test_card_metadata_and_body(tmp_path, make_history, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", ENV_SECRET)
    made = card(tmp_path, make_history(), base_model="bert-base-uncased", dataset_name="allenai/c4")
    text = str(made)
    assert made.data.pipeline_tag == "fill-mask" and made.data.library_name == "transformers"
    assert made.data.base_model == "bert-base-uncased" and made.data.datasets == ["allenai/c4"]
    assert not made.data.license and made.data.tags == ["mometas", "bert", "continual-pretraining", "multi-objective"]
    for name in NAMES:  # the one source of the descriptions
        assert f"| {name} | {OBJECTIVES[name].description} |" in text
    for needle in ("meta length K | 100", "meta step size β | 0.1", "entropy weight λ | 2", "reward R(τ) | relative",
                   "Figure 2", "Sampler health: smallest probability", 'AutoModel.from_pretrained("me/bert-mometas")',
                   'pipeline("fill-mask", model="me/bert-mometas")',
                   'AutoModelForPreTraining.from_pretrained("me/bert-mometas", trust_remote_code=True)',
                   "`AutoModel` and `AutoModelForMaskedLM`", "Forging Multiple Training Objectives"):
        assert needle in text, needle
    assert SECRET not in text and ENV_SECRET not in text


def test_card_holds_no_local_path(tmp_path, make_history):
    text = str(card(tmp_path, make_history()))
    assert str(tmp_path) not in text and "site-packages" not in text
    meta = text.split("---")[1]
    assert "base_model" not in meta and "datasets" not in meta  # local model and corpus: no Hub metadata
    assert "a local BERT checkpoint" in text and '"train_file": "corpus.txt"' in text


def test_card_without_history_or_metrics(tmp_path):
    text = str(card(tmp_path, [], sampler_name="uniform", repo_id=None))
    assert "## Learned sampling distribution" not in text and "Sampler health" not in text and "## Metrics" not in text
    assert "uniform" in text and "path/or/repo-id" in text


def test_saved_card_loads_back(tmp_path, make_history):
    path = save_model_card(card(tmp_path, make_history(), base_model="bert-base-uncased"), tmp_path / "out")
    loaded = ModelCard.load(path)
    assert loaded.data.pipeline_tag == "fill-mask" and loaded.data.base_model == "bert-base-uncased"


def test_is_hub_id(tmp_path):
    assert is_hub_id("bert-base-uncased") and is_hub_id("org/model")
    assert not is_hub_id(str(tmp_path)) and not is_hub_id("./model") and not is_hub_id("not a/valid//id")
    assert not is_hub_id(None)

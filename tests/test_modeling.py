"""The multi-head model: losses per objective, weight tying, and the two ways a saved folder loads."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from mometas_utils.configuration_mometas import MometasConfig
from mometas_utils.modeling_mometas import MometasForPreTraining
from mometas_utils.objectives import build_objectives

TINY = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return MometasForPreTraining(MometasConfig(**TINY))


@pytest.fixture(scope="module")
def batches(tokenizer):
    texts = ["Angela Merkel met Emmanuel Macron in Berlin.", "The river flows quietly past the old mill.", "It rained."]
    features = []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        features.append({"input_ids": ids, "entity_ids": [0 if 1 <= i <= 2 else -1 for i in range(len(ids))]})
    collators = build_objectives("mlm,cse,atd,dtd,emlm", tokenizer, noise_probability=0.3, seed=0, max_length=32)
    return {name: collator(features) for name, collator in collators.items()}


def test_each_objective_trains_the_encoder_and_only_its_own_head(tiny_model, batches):
    heads = {"atd": "heads.atd.", "dtd": "heads.dtd.", "cse": "heads.cse.", "mlm": "cls.", "emlm": "cls."}
    tiny_model.train()
    for objective, batch in batches.items():
        tiny_model.zero_grad(set_to_none=True)
        out = tiny_model(objective=objective, **batch)
        assert out.loss.ndim == 0 and torch.isfinite(out.loss)
        out.loss.backward()
        with_grad = {n for n, p in tiny_model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert any(n.startswith("bert.encoder.") for n in with_grad), objective
        touched_heads = {prefix for prefix in heads.values() if any(n.startswith(prefix) for n in with_grad)}
        assert touched_heads == {heads[objective]}, (objective, touched_heads)


def test_lm_head_is_tied_to_word_embeddings(tiny_model):
    assert tiny_model.cls.predictions.decoder.weight is tiny_model.bert.embeddings.word_embeddings.weight


def test_cse_views_differ_at_meta_test_and_are_repeatable(tiny_model, batches):
    tiny_model.eval()
    rng_before = torch.get_rng_state()
    with torch.no_grad():
        first = tiny_model(objective="cse", **batches["cse"])
        second = tiny_model(objective="cse", **batches["cse"])
    assert torch.equal(torch.get_rng_state(), rng_before), "meta-test must not disturb the training RNG"
    assert not tiny_model.bert.training, "eval mode is restored"
    assert torch.equal(first.loss, second.loss)
    # Identical views put the largest value of each row on the diagonal at exactly 1/temperature.
    diagonal = first.logits.diagonal() * tiny_model.config.cse_temperature
    assert (diagonal < 1 - 1e-4).all(), "the two views must differ in eval mode"


def test_unknown_objective_is_rejected(tiny_model, batches):
    with pytest.raises(ValueError, match="nsp"):
        tiny_model(objective="nsp", **batches["mlm"])


def test_checkpoint_mlm_head_is_loaded(tmp_path):
    torch.manual_seed(1)
    bert = BertForMaskedLM(BertConfig(**TINY))
    bert.save_pretrained(tmp_path / "bert")
    model = MometasForPreTraining.from_pretrained(tmp_path / "bert", objectives=["mlm", "atd"])
    assert model.config.objectives == {"mlm": "mlm", "atd": "token_detection"}
    assert torch.equal(model.cls.predictions.transform.dense.weight, bert.cls.predictions.transform.dense.weight)
    assert torch.equal(model.bert.encoder.layer[0].output.dense.weight, bert.bert.encoder.layer[0].output.dense.weight)


def test_real_checkpoint_without_mlm_head_loads_its_encoder(minilm):
    from safetensors.torch import load_file

    model = MometasForPreTraining.from_pretrained(minilm, objectives=["mlm", "dtd"])
    weights = load_file(os.path.join(minilm, "model.safetensors"))
    assert torch.equal(model.bert.encoder.layer[5].attention.self.query.weight, weights["encoder.layer.5.attention.self.query.weight"])


def test_saved_folder_loads_as_plain_bert_and_with_remote_code(tmp_path, tiny_model):
    folder = tmp_path / "saved"
    tiny_model.save_pretrained(folder)
    files = sorted(os.listdir(folder))
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    assert {"modeling_mometas.py", "configuration_mometas.py"} <= set(files)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "bert" and "AutoModel" not in config["auto_map"]

    reference = tmp_path / "reference.pt"
    torch.save({k: v for k, v in tiny_model.state_dict().items()}, reference)
    script = textwrap.dedent(
        f"""
        import sys, torch

        class RefuseMometasUtils:  # the library may be pip-installed (-e .): the folder must not need it
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "mometas_utils":
                    raise ImportError("mometas_utils is not available here")

        sys.meta_path.insert(0, RefuseMometasUtils())
        from transformers import AutoModel, AutoModelForPreTraining, AutoModelForSequenceClassification
        ref = torch.load({str(reference)!r})
        plain = AutoModel.from_pretrained({str(folder)!r})
        assert type(plain).__name__ == "BertModel", type(plain)
        for name, tensor in plain.state_dict().items():
            assert torch.equal(tensor, ref["bert." + name]), name
        clf = AutoModelForSequenceClassification.from_pretrained({str(folder)!r}, num_labels=3)
        assert torch.equal(clf.bert.embeddings.word_embeddings.weight, ref["bert.embeddings.word_embeddings.weight"])
        full = AutoModelForPreTraining.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(full).__name__ == "MometasForPreTraining"
        assert sorted(full.heads) == ["atd", "cse", "dtd"]
        for name, tensor in full.state_dict().items():
            assert torch.equal(tensor, ref[name]), name
        assert not any(m.split(".")[0] == "mometas_utils" for m in sys.modules)
        print("LOADED-OK")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "LOADED-OK" in result.stdout, result.stderr[-3000:]

"""mometas_utils.scrub: no secret in saved arguments, cards, logs or errors."""

import argparse
import json
import os
from pathlib import Path
from unittest import mock

from mometas_utils.scrub import json_safe, pop_hub_token, public_args, redact

SECRET = "hf_SECRETabcdefghijklmnopqrstuvwxyz0123"
ENV_SECRET = "hf_ENVSECRETzyxwvutsrqponmlkjihgf98765"


def secret_args():
    return argparse.Namespace(
        hub_token=SECRET, hub_model_id="me/bert-mometas", tokenizer_name="bert-base-uncased",
        max_tokens=512, db_password="pw-12345", nested={"api_secret": "s3cr3t-value", "lr": 1e-4},
        output_dir=Path("/tmp/run"), note=f"pushed with {ENV_SECRET}", max_grad_norm=float("inf"),
    )


def test_public_args_removes_secrets(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", ENV_SECRET)
    safe = public_args(secret_args())
    text = json.dumps(safe, allow_nan=False)
    for secret in (SECRET, ENV_SECRET, "pw-12345", "s3cr3t-value"):
        assert secret not in text
    assert "hub_token" not in safe and "db_password" not in safe and "api_secret" not in safe["nested"]
    # Names that merely contain "token(s)" as part of another word are kept.
    assert safe["tokenizer_name"] == "bert-base-uncased" and safe["max_tokens"] == 512
    assert safe["output_dir"] == "/tmp/run" and safe["nested"]["lr"] == 1e-4 and safe["max_grad_norm"] == "inf"
    assert safe["note"] == "pushed with ***"
    assert public_args({"hub_token": SECRET, "a": 1}) == {"a": 1}
    # A secret passed by value is removed wherever it appears.
    assert public_args({"a": "x plain-secret-value y"}, secrets=["plain-secret-value"]) == {"a": "x *** y"}


def test_redact():
    assert redact(f"token={SECRET}!", SECRET) == "token=***!"
    assert redact(f"see {SECRET}") == "see ***"  # hf_ tokens are caught without being named
    with mock.patch.dict(os.environ, {"HF_TOKEN": "plain-env-token"}):
        assert redact("a plain-env-token b") == "a *** b"
    assert redact("nothing here", [None, ""]) == "nothing here"


def test_pop_hub_token_takes_the_token_out_of_the_arguments():
    args = secret_args()
    assert pop_hub_token(args) == SECRET and not hasattr(args, "hub_token")
    assert pop_hub_token(argparse.Namespace(hub_token=None)) is None


def test_json_safe_nonfinite_modes():
    import torch

    assert json_safe({"x": float("nan"), "t": torch.tensor([1.5, float("inf")])}) == {"x": None, "t": [1.5, None]}
    assert json_safe([float("-inf")], nonfinite="str") == ["-inf"]

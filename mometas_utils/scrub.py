"""Secrets never leave the process: the one scrubber for saved arguments, cards, logs and errors.

:func:`public_args` is what a script saves or shows of its arguments (no ``hub_token``, no
``HF_TOKEN`` value, no ``hf_...`` token anywhere in the strings), :func:`redact` cleans free
text, and :func:`pop_hub_token` takes ``--hub_token`` out of the parsed arguments right
after parsing, so that nothing downstream can save or log it by accident.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# Environment variables huggingface_hub reads a token from; their values are redacted too.
TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
# A Hugging Face user access token: "hf_" then ~34 letters and digits.
_HF_TOKEN_RE = re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{20,}")
# Words in an argument name that mark its value as a secret. "token" is matched after removing
# the harmless compounds below, so that tokenizer_name or max_tokens stay in the saved args.
_SECRET_WORDS = ("token", "password", "passwd", "secret", "api_key", "apikey", "access_key",
                 "private_key", "credential")
_HARMLESS_TOKEN_WORDS = ("tokenizer", "tokenization", "tokenize", "tokens")
# Shorter strings are not replaced in free text: they would garble it, and real tokens are far longer.
_MIN_SECRET_LEN = 4


def json_safe(obj: Any, *, nonfinite: str = "null") -> Any:
    """A copy of ``obj`` that ``json.dumps(..., allow_nan=False)`` accepts.

    ``nonfinite="null"`` turns NaN/inf into None (history rows and metrics: strict JSON),
    ``"str"`` into "nan"/"inf" (arguments: the value stays readable).
    """
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return None if nonfinite == "null" else str(obj)
    if isinstance(obj, enum.Enum):
        return json_safe(obj.value, nonfinite=nonfinite)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v, nonfinite=nonfinite) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v, nonfinite=nonfinite) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((json_safe(v, nonfinite=nonfinite) for v in obj), key=repr)
    for convert in ("tolist", "item"):  # numpy / torch scalars and arrays
        if hasattr(obj, convert):
            try:
                return json_safe(getattr(obj, convert)(), nonfinite=nonfinite)
            except (TypeError, ValueError, RuntimeError):
                pass
    return str(obj)


def is_secret_key(key: str) -> bool:
    """True for argument names whose value must never be saved or shown (``hub_token``...)."""
    name = str(key).lower()
    for harmless in _HARMLESS_TOKEN_WORDS:
        name = name.replace(harmless, "")
    return any(word in name for word in _SECRET_WORDS)


def env_secrets() -> list[str]:
    return [v for v in (os.environ.get(name) for name in TOKEN_ENV_VARS) if v]


def redact(text: str, secrets: str | Iterable[str | None] | None = None) -> str:
    """``text`` with every given secret, the ``HF_TOKEN`` value and any ``hf_...`` token replaced by ``***``."""
    if isinstance(secrets, str):
        secrets = [secrets]
    candidates = {s for s in list(secrets or []) + env_secrets() if isinstance(s, str)}
    # Longest first, so a secret that contains another is replaced whole.
    for secret in sorted(candidates, key=len, reverse=True):
        if len(secret) >= _MIN_SECRET_LEN:
            text = text.replace(secret, "***")
    return _HF_TOKEN_RE.sub("***", text)


def as_dict(args_or_dict: Any) -> dict:
    """An ``argparse.Namespace``, dataclass, mapping or object with ``to_dict()`` as a plain dict."""
    if args_or_dict is None:
        return {}
    if isinstance(args_or_dict, Mapping):
        return dict(args_or_dict)
    if isinstance(args_or_dict, argparse.Namespace):
        return dict(vars(args_or_dict))
    if dataclasses.is_dataclass(args_or_dict) and not isinstance(args_or_dict, type):
        return {f.name: getattr(args_or_dict, f.name) for f in dataclasses.fields(args_or_dict)}
    if hasattr(args_or_dict, "to_dict"):
        return dict(args_or_dict.to_dict())
    return dict(vars(args_or_dict))


def collect_secrets(obj: Any, found: list[str] | None = None) -> list[str]:
    """Values stored under secret keys, at any depth, so they can be redacted elsewhere too."""
    found = [] if found is None else found
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if is_secret_key(k) and isinstance(v, str):
                found.append(v)
            else:
                collect_secrets(v, found)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            collect_secrets(v, found)
    return found


def _strip(obj: Any, secrets: list[str]) -> Any:
    if isinstance(obj, Mapping):
        return {k: _strip(v, secrets) for k, v in obj.items() if not is_secret_key(k)}
    if isinstance(obj, list):
        return [_strip(v, secrets) for v in obj]
    if isinstance(obj, str):
        return redact(obj, secrets)
    return obj


def public_args(args_or_dict: Any, secrets: Iterable[str | None] = ()) -> dict:
    """A JSON-safe copy of a run's arguments that is safe to save, log or publish.

    Drops every key, at any depth, naming a secret (``hub_token``, ``*password*``, ``*secret*``,
    any name containing "token" other than via "tokenizer"/"tokens", API keys), and replaces
    those secrets, the given ``secrets``, the ``HF_TOKEN`` value and ``hf_...`` tokens in the
    remaining strings by ``***``.
    """
    raw = as_dict(args_or_dict)
    found = collect_secrets(raw) + [s for s in secrets if s]
    return _strip(json_safe(raw, nonfinite="str"), found)


def pop_hub_token(args: argparse.Namespace) -> str | None:
    """Remove ``hub_token`` from ``args`` and return it; None lets huggingface_hub use ``HF_TOKEN`` or the login."""
    return vars(args).pop("hub_token", None) or None


__all__ = ["as_dict", "collect_secrets", "env_secrets", "is_secret_key", "json_safe", "pop_hub_token",
           "public_args", "redact"]

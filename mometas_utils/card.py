"""The model card (``README.md``) of a MOMETAS pre-training run, written with ``huggingface_hub.ModelCard``.

Metadata: ``pipeline_tag: fill-mask`` (the folder is a BERT with its LM head for
``AutoModelForMaskedLM``), ``library_name``, tags, ``base_model`` when the run started from a
Hub model and ``datasets`` when it read a Hub dataset. The body says what MOMETAS is, the
objectives (their descriptions come from :data:`mometas_utils.objectives.OBJECTIVES`), the
sampler settings, the learned distribution and the sampler's health, which Auto classes need
``trust_remote_code``, and the run's arguments. It never holds a secret or a local path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .history import average_distribution, final_probabilities, health_line
from .objectives import OBJECTIVES
from .paper import PAPER_CITATION
from .scrub import as_dict, collect_secrets, public_args, redact

MODEL_CARD_TAGS = ["mometas", "bert", "continual-pretraining", "multi-objective"]

# Paper names of the sampler settings the script passes.
SETTING_NAMES = {
    "meta_length": "meta length K",
    "meta_step_size": "meta step size β",
    "entropy_lambda": "entropy weight λ",
    "reward": "reward R(τ)",
}


def is_hub_id(name: str | None) -> bool:
    """True when ``name`` names a Hub repo rather than something on this machine."""
    from huggingface_hub.utils import validate_repo_id

    if not name or os.path.isabs(name) or os.path.exists(name) or name.startswith((".", "~")):
        return False
    try:
        validate_repo_id(name)
    except ValueError:
        return False
    return True


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("|", "\\|")


def _no_local_paths(args: Mapping[str, Any]) -> dict:
    """Arguments with every local path cut to its last component (a card is public)."""
    out = {}
    for key, value in args.items():
        if isinstance(value, str) and (os.path.isabs(value) or (os.sep in value and not is_hub_id(value))
                                       or os.path.exists(value)):
            value = Path(value).name
        out[key] = value
    return out


def _table(header: tuple[str, ...], rows: Iterable[Iterable[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def build_model_card(*, base_model: str | None, objectives: Iterable[str], sampler_name: str,
                     sampler_settings: Mapping[str, Any], rows: Iterable[Mapping] = (),
                     total_steps: int | None = None, args: Any = None, dataset_name: str | None = None,
                     metrics: Mapping[str, Any] | None = None, repo_id: str | None = None,
                     secrets: Iterable[str | None] = ()):
    """A ``huggingface_hub.ModelCard`` for a run; ``rows`` is its sampler history (may be empty)."""
    from huggingface_hub import ModelCard, ModelCardData

    raw_args = public_args(args or {})
    found = collect_secrets(as_dict(args)) + [s for s in secrets if s]
    args_public = _no_local_paths(raw_args)
    objectives = list(objectives)
    rows = list(rows)
    from_hub = is_hub_id(base_model)
    data = ModelCardData(
        language="en", license=None, library_name="transformers", pipeline_tag="fill-mask", tags=list(MODEL_CARD_TAGS),
        base_model=base_model if from_hub else None, datasets=[dataset_name] if is_hub_id(dataset_name) else None,
    )
    repo = repo_id or "path/or/repo-id"
    is_mometas = str(sampler_name).lower() == "mometas"
    start = f"[`{base_model}`](https://huggingface.co/{base_model})" if from_hub else "a local BERT checkpoint"
    parts = [
        "# BERT encoder continually pre-trained with " + ("MOMETAS" if is_mometas else f"{sampler_name} objective sampling"),
        f"This model is {start} continually pre-trained on {len(objectives)} objectives at once; at each step one "
        f"objective is drawn from a sampling distribution ({'MOMETAS' if is_mometas else f'the `{sampler_name}` sampler'}).",
        "MOMETAS (Wu et al., 2022, *Forging Multiple Training Objectives for Pre-trained Language Models via "
        "Meta-Learning*, Findings of EMNLP 2022) is a meta-learned objective sampler: every K steps (meta length) it "
        "evaluates every objective on validation data and updates its distribution with REINFORCE, rewarded by R(τ), "
        "the summed relative drop of the validation losses.",
        "## Objectives",
        _table(("objective", "description"), ((o, OBJECTIVES[o].description if o in OBJECTIVES else "") for o in objectives)),
        "## Sampler settings",
        _table(("setting", "value"), [("sampler", sampler_name)] + [
            (SETTING_NAMES.get(k, k), v) for k, v in public_args(sampler_settings).items()]),
    ]
    average = average_distribution(rows, total_steps=total_steps)
    if average:
        final = final_probabilities(rows) or {}
        parts += [
            "## Learned sampling distribution",
            "Average sampling weight per objective over training, each distribution weighted by the number of steps "
            "it was in force (Figure 2 of the paper), and the distribution at the end of training.",
            _table(("objective", "average weight", "final probability"),
                   ((n, f"{v:.3f}", "-" if final.get(n) is None else f"{final[n]:.3f}") for n, v in average.items())),
        ]
        health = health_line(rows)
        if health:
            parts.append(f"Sampler health: {health}.")
    if metrics:
        parts += ["## Metrics", _table(("metric", "value"), public_args(metrics).items())]
    parts += [
        "## How to use",
        "The folder is a plain BERT for `AutoModel` and `AutoModelForMaskedLM` (the `fill-mask` pipeline), which need "
        "no remote code. `AutoModelForPreTraining` with `trust_remote_code=True` loads the encoder with every "
        "objective's head from `modeling_mometas.py`.",
        "```python\nfrom transformers import AutoModel, AutoModelForPreTraining, pipeline\n\n"
        f'encoder = AutoModel.from_pretrained("{repo}")  # the BERT encoder, for fine-tuning\n'
        f'fill = pipeline("fill-mask", model="{repo}")\n'
        f'model = AutoModelForPreTraining.from_pretrained("{repo}", trust_remote_code=True)  # all objective heads\n```',
        "## Training arguments",
        "<details><summary>Arguments of the run (secrets removed, local paths cut to their last part)</summary>\n\n"
        "```json\n" + json.dumps(args_public, indent=2, sort_keys=True) + "\n```\n\n</details>",
        "## License",
        "No license was set for this model; the uploader should add one (and respect the base model's and the "
        "training data's licenses).",
        "## Citation",
        "```bibtex\n" + PAPER_CITATION + "\n```",
    ]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(parts) + "\n"
    return ModelCard(redact(content, found))


def save_model_card(card: Any, output_dir: str | os.PathLike) -> Path:
    """Write ``card`` to ``output_dir/README.md`` (the Hub shows it as the model page)."""
    path = Path(output_dir) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(redact(str(card)), encoding="utf-8")
    return path


__all__ = ["MODEL_CARD_TAGS", "build_model_card", "is_hub_id", "save_model_card"]

"""Configuration of the MOMETAS multi-objective pre-training model.

This file travels to the Hub with ``modeling_mometas.py`` as remote code, so it imports
only ``transformers`` and ``huggingface_hub``, never the rest of ``mometas_utils``.
"""

from huggingface_hub.dataclasses import strict
from transformers import BertConfig

# The head each of the paper's five objectives trains (Wu et al., 2022, §4.1). MLM and
# EMLM share BERT's own LM head: entity-guided masking changes *what* is masked, not how a
# masked token is predicted (Xiong et al., 2020 use the same head).
DEFAULT_OBJECTIVE_HEADS = {
    "mlm": "mlm",
    "cse": "contrastive",
    "atd": "token_detection",
    "dtd": "token_detection",
    "emlm": "mlm",
}

HEAD_TYPES = ("mlm", "contrastive", "token_detection")


@strict
class MometasConfig(BertConfig):
    r"""A ``BertConfig`` plus the objectives trained on top of the shared encoder.

    ``model_type`` stays ``"bert"``: a saved folder is then a plain BERT folder for
    ``AutoModel.from_pretrained`` (no remote code), while ``auto_map`` points
    ``AutoModelForPreTraining`` with ``trust_remote_code=True`` at the multi-head model.

    Args:
        objectives (`dict[str, str]` or `list[str]`, *optional*):
            Objective name -> head type (one of ``"mlm"``, ``"contrastive"``,
            ``"token_detection"``). A list takes the heads of :data:`DEFAULT_OBJECTIVE_HEADS`.
            Defaults to the paper's five objectives.
        cse_temperature (`float`, *optional*, defaults to 0.05):
            Temperature of the SimCSE contrastive loss (Gao et al., 2021).
        cse_eval_seed (`int`, *optional*, defaults to 0):
            Seed of the dropout masks that make the two CSE views differ in ``eval()``
            mode, so that the CSE validation loss at meta-test stays informative and is
            the same from one meta-test to the next.
    """

    objectives: dict | list | None = None
    cse_temperature: float = 0.05
    cse_eval_seed: int = 0

    def __post_init__(self, **kwargs):
        self.objectives = resolve_objective_heads(self.objectives)
        super().__post_init__(**kwargs)


def resolve_objective_heads(objectives) -> dict:
    """Normalise ``objectives`` (None, a list of names, or a dict name -> head type) to a dict.

    ``from_pretrained(..., objectives=[...])`` sets the attribute after construction, so
    the model calls this again rather than trusting ``__post_init__`` to have run on it.
    """
    if objectives is None:
        return dict(DEFAULT_OBJECTIVE_HEADS)
    if isinstance(objectives, (list, tuple)):
        unknown = [name for name in objectives if name not in DEFAULT_OBJECTIVE_HEADS]
        if unknown:
            raise ValueError(
                f"objectives {unknown} have no default head; pass a dict name -> head type "
                f"with head types from {HEAD_TYPES}"
            )
        return {name: DEFAULT_OBJECTIVE_HEADS[name] for name in objectives}
    resolved = dict(objectives)
    bad = {name: head for name, head in resolved.items() if head not in HEAD_TYPES}
    if bad:
        raise ValueError(f"unknown head types {bad}; expected one of {HEAD_TYPES}")
    return resolved

__all__ = ["MometasConfig", "DEFAULT_OBJECTIVE_HEADS", "HEAD_TYPES", "resolve_objective_heads"]

"""mometas_utils: multi-objective continual pre-training with a meta-learned objective sampler.

    from mometas_utils import build_objectives, MometasConfig, MometasForPreTraining, build_sampler

Names are imported lazily, so ``import mometas_utils.objectives`` does not pull in
``datasets`` or spaCy.
"""

import importlib

_EXPORTS = {
    "MometasInputError": "errors",
    "OBJECTIVES": "objectives",
    "Objective": "objectives",
    "ObjectiveCollator": "objectives",
    "PadCollator": "objectives",
    "MLMCollator": "objectives",
    "CSECollator": "objectives",
    "ATDCollator": "objectives",
    "DTDCollator": "objectives",
    "EMLMCollator": "objectives",
    "build_objectives": "objectives",
    "objective_heads": "objectives",
    "parse_objectives": "objectives",
    "register_objective": "objectives",
    "MometasConfig": "configuration_mometas",
    "MometasForPreTraining": "modeling_mometas",
    "SAMPLERS": "samplers",
    "ObjectiveSampler": "samplers",
    "build_sampler": "samplers",
    "register_sampler": "samplers",
    "load_raw_corpus": "corpus",
    "tokenize_corpus": "data",
    "pack_sequences": "data",
    "line_by_line": "data",
    "tag_entities": "entities",
    "check_entity_tagger": "entities",
    "StepTracker": "tracker",
    "HistoryWriter": "history",
    "read_history": "history",
    "average_distribution": "history",
    "summarize_distribution": "history",
    "plot_history": "plots",
    "build_model_card": "card",
    "PRETRAINING_HPARAMS": "paper",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mometas_utils' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)

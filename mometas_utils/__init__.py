"""mometas_utils: multi-objective continual pre-training with a meta-learned objective sampler.

    from mometas_utils import build_objectives, MometasConfig, MometasForPreTraining, build_sampler
    from mometas_utils import MometasTrainer                  # the sampler in a Hugging Face Trainer
    from mometas_utils import meta_test, meta_test_batches    # the sampler in a loop of your own

Names are imported lazily, so ``import mometas_utils.objectives`` does not pull in
``datasets`` or spaCy.
"""

import importlib
import sys
import types

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
    "meta_test": "meta_test",
    "meta_test_batches": "meta_test",
    "encoder_grad_norm": "meta_test",
    "reward_terms": "rewards",
    "compute_reward": "rewards",
    "Advantage": "rewards",
    "PAPER_REWARD": "rewards",
    "MometasTrainer": "trainer",
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


class _Package(types.ModuleType):
    # ``meta_test`` names both a submodule and the function it exports. Importing the submodule binds
    # its name on the package; then ``from mometas_utils import meta_test`` would give the module
    # whenever something had imported ``mometas_utils.meta_test`` first. The name stays the function's
    # (``from mometas_utils.meta_test import ...`` still reaches the submodule).
    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mometas_utils' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)

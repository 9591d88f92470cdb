"""The paper's numbers, in one place: the citation, Table 6 and the sampler settings of §5.

``run_mometas_pretraining.py`` takes its training defaults from :data:`PRETRAINING_HPARAMS` and
its sampler defaults from :data:`SAMPLER_DEFAULTS`; ``docs/pretraining.md`` prints both (a test
keeps it in step). ``--paper_reward`` (the script and ``examples/trainer_mometas.py``) sets
:data:`PAPER_REWARD_FLAGS`.
"""

from .rewards import PAPER_REWARD

PAPER_CITATION = """@inproceedings{wu-etal-2022-forging,
    title = "Forging Multiple Training Objectives for Pre-trained Language Models via Meta-Learning",
    author = "Wu, Hongqiu and Ding, Ruixue and Zhao, Hai and Chen, Boli and Xie, Pengjun and Huang, Fei and Zhang, Min",
    booktitle = "Findings of the Association for Computational Linguistics: EMNLP 2022",
    year = "2022",
    pages = "6483--6495",
}"""

#: Table 6, "Hyperparameters for pre-training" (BERT-base and BERT-large alike), under the script's
#: flag names. The total batch of 512 is 64 per device on 8 GPUs; the script's
#: ``--per_device_train_batch_size`` default stays small so that a first run fits anywhere.
PRETRAINING_HPARAMS = {
    "learning_rate": 5e-5,
    "weight_decay": 0.01,
    "max_seq_length": 256,
    "warmup_ratio": 0.06,
    "max_grad_norm": 1.0,
    "max_train_steps": 50_000,
    "total_train_batch_size": 512,
    "dropout": 0.1,
    "fp16": True,
    "num_gpus": 8,
}

#: §5: "we fix meta length K to 100 and meta step size to 1e-1"; §3.4.2 and Table 4: λ in 1..3, 3 best.
SAMPLER_DEFAULTS = {"meta_length": 100, "meta_step_size": 0.1, "entropy_lambda": 3.0}

#: What ``--paper_reward`` sets: Eqs. 2-4 as written (no floor, dead zone, baseline or normalisation, no
#: least probability) and the meta-test batches redrawn at every meta-test, as the paper fetches them.
PAPER_REWARD_FLAGS = {**PAPER_REWARD, "meta_eval_fixed": False}


def apply_paper_reward(args, typed) -> None:
    """``--paper_reward``: :data:`PAPER_REWARD_FLAGS` on ``args``, except the destinations in ``typed`` (the flags
    the command line set, which still win)."""
    for key, value in PAPER_REWARD_FLAGS.items():
        if key not in typed:
            setattr(args, key, value)


__all__ = ["PAPER_CITATION", "PAPER_REWARD_FLAGS", "PRETRAINING_HPARAMS", "SAMPLER_DEFAULTS", "apply_paper_reward"]

"""A deliberately harmful objective for the planted-objective benchmark: ``shuffled_mlm``.

It is MLM in every respect the sampler can see: 15% of the tokens are masked (80/10/10),
it trains the shared MLM head, its loss falls as the model fits it. But at a share f of the
masked positions (the *corruption fraction*) the target is replaced: the target at a masked
position of row i becomes the token at that position of row i+1 (the rows of the batch rolled
by one). Those targets teach nothing true about the text the model reads, and they pull the
encoder and the MLM head away from what real MLM needs.

f is a dial on the harm: f = 0 is plain MLM under another name (a *useful* duplicate a good
sampler must keep), f = 1 replaces every target (the study's original ``shuffled_mlm``).

It is registered through the public :func:`register_objective`, without touching the
library's own objectives: ``import shuffled_mlm`` (f = 1) or ``shuffled_mlm.register(f)``
before the script parses ``--objectives ...,shuffled_mlm``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from mometas_utils.objectives import MLMCollator, register_objective

NAME = "shuffled_mlm"


@dataclass
class ShuffledMLMCollator(MLMCollator):
    """MLM whose labels at a share ``corruption`` of the masked positions are another row's tokens."""

    corruption: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.corruption <= 1.0:
            raise ValueError(f"corruption: expected a fraction in [0, 1], got {self.corruption}")

    def transform(self, batch):
        out = super().transform(batch)
        labels = out["labels"]
        if labels.size(0) < 2 or self.corruption == 0.0:
            return out
        masked = labels != -100
        # f = 1 draws nothing more, so its masks and targets are those of the original objective.
        replaced = masked if self.corruption == 1.0 else masked & self.bernoulli(labels.shape, self.corruption)
        # The other row must have a real, ordinary token at the position; elsewhere no label.
        other = torch.roll(batch["input_ids"], shifts=1, dims=0)
        other_ok = torch.roll(self.candidates(batch), shifts=1, dims=0)
        out["labels"] = torch.where(replaced, torch.where(other_ok, other, torch.full_like(labels, -100)), labels)
        return out


def register(corruption: float = 1.0) -> None:
    """(Re-)register ``shuffled_mlm`` with corruption fraction ``corruption``."""
    register_objective(NAME, "mlm", functools.partial(ShuffledMLMCollator, corruption=corruption),
                       description=f"MLM whose targets at {corruption:.0%} of the masked positions are another "
                       "row's tokens (a planted harmful objective)")


register(1.0)

"""A deliberately harmful objective for the planted-objective proof: ``shuffled_mlm``.

It is MLM in every respect the sampler can see: 15% of the tokens are masked (80/10/10),
it trains the shared MLM head, its loss falls as the model fits it. But the target at a
masked position of row i is the token at that position of row i+1 (the rows of the batch
rolled by one), so it teaches nothing true about the text the model reads, and it pulls
the encoder and the MLM head away from what real MLM needs.

It is registered through the public :func:`register_objective`, without touching the
library's own objectives: ``import shuffled_mlm`` before the script parses
``--objectives ...,shuffled_mlm``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mometas_utils.objectives import MLMCollator, register_objective


@dataclass
class ShuffledMLMCollator(MLMCollator):
    """MLM whose labels are another row's tokens at the masked positions."""

    def transform(self, batch):
        out = super().transform(batch)
        labels = out["labels"]
        if labels.size(0) < 2:
            return out
        # The other row must have a real, ordinary token at the position; elsewhere no label.
        other = torch.roll(batch["input_ids"], shifts=1, dims=0)
        other_ok = torch.roll(self.candidates(batch), shifts=1, dims=0)
        out["labels"] = torch.where((labels != -100) & other_ok, other, torch.full_like(labels, -100))
        return out


register_objective("shuffled_mlm", "mlm", ShuffledMLMCollator)

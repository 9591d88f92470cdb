"""One shared BERT encoder under one head per pre-training objective (MOMETAS, §3.2).

This file travels to the Hub as remote code beside ``configuration_mometas.py``: it
imports only ``torch``, ``transformers`` and that file (relatively).

Weight names are BERT's own: the encoder lives under ``bert.`` and the LM head under
``cls.predictions.``, exactly as in ``BertForPreTraining``. A checkpoint's MLM head is
therefore loaded when it has one, and a saved folder loads as a plain ``BertModel``.
"""

import contextlib
from dataclasses import dataclass

import torch
from torch import distributed as dist
from torch import nn
from torch.nn import functional as F
from transformers import BertModel, BertPreTrainedModel
from transformers.models.bert.modeling_bert import BertOnlyMLMHead
from transformers.utils import ModelOutput

from .configuration_mometas import MometasConfig, resolve_objective_heads


@dataclass
class MometasPreTrainingOutput(ModelOutput):
    """Output of :class:`MometasForPreTraining`.

    Args:
        loss: the objective's loss (a scalar), when it could be computed.
        logits: for ``mlm`` heads with labels, vocabulary logits of the masked positions
            only, shape ``(num_masked, vocab_size)``; for ``token_detection`` heads,
            ``(batch, seq_len, 2)``; for ``contrastive`` heads, the ``(batch, batch)``
            similarity matrix divided by the temperature (``(total, total)`` over the rows
            of every process with ``cse_gather=True``).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class MometasTokenDetectionHead(nn.Module):
    """Binary per-token classifier, used by ATD (added) and DTD (deleted) token detection."""

    def __init__(self, config):
        super().__init__()
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, 2)

    def forward(self, sequence_output):
        return self.classifier(self.dropout(sequence_output))


class MometasContrastiveHead(nn.Module):
    """SimCSE's MLP over the [CLS] state (Gao et al., 2021): dense + tanh."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, cls_state):
        return self.activation(self.dense(cls_state))


def _masked_cross_entropy(logits, labels):
    """Mean cross-entropy over labels != -100, and an exact zero (with a graph) if none.

    A batch can hold no label at all (tiny sequences, an unlucky mask). Returning
    ``logits.sum() * 0`` keeps every parameter in the graph, which distributed training
    needs, instead of the NaN that an empty mean gives.
    """
    if not bool((labels != -100).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)


def _rows_of_all_processes(tensor):
    """``tensor``'s rows from every process in rank order, and the number of processes.

    ``all_gather`` carries no gradient, so this process's own slot is filled with the
    original tensor: the backward pass reaches the embeddings this process computed and
    only those. Processes may hold different numbers of rows (a short last batch), so
    the row counts are exchanged first and the slots padded to the largest.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    count = torch.tensor([tensor.size(0)], device=tensor.device)
    counts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    padded = F.pad(tensor.detach(), (0, 0, 0, max(counts) - tensor.size(0))).contiguous()
    slots = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(slots, padded)
    parts = [slot[:n] for slot, n in zip(slots, counts)]
    parts[rank] = tensor
    return torch.cat(parts), world


def contrastive_loss(z1, z2, temperature, gather=False):
    """SimCSE's InfoNCE: row i of ``z1`` must pick row i of ``z2`` among all rows of ``z2``.

    With ``gather`` (and more than one process) the rows of every process are the
    candidates: each process computes the same loss, the mean over all rows of all
    processes. Its backward pass only reaches this process's rows, and DDP then averages
    the gradients over processes, which would give 1/world of the gradient of that loss.
    The gradient (not the value) is therefore multiplied by the number of processes, so
    that after DDP's average every parameter gets exactly the gradient a single process
    would compute on the concatenated batch.

    Returns the loss and the similarity matrix divided by the temperature.
    """
    world = 1
    if gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        z1, world = _rows_of_all_processes(z1)
        z2, _ = _rows_of_all_processes(z2)
    similarity = F.cosine_similarity(z1.unsqueeze(1), z2.unsqueeze(0), dim=-1) / temperature
    targets = torch.arange(similarity.size(0), device=similarity.device)
    loss = F.cross_entropy(similarity, targets)
    if world > 1 and loss.requires_grad:
        # loss - loss.detach() is exactly 0 in value and has loss's gradient.
        loss = loss + (world - 1) * (loss - loss.detach())
    return loss, similarity


class MometasForPreTraining(BertPreTrainedModel):
    """A shared ``BertModel`` under a head per objective; ``forward(objective=...)`` gives its loss.

    Head types (``config.objectives`` maps each objective name to one):

    - ``mlm``: BERT's LM head ``cls``, tied to the word embeddings; shared by every
      objective of this type (MLM and EMLM).
    - ``contrastive``: unsupervised SimCSE. Each sentence passes the encoder twice in one
      batch of ``2B``, so dropout gives two views; the loss is cross-entropy over cosine
      similarities / temperature, with the other sentences of the batch as negatives.
      In ``eval()`` mode (meta-test) dropout is switched on under a fixed seed
      (``config.cse_eval_seed``) so that the views still differ, deterministically. With
      identical views the loss would only measure how spread out the embeddings are.
      ``forward(..., cse_gather=True)`` takes the negatives from every process instead
      (see :func:`contrastive_loss`).
    - ``token_detection``: a 2-way token classifier per objective (ATD, DTD).
    """

    config_class = MometasConfig
    _tied_weights_keys = {
        "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }

    def __init__(self, config: MometasConfig):
        super().__init__(config)
        config.objectives = resolve_objective_heads(config.objectives)
        self.bert = BertModel(config, add_pooling_layer=True)
        # The LM head always exists, even without an ``mlm`` objective, so that a
        # checkpoint's trained head survives a run and the tied-weights map stays valid.
        self.cls = BertOnlyMLMHead(config)
        self.heads = nn.ModuleDict()
        for name, head_type in config.objectives.items():
            if head_type == "token_detection":
                self.heads[name] = MometasTokenDetectionHead(config)
            elif head_type == "contrastive":
                self.heads[name] = MometasContrastiveHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings):
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    @property
    def objectives(self) -> list[str]:
        return list(self.config.objectives)

    def forward(
        self,
        objective: str,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cse_gather: bool = False,
        **kwargs,
    ) -> MometasPreTrainingOutput:
        """Loss of one objective on one batch made by that objective's collator.

        Extra batch keys the heads do not use (``entity_ids``, ``special_tokens_mask``)
        are accepted and ignored, so ``model(objective=name, **batch)`` always works.

        ``cse_gather``: for ``contrastive`` heads under ``torch.distributed``, use the
        sequences of every process as negatives (8 x 64 sequences give 511 instead of 63)
        and return the loss over all of them. Every process must then run the same
        objective at the same step. It is an argument of the call, not a config field,
        because it is a property of a training run, not of the weights: a saved model
        must not start talking to other processes in someone else's training loop.
        Ignored by the other heads and with one process.
        """
        head_type = self.config.objectives.get(objective)
        if head_type is None:
            raise ValueError(f"objective {objective!r} is not one of this model's objectives {self.objectives}")
        if head_type == "contrastive":
            return self._contrastive(objective, input_ids, attention_mask, token_type_ids, cse_gather)

        sequence_output = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        if head_type == "mlm":
            if labels is None:
                return MometasPreTrainingOutput(logits=self.cls(sequence_output))
            # The LM head is the costliest layer (hidden x vocab): only masked positions need it.
            selected = labels != -100
            logits = self.cls(sequence_output[selected])
            loss = _masked_cross_entropy(logits, labels[selected]) if logits.numel() else sequence_output.sum() * 0.0
            return MometasPreTrainingOutput(loss=loss, logits=logits)

        logits = self.heads[objective](sequence_output)
        loss = _masked_cross_entropy(logits, labels) if labels is not None else None
        return MometasPreTrainingOutput(loss=loss, logits=logits)

    def _contrastive(self, objective, input_ids, attention_mask, token_type_ids, gather):
        doubled = {
            "input_ids": input_ids.repeat(2, 1),
            "attention_mask": None if attention_mask is None else attention_mask.repeat(2, 1),
            "token_type_ids": None if token_type_ids is None else token_type_ids.repeat(2, 1),
        }
        with self._eval_dropout():
            cls_states = self.bert(**doubled).last_hidden_state[:, 0]
        z1, z2 = self.heads[objective](cls_states).chunk(2)
        loss, similarity = contrastive_loss(z1, z2, self.config.cse_temperature, gather=gather)
        return MometasPreTrainingOutput(loss=loss, logits=similarity)

    @contextlib.contextmanager
    def _eval_dropout(self):
        """In training, nothing. In eval mode, dropout on under ``cse_eval_seed``, RNG restored after."""
        if self.training:
            yield
            return
        device = self.bert.embeddings.word_embeddings.weight.device
        devices = [] if device.type == "cpu" else [device]
        device_type = "cuda" if device.type == "cpu" else device.type
        with torch.random.fork_rng(devices=devices, device_type=device_type):
            torch.manual_seed(self.config.cse_eval_seed)
            self.bert.train()
            try:
                yield
            finally:
                self.bert.eval()


__all__ = ["MometasForPreTraining", "MometasPreTrainingOutput", "contrastive_loss"]

# Saving writes ``auto_map`` and copies this file and the configuration file beside the
# weights, so that ``AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True)``
# rebuilds every head. ``AutoModel`` is deliberately absent: without remote code a saved
# folder is a plain BERT.
MometasConfig.register_for_auto_class()
MometasForPreTraining.register_for_auto_class("AutoModelForPreTraining")

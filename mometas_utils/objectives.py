"""The pre-training objectives: a collator per objective and the registry that names them.

An objective is a name, the type of head it trains (see ``modeling_mometas``) and a
collator that turns tokenized examples into that head's batch. The paper's five
(Wu et al., 2022, §4.1) are registered here; a sixth is one more :func:`register_objective`
call (see the README).

Every collator works on whole tensors, never changes special tokens or padding, and
draws its noise from its own ``torch.Generator`` (``seed``), whose state is part of
``state_dict()`` so that a resumed run draws the same masks. A collator accepts either a
list of tokenized examples (dicts with ``input_ids`` and, for EMLM, ``entity_ids``) or a
batch already padded by :class:`PadCollator`.

Conventions shared by all collators:

- "candidates" are real (attention mask 1), non-special tokens: only they are masked,
  replaced, deleted, or have tokens inserted before them;
- labels are ``-100`` wherever the loss must not look.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from .errors import MometasInputError

Batch = dict[str, torch.Tensor]


@dataclass
class PadCollator:
    """Pads tokenized examples to the longest one (or to ``pad_to_multiple_of``).

    Returns ``input_ids``, ``attention_mask`` and, when the examples have them,
    ``entity_ids`` padded with -1. Packed examples all have the same length and take a
    fast path with no per-example loop.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> Batch:
        if not features:
            raise ValueError("cannot collate an empty list of examples")
        ids = [f["input_ids"] for f in features]
        has_entities = "entity_ids" in features[0]
        lengths = [len(x) for x in ids]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        if all(n == width for n in lengths):
            batch = {"input_ids": torch.as_tensor(ids, dtype=torch.long)}
            batch["attention_mask"] = torch.ones_like(batch["input_ids"])
            if has_entities:
                batch["entity_ids"] = torch.as_tensor([f["entity_ids"] for f in features], dtype=torch.long)
            return batch
        input_ids = torch.full((len(ids), width), self.pad_token_id, dtype=torch.long)
        entity_ids = torch.full((len(ids), width), -1, dtype=torch.long) if has_entities else None
        for row, feature in enumerate(features):
            n = lengths[row]
            input_ids[row, :n] = torch.as_tensor(feature["input_ids"], dtype=torch.long)
            if entity_ids is not None:
                entity_ids[row, :n] = torch.as_tensor(feature["entity_ids"], dtype=torch.long)
        lengths_t = torch.as_tensor(lengths)
        batch = {
            "input_ids": input_ids,
            "attention_mask": (torch.arange(width)[None, :] < lengths_t[:, None]).long(),
        }
        if entity_ids is not None:
            batch["entity_ids"] = entity_ids
        return batch


@dataclass
class ObjectiveCollator:
    """Base of the objective collators: padding, the noise generator and its state.

    Args:
        tokenizer: a BERT tokenizer (its special, mask, pad and sep token ids are used).
        noise_probability: the share of candidate tokens an objective corrupts (15% in
            the paper for MLM, ATD and DTD).
        seed: seed of the collator's own ``torch.Generator``.
    """

    tokenizer: Any
    noise_probability: float = 0.15
    seed: int = 0
    pad_to_multiple_of: int | None = None
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self):
        if not 0.0 <= self.noise_probability <= 1.0:
            raise MometasInputError(f"--noise_probability must be in [0, 1], got {self.noise_probability}")
        self.generator = torch.Generator().manual_seed(self.seed)
        self.pad_token_id = self.tokenizer.pad_token_id
        self.special_ids = torch.as_tensor(sorted(set(self.tokenizer.all_special_ids)), dtype=torch.long)
        vocab_ids = torch.arange(len(self.tokenizer))
        # Random replacements and insertions are ordinary tokens: a random [CLS] or [PAD]
        # would be trivially detectable and would break the special-token invariants.
        self.random_token_ids = vocab_ids[~torch.isin(vocab_ids, self.special_ids)]
        self._pad = PadCollator(self.pad_token_id, self.pad_to_multiple_of)

    def __call__(self, features: Sequence[Mapping[str, Any]] | Batch) -> Batch:
        batch = dict(features) if isinstance(features, Mapping) else self._pad(features)
        if "attention_mask" not in batch:
            batch["attention_mask"] = (batch["input_ids"] != self.pad_token_id).long()
        return self.transform(batch)

    def transform(self, batch: Batch) -> Batch:
        raise NotImplementedError

    # helpers -----------------------------------------------------------------------
    def candidates(self, batch: Batch) -> torch.Tensor:
        """Real, non-special positions: the only ones an objective may corrupt."""
        return batch["attention_mask"].bool() & ~torch.isin(batch["input_ids"], self.special_ids)

    def bernoulli(self, shape, probability: float) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator) < probability

    def random_tokens(self, n: int) -> torch.Tensor:
        picks = torch.randint(len(self.random_token_ids), (n,), generator=self.generator)
        return self.random_token_ids[picks]

    def apply_mask_80_10_10(self, input_ids: torch.Tensor, masked: torch.Tensor) -> Batch:
        """BERT's corruption of chosen positions: 80% [MASK], 10% a random token, 10% unchanged."""
        labels = torch.where(masked, input_ids, torch.full_like(input_ids, -100))
        draw = torch.rand(input_ids.shape, generator=self.generator)
        corrupted = input_ids.clone()
        corrupted[masked & (draw < 0.8)] = self.tokenizer.mask_token_id
        to_random = masked & (draw >= 0.8) & (draw < 0.9)
        corrupted[to_random] = self.random_tokens(int(to_random.sum()))
        return {"input_ids": corrupted, "labels": labels}

    # checkpointing -----------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


@dataclass
class MLMCollator(ObjectiveCollator):
    """Masked language modelling (BERT): 15% of candidates, then 80/10/10. Labels -100 elsewhere."""

    def transform(self, batch: Batch) -> Batch:
        masked = self.candidates(batch) & self.bernoulli(batch["input_ids"].shape, self.noise_probability)
        out = self.apply_mask_80_10_10(batch["input_ids"], masked)
        return {"input_ids": out["input_ids"], "attention_mask": batch["attention_mask"], "labels": out["labels"]}


@dataclass
class CSECollator(ObjectiveCollator):
    """Unsupervised SimCSE: the batch unchanged; the model makes the two dropout views."""

    def transform(self, batch: Batch) -> Batch:
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


@dataclass
class ATDCollator(ObjectiveCollator):
    """Added-token detection: insert random tokens before ~15% of the positions.

    Insertions go before a candidate or before the final [SEP], never before [CLS].
    Labels are 1 on inserted tokens, 0 on original real tokens (special ones included)
    and -100 on padding, so the loss counts exactly the real tokens. The sequence grows;
    a row longer than ``max_length`` is cut to ``max_length`` and its last position
    becomes [SEP] again. ``max_length=None`` keeps the batch's padded width.
    """

    max_length: int | None = None

    def transform(self, batch: Batch) -> Batch:
        ids, real = batch["input_ids"], batch["attention_mask"].bool()
        rows, width = ids.shape
        lengths = real.sum(1)
        positions = torch.arange(width)
        slots = self.candidates(batch) | (positions[None, :] == (lengths - 1)[:, None])
        slots &= lengths[:, None] > 1
        inserted_before = slots & self.bernoulli(ids.shape, self.noise_probability)

        # Original token j moves right by the number of insertions at or before it.
        new_position = positions[None, :] + inserted_before.cumsum(1)
        n_inserted = inserted_before.sum(1)
        grown = width + int(n_inserted.max()) if rows else width
        out = torch.full((rows, grown), self.pad_token_id, dtype=torch.long)
        labels = torch.full((rows, grown), -100, dtype=torch.long)
        out.scatter_(1, new_position, ids)
        labels.scatter_(1, new_position, torch.where(real, 0, -100))
        r, c = inserted_before.nonzero(as_tuple=True)
        out[r, new_position[r, c] - 1] = self.random_tokens(len(r))
        labels[r, new_position[r, c] - 1] = 1

        new_lengths = lengths + n_inserted
        limit = self.max_length or width
        if grown > limit:
            cut = new_lengths > limit
            out[cut, limit - 1] = self.tokenizer.sep_token_id
            labels[cut, limit - 1] = 0
            new_lengths = new_lengths.clamp(max=limit)
            out, labels = out[:, :limit], labels[:, :limit]
        keep = torch.arange(out.size(1))[None, :] < new_lengths[:, None]
        out[~keep] = self.pad_token_id
        labels[~keep] = -100
        return {"input_ids": out, "attention_mask": keep.long(), "labels": labels}


@dataclass
class DTDCollator(ObjectiveCollator):
    """Deleted-token detection: delete ~15% of the candidates; label where something is missing.

    Convention: label 1 goes on the first surviving token after a deletion, 0 on every
    other real token (special ones included), -100 on padding. A run of adjacent
    deletions therefore leaves a single 1, on the token right after the run: the head
    learns *where* text is missing, not how much. The final [SEP] is never deleted, so
    every deletion has a token after it to carry the label.
    """

    def transform(self, batch: Batch) -> Batch:
        ids, real = batch["input_ids"], batch["attention_mask"].bool()
        rows, width = ids.shape
        deleted = self.candidates(batch) & self.bernoulli(ids.shape, self.noise_probability)
        kept = real & ~deleted
        after_deletion = torch.zeros_like(deleted)
        after_deletion[:, 1:] = deleted[:, :-1]

        new_position = kept.cumsum(1) - 1
        new_lengths = kept.sum(1)
        new_width = int(new_lengths.max()) if rows else 0
        out = torch.full((rows, new_width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((rows, new_width), -100, dtype=torch.long)
        r, c = kept.nonzero(as_tuple=True)
        out[r, new_position[r, c]] = ids[r, c]
        labels[r, new_position[r, c]] = after_deletion[r, c].long()
        attention_mask = (torch.arange(new_width)[None, :] < new_lengths[:, None]).long()
        return {"input_ids": out, "attention_mask": attention_mask, "labels": labels}


@dataclass
class EMLMCollator(ObjectiveCollator):
    """Entity-guided MLM (Xiong et al., 2020): mask every wordpiece of half of the entities.

    Needs ``entity_ids`` (one per token: -1 outside entities; the same id on every
    wordpiece of one entity, a different id on adjacent different entities; see
    ``mometas_utils.data``). In each sequence ``ceil(entity_ratio * n)`` of its ``n``
    entities are chosen at random and all their wordpieces get BERT's 80/10/10.
    A sequence with no entity falls back to plain MLM at ``noise_probability``, so
    every row still trains the LM head rather than contributing nothing.
    """

    entity_ratio: float = 0.5

    def transform(self, batch: Batch) -> Batch:
        if "entity_ids" not in batch:
            raise MometasInputError(
                "the emlm objective needs an 'entity_ids' column: tag the corpus with --entity_tagger "
                "and tokenize it with entities (mometas_utils.data.tokenize_corpus(with_entities=True))"
            )
        ids, entity_ids = batch["input_ids"], batch["entity_ids"]
        candidates = self.candidates(batch)
        in_entity = candidates & (entity_ids >= 0)
        previous = torch.full_like(entity_ids, -1)
        previous[:, 1:] = torch.where(in_entity[:, :-1], entity_ids[:, :-1], -1)
        starts = in_entity & (entity_ids != previous)
        # Number each row's entities 0..n-1 in order, then pick a random subset per row.
        local_index = (starts.cumsum(1) - 1).clamp(min=0)
        n_entities = starts.sum(1)
        most = int(n_entities.max()) if ids.size(0) else 0
        masked = torch.zeros_like(candidates)
        if most:
            scores = torch.rand((ids.size(0), most), generator=self.generator)
            scores[torch.arange(most)[None, :] >= n_entities[:, None]] = 2.0
            rank = scores.argsort(1).argsort(1)
            n_chosen = torch.ceil(n_entities * self.entity_ratio).long()
            chosen = rank < n_chosen[:, None]
            masked = in_entity & chosen.gather(1, local_index)
        no_entity = (n_entities == 0)[:, None]
        masked |= no_entity & candidates & self.bernoulli(ids.shape, self.noise_probability)
        out = self.apply_mask_80_10_10(ids, masked)
        return {"input_ids": out["input_ids"], "attention_mask": batch["attention_mask"], "labels": out["labels"]}


@dataclass(frozen=True)
class Objective:
    """A registered objective: its name, the head type it trains, its collator class and a one-line description
    (the model card's and the docs' only source for it)."""

    name: str
    head: str
    collator_class: Callable[..., ObjectiveCollator]
    needs_entities: bool = False
    description: str = ""


OBJECTIVES: dict[str, Objective] = {}


def register_objective(
    name: str, head: str, collator_class, *, needs_entities: bool = False, description: str = ""
) -> Objective:
    """Register an objective under ``name``. ``head`` is a head type of ``modeling_mometas``."""
    objective = Objective(name, head, collator_class, needs_entities, description)
    OBJECTIVES[name] = objective
    return objective


register_objective("mlm", "mlm", MLMCollator,
                   description="Masked Language Modeling: predict the masked tokens (15% of them by default; 80% [MASK])")
register_objective("cse", "contrastive", CSECollator,
                   description="Contrastive learning of Sentence Embeddings (unsupervised SimCSE): two dropout views "
                   "of a sentence, in-batch negatives")
register_objective("atd", "token_detection", ATDCollator,
                   description="Added Token Detection: find the random tokens inserted before 15% of the positions (by default)")
register_objective("dtd", "token_detection", DTDCollator,
                   description="Deleted Token Detection: find where tokens were removed (15% of them by default)")
register_objective("emlm", "mlm", EMLMCollator, needs_entities=True,
                   description="Entity-guided Masked Language Modeling: predict masked entity tokens")


def parse_objectives(spec: str | Sequence[str]) -> list[str]:
    """``"mlm,cse"`` or ``["mlm", "cse"]`` -> validated, de-duplicated names in order."""
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else [str(n).strip() for n in spec]
    names = [n for n in names if n]
    if not names:
        raise MometasInputError(f"--objectives is empty; choose from {sorted(OBJECTIVES)}")
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise MometasInputError(f"--objectives: unknown objective(s) {unknown}; choose from {sorted(OBJECTIVES)}")
    if len(set(names)) != len(names):
        raise MometasInputError(f"--objectives lists an objective twice: {names}")
    return names


def objective_heads(names: Sequence[str]) -> dict[str, str]:
    """The ``MometasConfig.objectives`` mapping (name -> head type) for these objectives."""
    return {name: OBJECTIVES[name].head for name in parse_objectives(names)}


def build_objectives(
    names: str | Sequence[str],
    tokenizer,
    *,
    noise_probability: float = 0.15,
    seed: int = 0,
    max_length: int | None = None,
    pad_to_multiple_of: int | None = None,
) -> dict[str, ObjectiveCollator]:
    """One collator per objective, each with its own generator (seeded ``seed + index``).

    ``max_length`` caps the sequences ATD grows by insertion.
    """
    collators = {}
    for index, name in enumerate(parse_objectives(names)):
        kwargs = dict(noise_probability=noise_probability, seed=seed + index, pad_to_multiple_of=pad_to_multiple_of)
        if "max_length" in getattr(OBJECTIVES[name].collator_class, "__dataclass_fields__", {}):
            kwargs["max_length"] = max_length
        collators[name] = OBJECTIVES[name].collator_class(tokenizer, **kwargs)
    return collators


__all__ = [
    "ATDCollator",
    "CSECollator",
    "DTDCollator",
    "EMLMCollator",
    "MLMCollator",
    "OBJECTIVES",
    "Objective",
    "ObjectiveCollator",
    "PadCollator",
    "build_objectives",
    "objective_heads",
    "parse_objectives",
    "register_objective",
]

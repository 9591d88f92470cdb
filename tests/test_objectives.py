"""Invariants of the objective collators, checked on real wordpieces of real sentences."""

import math

import pytest
import torch

from mometas_utils.errors import MometasInputError
from mometas_utils.objectives import (
    ATDCollator,
    DTDCollator,
    EMLMCollator,
    MLMCollator,
    PadCollator,
    build_objectives,
    objective_heads,
    parse_objectives,
)

SENTENCES = [
    "Barack Obama was born in Honolulu, Hawaii, and later moved to Chicago.",
    "The Eiffel Tower in Paris attracts millions of visitors every year.",
    "Short one.",
    "Apple and Microsoft reported earnings on Tuesday, beating forecasts from Wall Street analysts by a wide margin.",
]


@pytest.fixture(scope="module")
def features(tokenizer):
    """Variable-length examples, repeated so that rates can be measured."""
    out = []
    for text in SENTENCES * 16:
        ids = tokenizer(text)["input_ids"]
        out.append({"input_ids": ids})
    return out


def real_tokens(batch, row):
    return batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()


def test_pad_collator_pads_ids_mask_and_entities():
    pad = PadCollator(pad_token_id=0)
    batch = pad([{"input_ids": [101, 5, 102], "entity_ids": [-1, 0, -1]}, {"input_ids": [101, 102], "entity_ids": [-1, -1]}])
    assert batch["input_ids"].tolist() == [[101, 5, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["entity_ids"].tolist() == [[-1, 0, -1], [-1, -1, -1]]
    same = pad([{"input_ids": [1, 2]}, {"input_ids": [3, 4]}])
    assert same["attention_mask"].all() and "entity_ids" not in same


def test_mlm_invariants(tokenizer, features):
    collator = MLMCollator(tokenizer, seed=3)
    padded = PadCollator(tokenizer.pad_token_id)(features)
    batch = collator(features)
    ids, labels, original = batch["input_ids"], batch["labels"], padded["input_ids"]
    special = torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    masked = labels != -100
    # Labels sit only on real non-special tokens and hold the original token.
    assert not (masked & (special | ~padded["attention_mask"].bool())).any()
    assert torch.equal(labels[masked], original[masked])
    # Everything not chosen is untouched, specials and padding included.
    assert torch.equal(ids[~masked], original[~masked])
    assert torch.equal(batch["attention_mask"], padded["attention_mask"])
    # 15% of candidates; 80/10/10 among them (loose bounds: ~600 candidates).
    candidates = padded["attention_mask"].bool() & ~special
    rate = masked.sum().item() / candidates.sum().item()
    assert 0.10 < rate < 0.20
    to_mask = (ids == tokenizer.mask_token_id) & masked
    assert 0.65 < to_mask.sum().item() / masked.sum().item() < 0.95
    # Random replacements are never special tokens.
    replaced = masked & (ids != tokenizer.mask_token_id) & (ids != original)
    assert not torch.isin(ids[replaced], torch.tensor(tokenizer.all_special_ids)).any()


def test_collators_are_reproducible_and_resumable(tokenizer, features):
    a, b, c = (MLMCollator(tokenizer, seed=s) for s in (7, 7, 8))
    first_a, first_b, first_c = a(features), b(features), c(features)
    assert torch.equal(first_a["input_ids"], first_b["input_ids"])
    assert not torch.equal(first_a["input_ids"], first_c["input_ids"])
    state = a.state_dict()
    next_a = a(features)
    a.load_state_dict(state)
    assert torch.equal(a(features)["input_ids"], next_a["input_ids"])


def test_atd_removing_inserted_tokens_gives_back_the_input(tokenizer, features):
    collator = ATDCollator(tokenizer, seed=1, max_length=512)
    padded = PadCollator(tokenizer.pad_token_id)(features)
    batch = collator(features)
    labels, mask = batch["labels"], batch["attention_mask"].bool()
    assert torch.equal(mask, labels != -100), "loss must count exactly the real tokens"
    assert torch.equal(batch["input_ids"][~mask], torch.full_like(batch["input_ids"][~mask], tokenizer.pad_token_id))
    inserted_total, originals_total = 0, 0
    for row in range(len(features)):
        out_ids = batch["input_ids"][row][mask[row]]
        out_labels = labels[row][mask[row]]
        assert out_ids[0] == tokenizer.cls_token_id and out_ids[-1] == tokenizer.sep_token_id
        assert out_labels[0] == 0
        inserted = out_ids[out_labels == 1]
        assert not torch.isin(inserted, torch.tensor(tokenizer.all_special_ids)).any()
        assert out_ids[out_labels == 0].tolist() == real_tokens(padded, row)
        inserted_total += len(inserted)
        originals_total += len(real_tokens(padded, row)) - 1
    assert 0.10 < inserted_total / originals_total < 0.20


def test_atd_truncates_to_max_length_and_keeps_final_sep(tokenizer, features):
    max_length = 16
    padded = PadCollator(tokenizer.pad_token_id)(features)
    batch = ATDCollator(tokenizer, seed=2, noise_probability=0.5, max_length=max_length)(features)
    assert batch["input_ids"].size(1) <= max_length
    for row in range(len(features)):
        out_ids = batch["input_ids"][row][batch["attention_mask"][row].bool()]
        out_labels = batch["labels"][row][batch["attention_mask"][row].bool()]
        assert out_ids[-1] == tokenizer.sep_token_id and out_labels[-1] == 0
        kept = out_ids[:-1][out_labels[:-1] == 0].tolist()
        assert kept == real_tokens(padded, row)[: len(kept)], "the originals kept are a prefix of the input"


def reference_dtd_labels(original, output):
    """Label by hand: walk the original; a surviving token is 1 iff its predecessor vanished."""
    labels, j, previous_deleted = [], 0, False
    for token in original:
        if j < len(output) and output[j] == token:
            labels.append(1 if previous_deleted else 0)
            previous_deleted = False
            j += 1
        else:
            previous_deleted = True
    assert j == len(output), "output is not a subsequence of the input"
    return labels


def test_dtd_deletes_non_special_tokens_and_labels_the_next_survivor(tokenizer):
    # Distinct tokens in every row make the hand alignment of input and output unambiguous.
    lengths = [5, 40, 17, 64, 30, 2, 51, 23] * 4
    features = [
        {"input_ids": [tokenizer.cls_token_id] + list(range(2000 + 100 * k, 2000 + 100 * k + n)) + [tokenizer.sep_token_id]}
        for k, n in enumerate(lengths)
    ]
    padded = PadCollator(tokenizer.pad_token_id)(features)
    batch = DTDCollator(tokenizer, seed=4, noise_probability=0.3)(features)
    mask = batch["attention_mask"].bool()
    assert torch.equal(mask, batch["labels"] != -100)
    deleted, candidates = 0, 0
    specials = set(tokenizer.all_special_ids)
    for row in range(len(features)):
        original = real_tokens(padded, row)
        output = batch["input_ids"][row][mask[row]].tolist()
        assert [t for t in output if t in specials] == [t for t in original if t in specials]
        assert batch["labels"][row][mask[row]].tolist() == reference_dtd_labels(original, output)
        deleted += len(original) - len(output)
        candidates += sum(t not in specials for t in original)
    assert 0.2 < deleted / candidates < 0.4


def test_dtd_adjacent_deletions_leave_one_label():
    class Tok:
        pad_token_id, cls_token_id, sep_token_id, mask_token_id = 0, 1, 2, 3
        all_special_ids = [0, 1, 2, 3]

        def __len__(self):
            return 50

    batch = DTDCollator(Tok(), noise_probability=1.0)([{"input_ids": [1, 10, 11, 12, 2]}])
    assert batch["input_ids"].tolist() == [[1, 2]]
    assert batch["labels"].tolist() == [[0, 1]]


def test_emlm_masks_whole_entities_half_of_them(tokenizer):
    texts = SENTENCES
    features = []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        entity_ids = [-1] * len(ids)
        # Mark three single/multi-piece "entities" per sentence at fixed spans.
        spans = [(1, 3), (4, 5), (6, 8)] if len(ids) > 9 else []
        for k, (s, e) in enumerate(spans):
            entity_ids[s:e] = [k] * (e - s)
        features.append({"input_ids": ids, "entity_ids": entity_ids})
    collator = EMLMCollator(tokenizer, seed=5)
    for _ in range(10):
        batch = collator(features)
        for row, feature in enumerate(features):
            chosen = batch["labels"][row] != -100
            ent = torch.tensor(feature["entity_ids"] + [-1] * (chosen.numel() - len(feature["entity_ids"])))
            if (ent >= 0).any():
                masked_entities = set(ent[chosen].tolist())
                assert -1 not in masked_entities, "only entity tokens are masked"
                for k in masked_entities:
                    assert chosen[ent == k].all(), "every wordpiece of a chosen entity is masked"
                assert len(masked_entities) == math.ceil(len(set(ent[ent >= 0].tolist())) / 2)
            else:
                # The fallback masks ordinary tokens of an entity-free row, never specials.
                assert not torch.isin(batch["input_ids"].new_tensor(feature["input_ids"])[chosen[: len(feature["input_ids"])]], torch.tensor(tokenizer.all_special_ids)).any()


def test_emlm_without_entity_column_is_a_clear_error(tokenizer):
    with pytest.raises(MometasInputError, match="entity_ids"):
        EMLMCollator(tokenizer)([{"input_ids": [101, 2000, 102]}])


def test_registry_and_parsing(tokenizer):
    assert parse_objectives("mlm, cse,atd") == ["mlm", "cse", "atd"]
    with pytest.raises(MometasInputError, match="--objectives.*unknown"):
        parse_objectives("mlm,nsp")
    with pytest.raises(MometasInputError, match="twice"):
        parse_objectives("mlm,mlm")
    assert objective_heads(["mlm", "emlm", "dtd"]) == {"mlm": "mlm", "emlm": "mlm", "dtd": "token_detection"}
    collators = build_objectives("mlm,atd", tokenizer, seed=10, max_length=64)
    assert collators["atd"].max_length == 64
    assert collators["mlm"].seed != collators["atd"].seed


def test_collators_accept_prepadded_batches(tokenizer, features):
    padded = PadCollator(tokenizer.pad_token_id)(features)
    from_list = DTDCollator(tokenizer, seed=9)(features)
    from_batch = DTDCollator(tokenizer, seed=9)(padded)
    assert torch.equal(from_list["input_ids"], from_batch["input_ids"])

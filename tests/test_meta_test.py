"""Meta-test batches and losses, and the gradient norm that the gradient-based sampler sees."""

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from mometas_utils.configuration_mometas import MometasConfig
from mometas_utils.meta_test import encoder_grad_norm, meta_test, meta_test_batches, unscaled_encoder_grad_norm
from mometas_utils.modeling_mometas import MometasForPreTraining
from mometas_utils.objectives import PadCollator, build_objectives
from mometas_utils.samplers import GradientSampler

OBJECTIVES = ["mlm", "cse", "atd", "dtd"]


@pytest.fixture(scope="module")
def setup(tokenizer):
    torch.manual_seed(0)
    config = MometasConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=64, objectives=OBJECTIVES)
    model = MometasForPreTraining(config)
    rows = [{"input_ids": [tokenizer.cls_token_id, *range(1000 + 7 * i, 1020 + 7 * i), tokenizer.sep_token_id]}
            for i in range(40)]
    return model, rows, PadCollator(tokenizer.pad_token_id)


def _batches(rows, pad, step, fixed):
    return meta_test_batches(rows, batch_size=8, num_batches=2, seed=3, step=step, process_index=0, pad=pad,
                             fixed=fixed)


def test_fixed_batches_are_the_same_at_every_meta_test(setup):
    _, rows, pad = setup
    same = [b["input_ids"] for b in _batches(rows, pad, 100, True)]
    assert all(torch.equal(x, y["input_ids"]) for x, y in zip(same, _batches(rows, pad, 200, True)))
    redrawn = [b["input_ids"] for b in _batches(rows, pad, 200, False)]
    assert not all(torch.equal(x, y) for x, y in zip(same, redrawn))
    # Either way the draw is a function of (seed, step, process): a resumed run sees the same batches.
    assert all(torch.equal(x, y["input_ids"]) for x, y in zip(redrawn, _batches(rows, pad, 200, False)))


def test_frozen_model_has_zero_null_reward_on_fixed_batches_only(setup, tokenizer):
    model, rows, pad = setup
    collators = build_objectives(OBJECTIVES, tokenizer, seed=3)

    def losses(step, fixed):
        return meta_test(model, _batches(rows, pad, step, fixed), collators, seed=3, device="cpu")

    model.train()
    first = losses(100, True)
    assert model.training  # restored
    assert losses(200, True) == first  # same text, same corruption, same CSE dropout
    assert losses(200, False) != losses(100, False)  # redrawn text: noise even for a frozen model
    assert set(first) == set(OBJECTIVES) and all(v > 0 for v in first.values())
    # One pass can give each batch's loss; their mean is the meta-test loss.
    per_batch = meta_test(model, _batches(rows, pad, 100, True), collators, seed=3, device="cpu", per_batch=True)
    assert all(len(v) == 2 for v in per_batch.values())
    assert {k: sum(v) / 2 for k, v in per_batch.items()} == pytest.approx(first, rel=1e-6)


def test_gradient_norm_is_measured_on_unscaled_fp16_gradients(setup, tokenizer):
    """The fp16 path of Accelerate, really run on CPU: a GradScaler scales the backward."""
    model, rows, pad = setup
    batch = build_objectives(["mlm"], tokenizer, seed=0)["mlm"](rows[:8])

    def backward(accelerator):
        model.zero_grad(set_to_none=True)
        model.eval()  # no dropout: both backward passes see the same function
        accelerator.backward(model(objective="mlm", **batch).loss)
        model.train()

    plain = Accelerator(cpu=True)
    backward(plain)
    reference = encoder_grad_norm(model)
    assert unscaled_encoder_grad_norm(plain, model) == reference

    # On a GPU Accelerate makes this scaler itself; on CPU we hand it one so the same code runs.
    AcceleratorState._reset_state(reset_partial_state=True)
    scaled = Accelerator(cpu=True, mixed_precision="fp16")
    scaled.native_amp, scaled.scaler = True, torch.amp.GradScaler("cpu", init_scale=2.0**16)
    optimizer = scaled.prepare(torch.optim.SGD(model.parameters(), lr=0.0))
    backward(scaled)
    assert encoder_grad_norm(model) == pytest.approx(2.0**16 * reference, rel=1e-4)  # what Gb used to see
    assert unscaled_encoder_grad_norm(scaled, model) == pytest.approx(reference, rel=1e-4)
    scaled.clip_grad_norm_(model.parameters(), 1e9)  # unscales in place; must not be called twice
    assert encoder_grad_norm(model) == pytest.approx(reference, rel=1e-4)
    optimizer.step()
    AcceleratorState._reset_state(reset_partial_state=True)

    # What that did to Gb: scaled norms saturate the sigmoid and every objective weighs the same.
    def gb_probabilities(norms):
        s = GradientSampler(["a", "b"], meta_length=2)
        for name, value in zip("ab", norms):
            s.observe(name, 1.0, grad_norm=value)
        s.update()
        return list(s.probabilities.values())

    assert gb_probabilities([0.5, 3.0]) != pytest.approx([0.5, 0.5], abs=0.05)
    assert gb_probabilities([0.5 * 2**16, 3.0 * 2**16]) == pytest.approx([0.5, 0.5], abs=1e-12)

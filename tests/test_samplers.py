"""Objective samplers, checked against hand derivations (pure torch, no model, fast)."""

import io
import math

import pytest
import torch

from mometas_utils.errors import MometasInputError
from mometas_utils.rewards import PAPER_REWARD, compute_reward
from mometas_utils.samplers import (
    SAMPLERS,
    Exp3Sampler,
    FixedSampler,
    GradientSampler,
    LossSampler,
    MometasSampler,
    UniformSampler,
    build_sampler,
)

OBJ = ["mlm", "sbo", "atd", "emlm"]
# The paper's literal Eqs. 2-4: no floor, no dead zone, no baseline, no normalisation.
PAPER = dict(PAPER_REWARD)


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def normalised(values):
    total = sum(values)
    return [v / total for v in values]


# ------------------------------------------------------------------ MOMETAS update rule

# b_i (previous meta-test) and a_i (this one) for OBJ; R(tau) of each variant by hand:
#   relative: (2-1.5)/2 + (4-4.4)/4 + (1-1)/1 + (5-4)/5 = 0.25 - 0.1 + 0 + 0.2 = 0.35
#   overall:  (2+4+1+5) - (1.5+4.4+1+4) = 12 - 10.9 = 1.1
#   hard:     +1 - 1 + 0 + 1 = 1
BASELINES = {"mlm": 2.0, "sbo": 4.0, "atd": 1.0, "emlm": 5.0}
CURRENT = {"mlm": 1.5, "sbo": 4.4, "atd": 1.0, "emlm": 4.0}
HAND_REWARD = {"relative": 0.35, "overall": 1.1, "hard": 1.0}


@pytest.mark.parametrize("reward", ["relative", "overall", "hard"])
def test_one_update_matches_closed_form(reward):
    beta, lam = 0.1, 3.0
    s = MometasSampler(OBJ, meta_length=6, meta_step_size=beta, entropy_lambda=lam, reward=reward, **PAPER)
    psi0 = torch.tensor([0.3, -0.2, 0.5, 0.0], dtype=torch.float64)
    s.logits = psi0.clone()
    assert s.update(BASELINES)["reward"] is None  # first meta-test only stores b_i
    assert torch.equal(s.logits, psi0)

    s.rollout = [0, 0, 1, 3, 0, 2]
    metrics = s.update(CURRENT)

    R = HAND_REWARD[reward]
    assert metrics["reward"] == pytest.approx(R, abs=1e-12)
    # grad of sum_t log p(T_t) is c - n p; grad of H is -p (log p + H).
    p = torch.softmax(psi0, dim=0)
    H = -(p * p.log()).sum()
    c = torch.tensor([3.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    n = 6
    expected = psi0 + beta * (R * (c - n * p) + lam * (-p * (p.log() + H)))
    torch.testing.assert_close(s.logits, expected, rtol=0, atol=1e-12)
    assert metrics["updated"] is True and metrics["rollout_length"] == 6
    assert s.rollout == []
    assert torch.equal(s.baselines, torch.tensor([CURRENT[o] for o in OBJ], dtype=torch.float64))
    assert metrics["probabilities"] == pytest.approx(dict(zip(OBJ, torch.softmax(expected, 0).tolist())))
    assert metrics["entropy"] == pytest.approx(s.entropy())


def test_compute_reward_matches_hand_values():
    b = torch.tensor([BASELINES[o] for o in OBJ])
    a = torch.tensor([CURRENT[o] for o in OBJ])
    for kind, value in HAND_REWARD.items():
        assert compute_reward(kind, b, a) == pytest.approx(value, abs=1e-6)


def test_probability_moves_toward_objective_whose_loss_dropped():
    s = MometasSampler(["a", "b", "c"], meta_length=10, meta_step_size=0.1, entropy_lambda=3.0, **PAPER)
    s.update({"a": 3.0, "b": 3.0, "c": 3.0})
    s.rollout = [0] * 8 + [1, 2]  # tau dominated by a
    metrics = s.update({"a": 2.0, "b": 3.0, "c": 3.0})
    assert metrics["reward"] == pytest.approx(1.0 / 3.0)  # (3-2)/3, the others unchanged
    p = s.probabilities
    assert p["a"] > 1 / 3 > p["b"]
    assert p["b"] == pytest.approx(p["c"], abs=1e-15)


def _lowest_entropy_under_random_rewards(entropy_lambda):
    """Lowest H(p) over 300 meta-tests whose validation losses are random, so R(tau) is noise."""
    s = MometasSampler(["a", "b", "c"], meta_length=20, meta_step_size=0.02, entropy_lambda=entropy_lambda, seed=1,
                       **PAPER)
    losses = torch.Generator().manual_seed(123)
    s.update({"a": 1.0, "b": 1.0, "c": 1.0})
    lowest = s.entropy()
    for _ in range(300):
        for _ in range(20):
            s.sample()
        val = (0.5 + torch.rand(3, generator=losses, dtype=torch.float64)).tolist()
        s.update(dict(zip("abc", val)))
        lowest = min(lowest, s.entropy())
    return lowest


def test_large_entropy_lambda_keeps_distribution_near_uniform():
    uniform = math.log(3)
    assert _lowest_entropy_under_random_rewards(entropy_lambda=100.0) > uniform - 0.05
    assert _lowest_entropy_under_random_rewards(entropy_lambda=0.0) < uniform - 0.08


def test_entropy_gradient_is_zero_at_uniform():
    # Equal losses give R = 0, so only the entropy term can move psi.
    s = MometasSampler(["a", "b", "c"], meta_length=5, entropy_lambda=3.0)
    equal = {"a": 1.0, "b": 1.0, "c": 1.0}
    s.update(equal)
    s.rollout = [0, 0, 0, 1, 2]
    assert s.update(equal)["reward"] == 0.0
    torch.testing.assert_close(s.logits, torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-15)

    # Away from uniform the same R = 0 update moves psi and raises the entropy.
    s.logits = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    before = s.entropy()
    s.rollout = [0, 0, 0, 1, 2]
    s.update(equal)
    assert s.entropy() > before


def test_entropy_lambda_follows_the_learning_rate_by_hand():
    """entropy_lambda_schedule="learning_rate": lambda_t = lambda * lr_t / max(lr_1..lr_t).

    With R = 0 (equal losses) only the entropy term moves psi. At p = (3/4, 1/4),
    dH/dpsi_0 = -p_0 (log p_0 + H) = -dH/dpsi_1, H = -(3/4 log 3/4 + 1/4 log 1/4), so one update moves
    psi_0 by beta * lambda_t * dH/dpsi_0.
    """
    p0, p1 = 0.75, 0.25
    h = -(p0 * math.log(p0) + p1 * math.log(p1))
    d_h = -p0 * (math.log(p0) + h)
    s = MometasSampler(["a", "b"], meta_length=2, entropy_lambda=3.0, entropy_lambda_schedule="learning_rate",
                       reward_baseline="none", reward_normalize=False)
    equal = {"a": 1.0, "b": 1.0}
    s.update(equal, learning_rate=0.0)  # the baselines, at the warm-up's first rate 0
    moves = []
    for lr in (4e-4, 1e-4, 2e-4, 8e-4, 2e-4):  # the peak so far: 4e-4, 4e-4, 4e-4, 8e-4, 8e-4
        s.logits = torch.tensor([math.log(3.0), 0.0], dtype=torch.float64)
        s.rollout = [0, 1]
        out = s.update(equal, learning_rate=lr)
        moves.append((out["entropy_lambda"], float(s.logits[0]) - math.log(3.0)))
    for (lam, move), factor in zip(moves, (1.0, 0.25, 0.5, 1.0, 0.25)):
        assert lam == pytest.approx(3.0 * factor)
        assert move == pytest.approx(0.1 * 3.0 * factor * d_h, rel=1e-12)

    # The peak is state: a resumed sampler measures the next rate against the same peak.
    again = MometasSampler(["a", "b"], meta_length=2, entropy_lambda=3.0, entropy_lambda_schedule="learning_rate")
    again.load_state_dict(s.state_dict())
    again.rollout = [0]
    assert again.update(equal, learning_rate=4e-4)["entropy_lambda"] == pytest.approx(1.5)

    # It needs the rate at every meta-test; the paper's constant lambda needs none and ignores it.
    with pytest.raises(MometasInputError, match="learning_rate"):
        s.update(equal)
    constant = MometasSampler(["a", "b"], meta_length=2, entropy_lambda=3.0)
    constant.update(equal)
    constant.rollout = [0]
    assert constant.update(equal, learning_rate=1e-9)["entropy_lambda"] == 3.0


def test_update_with_empty_rollout_only_refreshes_baselines():
    s = MometasSampler(["a", "b"], meta_length=4)
    s.logits = torch.tensor([0.2, -0.1], dtype=torch.float64)
    s.update({"a": 2.0, "b": 2.0})
    metrics = s.update({"a": 1.0, "b": 1.0})
    assert metrics["reward"] == pytest.approx(1.0)  # still reported
    assert metrics["updated"] is False
    assert torch.equal(s.logits, torch.tensor([0.2, -0.1], dtype=torch.float64))
    assert s.baselines.tolist() == [1.0, 1.0]


def test_update_works_under_no_grad_and_inference_mode():
    for context in (torch.no_grad, torch.inference_mode):
        s = MometasSampler(["a", "b"], meta_length=2)
        s.update({"a": 2.0, "b": 2.0})
        s.rollout = [0, 0]
        with context():
            s.update({"a": 1.0, "b": 2.0})
        assert s.probabilities["a"] > 0.5


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_validation_loss_skips_and_warns(bad):
    s = MometasSampler(["a", "b"], meta_length=4)
    s.logits = torch.tensor([0.4, -0.4], dtype=torch.float64)
    s.update({"a": 2.0, "b": 2.0})
    for _ in range(4):
        s.sample()
    with pytest.warns(RuntimeWarning, match="non-finite"):
        metrics = s.update({"a": bad, "b": 1.0})
    assert metrics["reward"] is None and metrics["updated"] is False
    assert torch.equal(s.logits, torch.tensor([0.4, -0.4], dtype=torch.float64))
    assert s.baselines.tolist() == [2.0, 2.0]
    assert s.rollout == []
    # The next reward is measured against the baselines kept from before the skip.
    assert s.update({"a": 1.0, "b": 1.0})["reward"] == pytest.approx(1.0)


def test_relative_reward_divides_only_by_the_baselines():
    # A current loss a_i <= 0 is an ordinary value: (2-0)/2 + (2-1)/2 = 1.5.
    s = MometasSampler(["a", "b"], meta_length=2)
    s.update({"a": 2.0, "b": 2.0})
    s.rollout = [0, 1]
    assert s.update({"a": 0.0, "b": 1.0})["reward"] == pytest.approx(1.5)
    assert s.baselines.tolist() == [0.0, 1.0]
    # Next time b_a = 0 cannot be divided by: that term is 0, the rest still counts.
    s.rollout = [0, 1]
    with pytest.warns(RuntimeWarning, match="positive previous loss"):
        metrics = s.update({"a": 0.5, "b": 0.5})
    assert metrics["reward"] == pytest.approx(0.5) and metrics["updated"] is True
    assert metrics["reward_terms"] == {"a": 0.0, "b": 0.5}
    # The overall reward does not divide, so a zero loss is an ordinary baseline.
    t = MometasSampler(["a", "b"], meta_length=2, reward="overall")
    t.update({"a": 2.0, "b": 2.0})
    assert t.update({"a": 0.0, "b": 1.0})["reward"] == 3.0
    assert t.baselines.tolist() == [0.0, 1.0]


def test_every_sampler_reports_the_same_reward():
    for name in SAMPLERS:
        kwargs = {"weights": [1, 1, 1, 1]} if name == "fixed" else {}
        s = build_sampler(name, OBJ, meta_length=4, reward="relative", **kwargs)
        assert s.update(BASELINES)["reward"] is None
        for _ in range(4):
            objective = s.sample()
            s.observe(objective, 1.0, grad_norm=1.0)
        assert s.update(CURRENT)["reward"] == pytest.approx(HAND_REWARD["relative"]), name


def test_uniform_ignores_rewards():
    s = UniformSampler(OBJ)
    s.update(BASELINES)
    s.rollout = [0, 0, 0]
    s.update(CURRENT)
    assert s.probabilities == {o: 0.25 for o in OBJ}
    assert s.entropy() == pytest.approx(math.log(4))


# ---------------------------------------------------------------- state and seeding


def _drive(sampler, steps, start):
    """Run `steps` training steps from global step `start`; return the draws and metrics."""
    draws, metrics = [], []
    for step in range(start + 1, start + steps + 1):
        objective = sampler.sample()
        draws.append(objective)
        i = OBJ.index(objective)
        sampler.observe(objective, loss=3.0 / (1 + 0.01 * step) + 0.1 * i, grad_norm=1.0 + 0.3 * i + 1.0 / step)
        if step % sampler.meta_length == 0:
            val = {o: 2.0 / (1 + 0.002 * step) + 0.05 * math.sin(step + k) for k, o in enumerate(OBJ)}
            metrics.append(sampler.update(val))
    return draws, metrics


def _make(name, seed):
    kwargs = {"weights": {"mlm": 4, "sbo": 3, "atd": 2, "emlm": 1}} if name == "fixed" else {}
    return build_sampler(name, OBJ, meta_length=8, seed=seed, meta_step_size=0.5, **kwargs)


def _assert_same_state(x, y):
    assert x.keys() == y.keys()
    for key in x:
        if isinstance(x[key], torch.Tensor):
            assert x[key].dtype == y[key].dtype and torch.equal(x[key], y[key]), key
        else:
            assert x[key] == y[key], key


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_state_round_trips_exactly(name):
    s = _make(name, seed=7)
    s.update({o: 2.0 for o in OBJ})
    _drive(s, 29, start=0)  # stop mid-window: rollout and window statistics are non-empty
    buffer = io.BytesIO()
    torch.save(s.state_dict(), buffer)  # what accelerate's checkpointing does

    draws, metrics = _drive(s, 45, start=29)
    final = s.state_dict()

    fresh = _make(name, seed=999)  # a different seed: the generator state must come from the file
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer))
    draws2, metrics2 = _drive(fresh, 45, start=29)

    assert draws2 == draws
    assert metrics2 == metrics
    _assert_same_state(fresh.state_dict(), final)
    if name == "mometas":
        assert torch.equal(fresh.logits, s.logits)
        assert not torch.equal(s.logits, torch.zeros(4, dtype=torch.float64))  # it did learn
    if name in ("gradient", "loss", "exp3"):
        assert s.probabilities != {o: 0.25 for o in OBJ}  # windows (exp3: every step) were folded in


def test_load_state_rejects_other_sampler_or_objectives():
    state = MometasSampler(OBJ, meta_length=8).state_dict()
    with pytest.raises(MometasInputError, match="sampler"):
        UniformSampler(OBJ).load_state_dict(state)
    with pytest.raises(MometasInputError, match="objectives"):
        MometasSampler(OBJ[:3], meta_length=8).load_state_dict(state)


def test_same_seed_same_draws_different_seed_different_draws():
    def draws(seed):
        s = UniformSampler(OBJ, seed=seed)
        return [s.sample() for _ in range(200)]

    assert draws(3) == draws(3)
    assert draws(3) != draws(4)
    assert set(draws(3)) == set(OBJ)


def test_sample_appends_to_rollout():
    s = MometasSampler(OBJ, meta_length=8)
    drawn = [s.sample() for _ in range(5)]
    assert [OBJ[i] for i in s.rollout] == drawn


# ------------------------------------------------------------ gradient and loss samplers


def test_gradient_sampler_hand_computed_proportions():
    s = GradientSampler(["a", "b", "c"], meta_length=3)
    assert s.probabilities == {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}
    s.observe("a", loss=9.0, grad_norm=1.0)
    s.observe("a", loss=9.0, grad_norm=3.0)
    s.observe("b", loss=9.0, grad_norm=0.5)
    s.update()
    # a averages 2.0, b 0.5; c was never observed and borrows the largest value, 2.0.
    expected = normalised([sigmoid(2.0), sigmoid(0.5), sigmoid(2.0)])
    assert list(s.probabilities.values()) == pytest.approx(expected, abs=1e-12)

    s.observe("b", loss=9.0, grad_norm=4.0)
    s.update()
    # a keeps its last average 2.0; b is now 4.0, which c borrows.
    expected = normalised([sigmoid(2.0), sigmoid(4.0), sigmoid(4.0)])
    assert list(s.probabilities.values()) == pytest.approx(expected, abs=1e-12)


def test_gradient_sampler_needs_grad_norm_and_skips_overflow():
    s = GradientSampler(["a", "b"], meta_length=2)
    assert s.requires_grad_norm and not s.requires_meta_test
    with pytest.raises(MometasInputError, match="grad_norm"):
        s.observe("a", loss=1.0)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        s.observe("a", loss=1.0, grad_norm=math.inf)
    s.observe("a", loss=1.0, grad_norm=1.0)
    s.update()
    assert list(s.probabilities.values()) == pytest.approx([0.5, 0.5])  # b borrows a's 1.0
    assert s.values[0] == 1.0


def test_loss_sampler_hand_computed_inverse_training_rates():
    s = LossSampler(["a", "b", "c"], meta_length=3)
    for objective, loss in [("a", 4.0), ("b", 2.0), ("a", 3.0), ("c", 1.0), ("a", 2.0), ("c", 0.5)]:
        s.observe(objective, loss)
    s.update()
    # IR = window mean / first loss: a (4+3+2)/3 / 4 = 0.75, b 2/2 = 1, c 0.75/1 = 0.75
    expected = normalised([sigmoid(0.75), sigmoid(1.0), sigmoid(0.75)])
    assert list(s.probabilities.values()) == pytest.approx(expected, abs=1e-12)

    s.observe("a", 1.0)
    s.observe("c", 0.25)
    s.update()
    # a: 1/4 (the initial loss stays 4); c: 0.25/1; b was not drawn and keeps 1.
    expected = normalised([sigmoid(0.25), sigmoid(1.0), sigmoid(0.25)])
    assert list(s.probabilities.values()) == pytest.approx(expected, abs=1e-12)
    assert s.probabilities["b"] > s.probabilities["a"]  # slower learner is sampled more


# ------------------------------------------------------------------------- fixed


def test_fixed_sampler_follows_weights():
    s = FixedSampler(["a", "b", "c"], weights={"a": 3, "b": 1, "c": 0}, seed=5)
    assert s.probabilities == {"a": 0.75, "b": 0.25, "c": 0.0}
    n = 20_000
    draws = [s.sample() for _ in range(n)]
    assert draws.count("c") == 0
    # 5 standard deviations of a binomial proportion: sqrt(0.75 * 0.25 / n) ~ 0.0031
    assert abs(draws.count("a") / n - 0.75) < 5 * math.sqrt(0.75 * 0.25 / n)
    assert FixedSampler(["a", "b", "c"], weights=[3, 1, 0]).probabilities == s.probabilities


def test_fixed_sampler_replays_a_learned_distribution():
    learned = MometasSampler(["a", "b"], meta_length=2)
    learned.logits = torch.tensor([0.7, -0.2], dtype=torch.float64)
    replay = FixedSampler(["a", "b"], weights=learned.probabilities)
    assert list(replay.probabilities.values()) == pytest.approx(list(learned.probabilities.values()), abs=1e-15)


# ---------------------------------------------------------------------- bad input

BAD_ARGUMENTS = [
    ("meta_length", lambda: MometasSampler(OBJ, meta_length=3)),
    ("meta_length", lambda: GradientSampler(OBJ, meta_length=3)),
    ("meta_length", lambda: LossSampler(OBJ, meta_length=3)),
    ("meta_length", lambda: UniformSampler(OBJ, meta_length=0)),
    ("entropy_lambda", lambda: MometasSampler(OBJ, entropy_lambda=-0.1)),
    ("meta_step_size", lambda: MometasSampler(OBJ, meta_step_size=0.0)),
    ("meta_step_size", lambda: MometasSampler(OBJ, meta_step_size=-1.0)),
    ("reward", lambda: MometasSampler(OBJ, reward="absolute")),
    ("reward", lambda: UniformSampler(OBJ, reward="absolute")),
    ("objectives", lambda: MometasSampler([])),
    ("objectives", lambda: UniformSampler(["mlm", "sbo", "mlm"])),
    ("seed", lambda: UniformSampler(OBJ, seed="0")),
    ("sampler", lambda: build_sampler("random", OBJ)),
    ("weights", lambda: build_sampler("mometas", OBJ, weights=[1, 1, 1, 1])),
    ("weights", lambda: FixedSampler(OBJ)),
    ("weights", lambda: FixedSampler(OBJ, weights=[1, -1, 1, 1])),
    ("weights", lambda: FixedSampler(OBJ, weights=[0, 0, 0, 0])),
    ("weights", lambda: FixedSampler(OBJ, weights=[1, 1, 1])),
    ("weights", lambda: FixedSampler(OBJ, weights={"mlm": 1, "sbo": 1, "atd": 1})),
    ("weights", lambda: FixedSampler(OBJ, weights={**dict.fromkeys(OBJ, 1), "nsp": 1})),
    ("weights", lambda: FixedSampler(OBJ, weights=[1, math.nan, 1, 1])),
    ("reward_floor", lambda: MometasSampler(OBJ, reward_floor=0.5)),
    ("reward_floor", lambda: UniformSampler(OBJ, reward_floor=math.nan)),
    ("reward_dead_zone", lambda: MometasSampler(OBJ, reward_dead_zone=-1e-3)),
    ("reward_objectives", lambda: MometasSampler(OBJ, reward_objectives="mlm,nsp")),
    ("reward_objectives", lambda: MometasSampler(OBJ, reward_objectives=",")),
    ("reward_baseline", lambda: MometasSampler(OBJ, reward_baseline="mean")),
    ("reward_baseline_decay", lambda: MometasSampler(OBJ, reward_baseline_decay=1.0)),
    ("min_probability", lambda: MometasSampler(OBJ, min_probability=0.25)),
    ("min_probability", lambda: MometasSampler(OBJ, min_probability=-0.01)),
    ("entropy_lambda_schedule", lambda: MometasSampler(OBJ, entropy_lambda_schedule="cosine")),
    ("smoothing", lambda: Exp3Sampler(OBJ, smoothing=1.0)),
    ("smoothing", lambda: Exp3Sampler(OBJ, smoothing=-0.1)),
]


@pytest.mark.parametrize("flag, make", BAD_ARGUMENTS, ids=[f"{i}{flag}" for i, (flag, _) in enumerate(BAD_ARGUMENTS)])
def test_bad_argument_names_its_flag(flag, make):
    with pytest.raises(MometasInputError, match=flag) as info:
        make()
    assert "\n" not in str(info.value)


def test_unknown_sampler_error_lists_valid_names():
    with pytest.raises(MometasInputError) as info:
        build_sampler("random", OBJ)
    for name in ("uniform", "gradient", "loss", "mometas", "fixed"):
        assert name in str(info.value)


def test_val_losses_must_name_exactly_the_objectives():
    s = MometasSampler(["a", "b"], meta_length=2)
    for bad in ({"a": 1.0}, {"a": 1.0, "b": 1.0, "c": 1.0}, {"a": 1.0, "c": 1.0}):
        with pytest.raises(MometasInputError, match="val_losses"):
            s.update(bad)
    with pytest.raises(MometasInputError, match="val_losses"):
        s.update(None)  # MOMETAS cannot learn without a meta-test
    with pytest.raises(MometasInputError, match="objective"):
        s.observe("c", 1.0)


def test_meta_length_below_m_is_fine_for_samplers_that_do_not_adapt():
    assert UniformSampler(OBJ, meta_length=1).meta_length == 1
    assert FixedSampler(OBJ, weights=[1, 1, 1, 1], meta_length=1).meta_length == 1


def test_build_sampler_drops_options_the_sampler_does_not_use():
    flags = dict(meta_length=8, seed=0, reward="hard", meta_step_size=0.1, entropy_lambda=3.0, weights=None)
    assert isinstance(build_sampler("uniform", OBJ, **flags), UniformSampler)
    m = build_sampler("mometas", OBJ, **flags)
    assert (m.meta_length, m.reward_kind, m.meta_step_size, m.entropy_lambda) == (8, "hard", 0.1, 3.0)
    with pytest.raises(TypeError):
        build_sampler("uniform", OBJ, temperature=1.0)


def test_defaults_follow_the_paper():
    s = build_sampler("mometas", OBJ)
    assert (s.meta_length, s.meta_step_size, s.entropy_lambda, s.reward_kind) == (100, 0.1, 3.0, "relative")
    # The reward guards are on by default; PAPER_REWARD switches every one of them off.
    assert (s.reward_floor, s.reward_dead_zone, s.reward_objectives) == (-1.0, 1e-3, OBJ)
    p = build_sampler("mometas", OBJ, **PAPER)
    assert (p.reward_floor, p.reward_dead_zone, p.min_probability) == (None, 0.0, 0.0)
    assert (p.advantage.baseline, p.advantage.normalize) == ("none", False)
    assert s.requires_meta_test and not s.requires_grad_norm
    assert s.probabilities == {o: 0.25 for o in OBJ}  # psi = 0: uniform start
    assert sorted(SAMPLERS) == ["exp3", "fixed", "gradient", "loss", "mometas", "uniform"]


# ---------------------------------------------------------------------- EXP3 (ODM)


def test_exp3_follows_odm_by_hand():
    """Three steps of ODM's Algorithm 1 with m = 4, computed by hand.

    eps_t = min(1/4, sqrt(ln 4 / (4 t))) is 1/4 until t = 6 (ln 4 / 24 = 0.0578 < 1/16 = 0.0625
    only from t = 6 on), so the first draws are uniform whatever the estimates; then
    pi_i = (1 - 4 eps_{t+1}) softmax(eps_t R)_i + eps_{t+1}.
    """
    s = Exp3Sampler(OBJ, smoothing=0.5, seed=0, loss_scaling="none")  # ODM's raw-loss reward
    assert s.probabilities == {o: 0.25 for o in OBJ}
    # Step 1 on mlm (drawn with 1/4), loss 2: R_mlm = 0.5 * 0 + 0.5 * 2 / 0.25 = 4.
    s.observe("mlm", 2.0)
    assert s.estimates.tolist() == [4.0, 0.0, 0.0, 0.0]
    # Step 2 on mlm again, loss 1: R_mlm = 0.5 * 4 + 0.5 * 1 / 0.25 = 4; step 3 on atd, loss 3: R_atd = 6.
    s.observe("mlm", 1.0)
    s.observe("atd", 3.0)
    assert s.estimates.tolist() == [4.0, 0.0, 6.0, 0.0]
    assert s.probabilities == {o: 0.25 for o in OBJ}  # eps_4 = 1/4: pure exploration still
    for _ in range(2):  # two more losses of 0 on sbo: R_sbo stays 0, t = 5
        s.observe("sbo", 0.0)
    eps5, eps6 = (min(0.25, math.sqrt(math.log(4) / (4 * t))) for t in (5, 6))
    assert (s.exploration_rate(5), s.exploration_rate(6)) == (eps5, eps6)
    assert eps5 == 0.25 and eps6 < 0.25
    weights = [math.exp(eps5 * r) for r in (4.0, 0.0, 6.0, 0.0)]
    expected = [(1 - 4 * eps6) * w / sum(weights) + eps6 for w in weights]
    assert list(s.probabilities.values()) == pytest.approx(expected, rel=1e-12)
    # The importance weight is the probability the objective was drawn with: a loss of 1 on emlm
    # (pi = expected[3]) moves R_emlm to 0.5 / expected[3].
    s.observe("emlm", 1.0)
    assert float(s.estimates[3]) == pytest.approx(0.5 / expected[3], rel=1e-12)


def test_exp3_scales_each_loss_by_its_objectives_first_one_by_hand():
    """The default reward: L / s_i, s_i the objective's first positive loss, then ODM's update.

    mlm (pi = 1/4) first loses 6: s_mlm = 6, R_mlm = 0.5 * 0 + 0.5 * (6 / 6) / 0.25 = 2.
    atd first loses 0.2: s_atd = 0.2, R_atd = 2 as well: the scales are gone.
    mlm then loses 3: R_mlm = 0.5 * 2 + 0.5 * (3 / 6) / 0.25 = 2.
    sbo loses 0 first (no scale yet, counts as 0: R_sbo = 0), then 0.5 (s_sbo = 0.5, R_sbo = 2).
    """
    s = Exp3Sampler(OBJ, smoothing=0.5, seed=0)
    s.observe("mlm", 6.0)
    s.observe("atd", 0.2)
    assert s.estimates.tolist() == pytest.approx([2.0, 0.0, 2.0, 0.0], rel=1e-12)
    s.observe("mlm", 3.0)
    s.observe("sbo", 0.0)
    assert s.estimates.tolist() == pytest.approx([2.0, 0.0, 2.0, 0.0], rel=1e-12)
    s.observe("sbo", 0.5)
    assert float(s.estimates[1]) == pytest.approx(2.0, rel=1e-12)
    assert s.scales.tolist() == pytest.approx([6.0, 0.5, 0.2, 0.0])
    # The raw reward of the same steps favours the vocabulary-sized loss 30-fold.
    raw = Exp3Sampler(OBJ, smoothing=0.5, seed=0, loss_scaling="none")
    raw.observe("mlm", 6.0)
    raw.observe("atd", 0.2)
    assert raw.estimates.tolist() == pytest.approx([12.0, 0.0, 0.4, 0.0], rel=1e-12)
    # The scales are part of the state: a resumed sampler divides by the same s_i.
    again = Exp3Sampler(OBJ, smoothing=0.5, seed=0)
    again.load_state_dict(s.state_dict())
    again.observe("atd", 0.1)
    s.observe("atd", 0.1)
    assert again.estimates.tolist() == s.estimates.tolist()
    with pytest.raises(MometasInputError, match="loss_scaling: expected one of first, none, got 'log'"):
        Exp3Sampler(OBJ, loss_scaling="log")


def test_exp3_scaled_reward_favours_the_objective_whose_loss_falls_least():
    """"learnable" falls from 6 to 1; "stuck" stays at 0.3. Scaled, "stuck" is the harder one; raw, the
    larger loss wins. Both leans are small: with rewards near 1 / pi_i, eps_t R_i stays far below 1."""
    stuck = {}
    for scaling in ("first", "none"):
        s = Exp3Sampler(["learnable", "stuck"], seed=1, loss_scaling=scaling)
        step_of = {"learnable": 0, "stuck": 0}
        for _ in range(200):
            objective = s.sample()
            step_of[objective] += 1
            s.observe(objective, max(1.0, 6.0 - step_of[objective] / 20) if objective == "learnable" else 0.3)
        stuck[scaling] = s.probabilities["stuck"]
    assert stuck["none"] < 0.5 < stuck["first"] < 0.53


def test_exp3_favours_the_objective_with_the_highest_training_loss():
    s = Exp3Sampler(["easy", "hard"], seed=1, loss_scaling="none")
    favoured = {}
    for step in range(1, 5001):
        objective = s.sample()
        s.observe(objective, 6.0 if objective == "hard" else 1.0)
        if step in (200, 5000):
            favoured[step] = s.probabilities["hard"]
    assert favoured[200] > 0.55 and favoured[5000] > 0.5
    # The estimates are smoothed averages, not sums, while eps_t shrinks like 1/sqrt(t): the
    # exponent eps_t * R_i shrinks and the distribution drifts back toward uniform.
    assert favoured[5000] < favoured[200]
    assert s.probabilities["easy"] >= s.exploration_rate(s.steps + 1)


def test_exp3_ignores_non_finite_losses_and_meta_tests():
    s = Exp3Sampler(OBJ)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        s.observe("mlm", math.inf)
    assert s.steps == 0 and not s.estimates.any()
    s.update(BASELINES)
    s.sample()
    metrics = s.update(CURRENT)
    assert metrics["reward"] == pytest.approx(HAND_REWARD["relative"])  # reported for comparison ...
    assert not metrics["updated"] and s.probabilities == {o: 0.25 for o in OBJ}  # ... and never learned from

"""The robust reward (floor, dead zone, reward objectives), the advantage and the eps-mixture,
each against a hand derivation."""

import math

import pytest
import torch

from mometas_utils.rewards import PAPER_REWARD, Advantage, compute_reward, reward_terms
from mometas_utils.samplers import MometasSampler, UniformSampler

OBJ = ["mlm", "cse", "atd", "dtd"]
# The demo's failure in miniature: CSE's loss is near 0 and noise multiplies it by 13.
B = torch.tensor([2.0, 0.005, 1.0, 5.0], dtype=torch.float64)
A = torch.tensor([1.5, 0.066, 1.0005, 4.0], dtype=torch.float64)


def test_literal_eq3_lets_one_saturated_objective_dominate():
    # 0.25 + (0.005 - 0.066)/0.005 + (1 - 1.0005)/1 + 0.2 = 0.25 - 12.2 - 0.0005 + 0.2
    assert compute_reward("relative", B, A) == pytest.approx(0.25 - 12.2 - 0.0005 + 0.2, abs=1e-12)


def test_floor_and_dead_zone_follow_the_authors_code():
    terms, floored = reward_terms("relative", B, A, floor=-1.0, dead_zone=1e-3)
    # CSE is floored at -1; ATD's change of 5e-4 is inside the dead zone.
    assert terms.tolist() == pytest.approx([0.25, -1.0, 0.0, 0.2], abs=1e-12)
    assert floored.tolist() == [False, True, False, False]
    assert compute_reward("relative", B, A, floor=-1.0, dead_zone=1e-3) == pytest.approx(-0.55, abs=1e-12)
    # The floor is a property of relative terms; the dead zone applies to every reward.
    over, floored = reward_terms("overall", B, A, floor=-1.0, dead_zone=1e-3)
    assert over.tolist() == pytest.approx([0.5, -0.061, 0.0, 1.0], abs=1e-12) and not floored.any()
    hard, _ = reward_terms("hard", B, A, dead_zone=1e-3)
    assert hard.tolist() == [1.0, -1.0, 0.0, 1.0]


def test_reward_objectives_sum_only_the_named_terms():
    mask = torch.tensor([True, False, True, True])
    assert compute_reward("relative", B, A, floor=-1.0, dead_zone=1e-3, mask=mask) == pytest.approx(0.45)
    s = UniformSampler(OBJ, reward_objectives="mlm,atd,dtd")
    s.update(dict(zip(OBJ, B.tolist())))
    metrics = s.update(dict(zip(OBJ, A.tolist())))
    assert metrics["reward"] == pytest.approx(0.45)
    assert metrics["reward_terms"] == pytest.approx({"mlm": 0.25, "atd": 0.0, "dtd": 0.2})
    assert metrics["reward_floored"] == 0  # CSE was floored, but it is not part of the reward


def test_sampler_counts_floored_terms():
    s = MometasSampler(OBJ, meta_length=4)
    s.update(dict(zip(OBJ, B.tolist())))
    s.rollout = [0, 1, 2, 3]
    metrics = s.update(dict(zip(OBJ, A.tolist())))
    assert metrics["reward"] == pytest.approx(-0.55) and metrics["reward_floored"] == 1


def _biased_ema(values, d):
    out = 0.0
    for v in values:
        out = d * out + (1 - d) * v
    return out


def test_ema_baseline_uses_only_earlier_rewards():
    d = 0.9
    adv = Advantage("ema", d, normalize=False)
    rewards = [1.0, 0.5, 2.0, -0.3]
    for n, r in enumerate(rewards):
        # b_n = bias-corrected EMA of R_1..R_{n-1}; b_1 = 0.
        b = _biased_ema(rewards[:n], d) / (1 - d**n) if n else 0.0
        out = adv(r)
        assert out["reward_baseline"] == pytest.approx(b, abs=1e-12)
        assert out["advantage"] == pytest.approx(r - b, abs=1e-12)
    # Hand values of the first three: b = 0, 1.0, 0.14 / 0.19.
    fresh = Advantage("ema", d)
    assert [fresh(r)["advantage"] for r in rewards[:3]] == pytest.approx([1.0, -0.5, 2.0 - 0.14 / 0.19])


def test_normalised_advantage_matches_formula_and_is_bounded():
    d = 0.9
    adv = Advantage("ema", d, normalize=True)
    rewards = torch.randn(200, generator=torch.Generator().manual_seed(0), dtype=torch.float64).mul(50).tolist()
    centred = []
    for n, r in enumerate(rewards):
        b = _biased_ema(rewards[:n], d) / (1 - d**n) if n else 0.0
        centred.append(r - b)
        s = math.sqrt(_biased_ema([c * c for c in centred], d) / (1 - d ** (n + 1)))
        out = adv(r)
        assert out["advantage"] == pytest.approx((r - b) / s, rel=1e-9)
        assert abs(out["advantage"]) <= 1 / math.sqrt(1 - d) + 1e-9
    assert Advantage("none", d, normalize=True)(-7.0)["advantage"] == -1.0  # the first is sign(c_1)


def test_normalisation_makes_the_step_independent_of_the_loss_scale():
    def run(scale):
        s = MometasSampler(["a", "b", "c"], meta_length=3, seed=0)
        s.update({"a": scale, "b": scale, "c": scale})
        for k in range(1, 6):
            s.rollout = [0, 0, 1]
            s.update({"a": scale * (1 - 0.1 * k), "b": scale * (1 - 0.01 * k), "c": scale})
        return s.logits

    torch.testing.assert_close(run(1.0), run(1000.0), rtol=1e-9, atol=1e-12)
    # Without it the step grows with the reward.
    paper = MometasSampler(["a", "b"], meta_length=2, reward="overall", **PAPER_REWARD)
    paper.update({"a": 100.0, "b": 100.0})
    paper.rollout = [0, 0]
    paper.update({"a": 50.0, "b": 100.0})
    assert paper.probabilities["a"] > 0.999


def test_min_probability_gradient_matches_hand_derivation():
    beta, lam, eps = 0.3, 2.0, 0.05
    m = len(OBJ)
    s = MometasSampler(OBJ, meta_length=6, meta_step_size=beta, entropy_lambda=lam, min_probability=eps,
                       reward_baseline="none", reward_normalize=False, reward_floor=None, reward_dead_zone=0.0)
    psi0 = torch.tensor([1.5, -2.0, 0.5, 0.0], dtype=torch.float64)
    s.logits = psi0.clone()
    s.update(dict(zip(OBJ, B.tolist())))
    tau = [0, 0, 1, 3, 0, 2]
    s.rollout = list(tau)
    R = s.update({"mlm": 1.0, "cse": 0.005, "atd": 1.0, "dtd": 5.0})["reward"]
    assert R == pytest.approx(0.5)  # (2-1)/2, the rest unchanged

    p = torch.softmax(psi0, 0)
    q = (1 - m * eps) * p + eps
    delta = torch.eye(m, dtype=torch.float64)
    # d/dpsi_j log q_k = (1 - m eps) p_k (delta_kj - p_j) / q_k
    grad_log = sum((1 - m * eps) * p[k] * (delta[k] - p) / q[k] for k in tau)
    # d/dpsi_j H(q) = -(1 - m eps) p_j (log q_j - sum_k p_k log q_k)
    grad_h = -(1 - m * eps) * p * (q.log() - (p * q.log()).sum())
    expected = psi0 + beta * (R * grad_log + lam * grad_h)
    torch.testing.assert_close(s.logits, expected, rtol=0, atol=1e-12)
    assert s.probs_tensor().tolist() == pytest.approx(((1 - m * eps) * torch.softmax(expected, 0) + eps).tolist())


def test_min_probability_keeps_every_objective_drawable():
    s = MometasSampler(OBJ, meta_length=4, min_probability=0.02, seed=3)
    s.logits = torch.tensor([30.0, -30.0, -30.0, -30.0], dtype=torch.float64)
    probs = s.probs_tensor()
    assert float(probs.sum()) == pytest.approx(1.0) and float(probs.min()) == pytest.approx(0.02)
    draws = [s.sample() for _ in range(2000)]
    assert all(draws.count(o) > 0 for o in OBJ[1:])


def test_state_carries_the_advantage_statistics():
    s = MometasSampler(OBJ, meta_length=4, seed=1)
    s.update(dict(zip(OBJ, B.tolist())))
    for k in range(3):
        for _ in range(4):
            s.sample()
        s.update({o: float(b) * (0.9 + 0.05 * k) for o, b in zip(OBJ, B)})
    clone = MometasSampler(OBJ, meta_length=4, seed=99)
    clone.load_state_dict(s.state_dict())
    assert clone.advantage.state_dict() == s.advantage.state_dict() and s.advantage.count == 3
    for sampler in (s, clone):
        sampler.rollout = [0, 1, 1, 2]
    new = {o: 1.0 for o in OBJ}
    assert s.update(new) == clone.update(new)

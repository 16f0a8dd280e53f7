"""Unit tests of the offline RL losses and algorithm plumbing, on tiny hand-checkable inputs.

Everything here runs in a few seconds: networks are 2x16 or smaller, batches a few rows.
"""
from __future__ import annotations

import io
import math
import sys

import numpy as np
import pytest
import torch

from hybrid_rl.algos import bc, cql, iql, td3bc
from hybrid_rl.core.networks import TanhGaussianPolicy
from hybrid_rl.algos.registry import SPECS, available_algorithms, make_algorithm, make_config, reference_overrides
from hybrid_rl.algos.sac import sac_target, temperature_loss

OBS_DIM, ACT_DIM = 3, 2

# Small networks for every algorithm, so a full update takes milliseconds.
TINY: dict[str, dict] = {
    "iql": {"hidden": (16, 16), "max_steps": 10},
    "cql": {"critic_hidden": (16, 16), "actor_hidden": (16, 16), "num_sampled_actions": 3, "batch_size": 8},
    "calql": {"critic_hidden": (16, 16), "actor_hidden": (16, 16), "num_sampled_actions": 3, "batch_size": 8},
    "bc": {"hidden": (16, 16)},
    "td3bc": {"hidden": (16, 16)},
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def make_batch(batch_size: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "observations": torch.randn(batch_size, OBS_DIM, generator=gen),
        "actions": torch.rand(batch_size, ACT_DIM, generator=gen) * 2 - 1,
        "rewards": torch.randn(batch_size, generator=gen),
        "next_observations": torch.randn(batch_size, OBS_DIM, generator=gen),
        "dones": (torch.arange(batch_size) % 4 == 0).float(),
        "mc_returns": torch.randn(batch_size, generator=gen),  # read by Cal-QL only
    }


def tiny(name: str, **extra) -> "torch.nn.Module":
    return make_algorithm(name, OBS_DIM, ACT_DIM, overrides={**TINY[name], **extra})


# ---------------------------------------------------------------------------------------
# IQL
# ---------------------------------------------------------------------------------------
def test_expectile_loss_weights_the_two_sides_asymmetrically() -> None:
    # u > 0 (prediction below target) costs tau, u < 0 costs 1 - tau.
    assert iql.expectile_loss(torch.tensor([2.0]), 0.7).item() == pytest.approx(0.7 * 4)
    assert iql.expectile_loss(torch.tensor([-2.0]), 0.7).item() == pytest.approx(0.3 * 4)
    assert iql.expectile_loss(torch.tensor([1.0, -3.0]), 0.9).item() == pytest.approx((0.9 * 1 + 0.1 * 9) / 2)
    assert iql.expectile_loss(torch.tensor([0.5, -0.5]), 0.5).item() == pytest.approx(0.5 * 0.25)


def test_expectile_loss_minimiser_is_the_expectile() -> None:
    # For x in {0, 1} with equal weight, the tau-expectile m solves tau (1 - m) = (1 - tau) m: m = tau.
    samples = torch.tensor([0.0, 1.0])
    m = torch.tensor(0.7, requires_grad=True)
    iql.expectile_loss(samples - m, 0.7).backward()
    assert abs(m.grad.item()) < 1e-6
    for other in (0.5, 0.9):
        assert iql.expectile_loss(samples - other, 0.7) > iql.expectile_loss(samples - 0.7, 0.7)


def test_awr_weights_are_exp_beta_adv_clipped_at_100() -> None:
    adv = torch.tensor([-1.0, 0.0, 0.5, 10.0])
    weights = iql.awr_weights(adv, beta=3.0)
    expected = [math.exp(-3.0), 1.0, math.exp(1.5), 100.0]
    assert weights.tolist() == pytest.approx(expected)
    assert iql.awr_weights(torch.tensor([1e4]), beta=3.0).item() == 100.0  # no inf/nan from the clip


def test_iql_value_loss_regresses_v_onto_min_target_q() -> None:
    batch = make_batch(2)
    q_target = lambda obs, act: torch.tensor([[1.0, 5.0], [3.0, 2.0]])  # noqa: E731 - min: [1, 2]
    v = lambda obs: torch.tensor([0.0, 4.0])  # noqa: E731
    loss, metrics = iql.iql_value_loss(q_target, v, batch, expectile=0.7)
    # advantages [1, -2]: (0.7 * 1 + 0.3 * 4) / 2
    assert loss.item() == pytest.approx((0.7 * 1 + 0.3 * 4) / 2)
    assert metrics.pop("advantages").tolist() == [1.0, -2.0]
    assert metrics["adv_mean"].item() == pytest.approx(-0.5)
    assert metrics["adv_max"].item() == pytest.approx(1.0)
    assert all(value.ndim == 0 for value in metrics.values())


def test_iql_q_target_does_not_bootstrap_on_done() -> None:
    batch = make_batch(2)
    batch["rewards"] = torch.tensor([1.0, 1.0])
    batch["dones"] = torch.tensor([0.0, 1.0])
    zero_q = lambda obs, act: torch.zeros(2, 2)  # noqa: E731
    v = lambda obs: torch.full((obs.shape[0],), 10.0)  # noqa: E731
    loss, metrics = iql.iql_q_loss(zero_q, v, batch, discount=0.9)
    # targets [1 + 0.9 * 10, 1]; summed over the two critics: 2 * mean([100, 1])
    assert metrics["target_q_mean"].item() == pytest.approx((10.0 + 1.0) / 2)
    assert loss.item() == pytest.approx(2 * (100.0 + 1.0) / 2)


def test_iql_actor_loss_weights_and_clip_fraction() -> None:
    algo = tiny("iql")
    batch = make_batch(4)
    adv = torch.tensor([0.0, 1.0, 2.0, 5.0])  # beta 3: exp(15) is clipped, exp(6) = 403 too
    loss, metrics = iql.iql_actor_loss(algo.actor, batch, adv, beta=3.0)
    weights = iql.awr_weights(adv, 3.0)
    expected = (weights * -algo.actor.log_prob(batch["observations"], batch["actions"])).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert metrics["weight_clipped_frac"].item() == pytest.approx(0.5)
    assert metrics["weight_max"].item() == 100.0


def test_iql_deterministic_actor_uses_weighted_mse() -> None:
    algo = tiny("iql", deterministic_actor=True)
    batch = make_batch(4)
    adv = torch.zeros(4)  # weights 1: plain sum-over-dims MSE
    loss, _ = iql.iql_actor_loss(algo.actor, batch, adv, beta=3.0)
    expected = (algo.actor(batch["observations"]) - batch["actions"]).pow(2).sum(-1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_iql_cosine_decay_reaches_zero_at_max_steps() -> None:
    algo = tiny("iql", max_steps=10)
    batch = make_batch()
    lrs = []
    for _ in range(10):
        algo.update(batch)
        lrs.append(algo.optimizers["actor"].param_groups[0]["lr"])
    assert lrs[4] == pytest.approx(3e-4 * 0.5 * (1 + math.cos(math.pi * 5 / 10)))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    for _ in range(3):  # past max_steps the LR stays at 0 (CosineAnnealingLR alone would rise)
        algo.update(batch)
        assert algo.optimizers["actor"].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    # Only the actor's LR decays.
    assert algo.optimizers["critic"].param_groups[0]["lr"] == 3e-4
    assert algo.optimizers["value"].param_groups[0]["lr"] == 3e-4


# ---------------------------------------------------------------------------------------
# CQL
# ---------------------------------------------------------------------------------------
def test_importance_sampled_logsumexp_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    q = rng.normal(size=(2, 6, 5)).astype(np.float32)  # (E, K, B)
    log_p = rng.normal(size=(6, 5)).astype(np.float32)  # (K, B)
    ours = cql.cql_importance_sampled_logsumexp(torch.from_numpy(q), torch.from_numpy(log_p)).numpy()
    direct = np.log(np.mean(np.exp(q.astype(np.float64) - log_p), axis=1))  # log (1/K) sum exp(Q)/p
    np.testing.assert_allclose(ours, direct, rtol=1e-5, atol=1e-5)
    # Temperature T: T * (logsumexp((Q - log p) / T) - log K)
    ours_t = cql.cql_importance_sampled_logsumexp(torch.from_numpy(q), torch.from_numpy(log_p), temperature=2.0).numpy()
    direct_t = 2.0 * np.log(np.mean(np.exp((q.astype(np.float64) - log_p) / 2.0), axis=1))
    np.testing.assert_allclose(ours_t, direct_t, rtol=1e-5, atol=1e-5)


def test_cql_sample_actions_densities() -> None:
    policy = TanhGaussianPolicy(OBS_DIM, ACT_DIM, (16, 16))
    batch = make_batch(5)
    actions, log_density = cql.cql_sample_actions(policy, batch["observations"], batch["next_observations"], num_actions=4)
    assert actions.shape == (3, 4, 5, ACT_DIM) and log_density.shape == (3, 4, 5)
    assert not actions.requires_grad and not log_density.requires_grad
    assert actions.abs().max() <= 1.0
    # uniform on [-1, 1]^|A|: density 0.5^|A|
    assert torch.allclose(log_density[0], torch.full((4, 5), ACT_DIM * math.log(0.5)))
    # policy samples: log pi(a|s) for source 1, log pi(a|s') for source 2 (tanh-corrected)
    for source, states in ((1, batch["observations"]), (2, batch["next_observations"])):
        recomputed = policy.log_prob(states.repeat(4, 1), actions[source].reshape(-1, ACT_DIM), eps=1e-7).view(4, 5)
        torch.testing.assert_close(log_density[source], recomputed, rtol=1e-3, atol=1e-2)


def test_cql_critic_loss_matches_a_direct_computation() -> None:
    """Whole CQL critic loss against numpy, re-drawing the same proposal actions."""
    policy = TanhGaussianPolicy(OBS_DIM, ACT_DIM, (16, 16))
    weights = torch.tensor([[0.5, -1.0, 0.3, 1.0, 2.0], [-0.2, 0.4, 1.0, -1.5, 0.7]])  # (E, obs+act)
    calls: list[int] = []

    def critic(obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Two linear Q-functions, ``(E, rows)``."""
        calls.append(obs.shape[0])
        return weights @ torch.cat([obs, act], -1).T

    batch = make_batch(4)
    target = torch.tensor([1.0, -1.0, 0.5, 2.0])
    n = 3
    torch.manual_seed(7)
    actions, log_density = cql.cql_sample_actions(policy, batch["observations"], batch["next_observations"], n)
    torch.manual_seed(7)
    calls.clear()
    loss, metrics = cql.cql_critic_loss(critic, policy, batch, target, cql_alpha=10.0, num_actions=n)
    assert calls == [(1 + 3 * n) * 4], "data and all 3N proposals must go through the critic in one call"

    w = weights.numpy().astype(np.float64)
    obs = batch["observations"].numpy().astype(np.float64)
    q_data = np.concatenate([obs, batch["actions"].numpy()], -1) @ w.T  # (B, E)
    sampled = actions.numpy().reshape(3 * n, 4, ACT_DIM).astype(np.float64)
    q_samples = np.stack([np.concatenate([obs, sampled[k]], -1) @ w.T for k in range(3 * n)])  # (K, B, E)
    log_p = log_density.numpy().reshape(3 * n, 4, 1).astype(np.float64)
    lse = np.log(np.mean(np.exp(q_samples - log_p), axis=0))  # (B, E)
    penalty = (lse - q_data).mean(axis=0)  # (E,)
    td = ((q_data - target.numpy()[:, None]) ** 2).mean(axis=0).sum()
    assert loss.item() == pytest.approx(td + 10.0 * penalty.sum(), rel=1e-4)
    assert metrics["td_loss"].item() == pytest.approx(td, rel=1e-5)
    assert metrics["cql_penalty"].item() == pytest.approx(penalty.mean(), rel=1e-4, abs=1e-5)
    assert metrics["q_random_mean"].item() == pytest.approx(q_samples[:n].mean(), rel=1e-5, abs=1e-6)


def test_calql_floors_the_policy_proposals_q_at_the_mc_return() -> None:
    """Cal-QL's penalty against numpy: policy proposals (pi(s), pi(s')) enter the
    log-sum-exp as max(Q, MC return-to-go); uniform proposals and the TD term are CQL's."""
    policy = TanhGaussianPolicy(OBS_DIM, ACT_DIM, (16, 16))
    weights = torch.tensor([[0.5, -1.0, 0.3, 1.0, 2.0], [-0.2, 0.4, 1.0, -1.5, 0.7]])

    def critic(obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return weights @ torch.cat([obs, act], -1).T

    batch = make_batch(4)
    target = torch.tensor([1.0, -1.0, 0.5, 2.0])
    floor = torch.tensor([5.0, -50.0, 0.2, -50.0])  # above every Q for states 0 (and maybe 2), below for 1 and 3
    n = 3
    torch.manual_seed(7)
    actions, log_density = cql.cql_sample_actions(policy, batch["observations"], batch["next_observations"], n)
    torch.manual_seed(7)
    plain, plain_metrics = cql.cql_critic_loss(critic, policy, batch, target, cql_alpha=10.0, num_actions=n)
    torch.manual_seed(7)
    loss, metrics = cql.cql_critic_loss(critic, policy, batch, target, cql_alpha=10.0, num_actions=n, q_floor=floor)

    w = weights.numpy().astype(np.float64)
    obs = batch["observations"].numpy().astype(np.float64)
    q_data = np.concatenate([obs, batch["actions"].numpy()], -1) @ w.T  # (B, E)
    sampled = actions.numpy().reshape(3 * n, 4, ACT_DIM).astype(np.float64)
    q_samples = np.stack([np.concatenate([obs, sampled[k]], -1) @ w.T for k in range(3 * n)])  # (K, B, E)
    below = (q_samples[n:] < floor.numpy()[None, :, None]).mean()
    q_samples[n:] = np.maximum(q_samples[n:], floor.numpy()[None, :, None])  # policy proposals only
    log_p = log_density.numpy().reshape(3 * n, 4, 1).astype(np.float64)
    penalty = (np.log(np.mean(np.exp(q_samples - log_p), axis=0)) - q_data).mean(axis=0)
    td = ((q_data - target.numpy()[:, None]) ** 2).mean(axis=0).sum()
    assert loss.item() == pytest.approx(td + 10.0 * penalty.sum(), rel=1e-4)
    assert metrics["calibration_bound_rate"].item() == pytest.approx(below)
    assert 0 < below < 1 and metrics["cql_penalty"] > plain_metrics["cql_penalty"]  # the floor only raises the soft-max
    assert "calibration_bound_rate" not in plain_metrics and metrics["td_loss"] == plain_metrics["td_loss"]


def test_calql_keeps_policy_q_from_sinking_below_the_mc_floor_where_cql_does_not() -> None:
    """The point of Cal-QL (Nakamoto et al. 2023, fig. 2): trained on the same data, CQL's
    penalty drives Q at the policy's actions far below the data's Monte-Carlo return, while
    Cal-QL's stops at that floor, so its policy Q ends near or above it."""
    batch = make_batch(64, seed=3)
    batch["rewards"] = torch.ones(64)
    batch["dones"] = torch.zeros(64)
    batch["mc_returns"] = torch.full((64,), 20.0)  # the data's value: Q starts near 0, far below it
    results = {}
    for name in ("cql", "calql"):
        torch.manual_seed(0)
        algo = make_algorithm(name, OBS_DIM, ACT_DIM, overrides={**TINY[name], "batch_size": 64, "critic_lr": 3e-3, "cql_alpha": 10.0})
        for _ in range(300):
            algo.update(batch)
        with torch.no_grad():
            policy_q = algo.q_values(batch["observations"], algo.actor.deterministic(batch["observations"]))
        results[name] = float(policy_q.mean())
    assert results["cql"] < 0.0 < 5.0 < results["calql"], results  # measured: CQL -1.3, Cal-QL 8.8 after 300 steps


def test_calql_needs_mc_returns_in_its_batches() -> None:
    batch = make_batch()
    del batch["mc_returns"]
    with pytest.raises(KeyError, match="mc_returns"):
        tiny("calql").update(batch)


def test_cql_penalty_pushes_data_q_up_and_sampled_q_down() -> None:
    q_data = torch.zeros(2, 3, requires_grad=True)
    q_samples = torch.zeros(2, 4, 3, requires_grad=True)
    lse = cql.cql_importance_sampled_logsumexp(q_samples, torch.zeros(4, 3))
    cql.cql_penalty(lse, q_data).sum().backward()
    assert (q_data.grad < 0).all()  # descent raises Q on dataset actions
    assert (q_samples.grad > 0).all()  # and lowers it on the proposals


def test_entropy_tuning_gradient_sign() -> None:
    target_entropy = -float(ACT_DIM)
    log_alpha = torch.tensor(0.0, requires_grad=True)
    # Entropy below target (log pi = 5 > -target): descent must raise alpha (negative grad).
    temperature_loss(log_alpha, torch.full((8,), 5.0), target_entropy).backward()
    assert log_alpha.grad.item() < 0
    log_alpha.grad = None
    # Entropy above target: alpha goes down.
    temperature_loss(log_alpha, torch.full((8,), -5.0), target_entropy).backward()
    assert log_alpha.grad.item() > 0


def test_cql_entropy_temperature_rises_when_policy_is_too_narrow() -> None:
    algo = tiny("cql", alpha_lr=1e-2, target_entropy=100.0)  # unreachable target: alpha must rise
    batch = make_batch()
    metrics = [algo.update(batch) for _ in range(3)]
    assert metrics[-1]["alpha"].item() > metrics[0]["alpha"].item() >= 1.0 - 1e-6


class _ConstantPolicy:
    """rsample stub: fixed next action and log-prob, for target arithmetic."""

    act_dim = ACT_DIM

    def rsample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(obs.shape[0], ACT_DIM), torch.full((obs.shape[0],), -1.0)


def test_cql_td_target_has_no_entropy_and_no_bootstrap_on_done() -> None:
    batch = make_batch(2)
    batch["rewards"] = torch.tensor([1.0, 1.0])
    batch["dones"] = torch.tensor([0.0, 1.0])
    target_q = lambda obs, act: torch.tensor([[4.0, 4.0], [3.0, 3.0]])  # noqa: E731 - min 3
    target = sac_target(target_q, _ConstantPolicy(), batch, torch.tensor(0.5), 0.9, backup_entropy=False)
    assert target.tolist() == pytest.approx([1.0 + 0.9 * 3.0, 1.0])
    with_entropy = sac_target(target_q, _ConstantPolicy(), batch, torch.tensor(0.5), 0.9, backup_entropy=True)
    assert with_entropy.tolist() == pytest.approx([1.0 + 0.9 * (3.0 + 0.5), 1.0])


# ---------------------------------------------------------------------------------------
# TD3+BC and BC
# ---------------------------------------------------------------------------------------
def test_td3_target_no_bootstrap_on_done() -> None:
    batch = make_batch(2)
    batch["rewards"] = torch.tensor([2.0, 2.0])
    batch["dones"] = torch.tensor([1.0, 0.0])
    target_q = lambda obs, act: torch.stack([act.sum(-1) + 5.0, act.sum(-1) + 6.0])  # noqa: E731
    target_actor = lambda obs: torch.zeros(obs.shape[0], ACT_DIM)  # noqa: E731
    target = td3bc.td3_target(target_q, target_actor, batch, 0.5, policy_noise=0.0, noise_clip=0.5)
    assert target.tolist() == pytest.approx([2.0, 2.0 + 0.5 * 5.0])


def test_td3_target_noise_is_clipped() -> None:
    batch = make_batch(4096)
    actions_seen: list[torch.Tensor] = []

    def target_q(obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        actions_seen.append(act)
        return torch.zeros(2, obs.shape[0])

    td3bc.td3_target(target_q, lambda obs: torch.zeros(obs.shape[0], ACT_DIM), batch, 0.99, policy_noise=1.0, noise_clip=0.5)
    assert actions_seen[0].abs().max().item() == pytest.approx(0.5)


def test_td3bc_actor_loss_normalises_q() -> None:
    batch = make_batch(2)
    batch["actions"] = torch.zeros(2, ACT_DIM)
    policy = lambda obs: torch.full((obs.shape[0], ACT_DIM), 0.5)  # noqa: E731
    critic = lambda obs, act: torch.tensor([[2.0, -4.0], [1.0, 1.0]])  # noqa: E731
    loss, metrics = td3bc.td3bc_actor_loss(critic, policy, batch, alpha=2.5)
    lmbda = 2.5 / 3.0  # mean |Q1| = 3
    assert metrics["lambda"].item() == pytest.approx(lmbda)
    assert loss.item() == pytest.approx(-lmbda * (-1.0) + 0.25)


def test_td3bc_updates_actor_every_policy_freq_steps() -> None:
    algo = tiny("td3bc", policy_freq=2)
    batch = make_batch()
    snapshots = []
    for _ in range(4):
        algo.update(batch)
        snapshots.append([p.detach().clone() for p in algo.actor.parameters()])
    changed = [not all(torch.equal(a, b) for a, b in zip(prev, cur)) for prev, cur in zip(snapshots, snapshots[1:])]
    assert changed == [False, True, False]  # actor steps on updates 0 and 2


def test_bc_loss_is_action_mse_and_bc_has_no_critic() -> None:
    algo = tiny("bc")
    batch = make_batch()
    loss, _ = bc.bc_loss(algo.actor, batch)
    assert loss.item() == pytest.approx(torch.mean((algo.actor(batch["observations"]) - batch["actions"]) ** 2).item())
    metrics = algo.update(batch)
    assert "critic_loss" not in metrics and "actor_loss" in metrics
    with pytest.raises(NotImplementedError):
        algo.q_values(batch["observations"], batch["actions"])


def test_the_critic_members_one_by_one_compute_the_batched_critic() -> None:
    """EnsembleCritic.member_products (the compiled CPU step's layout) is the same function as
    the batched layout, values and gradients, up to rounding."""
    from hybrid_rl.core.networks import EnsembleCritic

    torch.manual_seed(0)
    critic = EnsembleCritic(OBS_DIM, ACT_DIM, (16, 16), ensemble_size=2, orthogonal_init=True)
    batch = make_batch(12)
    results = []
    for member_products in (False, True):
        critic.member_products = member_products
        critic.zero_grad()
        q = critic(batch["observations"], batch["actions"])
        q.square().sum().backward()
        results.append((q.detach(), [p.grad.clone() for p in critic.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0])
    for mine, batched in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(mine, batched)


# ---------------------------------------------------------------------------------------
# RLPD
# ---------------------------------------------------------------------------------------
def test_rlpd_target_is_the_min_over_the_chosen_subset_with_entropy() -> None:
    from hybrid_rl.algos.rlpd import rlpd_target
    from hybrid_rl.core.networks import EnsembleCritic

    critic = EnsembleCritic(OBS_DIM, ACT_DIM, (8,), ensemble_size=5, layer_norm=True)
    policy = TanhGaussianPolicy(OBS_DIM, ACT_DIM, (8,))
    batch = make_batch(6)
    alpha = torch.tensor(0.3)
    torch.manual_seed(5)
    next_actions, next_log_prob = policy.rsample(batch["next_observations"])
    q = critic(batch["next_observations"], next_actions).detach()  # (5, B)
    torch.manual_seed(5)
    target = rlpd_target(critic, policy, batch, alpha, torch.tensor([1, 3]), discount=0.9)
    expected = batch["rewards"] + 0.9 * (1 - batch["dones"]) * (torch.minimum(q[1], q[3]) - 0.3 * next_log_prob.detach())
    torch.testing.assert_close(target, expected)


def test_rlpd_critics_are_layer_normed_and_the_actor_steps_once_per_env_step() -> None:
    from hybrid_rl.algos.rlpd import RLPD, RLPDConfig

    algo = RLPD(OBS_DIM, ACT_DIM, RLPDConfig(hidden=(8, 8), ensemble_size=4, actor_every=3, batch_size=8))
    assert len(algo.critic.norms) == 2 and algo.critic(torch.zeros(2, OBS_DIM), torch.zeros(2, ACT_DIM)).shape == (4, 2)
    actor_before = [p.clone() for p in algo.actor.parameters()]
    updates = [algo.update(make_batch()) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(actor_before, algo.actor.parameters()))  # critics only so far
    updates.append(algo.update(make_batch()))
    assert ["actor_loss" in m for m in updates] == [False, False, True]  # UTD 3: the actor steps on the third
    assert not all(torch.equal(a, b) for a, b in zip(actor_before, algo.actor.parameters()))
    assert algo.target_entropy == -ACT_DIM / 2


# ---------------------------------------------------------------------------------------
# Every algorithm: metrics, acting, host syncs, checkpoints
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TINY))
def test_update_metrics_are_detached_scalars(name: str) -> None:
    algo = tiny(name)
    metrics = algo.update(make_batch())
    assert metrics and all(isinstance(v, torch.Tensor) and v.ndim == 0 and not v.requires_grad for v in metrics.values())
    assert all(torch.isfinite(v) for v in metrics.values())
    critic_keys = {"critic_loss", "q_mean", "q_std", "q_min", "q_max", "q_policy_mean", "target_q_mean", "grad_norm_critic"}
    expected = {
        "iql": critic_keys | {"value_loss", "v_mean", "adv_mean", "adv_std", "adv_max", "grad_norm_value"}
        | {"actor_loss", "weight_mean", "weight_max", "weight_clipped_frac", "grad_norm_actor"},
        "cql": critic_keys | {"cql_penalty", "logsumexp_mean", "q_random_mean", "q_policy_sample_mean", "td_loss"}
        | {"actor_loss", "alpha", "entropy", "alpha_loss", "grad_norm_actor"},
        "calql": critic_keys | {"cql_penalty", "logsumexp_mean", "q_random_mean", "q_policy_sample_mean", "td_loss", "calibration_bound_rate"}
        | {"actor_loss", "alpha", "entropy", "alpha_loss", "grad_norm_actor"},
        "bc": {"actor_loss", "grad_norm_actor"},
        "td3bc": critic_keys | {"actor_loss", "bc_loss", "lambda", "grad_norm_actor"},
    }[name]
    assert expected <= set(metrics), expected - set(metrics)
    if name == "bc":
        assert set(metrics) == expected  # no critic: no critic_loss, no Q statistics


@pytest.mark.parametrize("name", sorted(TINY))
def test_act_and_q_values_shapes(name: str) -> None:
    algo = tiny(name)
    obs = np.random.default_rng(0).normal(size=(5, OBS_DIM)).astype(np.float32)
    actions = algo.act(obs)
    assert actions.shape == (5, ACT_DIM) and np.abs(actions).max() <= 1.0
    assert algo.act(obs[0]).shape == (ACT_DIM,)
    assert algo.act(obs, deterministic=False).shape == (5, ACT_DIM)
    if name != "bc":
        q = algo.q_values(torch.from_numpy(obs), torch.from_numpy(actions))
        assert q.shape == (5,)


_SYNC_METHODS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


@pytest.mark.parametrize("name", sorted(TINY))
def test_update_never_syncs_with_the_host(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No tensor -> Python conversion (item, bool, float, ...) anywhere during ``update``.

    On a GPU each of these blocks until the device catches up. The one exemption is
    torch.optim reading Adam's step counter, which lives on the CPU even when the
    parameters are on a GPU. This also catches torch.distributions' argument validation
    (``if not valid.all()``), which the networks switch off.
    """
    algo = tiny(name)
    batch = make_batch()
    algo.update(batch)  # warm-up outside the check
    offenders: list[str] = []
    for method in _SYNC_METHODS:
        original = getattr(torch.Tensor, method)

        def guarded(self, *args, __original=original, __method=method, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if not caller.replace("\\", "/").endswith("torch/optim/optimizer.py"):
                offenders.append(f"{__method} called from {caller}:{sys._getframe(1).f_lineno}")
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, guarded)
    for _ in range(3):
        algo.update(batch)
    monkeypatch.undo()
    assert not offenders, offenders


def _save(algo) -> bytes:
    buffer = io.BytesIO()
    torch.save({"algo": algo.state_dict(), "rng": torch.get_rng_state()}, buffer)
    return buffer.getvalue()


def _full_state(algo) -> list[torch.Tensor]:
    tensors = [t for module in algo.modules.values() for t in module.state_dict().values()]
    for opt in algo.optimizers.values():
        for state in opt.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    tensors += [v for v in algo.extra_state().values() if isinstance(v, torch.Tensor)]
    return tensors


@pytest.mark.parametrize("name", sorted(TINY))
def test_state_dict_round_trip_gives_identical_next_updates(name: str) -> None:
    batch = make_batch()
    algo = tiny(name)
    for _ in range(3):  # odd count: TD3+BC resumes on a critic-only step
        algo.update(batch)
    saved = _save(algo)
    expected_metrics = [algo.update(batch) for _ in range(2)]
    expected_state = _full_state(algo)
    expected_lrs = [g["lr"] for opt in algo.optimizers.values() for g in opt.param_groups]

    torch.manual_seed(123)  # a differently initialised instance, then restored
    resumed = tiny(name)
    checkpoint = torch.load(io.BytesIO(saved), weights_only=False)
    resumed.load_state_dict(checkpoint["algo"])
    torch.set_rng_state(checkpoint["rng"])
    metrics = [resumed.update(batch) for _ in range(2)]

    assert resumed.total_updates == algo.total_updates == 5
    for got, want in zip(metrics, expected_metrics):
        assert got.keys() == want.keys()
        for key in want:
            assert torch.equal(got[key], want[key]), key
    for got, want in zip(_full_state(resumed), expected_state):
        assert torch.equal(got, want)
    assert [g["lr"] for opt in resumed.optimizers.values() for g in opt.param_groups] == expected_lrs


# ---------------------------------------------------------------------------------------
# Registry and configs
# ---------------------------------------------------------------------------------------
def test_registry_lists_and_builds_every_algorithm() -> None:
    assert available_algorithms() == ["bc", "calql", "cql", "iql", "td3bc"]
    for name in available_algorithms():
        algo = tiny(name)
        assert isinstance(algo, SPECS[name].algorithm) and isinstance(algo.config, SPECS[name].config)
        assert algo.name == name


def test_registry_errors_name_the_valid_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown algorithm 'sacx'.*\['bc', 'calql', 'cql', 'iql', 'td3bc'\]"):
        make_algorithm("sacx", OBS_DIM, ACT_DIM)
    with pytest.raises(ValueError, match=r"unknown IQLConfig field\(s\) \['expectil'\].*'expectile'"):
        make_config("iql", overrides={"expectil": 0.9})
    with pytest.raises(ValueError, match="reward_scaling"):
        make_config("cql", overrides={"reward_scaling": "d4rl"})
    with pytest.raises(ValueError, match="expectile"):
        make_config("iql", overrides={"expectile": 1.5})


def test_reference_overrides_follow_the_task() -> None:
    hopper = {"reward_scaling": "iql", "deterministic_actor": True, "tau": 0.001}
    for task in ("hopper-medium", "hopper-medium-replay"):
        assert reference_overrides("iql", task) == hopper, task
        config = make_config("iql", task)
        assert (config.reward_scaling, config.deterministic_actor, config.tau) == ("iql", True, 0.001)
    for task in ("halfcheetah-medium", "walker2d-medium-replay", "hopper-expert", "hopper-simple", None):
        assert reference_overrides("iql", task) == {}, task
    assert make_config("iql", "halfcheetah-medium") == make_config("iql")
    assert make_config("cql", "hopper-medium").reward_scaling == "iql"
    assert make_config("calql", "hopper-medium").reward_scaling == "iql"
    assert make_config("cql", "hopper-medium-replay").reward_scaling == "none"
    assert reference_overrides("bc", "hopper-medium") == {} and reference_overrides("td3bc", "hopper-medium") == {}


def test_user_overrides_beat_reference_overrides_and_lists_become_tuples() -> None:
    config = make_config("iql", "hopper-medium", {"tau": 0.01, "hidden": [32, 32]})
    assert config.tau == 0.01 and config.deterministic_actor is True and config.hidden == (32, 32)


def test_defaults_are_the_published_settings() -> None:
    c = make_config("iql")
    assert (c.expectile, c.beta, c.max_weight, c.discount, c.tau, c.hidden) == (0.7, 3.0, 100.0, 0.99, 0.005, (256, 256))
    assert (c.actor_lr, c.critic_lr, c.value_lr, c.batch_size, c.normalize_observations) == (3e-4, 3e-4, 3e-4, 256, True)
    c = make_config("cql")
    assert (c.cql_alpha, c.num_sampled_actions, c.cql_temperature, c.actor_lr, c.critic_lr) == (10.0, 10, 1.0, 3e-5, 3e-4)
    assert (c.critic_hidden, c.actor_hidden, c.alpha_lr) == ((256, 256, 256), (256, 256, 256), 3e-5)
    assert (c.orthogonal_init, c.backup_entropy, c.target_entropy, c.normalize_observations) == (True, False, None, True)
    c = make_config("td3bc")
    assert (c.alpha, c.policy_noise, c.noise_clip, c.policy_freq) == (2.5, 0.2, 0.5, 2)
    cql_algo = make_algorithm("cql", OBS_DIM, ACT_DIM, overrides=TINY["cql"])
    assert cql_algo.target_entropy == -ACT_DIM and cql_algo.log_alpha.item() == pytest.approx(0.0)


def test_rlpd_q_values_are_its_targets_expected_subset_minimum() -> None:
    """RLPD bootstraps with the minimum over a random pair of its critics: its Q estimate for
    Q - MC is that minimum's mean over every pair, not the ensemble mean."""
    import itertools

    from hybrid_rl.algos.rlpd import expected_subset_min

    q = torch.randn(5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for size in (1, 2, 3, 5):
        brute = torch.stack([q[list(subset)].min(dim=0).values for subset in itertools.combinations(range(5), size)]).mean(dim=0)
        torch.testing.assert_close(expected_subset_min(q, size), brute)
    from hybrid_rl.algos.rlpd import RLPD, RLPDConfig

    rlpd = RLPD(OBS_DIM, ACT_DIM, RLPDConfig(hidden=(8, 8), ensemble_size=4))
    obs, actions = torch.randn(6, OBS_DIM), torch.rand(6, ACT_DIM) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(rlpd.q_values(obs, actions), expected_subset_min(rlpd.critic(obs, actions), 2))


def test_soft_q_methods_say_what_their_backup_adds() -> None:
    from hybrid_rl.algos.sac import SAC, SACConfig

    sac = SAC(OBS_DIM, ACT_DIM, SACConfig(hidden=(8, 8)))
    obs, actions = torch.randn(6, OBS_DIM), torch.rand(6, ACT_DIM) * 1.8 - 0.9
    torch.testing.assert_close(sac.entropy_bonus(obs, actions), -sac.alpha * sac.actor.log_prob(obs, actions))
    assert SAC(OBS_DIM, ACT_DIM, SACConfig(hidden=(8, 8), backup_entropy=False)).entropy_bonus(obs, actions) is None
    assert make_algorithm("iql", OBS_DIM, ACT_DIM, overrides=TINY["iql"]).entropy_bonus(obs, actions) is None  # IQL's critic learns the plain return
    assert make_algorithm("cql", OBS_DIM, ACT_DIM, overrides=TINY["cql"]).entropy_bonus(obs, actions) is None  # CQL: no entropy in the backup

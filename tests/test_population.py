"""Populations (hybrid_rl.engine.population, hybrid_rl.data.views): per-run dataset views, the shared-base sampler, and
the equivalence of a vmapped population with separate single runs.

Tiny networks (2x32) and batches (16) on a 300-transition hand-made dataset; the whole file
runs in seconds on two CPU cores except the test marked slow (torch.compile on a CPU takes
a minute or more).
"""
from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR

from hybrid_rl.algos.bc import BC, BCConfig
from hybrid_rl.algos.calql import CalQL, CalQLConfig
from hybrid_rl.algos.cql import CQL, CQLConfig
from hybrid_rl.algos.iql import IQL, IQLConfig
from hybrid_rl.algos.rlpd import RLPD, RLPDConfig
from hybrid_rl.algos.sac import SAC, SACConfig
from hybrid_rl.algos.td3bc import TD3BC, TD3BCConfig
from hybrid_rl.data.corruption import apply_corruptions
from hybrid_rl.data.dataset import OfflineDataset, TransitionSampler
from hybrid_rl.data.views import DatasetView, PopulationSampler, mc_returns_to_go
from hybrid_rl.engine.functional import cosine_lr_table
from hybrid_rl.engine.population import (BCPopulation, CalQLPopulation, CQLPopulation, IQLPopulation, RLPDPopulation, SACPopulation, TD3BCPopulation,
                                         cpp_compiler)

OBS_DIM, ACT_DIM, NUM_TRANSITIONS = 5, 2, 300
IQL_TINY = IQLConfig(hidden=(32, 32), batch_size=16, max_steps=15, reward_scaling="iql")
CQL_TINY = CQLConfig(critic_hidden=(16, 16), actor_hidden=(16, 16), num_sampled_actions=3, batch_size=8)
CALQL_TINY = CalQLConfig(critic_hidden=(16, 16), actor_hidden=(16, 16), num_sampled_actions=3, batch_size=8)

# (seed, corruption specs): a clean run, a reward-noise run, a top-k run (3 variants).
VARIANTS = [(0, []), (1, [{"kind": "reward_noise", "std": 0.5}]), (2, [{"kind": "remove_top_k", "k": 30}])]


@pytest.fixture(scope="module")
def base() -> OfflineDataset:
    """15 trajectories of 20 steps (two end in a terminal), random but reproducible values."""
    rng = np.random.default_rng(0)
    terminals = np.zeros(NUM_TRANSITIONS, bool)
    timeouts = np.zeros(NUM_TRANSITIONS, bool)
    timeouts[np.arange(19, NUM_TRANSITIONS, 20)] = True
    terminals[[59, 159]], timeouts[[59, 159]] = True, False
    return OfflineDataset(
        observations=(rng.normal(size=(NUM_TRANSITIONS, OBS_DIM)) * 3 + 1).astype(np.float32),
        actions=rng.uniform(-1, 1, (NUM_TRANSITIONS, ACT_DIM)).astype(np.float32),
        rewards=rng.normal(size=NUM_TRANSITIONS).astype(np.float32),
        next_observations=(rng.normal(size=(NUM_TRANSITIONS, OBS_DIM)) * 3 + 1).astype(np.float32),
        terminals=terminals,
        timeouts=timeouts,
        name="toy",
    )


def corrupted_runs(base: OfflineDataset, config) -> list[tuple[int, OfflineDataset, DatasetView]]:
    """(seed, the run's own corrupted dataset, its view of base) for every variant, as the trainer builds them."""
    runs = []
    for seed, specs in VARIANTS:
        corrupted, records = apply_corruptions(base, specs, seed=seed)
        runs.append((seed, corrupted, DatasetView.for_run(base, corrupted, records, config)))
    return runs


def single_sampler(corrupted: OfflineDataset, view: DatasetView, seed: int, extra: dict | None = None) -> TransitionSampler:
    return TransitionSampler(corrupted, obs_mean=view.obs_mean, obs_std=view.obs_std, reward_scale=view.reward_scale, seed=seed, extra=extra)


# ---------------------------------------------------------------------------------------
# Views and the sampler
# ---------------------------------------------------------------------------------------
def test_view_of_top_k_and_reward_noise_selects_the_corrupted_rows(base: OfflineDataset) -> None:
    specs = [{"kind": "remove_top_k", "k": 30}, {"kind": "reward_noise", "std": 0.5}]
    corrupted, records = apply_corruptions(base, specs, seed=3)
    view = DatasetView.from_corrupted(base, corrupted, records, normalize_observations=True)
    assert len(view) == len(corrupted) < len(base)
    np.testing.assert_array_equal(base.observations[view.index], corrupted.observations)
    np.testing.assert_array_equal(view.rewards, corrupted.rewards)
    np.testing.assert_array_equal(view.obs_mean, corrupted.observation_stats()[0])


def test_view_rejects_corruptions_that_are_not_views(base: OfflineDataset) -> None:
    corrupted, records = apply_corruptions(base, [{"kind": "corrupt_transitions", "target": "observations", "rate": 0.3, "scale": 1.0}], seed=0)
    with pytest.raises(ValueError, match="not a view"):
        DatasetView.from_corrupted(base, corrupted, records)
    # A record that does not describe the dataset is caught by the verification.
    top_k, top_k_records = apply_corruptions(base, [{"kind": "remove_top_k", "k": 30}], seed=0)
    with pytest.raises(ValueError, match="keep"):
        DatasetView.from_corrupted(base, top_k, [])


def test_sampler_batches_equal_the_single_run_samplers(base: OfflineDataset) -> None:
    runs = corrupted_runs(base, IQL_TINY)
    sampler = PopulationSampler(base, [view for _, _, view in runs], [seed for seed, _, _ in runs])
    singles = [single_sampler(corrupted, view, seed) for seed, corrupted, view in runs]
    for _ in range(3):
        batch = sampler.sample(16)
        for agent, single in enumerate(singles):
            expected = single.sample(16)
            for key, value in expected.items():
                assert torch.equal(batch[key][agent], value), (agent, key)


def test_sampler_extras_follow_each_runs_rows(base: OfflineDataset) -> None:
    """Cal-QL's Monte-Carlo returns: each run's own (its corrupted rewards, its rows), in the
    batches where its single-run sampler puts them, and equal arrays stored once."""
    runs = corrupted_runs(base, IQL_TINY)
    extras = [{"mc_returns": mc_returns_to_go(corrupted, 0.99, view.reward_scale)} for _, corrupted, view in runs]
    sampler = PopulationSampler(base, [view for _, _, view in runs], [seed for seed, _, _ in runs], extras=extras)
    singles = [single_sampler(corrupted, view, seed, extra) for (seed, corrupted, view), extra in zip(runs, extras)]
    for _ in range(3):
        batch = sampler.sample(16)
        for agent, single in enumerate(singles):
            expected = single.sample(16)
            assert set(batch) == set(expected) and "mc_returns" in expected
            for key, value in expected.items():
                assert torch.equal(batch[key][agent], value), (agent, key)
    # The clean and the reward-noise runs have different returns, the top-k run its own rows.
    assert len(sampler.flat_extras["mc_returns"]) == sum(len(view) for _, _, view in runs)
    twice = PopulationSampler(base, [runs[0][2]] * 2, [0, 1], extras=[extras[0]] * 2)
    assert len(twice.flat_extras["mc_returns"]) == len(runs[0][2])
    with pytest.raises(ValueError, match="same field names"):
        PopulationSampler(base, [runs[0][2]] * 2, [0, 1], extras=[extras[0], {}])
    with pytest.raises(ValueError, match="one value per row"):
        PopulationSampler(base, [runs[2][2]], [0], extras=[extras[0]])


def test_sampler_holds_one_base_copy_and_shares_index_sets(base: OfflineDataset) -> None:
    runs = corrupted_runs(base, IQL_TINY)
    views = [view for _, _, view in runs] * 2  # six agents, three distinct views
    sampler = PopulationSampler(base, views, list(range(6)))
    # One device copy of each base array, whatever the number of agents.
    assert sampler.base["observations"].shape == (len(base), OBS_DIM)
    assert sampler.base["next_observations"].shape == (len(base), OBS_DIM)
    # Index sets: the full set (shared by the clean and the reward-noise run) and the top-k set.
    assert sampler.num_index_sets == 2
    assert sampler.flat_index.numel() == len(base) + len(runs[2][2])
    assert sampler.num_reward_arrays == 3
    # Everything else is small next to P copies of the observations.
    per_copy = 2 * base.observations.nbytes + base.actions.nbytes
    assert sampler.device_bytes() < 2 * per_copy
    # The batch's rows come from the base tensor: a gathered observation is a base row, normalised.
    rows = sampler.sample_indices(4)
    batch = sampler.gather(rows)
    base_row = int(runs[2][2].index[int(rows[2, 0])])
    expected = (sampler.base["observations"][base_row] - sampler.obs_mean[2, 0]) / sampler.obs_std[2, 0]
    assert torch.equal(batch["observations"][2, 0], expected)


def test_sampler_state_round_trip(base: OfflineDataset) -> None:
    views = [DatasetView.full(base)] * 2
    sampler = PopulationSampler(base, views, [0, 1])
    sampler.sample(8)
    state = sampler.state_dict()
    first = sampler.sample(8)
    sampler.load_state_dict(state)
    assert torch.equal(sampler.sample(8)["observations"], first["observations"])


def test_cosine_lr_table_equals_the_scheduler_bit_for_bit() -> None:
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
    scheduler = CosineAnnealingLR(optimizer, T_max=37)
    values = [optimizer.param_groups[0]["lr"]]
    for _ in range(37):
        optimizer.step()
        scheduler.step()
        values.append(optimizer.param_groups[0]["lr"])
    assert cosine_lr_table(3e-4, 37).tolist() == values


# ---------------------------------------------------------------------------------------
# IQL: a population equals separate runs
# ---------------------------------------------------------------------------------------
def run_iql_population_and_singles(base: OfflineDataset, steps: int, **population_kwargs):
    runs = corrupted_runs(base, IQL_TINY)
    seeds = [seed for seed, _, _ in runs]
    singles = []
    for seed, corrupted, view in runs:
        torch.manual_seed(seed)  # as runs/train.py before building the algorithm
        singles.append((IQL(OBS_DIM, ACT_DIM, IQL_TINY), single_sampler(corrupted, view, seed)))
    population = IQLPopulation.create(OBS_DIM, ACT_DIM, IQL_TINY, seeds, **population_kwargs)
    sampler = PopulationSampler(base, [view for _, _, view in runs], seeds)
    history = []
    for _ in range(steps):
        metrics = population.train_step(sampler)
        single_metrics = [agent.update(single.sample(IQL_TINY.batch_size)) for agent, single in singles]
        history.append((metrics, single_metrics))
    return population, [agent for agent, _ in singles], history


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    # Batched matrix products round differently from unbatched ones (float32): ~1e-7
    # relative per operation; a wrong batch, LR or Adam step differs by >= 1e-4.
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5, msg=lambda m: f"{what}: {m}")


def test_iql_population_equals_separate_runs(base: OfflineDataset) -> None:
    # 20 updates with max_steps 15: the cosine actor LR reaches 0 and stays there.
    population, singles, history = run_iql_population_and_singles(base, steps=20)
    assert population.metric_names == list(history[0][1][0])  # IQL.update's names and order
    for step, (metrics, single_metrics) in enumerate(history):
        for agent, expected in enumerate(single_metrics):
            for name, value in expected.items():
                assert metrics[name].shape == (population.num_agents,)
                assert_close(metrics[name][agent], value, f"step {step} agent {agent} {name}")
    for agent, single in enumerate(singles):
        member = population.member(agent)
        for network in ("actor", "critic", "value", "target_critic"):
            for (name, expected), actual in zip(single.modules[network].state_dict().items(), member.modules[network].state_dict().values()):
                assert_close(actual, expected, f"agent {agent} {network}.{name}")
        # Optimizer moments, step counts and the LR schedule are exported too.
        expected_state, actual_state = single.state_dict(), member.state_dict()
        assert actual_state["total_updates"] == expected_state["total_updates"] == 20
        assert actual_state["schedulers"]["actor"]["last_epoch"] == expected_state["schedulers"]["actor"]["last_epoch"]
        for key in ("actor", "critic", "value"):
            assert member.optimizers[key].param_groups[0]["lr"] == single.optimizers[key].param_groups[0]["lr"]
            for param_id, state in expected_state["optimizers"][key]["state"].items():
                mine = actual_state["optimizers"][key]["state"][param_id]
                assert float(mine["step"]) == float(state["step"])
                assert_close(mine["exp_avg"], state["exp_avg"], f"agent {agent} {key} exp_avg")


def test_iql_member_continues_like_its_single_run(base: OfflineDataset) -> None:
    """After 8 population steps, member k trained alone for 4 more equals single run k after 12."""
    runs = corrupted_runs(base, IQL_TINY)
    seeds = [seed for seed, _, _ in runs]
    population = IQLPopulation.create(OBS_DIM, ACT_DIM, IQL_TINY, seeds)
    sampler = PopulationSampler(base, [view for _, _, view in runs], seeds)
    for _ in range(8):
        population.train_step(sampler)
    seed, corrupted, view = runs[2]
    member = population.member(2)
    member_sampler = single_sampler(corrupted, view, seed)
    member_sampler.generator.set_state(sampler.generators[2].get_state())
    torch.manual_seed(seed)
    single = IQL(OBS_DIM, ACT_DIM, IQL_TINY)
    single_sampler_ = single_sampler(corrupted, view, seed)
    for _ in range(12):
        single.update(single_sampler_.sample(IQL_TINY.batch_size))
    for _ in range(4):
        member.update(member_sampler.sample(IQL_TINY.batch_size))
    for expected, actual in zip(single.actor.parameters(), member.actor.parameters()):
        assert_close(actual, expected, "actor after resuming alone")


def test_iql_population_state_round_trip(base: OfflineDataset) -> None:
    views = [DatasetView.full(base, normalize_observations=True)] * 2
    population = IQLPopulation.create(OBS_DIM, ACT_DIM, IQL_TINY, [0, 1])
    sampler = PopulationSampler(base, views, [0, 1])
    for _ in range(3):
        population.train_step(sampler)
    state, sampler_state = population.state_dict(), sampler.state_dict()
    uninterrupted = [population.train_step(sampler)["critic_loss"] for _ in range(3)]
    resumed = IQLPopulation.create(OBS_DIM, ACT_DIM, IQL_TINY, [5, 6])  # other weights, overwritten
    resumed.load_state_dict(state)
    sampler.load_state_dict(sampler_state)
    again = [resumed.train_step(sampler)["critic_loss"] for _ in range(3)]
    for a, b in zip(uninterrupted, again):
        assert torch.equal(a, b)


def test_population_act_and_q_values_match_members(base: OfflineDataset) -> None:
    population = IQLPopulation.create(OBS_DIM, ACT_DIM, IQL_TINY, [0, 1])
    obs = torch.randn(2, 4, OBS_DIM)
    actions = population.act(obs)
    q = population.q_values(obs, actions)
    assert actions.shape == (2, 4, ACT_DIM) and q.shape == (2, 4)
    for agent in range(2):
        member = population.member(agent)
        assert_close(actions[agent], torch.as_tensor(member.act(obs[agent].numpy())), "act")
        assert_close(q[agent], member.q_values(obs[agent], actions[agent]), "q_values")


def test_train_step_makes_no_host_sync(base: OfflineDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing in the hot loop reads a tensor back to the host (item/bool/float/int/cpu/numpy/tolist).

    On CPU a read-back costs nothing, so catch the Python-level calls that would sync on a GPU.
    """
    population = IQLPopulation.create(OBS_DIM, ACT_DIM, IQL_TINY, [0, 1])
    sampler = PopulationSampler(base, [DatasetView.full(base, normalize_observations=True)] * 2, [0, 1])
    population.train_step(sampler)

    def forbidden(name):
        def method(self, *args, **kwargs):
            raise AssertionError(f"host sync: Tensor.{name} called inside the update")

        return method

    for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden(name))
    population.train_step(sampler)
    population.update(sampler.sample(IQL_TINY.batch_size))


# Skipped without a GPU: benchmarks/gpu_checks.sh runs it (and fails if it skips) on a CUDA machine.
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_train_step_makes_no_cuda_sync(base: OfflineDataset) -> None:
    population = IQLPopulation.create(OBS_DIM, ACT_DIM, IQL_TINY, [0, 1], device="cuda")
    sampler = PopulationSampler(base, [DatasetView.full(base, normalize_observations=True)] * 2, [0, 1], device="cuda")
    population.train_step(sampler)
    torch.cuda.set_sync_debug_mode("error")
    try:
        population.train_step(sampler)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_compile_failure_falls_back_to_eager_with_a_warning(base: OfflineDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_compile(fn, **kwargs):
        def compiled(*args):
            # Fail after touching the state, the worst case for the fallback.
            for tensor in population_ref[0]._state_tensors():
                tensor.add_(1.0)
            raise RuntimeError("no C++ compiler on this platform")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    population_ref: list[IQLPopulation] = []
    views = [DatasetView.full(base, normalize_observations=True)] * 2
    population = IQLPopulation.create(OBS_DIM, ACT_DIM, IQL_TINY, [0, 1], compile=True)
    population_ref.append(population)
    eager = IQLPopulation.create(OBS_DIM, ACT_DIM, IQL_TINY, [0, 1])
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        metrics = population.train_step(PopulationSampler(base, views, [0, 1]))
    expected = eager.train_step(PopulationSampler(base, views, [0, 1]))
    assert not population.compiled and "no C++ compiler" in population.compile_error
    assert "Traceback" in population.compile_traceback and "no C++ compiler" in population.compile_traceback
    for name, value in expected.items():
        assert torch.equal(metrics[name], value)
    for key, value in eager.params.items():
        assert torch.equal(population.params[key], value)


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_compiled_iql_population_equals_eager(base: OfflineDataset, device: str) -> None:
    """torch.compile (inductor; CUDA graphs on a GPU) gives the eager population's results.

    The population falls back to eager when compilation raises (compile_error set, a
    RuntimeWarning); then this test would compare eager with eager. So it skips only where
    inductor cannot work at all (no C++ compiler on a CPU), and otherwise fails if the
    compiled path was not the one that ran.
    """
    cxx = cpp_compiler() if device == "cpu" else "triton"
    if cxx is None:
        pytest.skip("no C++ compiler (g++, c++, clang++ or $CXX): torch.compile's CPU backend cannot run here")
    views = [DatasetView.full(base, normalize_observations=True)] * 2
    eager = IQLPopulation.create(OBS_DIM, ACT_DIM, IQL_TINY, [0, 1], device=device)
    compiled = IQLPopulation.create(OBS_DIM, ACT_DIM, IQL_TINY, [0, 1], device=device, compile=True)
    eager_sampler = PopulationSampler(base, views, [0, 1], device=device)
    compiled_sampler = PopulationSampler(base, views, [0, 1], device=device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        for step in range(6):
            expected, actual = eager.train_step(eager_sampler), compiled.train_step(compiled_sampler)
            assert compiled.compile_error is None and compiled.compiled, (
                f"torch.compile fell back to eager at step {step} ({compiled.compile_error}) although a C++ compiler "
                f"({cxx}) is available; warnings: {[str(w.message) for w in caught]}; traceback:\n{compiled.compile_traceback}"
            )
            for name in expected:
                assert_close(actual[name], expected[name], f"step {step} {name}")
    assert not [w for w in caught if "torch.compile failed" in str(w.message)]
    for key, value in eager.params.items():
        assert_close(compiled.params[key], value, key)
    assert torch.equal(compiled.step, eager.step)


# ---------------------------------------------------------------------------------------
# CQL
# ---------------------------------------------------------------------------------------
def make_cql_population(seeds: list[int]) -> CQLPopulation:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # randomness="same" fallback, see CQLPopulation
        return CQLPopulation.create(OBS_DIM, ACT_DIM, CQL_TINY, seeds)


def test_cql_population_of_one_equals_the_single_run(base: OfflineDataset) -> None:
    """With one agent the vmapped random draws are the single run's draws, so the whole
    update (alpha, actor through a frozen critic, critic) must match CQL.update."""
    population = make_cql_population([4])
    torch.manual_seed(4)
    single = CQL(OBS_DIM, ACT_DIM, CQL_TINY)
    view = DatasetView.full(base, normalize_observations=True)
    sampler = PopulationSampler(base, [view], [4])
    single_sampler_ = single_sampler(base, view, 4)
    for step in range(5):
        torch.manual_seed(100 + step)
        metrics = population.train_step(sampler)
        torch.manual_seed(100 + step)
        expected = single.update(single_sampler_.sample(CQL_TINY.batch_size))
        assert set(metrics) == set(expected)
        for name, value in expected.items():
            assert_close(metrics[name][0], value, f"step {step} {name}")
    member = population.member(0)
    for network in ("actor", "critic", "target_critic"):
        for expected, actual in zip(single.modules[network].parameters(), member.modules[network].parameters()):
            assert_close(actual, expected, network)
    assert_close(member.log_alpha, single.log_alpha, "log_alpha")


def test_calql_population_of_one_equals_the_single_run(base: OfflineDataset) -> None:
    """Cal-QL's population is CQL's with the floor: with one agent, every metric (the
    calibration rate too) and every weight must match CalQL.update on the same batches."""
    torch.manual_seed(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # randomness="same" fallback, see CQLPopulation
        population = CalQLPopulation.create(OBS_DIM, ACT_DIM, CALQL_TINY, [5])
    torch.manual_seed(5)
    single = CalQL(OBS_DIM, ACT_DIM, CALQL_TINY)
    view = DatasetView.full(base, normalize_observations=True)
    # Large returns put the floor above the untrained Q, so the floor is active.
    extra = {"mc_returns": mc_returns_to_go(base, 0.99) + 10.0}
    sampler = PopulationSampler(base, [view], [5], extras=[extra])
    single_sampler_ = single_sampler(base, view, 5, extra)
    rates = []
    for step in range(5):
        torch.manual_seed(200 + step)
        metrics = population.train_step(sampler)
        torch.manual_seed(200 + step)
        expected = single.update(single_sampler_.sample(CALQL_TINY.batch_size))
        assert set(metrics) == set(expected) and "calibration_bound_rate" in expected
        for name, value in expected.items():
            assert_close(metrics[name][0], value, f"step {step} {name}")
        rates.append(float(expected["calibration_bound_rate"]))
    assert max(rates) > 0.5, rates
    member = population.member(0)
    assert type(member) is CalQL
    for network in ("actor", "critic", "target_critic"):
        for expected, actual in zip(single.modules[network].parameters(), member.modules[network].parameters()):
            assert_close(actual, expected, network)


SAC_TINY = SACConfig(hidden=(16, 16), batch_size=8)
# actor_every 3: the actor and temperature step on updates 3, 6, ... only (a UTD of 3).
RLPD_TINY = RLPDConfig(hidden=(16, 16), ensemble_size=4, target_subset=2, batch_size=8, actor_every=3)


@pytest.mark.parametrize("algo", ["sac", "rlpd"])
def test_sac_and_rlpd_populations_of_one_equal_the_single_run(algo: str, base: OfflineDataset) -> None:
    """The two-phase step (critic, then actor and temperature on the updated critic) against
    SAC.update / RLPD.update: the same metrics at every update (RLPD's actor metrics only
    on its actor_every-th updates), the same weights, Adam states and temperature."""
    cls, pop_cls, config = (SAC, SACPopulation, SAC_TINY) if algo == "sac" else (RLPD, RLPDPopulation, RLPD_TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        population = pop_cls.create(OBS_DIM, ACT_DIM, config, [6])
    torch.manual_seed(6)
    single = cls(OBS_DIM, ACT_DIM, config)
    view = DatasetView.full(base, normalize_observations=True)
    sampler, single_sampler_ = PopulationSampler(base, [view], [6]), single_sampler(base, view, 6)
    actor_steps = 0
    for step in range(7):
        torch.manual_seed(300 + step)
        metrics = population.train_step(sampler)
        torch.manual_seed(300 + step)
        expected = single.update(single_sampler_.sample(config.batch_size))
        assert set(metrics) == set(expected), (step, set(metrics) ^ set(expected))
        for name, value in expected.items():
            assert_close(metrics[name][0], value, f"step {step} {name}")
        actor_steps += "actor_loss" in expected
    assert actor_steps == (7 if algo == "sac" else 2)
    member = population.member(0)
    for network in ("actor", "critic", "target_critic"):
        for expected, actual in zip(single.modules[network].parameters(), member.modules[network].parameters()):
            assert_close(actual, expected, network)
    assert_close(member.log_alpha, single.log_alpha, "log_alpha")
    for name, optimizer in single.optimizers.items():
        for param, theirs in zip(optimizer.param_groups[0]["params"], member.optimizers[name].param_groups[0]["params"]):
            mine = member.optimizers[name].state[theirs]
            assert float(mine["step"]) == float(optimizer.state[param]["step"]), name
            assert_close(mine["exp_avg_sq"], optimizer.state[param]["exp_avg_sq"], f"{name} exp_avg_sq")
    # A population rebuilt from its exported member continues where it was (the Adam steps
    # of critic and actor differ for RLPD) and acts and scores like the single run.
    rebuilt = pop_cls([member])
    # (SAC's actor phase runs every update and shares the update counter; RLPD's counts its own.)
    assert float(rebuilt.step) == 7 and float(rebuilt.phase_steps.get("actor", rebuilt.step)) == actor_steps
    assert ("actor" in rebuilt.phase_steps) == (algo == "rlpd")
    obs = torch.as_tensor(base.observations[:5])
    assert_close(rebuilt.agent_q_values(0, obs, torch.as_tensor(base.actions[:5])), single.q_values(obs, torch.as_tensor(base.actions[:5])), "q")
    # The soft bonus of the Monte-Carlo target (both learn soft Q) from the member's own actor and temperature.
    actions = torch.as_tensor(base.actions[:5]).clamp(-0.9, 0.9)
    assert_close(rebuilt.agent_entropy_bonus(0, obs, actions), single.entropy_bonus(obs, actions), "entropy bonus")



# policy_freq 3: the actor steps on updates 1, 4, 7 (0-based 0, 3, 6), the targets move with it.
TD3BC_TINY = TD3BCConfig(hidden=(16, 16), batch_size=8, policy_freq=3)


@pytest.mark.parametrize("algo", ["bc", "td3bc"])
def test_bc_and_td3bc_populations_of_one_equal_the_single_run(algo: str, base: OfflineDataset) -> None:
    """BC (one phase, no critic) and TD3+BC (the critic every update, the delayed actor on the
    first update and every policy_freq-th after it, the targets averaged on actor updates only,
    the smoothing noise drawn inside the critic's target, the latest actor metrics reported
    again in between) against their single runs: the same metrics in the same order at every
    update, the same weights, targets, Adam states and kept metrics."""
    cls, pop_cls, config = (BC, BCPopulation, BCConfig(hidden=(16, 16), batch_size=8)) if algo == "bc" else (TD3BC, TD3BCPopulation, TD3BC_TINY)
    population = pop_cls.create(OBS_DIM, ACT_DIM, config, [8])
    torch.manual_seed(8)
    single = cls(OBS_DIM, ACT_DIM, config)
    view = DatasetView.full(base, normalize_observations=True)
    sampler, single_sampler_ = PopulationSampler(base, [view], [8]), single_sampler(base, view, 8)
    for step in range(7):
        torch.manual_seed(500 + step)
        metrics = population.train_step(sampler)
        torch.manual_seed(500 + step)
        expected = single.update(single_sampler_.sample(config.batch_size))
        assert list(metrics) == list(expected), step
        for name, value in expected.items():
            assert_close(metrics[name][0], value, f"step {step} {name}")
    logged = list(expected)
    member = population.member(0)
    for network in single.modules:
        for expected, actual in zip(single.modules[network].parameters(), member.modules[network].parameters()):
            assert_close(actual, expected, network)
    for name, optimizer in single.optimizers.items():
        for param, theirs in zip(optimizer.param_groups[0]["params"], member.optimizers[name].param_groups[0]["params"]):
            assert float(member.optimizers[name].state[theirs]["step"]) == float(optimizer.state[param]["step"]), name
    assert member.kept_metrics.keys() == single.kept_metrics.keys() == ({"actor"} if algo == "td3bc" else set())
    for phase, kept in single.kept_metrics.items():
        for name, value in kept.items():
            assert_close(member.kept_metrics[phase][name], value, f"kept {name}")
    if algo == "td3bc":
        assert float(population.phase_steps["actor"]) == 3  # updates 1, 4 and 7
        # A population rebuilt from its exported member reports the kept actor metrics at its next update.
        rebuilt = pop_cls([member])
        torch.manual_seed(600)
        continued = rebuilt.train_step(PopulationSampler(base, [view], [8]))
        assert list(continued) == logged  # update 8: no actor step, its kept metrics
        assert_close(continued["actor_loss"][0], single.kept_metrics["actor"]["actor_loss"], "kept actor_loss")


@pytest.mark.slow
@pytest.mark.skipif(cpp_compiler() is None, reason="no C++ compiler: torch.compile's CPU backend cannot run here")
def test_compiled_rlpd_population_equals_eager(base: OfflineDataset) -> None:
    """The SAC family's two-phase step compiles (both variants: with and without the actor
    phase) and gives the eager step's results. Regression: the phase calls were once built
    inside the traced step, which dynamo refused ("getattr() on nn.Module with pending
    mutation"), so the step silently fell back to eager."""
    views = [DatasetView.full(base, normalize_observations=True)] * 2
    eager = RLPDPopulation.create(OBS_DIM, ACT_DIM, RLPD_TINY, [0, 1])
    compiled = RLPDPopulation.create(OBS_DIM, ACT_DIM, RLPD_TINY, [0, 1], compile=True)
    samplers = [PopulationSampler(base, views, [0, 1]) for _ in range(2)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        for step in range(4):  # the actor steps on update 3 only
            torch.manual_seed(400 + step)
            expected = eager.train_step(samplers[0])
            torch.manual_seed(400 + step)
            actual = compiled.train_step(samplers[1])
            assert compiled.compiled, f"fell back to eager at step {step}: {compiled.compile_error}\n{compiled.compile_traceback}"
            assert set(actual) == set(expected)
            for name in expected:
                assert_close(actual[name], expected[name], f"step {step} {name}")
    assert not [w for w in caught if "torch.compile failed" in str(w.message)]
    for key, value in eager.params.items():
        assert_close(compiled.params[key], value, key)
    assert torch.equal(compiled.phase_steps["actor"], eager.phase_steps["actor"]) and float(compiled.phase_steps["actor"]) == 1

def test_cql_agents_do_not_influence_each_other(base: OfflineDataset) -> None:
    """Agent 0 of populations (0, 1) and (0, 2) trains identically: no coupling through the stacking."""
    results = []
    for other in (1, 2):
        population = make_cql_population([0, other])
        sampler = PopulationSampler(base, [DatasetView.full(base)] * 2, [0, other])
        torch.manual_seed(7)
        for _ in range(3):
            metrics = population.train_step(sampler)
        results.append((metrics, population.params))
    (metrics_a, params_a), (metrics_b, params_b) = results
    for name in metrics_a:
        assert_close(metrics_a[name][0], metrics_b[name][0], name)
        assert torch.isfinite(metrics_a[name]).all()
    for key in params_a:
        assert_close(params_a[key][0], params_b[key][0], key)
        assert not torch.equal(params_a[key][1], params_b[key][1]) or key == "alpha.log_alpha"


# ---------------------------------------------------------------------------------------
# Metrics container and the benchmark script
# ---------------------------------------------------------------------------------------
def test_population_metrics_rows_and_per_agent_floats(base: OfflineDataset) -> None:
    population = IQLPopulation.create(OBS_DIM, ACT_DIM, IQL_TINY, [0, 1])
    sampler = PopulationSampler(base, [DatasetView.full(base)] * 2, [0, 1])
    metrics = population.train_step(sampler)
    assert list(metrics) == population.metric_names and len(metrics) == len(population.metric_names)
    assert metrics.stacked.shape == (len(metrics), 2)
    per_agent = metrics.agent(1)
    assert per_agent["critic_loss"] == float(metrics["critic_loss"][1])


def test_throughput_benchmark_smoke(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark script runs end to end (numbers irrelevant here) and prints its table."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"
    spec = importlib.util.spec_from_file_location("throughput_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    argv = ["--algo", "iql,cql", "--reduced", "--population", "1,2", "--steps", "1", "--warmup", "1", "--repeats", "1", "--transitions", "2000"]
    assert module.main(argv) == 0
    table = capsys.readouterr().out
    for expected in ("| iql | cpu | eager | 1 |", "| iql | cpu | vmap | 2 |", "| cql | cpu | vmap | 1 |"):
        assert expected in table

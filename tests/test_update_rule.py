"""Update rules (algos/update.py): the one declaration of a gradient step, from which the
single run's update and the population step are both derived."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hybrid_rl.algos.bc import BC, BCConfig
from hybrid_rl.algos.calql import CalQL, CalQLConfig
from hybrid_rl.algos.cql import CQL, CQLConfig
from hybrid_rl.algos.iql import IQL, IQLConfig
from hybrid_rl.algos.rlpd import RLPD, RLPDConfig
from hybrid_rl.algos.sac import SAC, SACConfig
from hybrid_rl.algos.td3bc import TD3BC, TD3BCConfig
from hybrid_rl.algos.update import Phase, UpdateRule
from hybrid_rl.engine.population import population_for

OBS_DIM, ACT_DIM = 5, 2


def no_losses(nets, batch, draws):  # pragma: no cover - never called
    raise AssertionError


def test_a_rule_steps_every_declared_group_exactly_once() -> None:
    with pytest.raises(ValueError, match="each group must be stepped in exactly one phase"):
        UpdateRule(networks=("critic", "actor"), phases=(Phase("update", no_losses, ("critic",)),))
    with pytest.raises(ValueError, match="each group must be stepped in exactly one phase"):
        UpdateRule(networks=("critic",), phases=(Phase("a", no_losses, ("critic",)), Phase("b", no_losses, ("critic",))))
    with pytest.raises(ValueError, match="each group must be stepped in exactly one phase"):  # the temperature is a group too
        UpdateRule(networks=("critic",), temperature=True, phases=(Phase("update", no_losses, ("critic",)),))
    with pytest.raises(ValueError, match="grad_norms names groups"):
        UpdateRule(networks=("critic",), phases=(Phase("update", no_losses, ("critic",)),), grad_norms=("actor",))


def test_metrics_are_logged_phase_by_phase_then_norms_with_the_leading_names_first() -> None:
    rule = UpdateRule(networks=("critic", "actor"), phases=(Phase("critic", no_losses, ("critic",)), Phase("actor", no_losses, ("actor",), every="k")),
                      leading_metrics=("critic_loss", "grad_norm_critic"))
    both = rule.assemble([{"q_mean": 1, "critic_loss": 2}, {"actor_loss": 3}], {"critic": 4, "actor": 5})
    assert list(both) == ["critic_loss", "grad_norm_critic", "q_mean", "actor_loss", "grad_norm_actor"]
    critic_only = rule.assemble([{"q_mean": 1, "critic_loss": 2}], {"critic": 4})
    assert list(critic_only) == ["critic_loss", "grad_norm_critic", "q_mean"]
    config = type("Config", (), {"k": 3})()
    assert [rule.due(update, config) for update in (1, 2, 3, 6)] == [(True, False), (True, False), (True, True), (True, True)]
    assert rule.optimizer_steps("critic", 7, config) == 7 and rule.optimizer_steps("actor", 7, config) == 2


def test_a_delayed_phase_can_start_with_the_first_update_keep_its_metrics_and_carry_the_targets() -> None:
    """TD3's schedule: the actor on updates 1, n+1, 2n+1, ... (1-based), the targets averaged
    after those only, its latest metrics reported in between once it has run."""
    rule = UpdateRule(networks=("critic", "actor"), targets_with="actor",
                      phases=(Phase("critic", no_losses, ("critic",)), Phase("actor", no_losses, ("actor",), every="k", from_first=True, keep_metrics=True)))
    config = type("Config", (), {"k": 3})()
    due = [rule.due(update, config) for update in range(1, 8)]
    assert [actor for _, actor in due] == [True, False, False, True, False, False, True]
    assert [rule.targets_due(d) for d in due] == [actor for _, actor in due]
    assert [rule.optimizer_steps("actor", updates, config) for updates in range(8)] == [0, 1, 1, 1, 2, 2, 2, 3]
    assert rule.kept((True, False), 0, config) == (False, False) and rule.kept((True, False), 1, config) == (False, True)
    with pytest.raises(ValueError, match="targets_with names no phase"):
        UpdateRule(networks=("critic",), phases=(Phase("critic", no_losses, ("critic",)),), targets_with="actor")
    with pytest.raises(ValueError, match="from_first and keep_metrics are for a phase that runs every n-th update"):
        UpdateRule(networks=("critic",), phases=(Phase("critic", no_losses, ("critic",), keep_metrics=True),))


TINY = {
    IQL: IQLConfig(hidden=(16, 16), batch_size=8),
    CQL: CQLConfig(actor_hidden=(16, 16), critic_hidden=(16, 16), batch_size=8, num_sampled_actions=2),
    CalQL: CalQLConfig(actor_hidden=(16, 16), critic_hidden=(16, 16), batch_size=8, num_sampled_actions=2),
    SAC: SACConfig(hidden=(16, 16), batch_size=8),
    RLPD: RLPDConfig(hidden=(16, 16), batch_size=8, ensemble_size=3, actor_every=2),
    BC: BCConfig(hidden=(16, 16), batch_size=8),
    TD3BC: TD3BCConfig(hidden=(16, 16), batch_size=8, policy_freq=2),
}


@pytest.mark.parametrize("cls", list(TINY), ids=lambda cls: cls.__name__)
def test_a_population_logs_the_single_runs_metrics_in_the_single_runs_order(cls: type) -> None:
    """Both steps come from one rule, so their metrics.jsonl columns agree (a CQL population
    once logged its two gradient norms the other way round)."""
    torch.manual_seed(0)
    single = cls(OBS_DIM, ACT_DIM, TINY[cls])
    population = population_for(cls)([single.__class__(OBS_DIM, ACT_DIM, TINY[cls])])
    batch = {"observations": torch.randn(8, OBS_DIM), "actions": torch.rand(8, ACT_DIM) * 2 - 1, "rewards": torch.randn(8),
             "next_observations": torch.randn(8, OBS_DIM), "dones": torch.zeros(8), "mc_returns": torch.randn(8)}
    for _ in range(3):  # RLPD: an update without its actor phase, then one with it; TD3+BC: with, then kept
        expected = list(single.update(batch))
        assert list(population.update({key: value[None] for key, value in batch.items()})) == expected


def test_the_derived_update_benchmark_runs() -> None:
    script = Path(__file__).parents[1] / "benchmarks" / "derived_update.py"
    done = subprocess.run([sys.executable, str(script), "--algo", "iql", "--blocks", "2", "--updates", "2", "--threads", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "derived/handwritten" in done.stdout


def test_every_builtin_rule_is_consistent_with_its_optimizers() -> None:
    """Each declared group is one of the algorithm's optimizers, and each optimizer a group."""
    for cls, config in TINY.items():
        agent = cls(OBS_DIM, ACT_DIM, config)
        assert sorted(cls.update_rule.groups) == sorted(agent.optimizers), cls.__name__

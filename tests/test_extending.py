"""Adding an algorithm is one declaration plus one registry entry (docs/extending.md).

A small actor-critic defined here, outside the package, is registered with its ``SPEC`` and
nothing else. Its gradient step is declared once (an ``UpdateRule``): the single run's
``update`` and the vmapped population step are both derived from it. It trains offline
through ``train``, forms a population through ``train_population``, fine-tunes online from its
own Phase I run through ``finetune`` (the recipe comes from its declaration), and the reports
draw and name both with its declared display name.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from hybrid_rl.algos import registry
from hybrid_rl.algos.base import Algorithm, Batch, Metrics
from hybrid_rl.algos.sac import q_statistics, td_loss
from hybrid_rl.algos.spec import AlgorithmSpec, FinetuneRecipe, check_reward_scaling
from hybrid_rl.algos.update import Phase, UpdateRule
from hybrid_rl.cli import main as cli_main
from hybrid_rl.runs.finetune import FinetuneConfig, finetune, methods
from hybrid_rl.core.networks import DeterministicPolicy, EnsembleCritic
from hybrid_rl.engine.population import population_class
from hybrid_rl.runs.train import TrainConfig, train, train_population

from conftest import TINY_DATASET


@dataclass(frozen=True)
class TinyTDConfig:
    hidden: tuple[int, ...] = (16, 16)
    discount: float = 0.99
    tau: float = 0.005
    lr: float = 1e-3
    batch_size: int = 32
    normalize_observations: bool = True
    reward_scaling: str = "none"

    def __post_init__(self) -> None:
        check_reward_scaling(self.reward_scaling)


def tiny_td_step(nets, batch: Batch, draws: None) -> tuple[dict[str, torch.Tensor], Metrics]:
    """The critic learns the actor's Q by TD; the actor clones the data's actions."""
    with torch.no_grad():
        next_q = nets.target_critic(batch["next_observations"], nets.fixed("actor")(batch["next_observations"]))[0]
        target = batch["rewards"] + nets.config.discount * (1.0 - batch["dones"]) * next_q
    q = nets.critic(batch["observations"], batch["actions"])
    critic_loss = td_loss(q, target)
    actor_loss = (nets.actor(batch["observations"]) - batch["actions"]).pow(2).mean()
    return {"critic": critic_loss, "actor": actor_loss}, {"critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(), **q_statistics("q", q)}


class TinyTD(Algorithm):
    """A deterministic actor cloned from the data and a critic learning its Q by TD."""

    name = "tinytd"
    update_rule = UpdateRule(networks=("critic", "actor"), phases=(Phase("update", tiny_td_step, ("critic", "actor")),),
                             q_estimate=lambda q, config: q[0])

    def __init__(self, obs_dim: int, act_dim: int, config: TinyTDConfig = TinyTDConfig(), device: torch.device | str = "cpu") -> None:
        super().__init__(obs_dim, act_dim, config, device)
        self.register(actor=DeterministicPolicy(obs_dim, act_dim, config.hidden), critic=EnsembleCritic(obs_dim, act_dim, config.hidden, ensemble_size=1))
        self.register(target_critic=copy.deepcopy(self.critic).requires_grad_(False))
        self.optimizers = {"actor": torch.optim.Adam(self.actor.parameters(), lr=config.lr),
                           "critic": torch.optim.Adam(self.critic.parameters(), lr=config.lr)}


SPEC = AlgorithmSpec(
    name="tinytd", display_name="TinyTD", algorithm=TinyTD, config=TinyTDConfig, source="a test",
    finetune=FinetuneRecipe(parent_algos=("tinytd",), sampling="uniform", utd=1, source="a test's recipe"),
)


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.SPECS, SPEC.name, SPEC)  # what registry.register does, undone after the test


def test_an_algorithm_declared_outside_the_package_trains_fine_tunes_and_is_reported(
        registered, tmp_path: Path, generated_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("HYBRID_RL_DATA_DIR", str(generated_cache))
    assert "tinytd" in registry.available_algorithms() and methods()["tinytd"].parent_algos == ("tinytd",)
    assert "tinytd" in methods()["offline"].parent_algos  # the offline control accepts its runs too

    results, phase2 = tmp_path / "results", tmp_path / "results_phase2"
    config = TrainConfig(algo="tinytd", dataset=TINY_DATASET, seed=0, total_steps=60, eval_every=30, eval_episodes=2, log_every=20,
                         checkpoint_every=30, device="cpu", progress=False, results_dir=str(results), cache_dir=str(generated_cache),
                         algo_overrides={"lr": 3e-4})
    summary = train(config)
    assert summary["status"] == "completed" and summary["steps_done"] == 60
    recorded = json.loads((results / config.run_id / "config.json").read_text())
    assert recorded["algo"] == "tinytd" and recorded["algo_config"]["lr"] == 3e-4 and recorded["settings"] == {"lr": 3e-4}

    # Two more seeds as one population: its step is derived from the same declaration.
    assert population_class("tinytd") is not None
    members = train_population([dataclasses.replace(config, seed=seed) for seed in (1, 2)])
    assert [summary["status"] for summary in members.values()] == ["completed", "completed"]
    single_row = json.loads((results / config.run_id / "metrics.jsonl").read_text().splitlines()[-1])
    for run_id in members:
        member_row = json.loads((results / run_id / "metrics.jsonl").read_text().splitlines()[-1])
        assert list(member_row) == list(single_row)  # the single run's metrics, in its order

    fine = FinetuneConfig(method="tinytd", parent=str(results / config.run_id), online_steps=60, eval_every=30, eval_episodes=2,
                          switch_episodes=2, log_every=20, checkpoint_every=30, device="cpu", progress=False, results_dir=str(phase2),
                          cache_dir=str(generated_cache))
    online = finetune(fine)
    assert online["status"] == "completed" and online["steps_done"] == 60
    written = json.loads((phase2 / online["run_id"] / "config.json").read_text())
    assert written["online"]["sampling"] == "uniform" and written["online"]["method_source"] == "a test's recipe"

    plots = tmp_path / "plots"
    for source in (results, phase2):
        assert cli_main(["report", "--results", str(source), "--plots", str(plots)]) == 0
    capsys.readouterr()
    assert "TinyTD" in (results / "summary.md").read_text()
    assert "tinytd" in (phase2 / "recovery.md").read_text()


def test_the_derived_population_step_equals_the_derived_single_step(registered) -> None:
    """A population of one and the single run start from the same weights and take the same
    batches: both steps come from TinyTD's one declaration, so they agree up to rounding."""
    torch.manual_seed(0)
    single = TinyTD(5, 2)
    population = population_class("tinytd")([copy.deepcopy(single)])
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        batch = {"observations": torch.randn(32, 5, generator=generator), "actions": torch.rand(32, 2, generator=generator) * 2 - 1,
                 "rewards": torch.randn(32, generator=generator), "next_observations": torch.randn(32, 5, generator=generator),
                 "dones": (torch.rand(32, generator=generator) < 0.1).float()}
        expected = single.update(batch)
        metrics = population.update({key: value[None] for key, value in batch.items()})
        assert list(metrics) == list(expected)
        for name, value in expected.items():
            torch.testing.assert_close(metrics[name][0], value, rtol=1e-5, atol=1e-6)
    member = population.member(0)
    for network in ("actor", "critic", "target_critic"):
        for mine, theirs in zip(member.modules[network].parameters(), single.modules[network].parameters()):
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    obs, actions = torch.randn(4, 5), torch.rand(4, 2)
    torch.testing.assert_close(population.agent_q_values(0, obs, actions), single.q_values(obs, actions), rtol=1e-5, atol=1e-6)


def test_an_online_only_method_is_refused_as_a_phase_one_algorithm() -> None:
    from hybrid_rl.runs.train import build_algorithm

    assert "sac" not in registry.available_algorithms() and registry.algorithm_spec("sac").finetune.parent_algos == ()
    with pytest.raises(ValueError, match="sac learns online only.*finetune --method sac --from scratch"):
        build_algorithm(TrainConfig(algo="sac", dataset=TINY_DATASET), None, torch.device("cpu"))


def test_the_algorithms_command_lists_every_declaration(registered, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["algorithms"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip() and not line.startswith("Phase II control")}
    assert set(rows) == set(registry.SPECS)  # the test's own algorithm included
    assert "Cal-QL" in rows["calql"] and "from calql runs, symmetric sampling, UTD 1" in rows["calql"]
    assert "from scratch, symmetric sampling, UTD 20, 5,000 random warm-up steps" in rows["rlpd"]
    assert "TinyTD" in rows["tinytd"] and rows["bc"].split()[3] == "-"  # BC has no Phase II recipe

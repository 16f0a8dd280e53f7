"""Adding an algorithm is one declaration plus one registry entry (docs/extending.md).

A small actor-critic defined here, outside the package, is registered with its ``SPEC`` and
nothing else: it trains offline through ``train``, fine-tunes online from its own Phase I run
through ``finetune`` (the recipe comes from its declaration), and the reports draw and name
both with its declared display name.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from hybrid_rl.algos import registry
from hybrid_rl.algos.base import Algorithm, Batch, Metrics, step_optimizer
from hybrid_rl.algos.sac import q_statistics, td_loss
from hybrid_rl.algos.spec import AlgorithmSpec, FinetuneRecipe, check_reward_scaling
from hybrid_rl.cli import main as cli_main
from hybrid_rl.runs.finetune import FinetuneConfig, finetune, methods
from hybrid_rl.core.networks import DeterministicPolicy, EnsembleCritic, soft_update
from hybrid_rl.runs.train import TrainConfig, train

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


class TinyTD(Algorithm):
    """A deterministic actor cloned from the data and a critic learning its Q by TD."""

    name = "tinytd"

    def __init__(self, obs_dim: int, act_dim: int, config: TinyTDConfig = TinyTDConfig(), device: torch.device | str = "cpu") -> None:
        super().__init__(obs_dim, act_dim, config, device)
        self.register(actor=DeterministicPolicy(obs_dim, act_dim, config.hidden), critic=EnsembleCritic(obs_dim, act_dim, config.hidden, ensemble_size=1))
        self.register(target_critic=copy.deepcopy(self.critic).requires_grad_(False))
        self.optimizers = {"actor": torch.optim.Adam(self.actor.parameters(), lr=config.lr),
                           "critic": torch.optim.Adam(self.critic.parameters(), lr=config.lr)}

    def update(self, batch: Batch) -> Metrics:
        with torch.no_grad():
            next_q = self.target_critic(batch["next_observations"], self.actor(batch["next_observations"]))[0]
            target = batch["rewards"] + self.config.discount * (1.0 - batch["dones"]) * next_q
        q = self.critic(batch["observations"], batch["actions"])
        critic_loss = td_loss(q, target)
        step_optimizer(self.optimizers["critic"], critic_loss, list(self.critic.parameters()))
        actor_loss = (self.actor(batch["observations"]) - batch["actions"]).pow(2).mean()
        step_optimizer(self.optimizers["actor"], actor_loss, list(self.actor.parameters()))
        soft_update(self.target_critic, self.critic, self.config.tau)
        self.total_updates += 1
        return {"critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(), **q_statistics("q", q)}

    @torch.no_grad()
    def q_values(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.critic(obs, actions)[0]


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

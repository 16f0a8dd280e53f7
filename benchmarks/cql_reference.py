"""CQL's update rate against a plain reference implementation, side by side, one process.

The reference is written here the way single-file CQL implementations are (CORL's
``cql.py`` layout): two separate ``nn.Sequential`` critics, a tanh-Gaussian actor, the SAC
temperature, and the CQL(H) penalty with N uniform, N pi(s) and N pi(s') proposals per
state, importance-sampled; three optimizer steps and Polyak averaging. Same sizes as our
defaults (3x256 actor and critics, batch 256, N = 10, halfcheetah's 17 + 6 inputs).

Compared, interleaved round by round so a drift of the machine's speed hits all alike:

``reference``  the reference step above (its batch drawn with one ``randint`` + index)
``eager``      ``TransitionSampler.sample`` + ``CQL.update`` (``--compile off``)
``default``    what ``hybrid-rl train --algo cql`` runs on a CPU with a C++ compiler for any
               run of 1,000 steps or more: the compiled population-of-one step
               (``CQLPopulation(compile=True).train_step``), whose critics are evaluated
               member by member (``EnsembleCritic.member_products``)
``batched``    the same compiled step with the critics' members in one batched product
               (the eager layout): what the critic layout alone is worth

The table gives updates/s (median over rounds) and each variant's rate relative to the
reference. One thread by default, as the comparison that set the target was made.

    python benchmarks/cql_reference.py --threads 1 --steps 30 --rounds 5

Measure on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import synthetic_dataset  # noqa: E402  (the same synthetic MuJoCo-sized data)

from hybrid_rl.algos.cql import CQL, CQLConfig  # noqa: E402
from hybrid_rl.data.dataset import TransitionSampler  # noqa: E402
from hybrid_rl.data.views import DatasetView, PopulationSampler  # noqa: E402
from hybrid_rl.engine.population import CQLPopulation  # noqa: E402


# ---------------------------------------------------------------------------------------
# The reference implementation
# ---------------------------------------------------------------------------------------
def mlp(inputs: int, outputs: int, hidden: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(inputs, width), nn.ReLU()]
        inputs = width
    return nn.Sequential(*layers, nn.Linear(inputs, outputs))


class ReferenceActor(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.net = mlp(obs_dim, 2 * act_dim, hidden)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        std = log_std.clamp(-20.0, 2.0).exp()
        raw = mean + std * torch.randn_like(mean)
        log_prob = (-0.5 * ((raw - mean) / std) ** 2 - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
        action = torch.tanh(raw)
        log_prob = log_prob - (2 * (math.log(2) - raw - nn.functional.softplus(-2 * raw))).sum(-1)
        return action, log_prob


class ReferenceCQL:
    def __init__(self, obs_dim: int, act_dim: int, config: CQLConfig) -> None:
        self.config, self.act_dim = config, act_dim
        self.actor = ReferenceActor(obs_dim, act_dim, config.actor_hidden)
        self.q1, self.q2 = (mlp(obs_dim + act_dim, 1, config.critic_hidden) for _ in range(2))
        self.target_q1, self.target_q2 = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.log_alpha = torch.zeros((), requires_grad=True)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr)
        self.critic_opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=config.critic_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=config.alpha_lr)

    @staticmethod
    def q(net: nn.Module, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return net(torch.cat([obs, actions], dim=-1)).squeeze(-1)

    def update(self, obs, actions, rewards, next_obs, dones) -> None:
        cfg, n = self.config, self.config.num_sampled_actions
        new_actions, log_pi = self.actor(obs)
        alpha_loss = -(self.log_alpha * (log_pi + -self.act_dim).detach()).mean()
        alpha = self.log_alpha.exp().detach()
        q_new = torch.min(self.q(self.q1, obs, new_actions), self.q(self.q2, obs, new_actions))
        policy_loss = (alpha * log_pi - q_new).mean()

        q1_pred, q2_pred = self.q(self.q1, obs, actions), self.q(self.q2, obs, actions)
        with torch.no_grad():
            next_actions, _ = self.actor(next_obs)
            target = torch.min(self.q(self.target_q1, next_obs, next_actions), self.q(self.target_q2, next_obs, next_actions))
            td_target = rewards + (1.0 - dones) * cfg.discount * target
        td = ((q1_pred - td_target) ** 2).mean() + ((q2_pred - td_target) ** 2).mean()

        batch = obs.shape[0]
        repeated_obs = obs.unsqueeze(1).expand(batch, n, obs.shape[-1]).reshape(batch * n, -1)
        repeated_next = next_obs.unsqueeze(1).expand(batch, n, obs.shape[-1]).reshape(batch * n, -1)
        random_actions = actions.new_empty(batch * n, self.act_dim).uniform_(-1, 1)
        with torch.no_grad():
            current_actions, current_log_pi = self.actor(repeated_obs)
            next_sampled, next_log_pi = self.actor(repeated_next)
        random_density = self.act_dim * math.log(0.5)
        penalty = 0.0
        for net, pred in ((self.q1, q1_pred), (self.q2, q2_pred)):
            q_random = self.q(net, repeated_obs, random_actions).view(batch, n) - random_density
            q_current = self.q(net, repeated_obs, current_actions).view(batch, n) - current_log_pi.view(batch, n)
            q_next = self.q(net, repeated_obs, next_sampled).view(batch, n) - next_log_pi.view(batch, n)
            logsumexp = torch.logsumexp(torch.cat([q_random, q_current, q_next], dim=1) / cfg.cql_temperature, dim=1) * cfg.cql_temperature
            penalty = penalty + (logsumexp - pred).mean() * cfg.cql_alpha
        critic_loss = td + penalty

        self.alpha_opt.zero_grad()
        alpha_loss.backward()
        self.alpha_opt.step()
        self.actor_opt.zero_grad()
        policy_loss.backward()
        self.actor_opt.step()
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        with torch.no_grad():
            for target_net, net in ((self.target_q1, self.q1), (self.target_q2, self.q2)):
                for t, p in zip(target_net.parameters(), net.parameters()):
                    t.lerp_(p, cfg.tau)


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------
def variants(dataset, config: CQLConfig) -> dict[str, Callable[[], object]]:
    device = torch.device("cpu")
    tensors = {name: torch.as_tensor(getattr(dataset, name)) for name in ("observations", "actions", "rewards", "next_observations")}
    dones = torch.as_tensor(dataset.terminals, dtype=torch.float32)
    torch.manual_seed(0)
    reference = ReferenceCQL(dataset.obs_dim, dataset.act_dim, config)

    def reference_step() -> None:
        rows = torch.randint(0, len(dones), (config.batch_size,))
        reference.update(*(tensors[name][rows] for name in ("observations", "actions", "rewards", "next_observations")), dones[rows])

    obs_mean, obs_std = dataset.observation_stats()
    sampler = TransitionSampler(dataset, device, obs_mean=obs_mean, obs_std=obs_std, seed=0)
    agent = CQL(dataset.obs_dim, dataset.act_dim, config, device)
    population_sampler = PopulationSampler(dataset, [DatasetView.full(dataset, normalize_observations=True)], [0], device)
    batched_sampler = PopulationSampler(dataset, [DatasetView.full(dataset, normalize_observations=True)], [0], device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        population = CQLPopulation.create(dataset.obs_dim, dataset.act_dim, config, [0], device, compile=True)
        batched = BatchedCriticsCQL.create(dataset.obs_dim, dataset.act_dim, config, [0], device, compile=True)
    return {"reference": reference_step, "eager": lambda: agent.update(sampler.sample(config.batch_size)),
            "default": lambda: population.train_step(population_sampler), "batched": lambda: batched.train_step(batched_sampler)}


class BatchedCriticsCQL(CQLPopulation):
    member_critic_products = False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30, help="updates per timed block")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3, help="untimed updates first (the default's includes compiling)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = synthetic_dataset(100_000, 17, 6)
    steps = variants(dataset, CQLConfig())
    for name, step in steps.items():
        started = time.perf_counter()
        for _ in range(args.warmup):
            step()
        print(f"warm-up {name}: {time.perf_counter() - started:.1f} s", flush=True)
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            started = time.perf_counter()
            for _ in range(args.steps):
                step()
            rates[name].append(args.steps / (time.perf_counter() - started))
    reference = statistics.median(rates["reference"])
    print(f"\ntorch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, {args.threads} thread(s), "
          f"{args.rounds} rounds x {args.steps} updates")
    print("| variant | updates/s (median) | x reference |\n|---|---|---|")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):.2f} | {statistics.median(values) / reference:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

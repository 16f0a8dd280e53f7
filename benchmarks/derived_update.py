"""The single run's derived update step against the same step written out by hand, in one process.

``Algorithm.update`` runs the algorithm's declared update rule (``algos/update.py``:
``apply_rule``). This script writes IQL's, CQL's, TD3+BC's and BC's steps out the way they
were written before the rules existed (their losses, then ``zero_grad / backward / step`` per optimizer,
Polyak averaging) and times both on identical agents and batch shapes, alternating blocks
and flipping the order every block, so that the machine's drift hits both alike. Both
compute the same numbers; the ratio shows what deriving the step costs.

    python benchmarks/derived_update.py --algo cql --blocks 8 --updates 15
    python benchmarks/derived_update.py --algo iql --blocks 8 --updates 100
    python benchmarks/derived_update.py --algo td3bc --blocks 8 --updates 100
    python benchmarks/derived_update.py --algo bc --blocks 8 --updates 200
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import torch

from hybrid_rl.algos.bc import BC, BCConfig, bc_loss
from hybrid_rl.algos.cql import CQL, CQLConfig, cql_losses
from hybrid_rl.algos.iql import IQL, IQLConfig, iql_losses
from hybrid_rl.algos.sac import q_statistics, td_loss
from hybrid_rl.algos.td3bc import TD3BC, TD3BCConfig, td3_target, td3bc_actor_loss
from hybrid_rl.algos.update import step_optimizer
from hybrid_rl.core.networks import soft_update

OBS_DIM, ACT_DIM = 17, 6  # halfcheetah


def handwritten_cql_update(agent: CQL, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    alpha_loss, actor_loss, critic_loss, metrics = cql_losses(agent.actor, agent.critic, agent.target_critic, agent.log_alpha, batch,
                                                              agent.config, agent.target_entropy)
    step_optimizer(agent.optimizers["alpha"], alpha_loss, [agent.log_alpha])
    actor_grad = step_optimizer(agent.optimizers["actor"], actor_loss, list(agent.actor.parameters()))
    critic_grad = step_optimizer(agent.optimizers["critic"], critic_loss, list(agent.critic.parameters()))
    soft_update(agent.target_critic, agent.critic, agent.config.tau)
    agent.total_updates += 1
    return {**metrics, "grad_norm_critic": critic_grad, "grad_norm_actor": actor_grad}


def handwritten_iql_update(agent: IQL, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    value_loss, critic_loss, actor_loss, metrics = iql_losses(agent.actor, agent.critic, agent.target_critic, agent.value, batch, agent.config)
    value_grad = step_optimizer(agent.optimizers["value"], value_loss, list(agent.value.parameters()))
    critic_grad = step_optimizer(agent.optimizers["critic"], critic_loss, list(agent.critic.parameters()))
    actor_grad = step_optimizer(agent.optimizers["actor"], actor_loss, list(agent.actor.parameters()))
    if agent.total_updates < agent.config.max_steps:
        agent.schedulers["actor"].step()
    soft_update(agent.target_critic, agent.critic, agent.config.tau)
    agent.total_updates += 1
    return {**metrics, "grad_norm_value": value_grad, "grad_norm_critic": critic_grad, "grad_norm_actor": actor_grad}


def handwritten_td3bc_update(agent: TD3BC, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    cfg = agent.config
    target = td3_target(agent.target_critic, agent.target_actor, batch, cfg.discount, cfg.policy_noise, cfg.noise_clip)
    q = agent.critic(batch["observations"], batch["actions"])
    critic_loss = td_loss(q, target)
    critic_grad = step_optimizer(agent.optimizers["critic"], critic_loss, list(agent.critic.parameters()))
    if agent.total_updates % cfg.policy_freq == 0:
        actor_loss, actor_metrics = td3bc_actor_loss(agent.critic, agent.actor, batch, cfg.alpha)
        actor_metrics["grad_norm_actor"] = step_optimizer(agent.optimizers["actor"], actor_loss, list(agent.actor.parameters()))
        soft_update(agent.target_critic, agent.critic, cfg.tau)
        soft_update(agent.target_actor, agent.actor, cfg.tau)
        agent.kept_metrics["actor"] = actor_metrics
    agent.total_updates += 1
    return {"critic_loss": critic_loss.detach(), "target_q_mean": target.mean(), "grad_norm_critic": critic_grad, **q_statistics("q", q),
            **agent.kept_metrics["actor"]}


def handwritten_bc_update(agent: BC, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    loss, metrics = bc_loss(agent.actor, batch)
    metrics["grad_norm_actor"] = step_optimizer(agent.optimizers["actor"], loss, list(agent.actor.parameters()))
    agent.total_updates += 1
    return metrics


STEPS = {  # the algorithm, its default config, its step written by hand
    "cql": (CQL, CQLConfig(), handwritten_cql_update),
    "iql": (IQL, IQLConfig(), handwritten_iql_update),
    "td3bc": (TD3BC, TD3BCConfig(), handwritten_td3bc_update),
    "bc": (BC, BCConfig(), handwritten_bc_update),
}


def random_batch(batch_size: int) -> dict[str, torch.Tensor]:
    return {"observations": torch.randn(batch_size, OBS_DIM), "actions": torch.rand(batch_size, ACT_DIM) * 2 - 1,
            "rewards": torch.randn(batch_size), "next_observations": torch.randn(batch_size, OBS_DIM), "dones": torch.zeros(batch_size)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", choices=tuple(STEPS), default="cql")
    parser.add_argument("--blocks", type=int, default=8, help="timed blocks of each step (alternating)")
    parser.add_argument("--updates", type=int, default=15, help="updates per block")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cls, config, handwritten = STEPS[args.algo]
    torch.manual_seed(0)
    derived_agent, handwritten_agent = cls(OBS_DIM, ACT_DIM, config), cls(OBS_DIM, ACT_DIM, config)
    steps: dict[str, Callable[[], Any]] = {
        "derived": lambda: derived_agent.update(random_batch(config.batch_size)),
        "handwritten": lambda: handwritten(handwritten_agent, random_batch(config.batch_size)),
    }
    for step in steps.values():  # warm-up
        for _ in range(3):
            step()
    # Same numbers from both steps (same weights, same batch, same random draws).
    check = [cls(OBS_DIM, ACT_DIM, config) for _ in range(2)]
    check[1].load_state_dict(check[0].state_dict())
    batches = [random_batch(config.batch_size) for _ in range(3)]
    for batch in batches:
        torch.manual_seed(1)
        derived_metrics = check[0].update(batch)
        torch.manual_seed(1)
        handwritten_metrics = handwritten(check[1], batch)
        if list(derived_metrics) != list(handwritten_metrics) or any(not torch.equal(derived_metrics[k], handwritten_metrics[k]) for k in derived_metrics):
            raise SystemExit(f"{args.algo}: the derived step and the handwritten one disagree")
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for block in range(args.blocks):
        for name in (list(steps) if block % 2 else list(steps)[::-1]):
            started = time.perf_counter()
            for _ in range(args.updates):
                steps[name]()
            rates[name].append(args.updates / (time.perf_counter() - started))
    derived, reference = statistics.median(rates["derived"]), statistics.median(rates["handwritten"])
    print(f"{args.algo}, {args.threads} thread(s), {args.blocks} blocks x {args.updates} updates: derived {derived:.2f} updates/s, "
          f"handwritten {reference:.2f} updates/s, derived/handwritten {derived / reference:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The one training loop: a learner driven through a schedule of stages, with its runs' books.

Every run, single or a population member, is trained here. The loop owns the schedule of a
run: one gradient step per iteration from the current stage, then (at their steps) the
train log with the rolling critic-loss statistics and Q against the Monte-Carlo return,
the divergence check, evaluation and checkpoints. What a step does is the stage's business:

- ``OfflineStage``: a gradient step on batches from an offline sampler (Phase I);
- an online stage (Phase II) acts in environments, stores the transitions in a replay
  buffer and takes its update-to-data ratio of gradient steps from a sampler that mixes
  them with the offline data. It plugs in as another ``Stage`` of the schedule;
- behaviour training's stage (``engine.behavior.BehaviorStage``) acts and learns online
  from its own replay buffer, for the dataset factory.

A schedule is ``[(stage, end_step), ...]`` with increasing end steps: a stage runs from the
previous stage's end to its own. Each stage's per-member state (sampler generators, later
buffers and environments) goes into the member's checkpoint, so a run resumes in the middle
of any stage. The books (``runs.book.RunBook``, one per member) hold everything written to the
run directory; the loop never writes a file itself.
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

import torch

from .learners import Learner


class Stage(Protocol):
    """One phase of a schedule: how the learner's next gradient step is made."""

    name: str

    def train_step(self, learner: Learner) -> Mapping[str, torch.Tensor]:
        """Advance by one gradient step of every member; return the step's metrics."""

    def member_state(self, member: int) -> dict[str, Any]:
        """The stage's state for one member, as stored in that member's checkpoint."""

    def load_member_state(self, member: int, state: dict[str, Any]) -> None:
        """Restore what ``member_state`` returned."""

    def take_records(self, member: int) -> list[dict[str, Any]]:
        """Records the stage made for the member since the last call (an online stage's
        finished episodes), written to its metrics.jsonl at the current step."""


class OfflineStage:
    """Gradient steps on uniform minibatches from a sampler of offline data.

    ``sampler`` is a ``TransitionSampler`` (one run) or a ``PopulationSampler`` (one view per
    member); both keep each member's random stream separately, so their per-member state is
    that member's generator.
    """

    name = "offline"

    def __init__(self, sampler: Any, batch_size: int, updates_per_step: int = 1) -> None:
        if updates_per_step < 1:
            raise ValueError(f"an offline stage makes at least one update per step, got {updates_per_step}")
        self.sampler = sampler
        self.batch_size = batch_size
        # More than one: the Phase II offline control, whose step axis follows an online run's
        # (one step = that run's UTD gradient steps), so both are evaluated on one schedule.
        self.updates_per_step = int(updates_per_step)

    def train_step(self, learner: Learner) -> Mapping[str, torch.Tensor]:
        metrics = learner.train_step(self.sampler, self.batch_size)
        for _ in range(self.updates_per_step - 1):
            metrics = learner.train_step(self.sampler, self.batch_size)
        return metrics

    def member_state(self, member: int) -> dict[str, Any]:
        return self.sampler.member_state_dict(member)

    def load_member_state(self, member: int, state: dict[str, Any]) -> None:
        self.sampler.load_member_state_dict(member, state)

    def take_records(self, member: int) -> list[dict[str, Any]]:
        return []


Schedule = Sequence[tuple[Stage, int]]


def check_schedule(schedule: Schedule) -> None:
    ends = [end for _, end in schedule]
    if not schedule or any(end <= 0 for end in ends) or ends != sorted(set(ends)):
        raise ValueError(f"a schedule needs stages with positive, strictly increasing end steps, got {ends}")


def stage_at(schedule: Schedule, step: int) -> Stage:
    """The stage that makes gradient step ``step + 1`` (the last one at or past the end)."""
    for stage, end in schedule:
        if step < end:
            return stage
    return schedule[-1][0]


def stage_states(schedule: Schedule, member: int) -> list[dict[str, Any]]:
    return [stage.member_state(member) for stage, _ in schedule]


def load_stage_states(schedule: Schedule, member: int, states: Sequence[dict[str, Any]]) -> None:
    if len(states) != len(schedule):
        raise ValueError(f"the checkpoint holds the state of {len(states)} stage(s), this run's schedule has {len(schedule)}")
    for (stage, _), state in zip(schedule, states):
        stage.load_member_state(member, state)


def fit(learner: Learner, books: Sequence[Any], schedule: Schedule, *, desc: str, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Train every member to the end of the schedule (or its divergence); ``{run_id: summary}``.

    ``books[m]`` is member m's book (``runs.book.RunBook``; behaviour training's
    ``runs.behavior.BehaviorBook``): all members share the logging, evaluation and
    checkpoint steps of ``books[0].config`` and start at the same step. A diverged member
    is finished at once and drops out of logging, evaluation and checkpoints (in a
    population its parameters go on being updated, but nothing reads them any more).
    """
    from ..core.progress import PlainProgress, progress_bar

    check_schedule(schedule)
    config = books[0].config  # the schedule fields are shared by every member
    window = config.loss_variance_window
    loss_window = torch.stack([book.loss_window for book in books])  # (P, window)
    total = schedule[-1][1]
    step = books[0].step
    active = list(range(len(books)))
    summaries: dict[str, dict[str, Any]] = {}

    def finish(member: int) -> None:
        book = books[member]
        summaries[book.config.run_id] = book.finish(learner.member_state(member), stage_states(schedule, member), loss_window[member].clone())

    bar = progress_bar(total=total, initial=step, desc=desc, disable=not progress, mininterval=2, leave=False, unit="step")
    try:
        while step < total and active:
            stage = stage_at(schedule, step)
            metrics = stage.train_step(learner)
            has_critic_loss = "critic_loss" in metrics
            if has_critic_loss:
                loss_window[:, step % window] = metrics["critic_loss"]
            step += 1
            for member in active:
                books[member].step = step
                for record in stage.take_records(member):
                    books[member].log({"step": step, **record})
            bar.update(1)

            if books[active[0]].due(config.log_every):
                rows = learner.metric_rows(metrics)
                for member in list(active):
                    book = books[member]
                    q_mc = None
                    if has_critic_loss and book.mc_size:
                        q_mc = learner.q_values(member, book.mc_batch["observations"], book.mc_batch["actions"])
                    if book.log_train(rows[member], loss_window[member], q_mc):
                        active.remove(member)
                        finish(member)
            if not active:
                break

            if books[active[0]].due(config.eval_every):
                for member, returns in zip(active, learner.evaluate(active, [books[m] for m in active])):
                    books[member].log_eval(returns)
                best = max(books[m].evals[-1] for m in active)
                bar.set_postfix({"score" if len(books) == 1 else "top": f"{best:.1f}"})
                if isinstance(bar, PlainProgress):  # a log file gets one line per evaluation
                    bar.note(f"{desc}: step {step:,}, evaluation " + ", ".join(f"{books[m].evals[-1]:.1f}" for m in active))

            if step % config.checkpoint_every == 0 and step < total:
                for member in active:
                    books[member].save_checkpoint(learner.member_state(member), stage_states(schedule, member), loss_window[member].clone())
        for member in active:
            finish(member)
        return summaries
    finally:
        bar.close()

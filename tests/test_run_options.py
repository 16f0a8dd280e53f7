"""The run options are declared once (core/run_options.py); the configs inherit them and the
single-run commands derive their flags from them."""
from __future__ import annotations

import dataclasses

import pytest

from hybrid_rl.cli import build_parser, main as cli_main, run_options_from
from hybrid_rl.core.grid_options import DEFAULT_CHECKPOINT_EVERY, DEFAULT_EVAL_EVERY, PHASE2_QUICK_PRETRAIN_STEPS, run_schedule
from hybrid_rl.core.run_options import FinetuneRunOptions, RunOptionError, RunOptions, non_identity_options, run_option_fields
from hybrid_rl.runs.finetune import FinetuneConfig
from hybrid_rl.runs.train import TrainConfig


def subcommand(name: str):
    parser = build_parser()
    return next(action for action in parser._subparsers._group_actions if action.dest == "command").choices[name]


def flags_of(parser) -> dict[str, object]:
    return {action.dest: action for action in parser._actions}


@pytest.mark.parametrize("command, options_class", [("train", RunOptions), ("finetune", FinetuneRunOptions)])
def test_every_run_option_with_a_flag_has_it_with_the_declared_default_and_help(command: str, options_class: type) -> None:
    actions = flags_of(subcommand(command))
    for spec in dataclasses.fields(options_class):
        if not spec.metadata["command_line"]:
            # Python-only, except algo_overrides: its flag takes JSON text, merged with --set.
            assert spec.name not in actions or spec.name == "algo_overrides", spec.name
            continue
        action = actions[spec.name]
        assert action.help and action.help.startswith(spec.metadata["help"][:30]), spec.name
        assert action.default == (None if spec.metadata["schedule"] else spec.default), spec.name
    # The seed's spellings stay: --results is results_dir's flag.
    assert actions["results_dir"].option_strings == ["--results"]
    assert actions["results_dir"].default == ("results" if command == "train" else "results_phase2")


def test_the_flags_without_values_give_the_configs_defaults() -> None:
    args = subcommand("train").parse_args([])
    config = TrainConfig(algo=args.algo, total_steps=args.total_steps, **run_options_from(args, args.total_steps))
    defaults = TrainConfig()
    for spec in run_option_fields():
        assert getattr(config, spec.name) == getattr(defaults, spec.name), spec.name
    short = run_options_from(subcommand("train").parse_args(["--total_steps", "300", "--seed", "4", "--results", "elsewhere"]), 300)
    assert short["eval_every"] == 300 and short["checkpoint_every"] == 300 and short["log_every"] == 15
    assert short["seed"] == 4 and short["results_dir"] == "elsewhere"
    assert run_schedule(10**6) == {"eval_every": DEFAULT_EVAL_EVERY, "log_every": 1_000, "checkpoint_every": DEFAULT_CHECKPOINT_EVERY}


def test_a_run_option_outside_its_domain_is_refused_by_both_configs_and_the_flags(capsys: pytest.CaptureFixture) -> None:
    for config_class, extra in ((TrainConfig, {}), (FinetuneConfig, {"dataset": "gen-hopper-medium-v1"})):
        with pytest.raises(RunOptionError, match="eval_episodes must be positive, got 0"):
            config_class(eval_episodes=0, **extra)
        with pytest.raises(RunOptionError, match="compile must be one of auto, on, off"):
            config_class(compile="sometimes", **extra)
        with pytest.raises(ValueError, match="threads must be positive"):
            config_class(threads=0, **extra)
    with pytest.raises(SystemExit) as exited:
        cli_main(["train", "--threads", "0"])
    assert exited.value.code == 2 and "--threads: must be a positive integer, got 0" in capsys.readouterr().err


def test_the_identity_leaves_out_exactly_the_options_that_do_not_change_results() -> None:
    assert set(non_identity_options()) == {"device", "threads", "compile", "tensorboard", "wandb", "progress", "results_dir", "cache_dir", "mirror",
                                           "checkpoint_every"}
    run = TrainConfig(total_steps=1000, eval_every=500, log_every=100, checkpoint_every=500)
    moved = dataclasses.replace(run, device="cuda", results_dir="other", checkpoint_every=250, threads=3)
    assert moved.identity() == run.identity() and moved.run_id == run.run_id
    assert dataclasses.replace(run, eval_every=250).identity() != run.identity()


def test_study_help_texts_are_built_from_the_defaults(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["phase2", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"parents of {PHASE2_QUICK_PRETRAIN_STEPS // 1000}k steps" in text

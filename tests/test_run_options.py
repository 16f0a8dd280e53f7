"""Every config field is declared once (core/run_options.py's ``option``: the run options,
the data's in data/dataspec.py, each config's own in runs/configs.py); the single-run
commands derive their flags from the declarations, and the studies their axes."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from hybrid_rl.cli import build_parser, config_values, main as cli_main, phase2_main, run_options_from
from hybrid_rl.core.grid_options import DEFAULT_CHECKPOINT_EVERY, DEFAULT_EVAL_EVERY, PHASE2_QUICK_PRETRAIN_STEPS, run_schedule
from hybrid_rl.core.run_options import FinetuneRunOptions, RunOptionError, RunOptions, declared_field, declared_fields, non_identity_options, run_option_fields
from hybrid_rl.runs.configs import FinetuneConfig, TrainConfig


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


@pytest.mark.parametrize("command, config_class", [("train", TrainConfig), ("finetune", FinetuneConfig)])
def test_every_config_field_has_its_declared_flag(command: str, config_class: type) -> None:
    """Not only the run options: the config's own fields and its data too (--algo, --env,
    --corruption, --from, --utd, ...), each under its declared spelling, with its default."""
    actions = flags_of(subcommand(command))
    run_options = {spec.name for spec in run_option_fields()}
    own = [spec for spec in declared_fields(config_class) if spec.name not in run_options]
    assert {"dataset", "remove_top_k", "reward_noise_std", "extra_corruptions"} <= {spec.name for spec in own}
    for spec in own:
        meta = spec.metadata
        if not meta["command_line"]:
            assert spec.name not in actions, spec.name
            continue
        action = actions[spec.name]
        assert action.option_strings == [meta["flag"] or f"--{spec.name}", *meta["aliases"]], spec.name
        assert meta["help"] in action.help, spec.name
        assert action.required == meta["required"], spec.name
        if not meta["required"]:
            assert action.default == spec.default, spec.name
    # The seed's spellings stay.
    assert actions["dataset"].option_strings == ["--env", "--dataset"] and actions["extra_corruptions"].option_strings == ["--corruption"]
    if command == "finetune":
        assert actions["parent"].option_strings == ["--from"] and actions["dataset"].help.startswith("with --from scratch: ")


def test_the_flags_without_values_give_the_configs_defaults() -> None:
    args = subcommand("train").parse_args([])
    assert TrainConfig(**config_values(args, TrainConfig), **run_options_from(args, args.total_steps)) == TrainConfig()
    args = subcommand("finetune").parse_args(["--from", "scratch", "--method", "SAC", "--env", "gen-hopper-medium-v1"])
    config = FinetuneConfig(**config_values(args, FinetuneConfig), **run_options_from(args, args.online_steps))
    assert config == FinetuneConfig(method="sac", parent="scratch", dataset="gen-hopper-medium-v1")
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


def test_a_config_field_outside_its_domain_is_refused_by_the_config_and_its_flag(capsys: pytest.CaptureFixture) -> None:
    scratch = {"method": "sac", "dataset": "gen-hopper-medium-v1"}
    with pytest.raises(RunOptionError, match="total_steps must be positive, got 0"):
        TrainConfig(total_steps=0)
    with pytest.raises(RunOptionError, match="utd must be >= 0, got -1"):
        FinetuneConfig(utd=-1, **scratch)
    with pytest.raises(RunOptionError, match="online_fraction must be <= 1, got 1.5"):
        FinetuneConfig(online_fraction=1.5, **scratch)
    with pytest.raises(RunOptionError, match="online_fraction must be positive, got 0"):
        FinetuneConfig(online_fraction=0.0, **scratch)
    for argv, message in ((["train", "--total_steps", "0"], "--total_steps: must be a positive integer, got 0"),
                          (["finetune", "--from", "scratch", "--method", "sac", "--utd", "-1"], "--utd: must be a whole number >= 0, got -1"),
                          (["train", "--corruption", "shuffle:rate=2"], "--corruption: corruption spec #0: unknown kind 'shuffle'"),
                          (["finetune", "--method", "sac"], "the following arguments are required: --from")):
        with pytest.raises(SystemExit) as exited:
            cli_main(argv)
        assert exited.value.code == 2 and message in capsys.readouterr().err, argv


def test_the_studies_axes_are_the_run_fields_flags() -> None:
    """A study's axis is its runs' field: the same spelling, help and reading, several values."""
    for command in ("grid", "phase2"):
        actions = flags_of(subcommand(command))
        for name in ("dataset", "remove_top_k", "reward_noise_std", "extra_corruptions", "seed"):
            spec = declared_field(TrainConfig, name)
            assert actions[name].option_strings == [spec.metadata["flag"] or f"--{name}", *spec.metadata["aliases"]], (command, name)
            assert actions[name].help.startswith(spec.metadata["help"]), (command, name)
    grid = subcommand("grid").parse_args(["--algo", "CQL,iql", "--dataset", "a,b", "--remove_top_k", "0,30", "--corruption", "none",
                                          "--corruption", "reward_noise:std=1"])
    assert grid.algo == ("cql", "iql") and grid.dataset == ("a", "b") and grid.remove_top_k == (0.0, 30.0)
    assert grid.extra_corruptions == [(), ({"kind": "reward_noise", "std": 1.0},)]
    assert subcommand("grid").parse_args([]).algo == ("cql", "iql") and subcommand("phase2").parse_args([]).remove_top_k == (0.0, 60.0)


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
    with pytest.raises(SystemExit) as exited:
        phase2_main(["--utd", "0"])  # the frozen control is a method variant (iql@utd0), not a whole study at UTD 0
    assert exited.value.code == 2


def test_the_command_line_is_built_without_loading_torch() -> None:
    """The flags come from the configs' declarations, which load no trainer: --help is instant."""
    code = ("import sys; from hybrid_rl.cli import build_parser; build_parser(); import hybrid_rl.runs.configs, hybrid_rl.data.dataspec; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0

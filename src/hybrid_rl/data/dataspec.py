"""The data a run trains on: one dataset and its corruptions, in the order they are applied.

Phase I runs, from-scratch fine-tuning runs and ``hybrid-rl dataset export`` all name their
data this way. ``remove_top_k`` and ``reward_noise_std`` are shorthands for the first two
corruptions (the two this project studies most); ``extra_corruptions`` are further specs of
any kind (``data.corruption``). The spec is checked when it is made, before any data loads,
and it names itself in run ids the same way wherever it is used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.run_options import option

if TYPE_CHECKING:
    from .dataset import OfflineDataset

# This module loads without torch (the corruption code loads when a spec is checked or
# applied), so that the command line derives its data flags from ``DataOptions`` alone.


@dataclass(frozen=True)
class DataSpec:
    dataset: str
    remove_top_k: float = 0.0  # percent of the highest-return trajectories removed
    reward_noise_std: float = 0.0  # std of Gaussian noise added to every reward
    extra_corruptions: tuple[dict, ...] = ()  # further corruption specs, applied after the two above

    def __post_init__(self) -> None:
        from .corruption import check_corruptions, check_shorthands

        check_shorthands(self.remove_top_k, self.reward_noise_std)
        if self.extra_corruptions:
            check_corruptions(self.extra_corruptions)

    def corruption_specs(self) -> list[dict[str, Any]]:
        """Every corruption in the order it is applied."""
        specs: list[dict[str, Any]] = []
        if self.remove_top_k > 0:
            specs.append({"kind": "remove_top_k", "k": self.remove_top_k})
        if self.reward_noise_std > 0:
            specs.append({"kind": "reward_noise", "std": self.reward_noise_std})
        specs.extend(dict(spec) for spec in self.extra_corruptions)
        return specs

    def id_parts(self) -> list[str]:
        """How a run id names this data: ``dataset``, ``kK``, ``noiseN`` and one part per
        further corruption (its values, by parameter name, without its seed)."""
        parts = [self.dataset.replace("/", "_"), f"k{self.remove_top_k:g}", f"noise{self.reward_noise_std:g}"]
        parts += ["-".join(f"{value}" for key, value in sorted(spec.items()) if key != "seed") for spec in self.extra_corruptions]
        return parts

    def prepare(self, seed: int, cache_dir: str | None = None, mirror: str | None = None,
                original: OfflineDataset | None = None) -> tuple[OfflineDataset, OfflineDataset, list[dict]]:
        """Load the dataset (unless given) and apply the corruptions with ``seed``:
        (original, corrupted, one record per corruption)."""
        from .corruption import apply_corruptions
        from .loader import load_dataset

        if original is None:
            original = load_dataset(self.dataset, cache_dir=cache_dir, mirror=mirror)
        corrupted, records = apply_corruptions(original, self.corruption_specs(), seed=seed)
        return original, corrupted, records


CORRUPTION_HELP = ("KIND:NAME=VALUE[:NAME=VALUE...], several joined by + (applied in order), or none: e.g. "
                   "corrupt_transitions:target=observations:rate=0.3:scale=1 (RIQL's random observation corruption); the kinds and their "
                   "parameters are in docs/data.md, and an unknown kind's error lists them")


def parse_corruption_text(text: str) -> tuple[dict, ...]:
    """The specs a ``--corruption`` text names (``corruption.parse_corruptions``; ValueError if bad)."""
    from .corruption import parse_corruptions

    return parse_corruptions(text)


@dataclass(frozen=True, kw_only=True)
class DataOptions:
    """A run config's data, as flat fields (so config.json keeps them at the top level):
    the base of ``runs.configs.TrainConfig`` and ``FinetuneConfig``. ``data`` is the spec
    they make (checked when it is made). A fine-tuning run from a parent leaves ``dataset``
    empty until ``with_parent`` copies the parent's data in."""

    dataset: str | None = option(None, "the dataset: a D4RL id (halfcheetah-medium-v2), a generated id (gen-hopper-medium-v1[@SIZE]), a Minari id "
                                 "or an HDF5 path", flag="--env", aliases=("--dataset",), group="data")
    remove_top_k: float = option(0.0, "percent of the highest-return trajectories removed from the data", group="data")
    reward_noise_std: float = option(0.0, "std of Gaussian noise added to every reward (reward units)", group="data")
    extra_corruptions: tuple[dict, ...] = option((), "further corruption of the data, applied after the two above: " + CORRUPTION_HELP,
                                                 flag="--corruption", parse=parse_corruption_text, metavar="SPEC", group="data")

    @property
    def data(self) -> DataSpec:
        return DataSpec(self.dataset or "", self.remove_top_k, self.reward_noise_std, self.extra_corruptions)

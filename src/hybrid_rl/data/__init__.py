"""Data layer: sources -> OfflineDataset -> corruption -> sampler."""
from ..core.errors import DatasetEnvMismatchError, DatasetUnavailableError, HybridRLError, MissingDependencyError, UnknownDatasetError
from .corruption import (
    CORRUPTION_KINDS,
    add_reward_noise,
    apply_corruptions,
    corrupt_transitions,
    flip_reward_sign,
    remove_top_k_trajectories,
    replace_rewards,
    spec_from_record,
)
from .dataset import OfflineDataset, TransitionSampler, concatenate_datasets
from .hdf5io import DatasetFileError, read_hdf5, validate_hdf5, write_hdf5
from .loader import known_dataset_ids, load_dataset, make_env, make_vector_env
from .refs import normalized_score
from .replay import DeviceReplayBuffer, ReplayBuffer

__all__ = [
    "CORRUPTION_KINDS",
    "DatasetEnvMismatchError",
    "DatasetFileError",
    "DatasetUnavailableError",
    "DeviceReplayBuffer",
    "HybridRLError",
    "MissingDependencyError",
    "OfflineDataset",
    "ReplayBuffer",
    "TransitionSampler",
    "UnknownDatasetError",
    "add_reward_noise",
    "apply_corruptions",
    "concatenate_datasets",
    "corrupt_transitions",
    "flip_reward_sign",
    "known_dataset_ids",
    "load_dataset",
    "make_env",
    "make_vector_env",
    "normalized_score",
    "read_hdf5",
    "remove_top_k_trajectories",
    "replace_rewards",
    "spec_from_record",
    "validate_hdf5",
    "write_hdf5",
]

"""Exceptions that carry a message meant for the user, not a traceback.

The ``hybrid-rl`` command catches :class:`HybridRLError` and prints its message alone, so
every subclass must say what went wrong *and* what to do about it in one message.
Subclasses also derive from the matching builtin (ValueError, ImportError ...) so code that
catches the builtin keeps working.
"""
from __future__ import annotations


class HybridRLError(Exception):
    """Base class of every user-facing hybrid-rl error (the CLI prints only the message)."""


class DatasetUnavailableError(HybridRLError):
    """A dataset cannot be obtained: offline, server down, or the file is missing remotely."""


class UnknownDatasetError(HybridRLError, ValueError):
    """A dataset id is neither a known id nor an existing local file."""


class DatasetEnvMismatchError(HybridRLError, ValueError):
    """The evaluation environment does not match the dataset (observation/action sizes)."""


class MissingDependencyError(HybridRLError, ImportError):
    """An optional dependency (an extra such as ``hybrid-rl[minari]``) is not installed."""

"""The errors of `bqx load`."""

from __future__ import annotations


class LoadError(RuntimeError):
    """A problem with the input that stops the load before anything is written."""

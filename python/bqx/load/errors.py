"""The errors of `bqx load`: what stops a load, and what skips one file."""

from __future__ import annotations


class LoadError(RuntimeError):
    """A problem that stops the whole load before anything is written: a bad option, no path."""


class FileSkipped(LoadError):
    """A problem with one file (unreadable, not bar data, a header without the needed columns):
    that file is reported and skipped, the others load. The message is the reason, without the
    file's name (the caller adds it) and without the file's content."""

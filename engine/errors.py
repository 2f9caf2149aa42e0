"""Errors that are the user's to fix (bad path, missing camera, corrupt bundle): printed as one line by the CLI."""

from __future__ import annotations


class UserError(RuntimeError):
    """A problem the user can fix; the message says what was wrong and, where possible, what to do."""


class Stopping(RuntimeError):
    """A stage gave up waiting (for a render child, say) because the engine is stopping: not a failure."""

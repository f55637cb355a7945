"""Errors a user can cause and fix: the CLI prints them as one line and exits with status 2;
and ``SearchAborted``, a search that stops for another reason (one line, exit status 1)."""

from __future__ import annotations


class UserError(Exception):
    """A problem in the user's input (config, policy file, dataset, flag).

    ``source`` names the file (or flag) and ``field`` the key or value at fault; ``str(err)``
    is the one line the CLI prints.
    """

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None):
        self.message = message
        self.source = source
        self.field = field
        super().__init__(self._line())

    def _line(self) -> str:
        where = ": ".join(part for part in (self.source, self.field) if part)
        return f"{where}: {self.message}" if where else self.message


class DataError(UserError):
    """A dataset file that cannot be read or does not match its targets."""


class SearchAborted(Exception):
    """The search stopped because trials keep failing (a bug or an environment problem); the
    finished trials are kept. ``str(err)`` is the one line the CLI prints."""

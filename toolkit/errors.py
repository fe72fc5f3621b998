"""Domain errors. The CLI turns each into one line on stderr and its exit code."""

from __future__ import annotations


class RtkError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""

    exit_code = 2


class UnknownArchitectureError(RtkError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DataError(RtkError):
    """The dataset is missing, malformed or unreadable."""


class OutputError(RtkError):
    """An output file cannot be written where the user asked."""


class FolderBusyError(RtkError):
    """Another process is writing the folder this command would write."""


class FormatError(RtkError):
    """A file rtk wrote is in a layout this version cannot read (a newer rtk's, or edited)."""

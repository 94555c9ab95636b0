"""Exceptions raised for bad input, each naming the offending file or argument."""

from __future__ import annotations


class QSMInputError(ValueError):
    """Input data or parameters that cannot give a correct result.

    The message always names what is wrong and, where known, the file it came from.
    """

    def __init__(self, message: str, source: str | None = None):
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)

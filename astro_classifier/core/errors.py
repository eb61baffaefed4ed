"""Errors meant for people: each names the input and what was expected."""

from __future__ import annotations


class InputError(ValueError):
    """An input (file, message, column) cannot be used.

    ``source`` names the input (a path, a topic/partition/offset, a column), ``reason`` says
    what was wrong and what was expected. The CLI prints ``str(error)`` and exits non-zero.
    """

    def __init__(self, source: object, reason: str) -> None:
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")

    def __reduce__(self) -> tuple:  # pickled whole (the decode pool sends them back)
        return (type(self), (self.source, self.reason))


class ModelError(RuntimeError):
    """A model file is missing, unreadable, or lacks the metadata astroclf needs."""


class TransientError(RuntimeError):
    """A dependency (Kafka, the Schema Registry) is unavailable for now; the input is fine.

    The worker retries with backoff: such a failure never dead-letters a message and never
    commits past it.
    """

    def __init__(self, dependency: str, reason: str) -> None:
        self.dependency = dependency
        self.reason = reason
        super().__init__(f"{dependency}: {reason}")

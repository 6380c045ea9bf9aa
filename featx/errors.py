"""The one error type that featx raises for problems a user can fix."""

from __future__ import annotations


class FeatxError(Exception):
    """A problem with the input, a flag or a file that the user can fix.

    Every message follows one template: what failed and on which value, what
    is allowed, what was received, and what to do next. The command-line
    modules print the message without a traceback and exit with ``exit_status``.

    Parameters
    ----------
    problem : str
        What failed, in the usual words ("Data folder not found").
    subject : str
        The flag, file or value concerned (``--batch-size``, a path).
    expected, got : str, optional
        What is allowed and what was received.
    hint : str, optional
        What the user should do next.
    """

    exit_status = 2

    def __init__(
        self,
        problem: str,
        subject: str,
        *,
        expected: str | None = None,
        got: object = None,
        hint: str | None = None,
    ) -> None:
        message = f"{problem}: {subject}."
        if expected is not None:
            message += f" Expected {expected}"
            message += "." if got is None else f", got {got}."
        if hint:
            message += f" {hint}"
        super().__init__(message)
        self.problem = problem
        self.subject = subject


def check_positive_int(value: int, flag: str) -> int:
    """Return ``value`` unchanged, or raise FeatxError naming ``flag``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FeatxError(
            "Invalid value", flag, expected="an integer of at least 1", got=repr(value)
        )
    return value

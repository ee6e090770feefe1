"""Error types and the one formatter for user-facing messages.

Every problem a user can cause (a typo in a recipe, a missing file, a corrupt image) is raised
as a subclass of :class:`LeptonError`. The CLI prints ``str(error)`` and exits non-zero without
a traceback (unless ``--debug``). Each class also inherits the matching builtin so that library
callers can catch ``ValueError`` / ``RuntimeError`` as usual.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One problem found in a file.

    Attributes:
        where: YAML path (``train.optimizer.learning_rate``), CSV row or file name.
        message: What is wrong, with the offending value and how to fix it.
        line: 1-based line number in ``file`` when known.
    """

    where: str
    message: str
    line: int | None = None

    def render(self) -> str:
        prefix = f"line {self.line:<4} " if self.line is not None else ""
        where = f"{self.where}: " if self.where else ""
        return f"{prefix}{where}{self.message}"


class LeptonError(Exception):
    """Root of every error lepton-vision raises for bad input or a failed stage.

    Args:
        message: Headline of the error.
        file: The file the problems are in, if any.
        problems: Individual problems, each rendered on its own line.
        hint: One closing line that says how to fix things.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        problems: Sequence[Problem] = (),
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.problems = sorted(problems, key=lambda p: (p.line is None, p.line or 0, p.where))
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        head = f"{self.file}: {self.message}" if self.file else self.message
        lines = [head]
        lines += [f"  {p.render()}" for p in self.problems]
        if self.hint:
            lines.append(self.hint)
        return "\n".join(lines)


class RecipeError(LeptonError, ValueError):
    """A recipe, task card or dataset card is invalid (YAML, schema or cross-file check)."""


class CardError(RecipeError):
    """A task or dataset card is invalid or does not match the recipe."""


class DataError(LeptonError, ValueError):
    """The data is missing, unreadable, or cannot support an honest evaluation."""


class TrainError(LeptonError, RuntimeError):
    """Training failed in a way the user must act on (e.g. NaN loss)."""


class ExportError(LeptonError, RuntimeError):
    """Export or the parity check of an export failed."""


def did_you_mean(value: str, choices: Iterable[str], n: int = 1) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or ``""``.

    Args:
        value: What the user wrote.
        choices: The valid values.
        n: How many suggestions at most.

    Returns:
        A sentence to append to an error message (with a leading space), or an empty string.
    """
    matches = difflib.get_close_matches(str(value), [str(c) for c in choices], n=n, cutoff=0.6)
    if not matches:
        lowered = {str(c).lower(): str(c) for c in choices}
        if str(value).lower() in lowered:
            matches = [lowered[str(value).lower()]]
    if not matches:
        return ""
    return " Did you mean " + " or ".join(f"'{m}'" for m in matches) + "?"


def format_choices(choices: Iterable[str], limit: int = 12) -> str:
    """Format a list of valid values for an error message."""
    items = sorted(str(c) for c in choices)
    shown = ", ".join(items[:limit])
    if len(items) > limit:
        shown += f", ... ({len(items) - limit} more)"
    return shown

"""The rich console every stage prints its progress lines to (no colour guessing, no markup
highlighting of numbers and paths)."""

from __future__ import annotations

from typing import Any


def console(stderr: bool = False) -> Any:
    """A ``rich.console.Console`` without automatic highlighting (imported on first use)."""
    from rich.console import Console

    return Console(highlight=False, stderr=stderr)

"""Small helpers for the wording of log lines."""

from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    """Return ``n`` and the noun in singular or plural: "1 image", "2 images", "1 class", "3 classes"."""
    if n == 1:
        return f"{n} {noun}"
    return f"{n} {plural or (noun + 'es' if noun.endswith('s') else noun + 's')}"

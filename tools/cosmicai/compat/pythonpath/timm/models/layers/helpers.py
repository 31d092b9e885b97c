"""Compatibility shim for reference scripts, not timm: `to_2tuple` as in timm 0.4.12."""

from collections.abc import Iterable
from typing import Any


def to_2tuple(x: Any) -> tuple[Any, ...]:
    """`x` unchanged when it is iterable, else `(x, x)`."""
    return tuple(x) if isinstance(x, Iterable) else (x, x)

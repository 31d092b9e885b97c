"""argparse types for the CLI's numbers and run ids: bad values are usage errors, not tracebacks."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from cosmicai.errors import CosmicAIError
from cosmicai.pipeline.layout import check_run_id


def whole_number(minimum: int = 1, maximum: int | None = None) -> Callable[[str], int]:
    """A type for whole numbers in [minimum, maximum]."""
    bounds = f"from {minimum} to {maximum}" if maximum is not None else f"of at least {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number {bounds}")
        return value

    return parse


def finite_number(minimum: float = 0.0, maximum: float = 1e9) -> Callable[[str], float]:
    """A type for finite numbers in [minimum, maximum] (no inf, no nan)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a number from {minimum:g} to {maximum:g}"
            )
        return value

    return parse


def run_id(text: str) -> str:
    """A run id, checked against its pattern before it becomes a path or a name."""
    try:
        return check_run_id(text)
    except CosmicAIError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


positive_int = whole_number(1)
non_negative_int = whole_number(0)

"""Argparse ``type=`` helpers that refuse meaningless numbers at the command line.

Plain ``type=float`` accepts ``nan`` and ``inf`` (they then travel into fits and JSON, which cannot hold them), and
``type=int`` accepts ``0`` or ``-3`` for counts that must be positive. These helpers raise
``argparse.ArgumentTypeError``, so argparse prints ``argument --flag: ...`` on one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import math


def finite_float(text: str) -> float:
    """A float that is neither NaN nor infinite."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite float > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite float >= 0."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def unit_float(text: str) -> float:
    """A finite float in [0, 1] (probabilities, fractions, thresholds)."""
    value = finite_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text!r}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1 (counts, sizes, epochs)."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (few-shot examples, offsets)."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value

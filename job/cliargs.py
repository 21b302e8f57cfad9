"""The command line's argument checks: numeric `type=` validators and a parser whose errors are one line.

argparse checks a `type=` while parsing, before any command runs, so a bad number is refused in one line with exit 2
and nothing imported (TensorFlow least of all). Every numeric option uses one of VALIDATORS
(tests/unit/test_cli_numbers.py walks the parser to make sure of it).
"""
from __future__ import annotations

import argparse
import math
import re


def positive_int(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}; give a whole number of at least 1")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0 (not nan, not inf)."""
    return _finite_float(text, allow_zero=False, fix="give a finite number above 0")


def non_negative_float(text: str) -> float:
    """A finite number of at least 0 (0 turns something off, e.g. serve's --max-batch-wait-ms)."""
    return _finite_float(text, allow_zero=True, fix="give a finite number (0 turns it off)")


def _finite_float(text: str, allow_zero: bool, fix: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (0 <= value if allow_zero else 0 < value) or not value < math.inf:
        raise argparse.ArgumentTypeError(f"must be {'0 or more' if allow_zero else 'positive'}, got {text!r}; {fix}")
    return value


def port_number(text: str) -> int:
    """A TCP port to listen on, 1-65535 (0, "any free port", would leave nobody knowing where to connect)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number (1-65535), got {text!r}")
    return value


VALIDATORS = (positive_int, positive_float, non_negative_float, port_number)


class OneLineParser(argparse.ArgumentParser):
    """argparse's errors as one line, `error: <problem> (see <prog> --help)`, exit 2, instead of the usage block and
    the error. Subcommand parsers are made with the same class, so theirs are too."""

    def error(self, message: str):
        # "argument --top: must be positive, ..." (a validator's) -> "--top must be positive, ..."
        message = re.sub(r"^argument (?:[^:]*/)?([^:/]+): must ", r"\1 must ", message)
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")

"""Every numeric option of every subcommand has a validator that refuses zero, negative, non-numeric, nan and inf
values. The options are found by walking the parser, so a numeric option added later is covered (or fails
test_every_numeric_option_has_a_validator). The one-line exit-2 errors in a real process:
tests/integration/test_cli_number_errors.py."""
from __future__ import annotations

import argparse

import pytest

from job.cli import build_parser
from job.cliargs import VALIDATORS, non_negative_float, port_number, positive_float, positive_int

# What each subcommand needs besides the option under test, so the bad number is the only thing wrong.
OTHER_ARGS = {
    "predict": ["--model", "model.keras", "image.png"],
    "serve": ["--model", "model.keras"],
    "tune": ["--space", "space.yaml"],
    "status": ["runs/x"],
}


def subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def typed_options():
    """(command, option, validator) for every option of every subcommand that has a type=."""
    for command, parser in subcommands().items():
        for action in parser._actions:
            if action.type is not None:
                yield command, action.option_strings[-1] if action.option_strings else action.dest, action.type


def test_every_numeric_option_has_a_validator():
    found = list(typed_options())
    assert len(found) >= 9  # predict --top/--max-pixels, serve's four, tune --workers, status's two
    for command, option, kind in found:
        assert kind in VALIDATORS, f"{command} {option} has type={kind!r}: use one of job/cliargs.py's validators"
        assert command in OTHER_ARGS, f"add `{command}` to OTHER_ARGS so its {option} is tested"


@pytest.mark.parametrize("kind, text, value", [
    (positive_int, "1", 1), (positive_int, "64", 64), (positive_float, "0.25", 0.25), (positive_float, "1e3", 1000.0),
    (non_negative_float, "0", 0.0), (non_negative_float, "2.5", 2.5), (port_number, "1", 1),
    (port_number, "65535", 65535)])
def test_good_numbers_pass(kind, text, value):
    assert kind(text) == value

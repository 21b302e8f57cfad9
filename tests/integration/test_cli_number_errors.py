"""The numeric options' refusals as a user sees them, in a fresh process: one line on stderr, exit 2, nothing else
printed and no TensorFlow imported (the validators themselves: tests/unit/test_cli_numbers.py).
docs/runs.md (exit codes): "`2` bad input (one line on stderr says what and how to fix it ...)"."""
from __future__ import annotations

import subprocess
import sys

import pytest

from job.cliargs import non_negative_float, port_number, positive_float, positive_int
from tests.support.trainer_runs import ROOT, trainer_env
from tests.unit.test_cli_numbers import OTHER_ARGS, typed_options

BAD_VALUES = {
    positive_int: ["0", "-3", "x", "2.5", "nan", ""],
    positive_float: ["0", "-1", "-0.5", "x", "nan", "inf", "-inf"],
    non_negative_float: ["-1", "-0.5", "x", "nan", "inf", "-inf"],
    port_number: ["0", "-1", "65536", "x", "80.5"],
}
# Exits 3 (no other test's exit code) if the command imported TensorFlow before exiting.
RUN_CLI = ("import atexit, os, sys\n"
           "atexit.register(lambda: 'tensorflow' in sys.modules and os._exit(3))\n"
           "from job.cli import main\n"
           "sys.exit(main(sys.argv[1:]))\n")


@pytest.mark.parametrize("command, option, value", [
    (command, option, value) for command, option, kind in typed_options() for value in BAD_VALUES[kind]])
def test_a_bad_number_is_one_line_and_exit_2_before_anything_runs(command, option, value, tmp_path):
    result = subprocess.run([sys.executable, "-c", RUN_CLI, command, *OTHER_ARGS[command], f"{option}={value}"],
                            cwd=tmp_path, env=trainer_env(PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {option} must be ") and repr(value) in lines[0], lines[0]
    assert lines[0].endswith(f"(see python -m job {command} --help)"), lines[0]


def test_other_argparse_errors_are_one_line_too(tmp_path):
    for args, phrase in ([["predict", "--model", "m.keras"], "the following arguments are required: PATH"],
                         [["serve", "--run-dir", "r", "--model", "m.keras"], "not allowed with argument"],
                         [["status"], "the following arguments are required: RUN_DIR"],
                         [["nonsense"], "invalid choice: 'nonsense'"]):
        result = subprocess.run([sys.executable, "-c", RUN_CLI, *args], cwd=tmp_path,
                                env=trainer_env(PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and result.stdout == "", (args, result)
        assert len(result.stderr.splitlines()) == 1 and phrase in result.stderr, (args, result.stderr)

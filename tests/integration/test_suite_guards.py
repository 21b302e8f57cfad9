"""The suite's own guards: a silent or finished child fails a read with a message (tests/support/child_io.py); and, run
on throwaway test files (pytester), a hung test fails at its time limit under the project's pytest.ini (pytest-timeout),
and under `make test` a skip not in tests/allowed_skips.txt fails the run (tests/support/skip_guard.py)."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.support.child_io import ChildLines
from tests.support.skip_guard import ENV
from tests.support.trainer_runs import ROOT, stop_process


def test_a_child_that_prints_nothing_fails_the_read_at_its_deadline_naming_both():
    # It waits on its stdin, which the test never writes: silent by construction.
    child = subprocess.Popen([sys.executable, "-c", "import sys; print('hello', flush=True); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        lines = ChildLines(child, "the silent child")
        assert lines.next(60, "its greeting") == "hello"
        with pytest.raises(AssertionError, match=r"the silent child printed no line for its answer within 1 s "
                                                 r"\(still running: True\); its last lines: \['hello'\]"):
            lines.next(1, "its answer")
    finally:
        child.stdin.close()
        stop_process(child)


def test_a_child_whose_output_ends_fails_the_read_with_its_exit_code():
    child = subprocess.Popen([sys.executable, "-c", "print('starting'); raise SystemExit(3)"],
                             stdout=subprocess.PIPE, text=True)
    lines = ChildLines(child, "the short-lived child")
    with pytest.raises(AssertionError, match=r"the short-lived child's output ended \(exit code 3\) before its "
                                             r"ready line; its last lines: \['starting'\]"):
        lines.until(lambda line: line == "ready", 60, "its ready line")


HANGS = """
import threading
import pytest

@pytest.fixture
def hung_fixture():
    threading.Event().wait()  # never set: a hang, not a slow step

def test_hangs():
    threading.Event().wait()

def test_hangs_in_its_fixture(hung_fixture):
    pass

def test_after_them():
    pass
"""


def test_a_hung_test_or_fixture_fails_at_the_time_limit_and_the_run_goes_on(pytester):
    shutil.copy(ROOT / "pytest.ini", pytester.path / "pytest.ini")  # the project's settings, limit lowered below
    pytester.makepyfile(test_hangs=HANGS)
    # A child process: the limit is a SIGALRM timer, and this test runs under one of its own.
    result = pytester.runpytest_subprocess("-o", "timeout=2", "-p", "no:cacheprovider", "test_hangs.py", timeout=120)
    result.assert_outcomes(passed=1, failed=1, errors=1)  # the fixture's hang is an error in set-up
    result.stdout.fnmatch_lines(["*Timeout (>2.0s) from pytest-timeout*"])
    assert "timeout method: signal" in result.stdout.str()  # not "thread", which would end the whole run


SKIPS = """
import pytest

def test_listed():
    pytest.skip("needs a GPU")

@pytest.mark.skipif(True, reason="horovod is not installed")
def test_unlisted():
    pass

@pytest.mark.xfail(strict=True, reason="a known bug")
def test_expected_failure():
    assert False

def test_runs():
    pass
"""


def run_guarded(pytester, allowed: str, *files: str, **sources: str):
    pytester.makeini("[pytest]\nallowed_skips = allowed.txt\n")
    (pytester.path / "allowed.txt").write_text(allowed)
    pytester.makepyfile(**sources)
    # In this process: the time limit's plugin is left out, as its SIGALRM timer would replace this test's own.
    return pytester.runpytest("-p", "tests.support.skip_guard", "-p", "no:timeout", "-p", "no:cacheprovider", *files)


def test_an_unlisted_skip_fails_the_run_and_is_named(pytester, monkeypatch):
    monkeypatch.setenv(ENV, "1")
    result = run_guarded(pytester, "# only the GPU one\ntest_skips.py::test_listed | no GPU in CI\n",
                         test_skips=SKIPS)
    result.assert_outcomes(passed=1, skipped=2, xfailed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*UNLISTED SKIP test_skips.py::test_unlisted: horovod is not installed*",
                                 "1 skipped test(s) fail this run*"])
    assert "UNLISTED SKIP test_skips.py::test_listed" not in result.stdout.str()
    assert "test_expected_failure" not in result.stdout.str().split("skips not in the allow-list")[1]


def test_listed_skips_pass_the_run(pytester, monkeypatch):
    monkeypatch.setenv(ENV, "1")
    result = run_guarded(pytester, "test_skips.py::test_listed | no GPU in CI\ntest_skips.py::test_un* | the same\n",
                         test_skips=SKIPS)
    result.assert_outcomes(passed=1, skipped=2, xfailed=1)
    assert result.ret == pytest.ExitCode.OK
    assert "UNLISTED SKIP" not in result.stdout.str()


def test_a_module_skipped_at_import_counts_too(pytester, monkeypatch):
    monkeypatch.setenv(ENV, "1")
    result = run_guarded(pytester, "", test_needs=("import pytest\npytest.importorskip('no_such_module_here')\n"
                                                   "def test_x():\n    pass\n"))
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*UNLISTED SKIP test_needs.py:*no_such_module_here*"])


def test_without_the_variable_skips_only_report(pytester, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    result = run_guarded(pytester, "", test_skips=SKIPS)
    result.assert_outcomes(passed=1, skipped=2, xfailed=1)
    assert result.ret == pytest.ExitCode.OK


def test_an_allowed_skip_without_a_reason_is_a_usage_error(pytester, monkeypatch):
    monkeypatch.setenv(ENV, "1")
    result = run_guarded(pytester, "test_skips.py::test_listed\n", test_skips=SKIPS)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*allowed.txt:1: expected '<node id pattern> | <reason>'*"])


def test_the_project_allow_list_is_readable_and_lists_no_horovod_test():
    from tests.support.skip_guard import read_allow_list

    # `make dev` builds Horovod, so its tests must run under `make test`, never skip.
    for pattern, _ in read_allow_list(ROOT / "tests" / "allowed_skips.txt"):
        assert "distribute" not in pattern, pattern

"""A pytest plugin: with JOB_FAIL_ON_UNLISTED_SKIPS=1 (`make test` and `make test-fast` set it) a skipped test fails
the run unless the allow-list names it, so a missing install (Horovod, strace, a browser) cannot pass as a green run.

The allow-list (ini option `allowed_skips`, default tests/allowed_skips.txt) has one skip a line:
    <node id pattern (fnmatch)> | <why this skip is expected where `make test` runs>
Blank lines and lines starting with # are ignored. Expected failures (xfail) are not skips and are not counted.
Plain `pytest` leaves it off: a developer without Horovod still gets the usual skip report (-ra).
"""
from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import pytest

ENV = "JOB_FAIL_ON_UNLISTED_SKIPS"
DEFAULT_LIST = "tests/allowed_skips.txt"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("allowed_skips", f"the allow-list of expected skips, relative to the rootdir (default "
                                   f"{DEFAULT_LIST}); only read with {ENV}=1", default=DEFAULT_LIST)


def read_allow_list(path: Path) -> list[tuple[str, str]]:
    """(pattern, reason) per line of `path`; a line without both is a usage error naming the line."""
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pattern, _, reason = (part.strip() for part in line.partition("|"))
        if not pattern or not reason:
            raise pytest.UsageError(f"{path}:{number}: expected '<node id pattern> | <reason>', got {line!r}; "
                                    "give every allowed skip its reason")
        entries.append((pattern, reason))
    return entries


class SkipGuard:
    def __init__(self, allowed: list[tuple[str, str]], source: Path):
        self.allowed, self.source = allowed, source
        self.unlisted: list[tuple[str, str]] = []  # (node id, skip reason)

    def _check(self, report: pytest.TestReport | pytest.CollectReport) -> None:
        if not report.skipped or hasattr(report, "wasxfail"):
            return
        if not any(fnmatch.fnmatchcase(report.nodeid, pattern) for pattern, _ in self.allowed):
            longrepr = report.longrepr
            reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
            self.unlisted.append((report.nodeid, reason.removeprefix("Skipped: ")))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._check(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:  # a module-level skip or importorskip
        self._check(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.unlisted and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.unlisted:
            return
        terminalreporter.section("skips not in the allow-list", sep="=", red=True, bold=True)
        for nodeid, reason in self.unlisted:
            terminalreporter.line(f"UNLISTED SKIP {nodeid}: {reason}", red=True)
        terminalreporter.line(f"{len(self.unlisted)} skipped test(s) fail this run ({ENV}=1): install what they "
                              f"need (make dev; tests/tools/install.sh), or list them with a reason in {self.source}")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(ENV) != "1":
        return
    source = config.rootpath / config.getini("allowed_skips")
    if not source.is_file():
        raise pytest.UsageError(f"{ENV}=1 but the allow-list {source} does not exist; create it (it may be empty)")
    config.pluginmanager.register(SkipGuard(read_allow_list(source), source), "skip_guard_active")

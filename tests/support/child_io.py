"""Reading a child process's stdout with a deadline: a hung child fails its test with a message naming the child and
what the test waited for, instead of hanging the suite. Standard library only.

    lines = ChildLines(process, "the fork server")
    assert lines.next(60, "its ready line") == "ready"
    held = lines.until(lambda line: line.startswith("HELD"), 600, "the first trial to be held")

A daemon thread reads the pipe line by line into a queue (a selector on the pipe's descriptor cannot see lines that
Python's buffered reader has already taken in), so the process's stdout must be read through this object only.
"""
from __future__ import annotations

import queue
import subprocess
import threading
import time
from collections.abc import Callable

_EOF = object()


class ChildLines:
    """The stdout lines of `process` (opened with stdout=subprocess.PIPE, text or bytes), each read with a deadline."""

    def __init__(self, process: subprocess.Popen, name: str):
        assert process.stdout is not None, f"{name} was started without stdout=subprocess.PIPE"
        self.process, self.name = process, name
        self.seen: list[str] = []  # every line read so far, for the failure message
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, name=f"stdout of {name}", daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self.process.stdout:
                self._lines.put(line.decode(errors="replace") if isinstance(line, bytes) else line)
        except (OSError, ValueError):  # the pipe was closed under us: the test is done with this child
            pass
        finally:
            self._lines.put(_EOF)

    def next(self, timeout: float, waiting_for: str) -> str:
        """The next line, stripped. AssertionError if none comes within `timeout` s or the child's output ends."""
        return self.until(lambda _line: True, timeout, waiting_for)

    def until(self, predicate: Callable[[str], bool], timeout: float, waiting_for: str) -> str:
        """The first line (stripped) for which `predicate` holds, reading past others; all within `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{self.name} printed no line for {waiting_for} within {timeout:g} s "
                                     f"(still running: {self.process.poll() is None}); its last lines: "
                                     f"{self.seen[-20:]}") from None
            if line is _EOF:
                self._lines.put(_EOF)  # a later read fails the same way
                try:
                    code = self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    code = "none yet: it closed its stdout"
                raise AssertionError(f"{self.name}'s output ended (exit code {code}) before {waiting_for}; its "
                                     f"last lines: {self.seen[-20:]}")
            self.seen.append(line.strip())
            if predicate(line.strip()):
                return line.strip()

    def ask(self, line: str, timeout: float, waiting_for: str) -> str:
        """Write `line` to the child's stdin (opened with stdin=subprocess.PIPE) and return its one-line answer."""
        self.process.stdin.write(line + "\n")  # a text-mode stdin
        self.process.stdin.flush()
        return self.next(timeout, waiting_for)

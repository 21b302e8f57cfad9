"""What Linux's /proc tells about a process: its state, parent, CPU time and start time. Standard library only."""
from __future__ import annotations

import os
import time
from pathlib import Path


def stat_fields(pid: int | str = "self") -> list[str]:
    """/proc/<pid>/stat after the command name (which may hold spaces and parentheses): index 0 is the state, 1 the
    parent pid, 11 and 12 the user and system CPU ticks, 19 the start time in ticks after boot. OSError if the
    process is gone."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_ticks(pid: int) -> int:
    """User + system CPU time of `pid` in clock ticks; 0 once it is gone."""
    try:
        fields = stat_fields(pid)
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def start_time(pid: int | str = "self") -> float:
    """Wall-clock time the process started (so a start-up figure includes the imports); now where /proc is missing."""
    try:
        ticks = int(stat_fields(pid)[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()

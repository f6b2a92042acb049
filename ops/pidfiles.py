"""Pid files of the background processes `make up` and `make up-monitoring` start, and stopping them.

A pid file names a process this project started in its own session (so it outlives `make`). It
counts only while that process runs: one that has exited, is a zombie, or whose pid the system
has since given to a newer process makes `alive` remove the file and answer None. psutil
does the process checks, on Linux and macOS alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import psutil

#: Slack between a process' start and its pid file's write (the file is written just after).
_START_SLACK_S = 2.0


def write(path: Path, pid: int) -> None:
    path.write_text(str(pid))


def alive(path: Path) -> psutil.Process | None:
    """The running process `path` names, else None (and a stale file is removed)."""
    try:
        pid = int(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    try:
        process = psutil.Process(pid)
        running = (process.status() != psutil.STATUS_ZOMBIE
                   and process.create_time() <= path.stat().st_mtime + _START_SLACK_S)
    except (psutil.NoSuchProcess, FileNotFoundError):
        running = False
    if not running:
        path.unlink(missing_ok=True)
        return None
    return process


def pid(path: Path) -> int | None:
    process = alive(path)
    return None if process is None else process.pid


def stop(paths: Iterable[Path], grace: float) -> dict[Path, bool]:
    """SIGTERM to every running process named (a graceful drain), SIGKILL to those still running
    after `grace` seconds; the files are removed. Returns {path: killed} for those that ran."""
    running = {path: process for path in paths if (process := alive(path)) is not None}
    for process in running.values():
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, left = psutil.wait_procs(list(running.values()), timeout=grace)
    for process in left:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=5)
    for path in running:
        path.unlink(missing_ok=True)
    return {path: process in left for path, process in running.items()}

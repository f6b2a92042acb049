"""Pid files of `make up` and `make up-monitoring` (ops/pidfiles.py): liveness, stale files, stopping."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from ops import pidfiles

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
# Ignores SIGTERM: only SIGKILL stops it.
STUBBORN = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)"]


def test_running_process_is_alive_and_stop_terminates_it(tmp_path):
    process = subprocess.Popen(SLEEPER)
    path = tmp_path / "sleeper.pid"
    pidfiles.write(path, process.pid)
    try:
        assert pidfiles.pid(path) == process.pid
        assert pidfiles.stop([path, tmp_path / "absent.pid"], grace=10) == {path: False}
        assert process.wait(5) is not None and not path.exists()
    finally:
        process.kill()


def test_exited_process_and_zombie_are_not_alive_and_their_file_goes(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    path = tmp_path / "gone.pid"
    pidfiles.write(path, process.pid)
    deadline = time.monotonic() + 10
    while pidfiles.pid(path) is not None and time.monotonic() < deadline:  # a zombie until waited for
        time.sleep(0.05)
    assert pidfiles.pid(path) is None and not path.exists()
    process.wait()


def test_pid_given_to_a_newer_process_is_not_ours(tmp_path):
    process = subprocess.Popen(SLEEPER)
    path = tmp_path / "recycled.pid"
    pidfiles.write(path, process.pid)
    hour_ago = time.time() - 3600
    os.utime(path, (hour_ago, hour_ago))  # the file outlived its process; the pid went to this one
    try:
        assert pidfiles.pid(path) is None and not path.exists()
        assert process.poll() is None, "only the file goes, not the process"
    finally:
        process.kill()
        process.wait()
    (tmp_path / "garbage.pid").write_text("not a pid")
    assert pidfiles.pid(tmp_path / "garbage.pid") is None


def test_stop_kills_what_ignores_sigterm_after_the_grace(tmp_path):
    process = subprocess.Popen(STUBBORN, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    path = tmp_path / "stubborn.pid"
    pidfiles.write(path, process.pid)
    try:
        started = time.monotonic()
        assert pidfiles.stop([path], grace=0.5) == {path: True}
        process.wait(5)  # psutil may have reaped it already
        assert time.monotonic() - started < 10 and not path.exists()
    finally:
        process.kill()


def test_local_stack_down_stops_every_process_its_pid_files_name(tmp_path, capsys):
    from ops import local_stack

    processes = {s.module: subprocess.Popen(SLEEPER, start_new_session=True) for s in local_stack.SERVICES[:2]}
    for module, process in processes.items():
        pidfiles.write(tmp_path / f"{module}.pid", process.pid)
        (tmp_path / f"{module}.port").write_text("1")
    try:
        local_stack.status(tmp_path)
        assert local_stack.down(tmp_path, grace=10) == 0
        assert all(process.wait(5) is not None for process in processes.values())
        assert list(tmp_path.iterdir()) == []
        out = capsys.readouterr().out
        assert all(f"{module:15} stopped" in out for module in processes)
        assert "gateway" in out and "not running" in out
    finally:
        for process in processes.values():
            process.kill()

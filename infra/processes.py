"""What /proc says about a pid, whether a loopback port answers, and the end of a log file.

`LocalStack` uses these to decide whether a server is ours before it ever signals one.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path

LOG_TAIL_LINES = 20


def read_cmdline(pid: int) -> list[str] | None:
    """argv of a process, or None when it is gone or has none to show (exiting, or just exec'ed)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg] or None


def cmdline_matches(actual: Sequence[str] | None, expected_args: Sequence[str]) -> bool:
    """True when every expected argument appears verbatim in the process's argv."""
    return bool(actual) and all(arg in actual for arg in expected_args)


def process_alive(pid: int) -> bool:
    """False once the process has exited. Our own child is reaped here, so it does not linger as a zombie;
    any other process counts as gone once it is a zombie (its exit is under way and cannot be undone)."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] != pid
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds a process has used so far, all its threads together (/proc/<pid>/stat's utime
    and stime, in clock ticks); None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name in parentheses may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log, reading only its end (server logs grow to 100 MB)."""
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 64 * 1024))
            return "\n".join(log.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"

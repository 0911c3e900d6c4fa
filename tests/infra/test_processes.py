"""What /proc says about a process: its CPU seconds, all threads together."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from prismops.infra.processes import cpu_seconds


def spend_cpu(seconds: float) -> None:
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


def test_cpu_seconds_count_every_thread_of_a_process():
    before = cpu_seconds(os.getpid())
    workers = [threading.Thread(target=spend_cpu, args=(0.05,)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    spent = cpu_seconds(os.getpid()) - before
    assert spent >= 0.08  # two threads of 50 ms each, read in 10 ms clock ticks


def test_a_process_that_is_gone_has_no_cpu_seconds():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert cpu_seconds(child.pid) is None

"""Components' reading of the worker's log (pure text; the processes themselves are exercised on the stack)."""

from __future__ import annotations

from prismops.infra.components import _worker_ready

START, READY = "[^Worker]: Starting... \n", "[^Worker]: Ready \n"


def test_a_worker_is_ready_once_its_latest_start_logged_ready():
    assert not _worker_ready("")
    assert not _worker_ready(START)
    assert _worker_ready(START + "[^---Recovery]: Worker ready \n" + READY)


def test_a_restarted_worker_appending_to_the_same_log_is_not_ready_until_it_logs_ready_again():
    first_run = START + READY + "[^Worker]: Stopping... \n"
    assert not _worker_ready(first_run + START)
    assert _worker_ready(first_run + START + READY)

"""The HTTP layer of `prismops ingest serve` on a real socket: a refused oversized body still gets its 413.

The ingest behind the handler answers no POST here (a body over the limit never reaches it); Kafka is not
involved, so the server's framing is tested on its own."""

from __future__ import annotations

import http.client
import json
from types import SimpleNamespace

import pytest

from prismops.gateway_http.server import DISCARDED_BODY_LIMITS, serve_ingest

LIMIT = 1024 * 1024  # the default http_ingest.max_request_bytes


class RefusingIngest:
    """Only what the handler reads of an ingest: its limit; a POST reaching it is a failure of the test."""

    config = SimpleNamespace(max_request_bytes=LIMIT)

    def post(self, *args):
        raise AssertionError("a body over the limit reached the ingest")


@pytest.fixture
def port():
    server = serve_ingest(RefusingIngest(), "127.0.0.1", 0)  # type: ignore[arg-type]
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def post(port: int, body: bytes) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", "/v1/usage", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize("size", [LIMIT + 1, 4 * LIMIT, DISCARDED_BODY_LIMITS * LIMIT])
def test_a_body_over_the_limit_is_answered_413_every_time_however_much_of_it_is_still_being_sent(port, size):
    # the answer is written before the body is read; the body must still be read, or the closing socket resets
    # and the client, still sending, sees a broken pipe instead of the answer
    answers = [post(port, b"x" * size) for _ in range(20)]

    assert {status for status, _ in answers} == {413}
    assert answers[0][1] == {"error": f"body of {size} bytes; at most {LIMIT}"}

"""HTTP ingest on the real stack (issue 16): `prismops ingest serve` as a child process, called with curl and with
Python's http.client. A CloudEvents batch lands in ClickHouse through the worker and the sink; a bad event of the
batch comes back with every broken field named and goes to the dead-letter topic with its own JSON."""

from __future__ import annotations

import http.client
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from prismops.gateway_http.events import CLOUDEVENT_TYPE, CLOUDEVENTS_BATCH_JSON
from prismops.infra.components import Components
from prismops.settings import Settings
from prismops.sinks.migrations import apply_migrations
from prismops.streams.topics import DEAD_LETTERS, LLM_USAGE
from prismops.testing import clickhouse, free_port, isolated, read_topic_to_end, readme_sql_blocks, wait_for

TOKEN = "acme-ingest-token"


@pytest.fixture(scope="module")
def ingest(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Components, int]]:
    tokens = tmp_path_factory.mktemp("ingest") / "tokens.yaml"
    tokens.write_text(f"- {{tenant: acme-http, token: {TOKEN}}}\n- {{tenant: globex-http, token: other}}\n")
    with isolated(stack_settings) as base:
        port = free_port()
        settings = base.with_overrides(http_ingest={"port": port, "tokens_file": str(tokens)})
        apply_migrations(settings)
        with Components(settings, tmp_path_factory.mktemp("ingest-logs")) as components:
            components.start("worker", "sink", "http_ingest")
            wait_for(lambda: _get(port, "/healthz")[0] == 200, 60, components, "the HTTP ingest health check")
            yield settings, components, port


def _get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    except OSError:
        return 0, b""
    finally:
        connection.close()


def _post(port: int, body: bytes, content_type: str = "application/json", token: str | None = TOKEN) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": content_type} | ({"Authorization": f"Bearer {token}"} if token else {})
    try:
        connection.request("POST", "/v1/usage", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _usage(event_id: str, **overrides) -> dict:
    return {"event_id": event_id, "event_time": "2026-12-05T10:00:00Z", "service": "search", "feature": "rerank",
            "environment": "prod", "provider": "openai", "model": "gpt-4o-mini", "input_tokens": 1000,
            "output_tokens": 100, "latency_ms": 300, "status": "ok"} | overrides


def _stored(settings: Settings, ids: list[str]) -> set[str]:
    client = clickhouse(settings)
    try:
        rows = client.execute("SELECT source_event_id, tenant FROM cost_lines WHERE source_event_id IN %(ids)s",
                              {"ids": tuple(ids)})
    finally:
        client.disconnect()
    return {f"{event_id}@{tenant}" for event_id, tenant in rows}


def test_a_cloudevents_batch_from_curl_lands_in_clickhouse_and_its_bad_event_names_every_broken_field(ingest):
    settings, components, port = ingest
    good = [f"ce-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    bad = f"ce-bad-{uuid.uuid4().hex[:6]}"
    batch = [{"specversion": "1.0", "id": i, "source": "/services/search", "type": CLOUDEVENT_TYPE,
              "time": "2026-12-05T10:00:00Z", "data": {k: v for k, v in _usage(i).items() if k != "event_id"}}
             for i in good]
    batch.append({"specversion": "1.0", "id": bad, "source": "/services/search", "type": CLOUDEVENT_TYPE,
                  "data": _usage(bad, input_tokens=-1, environment="moon", latency_ms="fast", model="")})
    done = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", "-X", "POST", f"http://127.0.0.1:{port}/v1/usage",
         "-H", f"Content-Type: {CLOUDEVENTS_BATCH_JSON}", "-H", f"Authorization: Bearer {TOKEN}",
         "--data-binary", json.dumps(batch)],
        capture_output=True, text=True, timeout=60, check=True)
    body, _, code = done.stdout.rpartition("\n")
    answer = json.loads(body)
    assert code == "202", done.stdout
    assert (answer["accepted"], answer["rejected"]) == (3, 1)
    assert answer["event_ids"] == good
    [report] = answer["errors"]
    assert report["index"] == 3
    assert {(e["field"], e["rule"]) for e in report["errors"]} == {
        ("input_tokens", "non_negative"), ("environment", "enum"), ("latency_ms", "type"), ("model", "non_empty")}

    stored = wait_for(lambda: _stored(settings, good) if len(_stored(settings, good)) == 3 else None, 120, components,
                      "the batch's three good events in ClickHouse")
    assert stored == {f"{i}@acme-http" for i in good}, "the tenant comes from the token"

    def letter():
        return [v for _, v in read_topic_to_end(settings, DEAD_LETTERS)
                if v["stage"] == "http_ingest" and bad.encode() in (v["original_value"] or b"")]
    [dead] = wait_for(letter, 30, components, "the bad event's dead letter")
    assert dead["source_topic"] == LLM_USAGE.name(settings)
    assert "environment" in dead["error_message"] and "latency_ms" in dead["error_message"]


def test_python_clients_get_a_schema_a_202_and_the_refusals_they_deserve(ingest):
    settings, components, port = ingest
    status, schema = _get(port, "/schema")
    assert status == 200 and "event_time" in json.loads(schema)["properties"]

    event_id = f"plain-{uuid.uuid4().hex[:8]}"
    status, answer = _post(port, json.dumps(_usage(event_id)).encode())
    assert (status, answer["accepted"], answer["event_ids"]) == (202, 1, [event_id])
    wait_for(lambda: _stored(settings, [event_id]), 120, components, "the plain JSON event in ClickHouse")

    assert _post(port, json.dumps(_usage("x")).encode(), token=None)[0] == 401
    assert _post(port, json.dumps(_usage("x")).encode(), token="wrong")[0] == 401
    status, answer = _post(port, json.dumps(_usage("y", tenant="acme-http")).encode(), token="other")
    assert status == 400 and answer["errors"][0]["errors"][0]["rule"] == "token_tenant"
    assert _post(port, b"{broken", token=TOKEN)[0] == 400
    assert _post(port, b"{}", content_type="text/csv")[0] == 415
    assert _post(port, b"x" * (settings.http_ingest.max_request_bytes + 1))[0] == 413


def test_the_readme_sql_runs_and_sorts_on_the_stacks_clickhouse(ingest):
    """ClickHouse 18.16 ignores positional ORDER BY; the README's SQL must sort there too (and on chdb: tests/sinks)."""
    settings, components, port = ingest
    event_ids = [f"sql-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    for tokens, event_id in zip((10, 5000, 900), event_ids):
        assert _post(port, json.dumps(_usage(event_id, input_tokens=tokens)).encode())[0] == 202
    wait_for(lambda: len(_stored(settings, event_ids)) == 3, 120, components, "three events to sort")
    client = clickhouse(settings)
    try:
        for block in readme_sql_blocks(Path(__file__).resolve().parents[2] / "README.md", settings.clickhouse.database):
            rows = client.execute(block)
            assert rows, block
            if "ORDER BY cost DESC" in block:
                assert [r[-1] for r in rows] == sorted((r[-1] for r in rows), reverse=True)
    finally:
        client.disconnect()

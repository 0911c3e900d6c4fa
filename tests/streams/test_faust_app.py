"""streams/faust_app.py: the Faust codec wraps the PrismOps single-object codec; the worker settings reach Faust."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import faust
import pytest

from prismops.streams.codecs import SINGLE_OBJECT_MAGIC, CodecError, codec_for
from prismops.settings import Settings
from prismops.streams.faust_app import AvroSingleObjectCodec, OutputChangelogTable, PreregisteredTableManager, create_app

UTC = dt.timezone.utc

OBSERVATION = {
    "provider": "openai",
    "model": "gpt-4o",
    "event_time": dt.datetime(2026, 4, 5, 6, 7, 8, 9, tzinfo=UTC),
    "latency_ms": 812,
    "status": "ok",
    "tokens": 1500,
    "cost_usd": Decimal("0.00725"),
    "input_price_per_mtok": Decimal("2.50"),
    "output_price_per_mtok": None,
    "ttft_ms": 240,
    "input_tokens": 1000,
    "output_tokens": 500,
    "input_cost_usd": Decimal("0.0025"),
    "output_cost_usd": Decimal("0.00475"),
}


def test_is_a_faust_codec():
    assert isinstance(AvroSingleObjectCodec("model_observation"), faust.Codec)


def test_dumps_writes_single_object_bytes_and_loads_reads_them_back():
    codec = AvroSingleObjectCodec("model_observation")
    data = codec.dumps(OBSERVATION)
    assert isinstance(data, bytes)
    assert data[:2] == SINGLE_OBJECT_MAGIC
    assert data[2:10] == codec_for("model_observation").fingerprint
    assert codec.loads(data) == OBSERVATION


def test_bytes_are_interchangeable_with_the_plain_codec():
    codec = AvroSingleObjectCodec("model_observation")
    assert codec.loads(codec_for("model_observation").encode(OBSERVATION)) == OBSERVATION
    assert codec_for("model_observation").decode(codec.dumps(OBSERVATION)) == OBSERVATION


def test_loads_accepts_json_input_too():
    document = {k: str(v) if isinstance(v, Decimal) else v for k, v in OBSERVATION.items()}
    document["event_time"] = "2026-04-05T06:07:08.000009Z"
    assert AvroSingleObjectCodec("model_observation").loads(json.dumps(document).encode()) == OBSERVATION


def test_invalid_values_raise_codec_errors():
    codec = AvroSingleObjectCodec("model_observation")
    with pytest.raises(CodecError) as info:
        codec.dumps(OBSERVATION | {"cost_usd": 0.1})
    assert (info.value.field, info.value.rule) == ("cost_usd", "decimal")
    with pytest.raises(CodecError) as info:
        codec.loads(b"garbage")
    assert info.value.rule == "wire_format"


def test_two_codecs_for_different_schemas_do_not_mix():
    observation_codec = AvroSingleObjectCodec("model_observation")
    dead_letter_codec = AvroSingleObjectCodec("dead_letter")
    with pytest.raises(CodecError) as info:
        dead_letter_codec.loads(observation_codec.dumps(OBSERVATION))
    assert info.value.rule == "unknown_schema"


def test_the_worker_settings_reach_faust_producer_and_its_buffer(tmp_path):
    settings = Settings(stack={"home": tmp_path}).with_overrides(
        worker={"producer_linger_ms": 7, "producer_buffer_messages": 2500, "producer_batch_bytes": 65536})
    app = create_app(settings)
    assert app.conf.producer_linger == pytest.approx(0.007)
    assert app.conf.producer_max_batch_size == 65536
    assert app.producer.buffer.max_messages == 2500
    assert create_app(Settings(stack={"home": tmp_path})).producer.buffer.max_messages == 10_000


def test_the_worker_app_restores_without_faust_s_wait_for_late_tables(tmp_path):
    app = create_app(Settings(stack={"home": tmp_path}))
    assert isinstance(app.tables, PreregisteredTableManager)


def test_table_values_go_through_orjson():
    """orjson is a dependency for Faust's table changelogs (its json codec takes orjson when importable): the
    stdlib encoder was 3.5% of a restarted worker with 10,000 tenants. The values read back unchanged."""
    from faust.utils import json as faust_json

    assert faust_json.orjson is not None
    record = {"last_line": None, "shard": 3, "origins": {"usage.llm.v1/2": 4096},
              "periods": {"b|2026-12-07T00:00:00+00:00": {"spent": "0.125", "crossed": {"80": {"line_id": "x"}}}}}
    codec = faust.serializers.codecs.get_codec("json")
    assert codec.loads(codec.dumps(record)) == record


class RecordedOutputs:
    def __init__(self):
        self.sent = []

    def produce(self, topic, *, key, value, headers=None, partition=None):
        self.sent.append((topic, key, value, partition))


def test_outputs_and_changelogs_go_through_librdkafka_by_default_and_stay_with_faust_when_asked(tmp_path):
    assert Settings().worker.output_path == "librdkafka"
    app = create_app(Settings(stack={"home": tmp_path}, worker={"output_path": "faust"}))
    assert app.outputs is None and not isinstance(app.Table("ledger", default=None), OutputChangelogTable)


def test_table_changelog_records_go_through_the_output_producer_as_faust_would_serialize_them(tmp_path):
    app = create_app(Settings(stack={"home": tmp_path}, worker={"output_path": "librdkafka"}))
    app.outputs = RecordedOutputs()
    table = app.Table("budget-ledger-tenant", default=None)
    assert isinstance(table, OutputChangelogTable)
    record = {"shard": 3, "origins": {"usage.llm.v1/2": 4096}, "periods": {"b|2026-12-07": {"spent": "0.125"}}}
    assert table.send_changelog(3, "scope/tenant/acme", record).message.partition == 3
    table.send_changelog(1, "scope/tenant/gone", None, value_serializer="raw")
    topic = table.changelog_topic
    key, _ = topic.prepare_key("scope/tenant/acme", table.key_serializer)
    value, _ = topic.prepare_value(record, table.value_serializer)
    assert app.outputs.sent == [
        (topic.get_topic_name(), key, value, 3),
        (topic.get_topic_name(), topic.prepare_key("scope/tenant/gone", table.key_serializer)[0], None, 1),
    ]


def test_the_worker_consumer_lets_the_broker_hold_a_quiet_fetch_only_fetch_max_wait_ms(tmp_path):
    """Faust builds aiokafka's consumer with fetch_max_wait_ms=1500; the worker's comes from its settings (no broker
    is contacted: aiokafka connects on start)."""
    import asyncio

    settings = Settings(stack={"home": tmp_path}, worker={"fetch_max_wait_ms": 80})
    app = create_app(settings)

    async def built_fetch_wait() -> int:
        aiokafka_consumer = app.consumer._thread._create_worker_consumer(app.transport)
        try:
            return aiokafka_consumer._fetch_max_wait_ms
        finally:
            await aiokafka_consumer._client.close()

    assert asyncio.run(built_fetch_wait()) == 80
    assert Settings().worker.fetch_max_wait_ms == 100

"""Faust app factory: one place that turns Settings into a configured faust.App.

Values travel as raw bytes; agents decode them with `prismops.streams.codecs` themselves so a bad message can be
sent to the dead-letter topic with its original bytes instead of being skipped inside Faust.

Agents send their output with `event.send(...)`: with `stream_publish_on_commit` Faust attaches those
messages to the source offset, publishes them in bulk, and waits for their delivery before it commits
that offset. Output is therefore never lost on a crash (at-least-once) and the sink dedupes replays.
"""

from __future__ import annotations

import faust

from prismops.settings import Settings
from prismops.streams.codecs import codec_for


def create_app(settings: Settings) -> faust.App:
    # Faust's default data dir is "<app id>-data" in the working directory; keep it with the rest of our state
    faust_home = settings.stack.home.expanduser().resolve() / "faust"
    faust_home.mkdir(parents=True, exist_ok=True)
    app_id = settings.worker_app_id  # namespaced: its group, changelogs and assignor topic share nothing across namespaces
    return faust.App(
        app_id,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap.split(",")],
        broker_credentials=None,
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        datadir=str(faust_home / f"{app_id}-data"),
        web_enabled=True,
        web_port=settings.worker.web_port,
        web_bind="127.0.0.1",
        producer_acks=-1,
        stream_publish_on_commit=True,
        broker_commit_every=5000,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        # A restarted worker takes its partitions back at once (static member); a crashed one that does not
        # come back holds them for the session timeout only.
        consumer_group_instance_id=settings.group_instance_id(app_id, settings.worker.instance_id, settings.worker.web_port),
        broker_session_timeout=settings.kafka.session_timeout_s,
        broker_heartbeat_interval=max(0.5, settings.kafka.session_timeout_s / 4),
        producer_max_request_size=settings.kafka.max_message_bytes + 16384,  # record overhead above our own check
        topic_partitions=settings.kafka.default_partitions,
        topic_replication_factor=settings.kafka.replication_factor,
        topic_allow_declare=True,
        autodiscover=False,
    )


class AvroSingleObjectCodec(faust.Codec):
    """A Faust codec for one PrismOps schema, for users who want typed dict values from Faust directly.

    Register with `faust.serializers.codecs.register(name, AvroSingleObjectCodec(schema_name))`.
    """

    def __init__(self, schema_name: str, **kwargs: object):
        self.schema_name = schema_name
        super().__init__(schema_name=schema_name, **kwargs)

    def _dumps(self, obj: object) -> bytes:
        return codec_for(self.schema_name).encode(obj)  # type: ignore[arg-type]

    def _loads(self, s: bytes) -> object:
        return codec_for(self.schema_name).decode(s)

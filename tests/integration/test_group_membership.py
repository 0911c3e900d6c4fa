"""Static membership on the real broker: a closed static member stays in its group until it leaves by
instance id, which is what a clean stop of the worker and the sink does."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import ConsumerGroupState, Consumer
from confluent_kafka.admin import AdminClient

from prismops.settings import Settings
from prismops.streams.membership import leave_group
from prismops.streams.topics import COST_LINES


def group_members(settings: Settings, group: str) -> tuple[ConsumerGroupState, int]:
    admin = AdminClient(settings.kafka_client_config())
    description = admin.describe_consumer_groups([group])[group].result()
    return description.state, len(description.members)


def test_a_closed_static_member_stays_until_it_leaves_by_instance_id(isolated_settings):
    settings = isolated_settings
    group = settings.namespaced(f"membership-{uuid.uuid4().hex[:6]}")
    instance = settings.group_instance_id(group, "", 1234)
    assert instance and group.startswith(settings.kafka.topic_namespace)
    consumer = Consumer(settings.kafka_client_config() | settings.consumer_group_config(group, port=1234))
    consumer.subscribe([COST_LINES.name(settings)])
    deadline = time.monotonic() + 30
    while not consumer.assignment() and time.monotonic() < deadline:
        consumer.poll(0.2)
    assert consumer.assignment(), "the static member never got its partitions"
    consumer.close()
    assert group_members(settings, group) == (ConsumerGroupState.STABLE, 1), \
        "a static member keeps its place after close (a restart would take it back without a rebalance)"

    assert leave_group(settings, group, instance) is True
    assert group_members(settings, group) == (ConsumerGroupState.EMPTY, 0)
    assert leave_group(settings, group, None) is False, "a dynamic member has nothing to leave"


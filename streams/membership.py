"""A clean leave for a static group member.

With `group.instance.id` (static membership) a consumer that closes does not leave its group: a restart
within the session timeout takes its partitions back without a rebalance, which is what a crash wants. A
clean stop (SIGTERM) should instead hand its partitions to the rest of the group at once. Kafka's way is a
LeaveGroup request naming the member by its instance id (version 3, KIP-345; what the Java admin's
removeMembersFromConsumerGroup sends). Neither librdkafka nor aiokafka sends it, and confluent-kafka's admin
client has no call for it, so it is sent here with aiokafka's protocol classes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from prismops.settings import Settings

log = logging.getLogger(__name__)


class LeaveGroupFailed(RuntimeError):
    """The coordinator did not remove the member; it will expire after the session timeout instead."""


def _leave_group_request(group: str, instance_id: str) -> Any:
    from aiokafka.protocol.api import Request, RequestStruct, Response
    from aiokafka.protocol.types import Array, Int16, Int32, Schema, String

    class LeaveGroupResponse_v3(Response):
        API_KEY = 13
        API_VERSION = 3
        SCHEMA = Schema(
            ("throttle_time_ms", Int32), ("error_code", Int16),
            ("members", Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")),
                              ("error_code", Int16))),
        )

    class LeaveGroupRequest_v3(RequestStruct):
        API_KEY = 13
        API_VERSION = 3
        RESPONSE_TYPE = LeaveGroupResponse_v3
        SCHEMA = Schema(
            ("group_id", String("utf-8")),
            ("members", Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")))),
        )

    class LeaveGroupByInstance(Request[LeaveGroupRequest_v3]):
        API_KEY = 13

        def build(self, request_struct_class: type[LeaveGroupRequest_v3]) -> LeaveGroupRequest_v3:
            return request_struct_class(group, [("", instance_id)])

    return LeaveGroupByInstance()


async def _leave(settings: Settings, group: str, instance_id: str) -> None:
    from aiokafka import errors
    from aiokafka.client import AIOKafkaClient, CoordinationType

    client = AIOKafkaClient(bootstrap_servers=settings.kafka_bootstrap.split(","), client_id="prismops-leave")
    try:
        await client.bootstrap()
        coordinator = await client.coordinator_lookup(CoordinationType.GROUP, group)
        response = await client.send(coordinator, _leave_group_request(group, instance_id))
    finally:
        await client.close()
    codes = [response.error_code] + [member[2] for member in response.members]
    failed = [errors.for_code(code).__name__ for code in codes if code != 0]
    if failed:
        raise LeaveGroupFailed(f"{instance_id} could not leave {group}: {', '.join(failed)}")


def leave_group(settings: Settings, group: str, instance_id: str | None, timeout_s: float = 10.0) -> bool:
    """Remove static member `instance_id` from `group` now; False (logged) when that did not work, in which
    case the member expires after the session timeout. Does nothing for a dynamic member (None)."""
    if not instance_id:
        return False
    try:
        asyncio.run(asyncio.wait_for(_leave(settings, group, instance_id), timeout_s))
    except Exception as exc:  # best effort on the way out: the session timeout still frees the partitions
        log.warning("static member %s did not leave group %s (%s); its partitions move after the session timeout",
                    instance_id, group, exc)
        return False
    log.info("static member %s left group %s", instance_id, group)
    return True

"""Topic creation's retry of transient admin errors, with a scripted admin client (no broker needed)."""

from __future__ import annotations

from concurrent.futures import Future

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic

from prismops.streams.topics import TopicsNotReady, create_topics


class ScriptedAdmin:
    """Answers each create_topics call with the next scripted outcome per topic (None: created)."""

    def __init__(self, script: list[dict[str, int | None]]):
        self.script = script
        self.asked: list[list[str]] = []

    def create_topics(self, topics: list[NewTopic], operation_timeout: float) -> dict[str, Future]:
        self.asked.append([t.topic for t in topics])
        outcomes = self.script.pop(0)
        futures = {}
        for topic in reversed(topics):  # a dict in another order than asked: results are matched by name
            future: Future = Future()
            code = outcomes[topic.topic]
            if code is None:
                future.set_result(None)
            else:
                future.set_exception(KafkaException(KafkaError(code)))
            futures[topic.topic] = future
        return futures


def topics(*names: str) -> list[NewTopic]:
    return [NewTopic(name, num_partitions=1, replication_factor=1) for name in names]


def test_a_creation_dropped_with_the_bootstrap_connection_is_asked_again(monkeypatch):
    monkeypatch.setattr("prismops.streams.topics.time.sleep", lambda s: None)
    admin = ScriptedAdmin([
        {"a": None, "b": KafkaError._DESTROY_BROKER},
        {"b": KafkaError.NOT_CONTROLLER},
        {"b": None},
    ])
    assert create_topics(admin, topics("a", "b"), 30) == ["a", "b"]
    assert admin.asked == [["a", "b"], ["b"], ["b"]]


def test_an_existing_topic_counts_as_created_only_when_an_earlier_try_of_ours_may_have_made_it(monkeypatch):
    monkeypatch.setattr("prismops.streams.topics.time.sleep", lambda s: None)
    admin = ScriptedAdmin([
        {"ours": KafkaError._TRANSPORT, "theirs": KafkaError.TOPIC_ALREADY_EXISTS},
        {"ours": KafkaError.TOPIC_ALREADY_EXISTS},
    ])
    assert create_topics(admin, topics("ours", "theirs"), 30) == ["ours"]


def test_a_refusal_names_the_topic_and_the_broker_reason():
    admin = ScriptedAdmin([{"bad": KafkaError.INVALID_REPLICATION_FACTOR}])
    with pytest.raises(TopicsNotReady, match="could not create topic bad: .*"):
        create_topics(admin, topics("bad"), 30)
    assert admin.asked == [["bad"]]


def test_a_transient_error_past_the_deadline_is_an_error():
    admin = ScriptedAdmin([{"slow": KafkaError._DESTROY_BROKER}])
    with pytest.raises(TopicsNotReady, match="could not create topic slow"):
        create_topics(admin, topics("slow"), 0)

"""The policy YAML model and PolicyStore: errors name the field path and the rule; installs are audited first,
versioned, and a bad document or file never replaces the running policy."""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from prismops.gateway_grpc.policy_config import (
    BUNDLED_POLICY,
    IMPLICIT_ROUTE,
    PolicyChange,
    PolicyConfigError,
    PolicyStore,
    PolicyVersionConflict,
    load_policy_file,
    parse_policy,
    sha256_text,
)

T0 = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.timezone.utc)

MODELS = "models:\n  a/one: {tier: premium}\n  a/two: {tier: economy}\n"
GOOD = MODELS + "routes:\n  - {name: r, primary: a/one, fallbacks: [a/two]}\n"
BETTER = MODELS + "routes:\n  - {name: r, strategy: cheapest, primary: a/two, fallbacks: [a/one]}\n"


def routes(*lines: str) -> str:
    return MODELS + "routes:\n" + "".join(f"  - {line}\n" for line in lines)


@pytest.mark.parametrize(
    ("text", "field", "rule"),
    [
        ("a: [", "policy", "yaml"),
        ("- just\n- a list\n", "policy", "mapping"),
        ("models: {gpt4: {tier: premium}}", "models.gpt4", "provider_model"),
        ("models: {a/b: {tier: gold}}", "models.a/b.tier", "known_tier"),
        ("models: {a/b: {tier: premium, vision: maybe}}", "models.a/b.vision", "bool_parsing"),
        ("models: {a/b: {tier: premium, context_window: 0}}", "models.a/b.context_window", "greater_than"),
        ("tiers: []", "tiers", "too_short"),
        ("colour: blue", "colour", "extra_forbidden"),
        (routes("{name: r, primery: a/one}"), "routes[0].primery", "extra_forbidden"),
        (routes("{name: r, primary: a/one}", "{name: s, primary: a/one, fallbacks: [a/nine]}"),
         "routes[1].fallbacks[0]", "unknown_model"),
        (routes("{name: r, primary: a/nine}"), "routes[0].primary", "unknown_model"),
        (routes("{name: r, primary: a/one}", "{name: r, primary: a/two}"), "routes[1].name", "unique"),
        (routes("{name: r, primary: a/one, fallbacks: [a/two, a/one]}"), "routes[0].fallbacks", "unique"),
        (routes("{name: r, fallbacks: [a/one]}"), "routes[0]", "value_error"),
        (routes("{name: r, strategy: fastest}"), "routes[0].strategy", "literal_error"),
        (routes("{name: r, match: {service: 3}}"), "routes[0].match.service", "string_type"),
        (routes("{name: r, latency_slo_ms: 0}"), "routes[0].latency_slo_ms", "greater_than"),
        (routes("{name: r, complexity: {simple: {models: [a/nine]}}}"), "routes[0].complexity.simple.models[0]",
         "unknown_model"),
        (routes("{name: r, complexity: {complex: {models: []}}}"), "routes[0].complexity.complex.models", "too_short"),
        (routes("{name: r, experiment: {name: e, arms: [{name: x, model: a/one, weight: 1}]}}"),
         "routes[0].experiment.arms", "too_short"),
        (routes("{name: r, experiment: {name: e, arms: [{name: x, model: a/one, weight: 1}, "
                "{name: x, model: a/two, weight: 1}]}}"), "routes[0].experiment.arms", "value_error"),
        (routes("{name: r, experiment: {name: e, arms: [{name: x, model: a/one, weight: 0}, "
                "{name: y, model: a/two, weight: 1}]}}"), "routes[0].experiment.arms[0].weight", "greater_than"),
        (routes("{name: r, experiment: {name: e, arms: [{name: x, model: a/one, weight: 1}, "
                "{name: y, model: a/nine, weight: 1}]}}"), "routes[0].experiment.arms[1].model", "unknown_model"),
        (routes("{name: r, experiment: {name: e, sticky_by: user, arms: [{name: x, model: a/one, weight: 1}, "
                "{name: y, model: a/two, weight: 1}]}}"), "routes[0].experiment.sticky_by", "literal_error"),
        (routes("{name: r, canary: {model: a/one, started_at: '2026-06-15T12:00:00'}}"),
         "routes[0].canary.started_at", "value_error"),
        (routes("{name: r, canary: {model: a/one, started_at: '2026-06-15T12:00:00Z', stages: [10, 50]}}"),
         "routes[0].canary.stages", "value_error"),
        (routes("{name: r, canary: {model: a/one, started_at: '2026-06-15T12:00:00Z', stages: [50, 10, 100]}}"),
         "routes[0].canary.stages", "value_error"),
        (routes("{name: r, canary: {model: a/nine, started_at: '2026-06-15T12:00:00Z'}}"), "routes[0].canary.model",
         "unknown_model"),
        (routes("{name: r, shadow: {model: a/one, sample_rate: 1.5}}"), "routes[0].shadow.sample_rate",
         "less_than_equal"),
        (routes("{name: r, shadow: {model: a/nine, sample_rate: 0.5}}"), "routes[0].shadow.model", "unknown_model"),
        (routes("{name: r, budget: {downgrade_at_pct: 90, refuse_at_pct: 80}}"), "routes[0].budget", "value_error"),
        (routes("{name: r, budget: {downgrade_to_tier: gold}}"), "routes[0].budget.downgrade_to_tier", "known_tier"),
        (routes("{name: r, retry: {max_attempts: 0}}"), "routes[0].retry.max_attempts", "greater_than_equal"),
        (routes("{name: r, retry: {retry_on: [client_error]}}"), "routes[0].retry.retry_on[0]", "literal_error"),
        ("defaults: {retry: {max_attempts: 5}}", "defaults.retry", "value_error"),
        ("defaults: {retry: {backoff_ms: [1000, -1, 5]}}", "defaults.retry", "value_error"),
        ("defaults: {budget: {downgrade_to_tier: gold}}", "defaults.budget.downgrade_to_tier", "known_tier"),
        ("defaults: {live: {max_error_rate: 2}}", "defaults.live.max_error_rate", "less_than_equal"),
        ("defaults: {breaker: {failure_threshold: 0}}", "defaults.breaker.failure_threshold", "greater_than_equal"),
    ],
)
def test_a_bad_policy_names_the_field_path_and_the_rule(text, field, rule):
    with pytest.raises(PolicyConfigError) as raised:
        parse_policy(text)
    assert (raised.value.field, raised.value.rule) == (field, rule)
    assert str(raised.value) == f"{field}: {raised.value.message} [{rule}]"
    assert raised.value.message


def test_yaml_errors_give_the_line_and_column():
    with pytest.raises(PolicyConfigError) as raised:
        parse_policy("routes:\n  - name: r\n    match: {service: [\n")
    assert raised.value.message.startswith("is not valid YAML at line 4")


def test_messages_say_what_is_wrong():
    with pytest.raises(PolicyConfigError, match=r"'a/nine' is not in the models catalog"):
        parse_policy(routes("{name: r, primary: a/one, fallbacks: [a/nine]}"))
    with pytest.raises(PolicyConfigError, match=r"route 'r' is defined twice"):
        parse_policy(routes("{name: r}", "{name: r}"))
    with pytest.raises(PolicyConfigError, match=r"started_at needs a time zone"):
        parse_policy(routes("{name: r, canary: {model: a/one, started_at: '2026-06-15T12:00:00'}}"))
    with pytest.raises(PolicyConfigError, match=r"'gpt4' is not provider/model"):
        parse_policy("models: {gpt4: {tier: premium}}")


def test_an_empty_document_is_the_defaults_and_routes_everything_implicitly():
    for text in ("", "   \n", "# only a comment\n"):
        policy = parse_policy(text)
        assert policy.routes == ()
        assert policy.tiers == ("premium", "standard", "economy", "local")
        assert policy.defaults.retry.backoff_ms == (1000, 2000, 4000)
        assert (policy.defaults.breaker.failure_threshold, policy.defaults.breaker.open_s) == (3, 30.0)
        assert (policy.defaults.budget.downgrade_at_pct, policy.defaults.budget.refuse_at_pct) == (80.0, 100.0)
        assert policy.route_for("any", "thing") is IMPLICIT_ROUTE


def test_a_canary_start_is_kept_in_utc_and_tiers_rank_models():
    policy = parse_policy(routes("{name: r, primary: a/one, canary: {model: a/two, started_at: "
                                 "'2026-06-15T14:00:00+02:00'}}"))
    assert policy.routes[0].canary.started_at == T0
    assert policy.routes[0].canary.started_at.tzinfo == dt.timezone.utc
    ranks = [policy.tier_rank(key) for key in (("a", "one"), ("a", "two"), ("x", "y"))]
    assert ranks == [0, 2, None]


def test_the_bundled_policy_is_valid_and_routes_the_example_services():
    policy, text = load_policy_file(BUNDLED_POLICY)
    assert text == BUNDLED_POLICY.read_text(encoding="utf-8")
    assert [route.name for route in policy.routes] == ["support-chat", "summaries-ab", "default"]
    assert policy.route_for("support-bot", "answer").name == "support-chat"
    assert policy.route_for("search", "summarize").name == "summaries-ab"
    assert policy.route_for("search", "query").name == "default"
    support = policy.routes[0]
    assert support.model_names() == ["openai/gpt-4o", "anthropic/claude-sonnet-4", "openai/gpt-4o-mini"]
    assert support.shadow.sample_rate == 0.05


def test_an_unreadable_file_is_a_policy_error(tmp_path: Path):
    with pytest.raises(PolicyConfigError) as raised:
        load_policy_file(tmp_path / "missing.yaml")
    assert (raised.value.field, raised.value.rule) == ("policy", "readable")


# --- PolicyStore --------------------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def new_store(text: str = GOOD, **kwargs) -> PolicyStore:
    return PolicyStore(parse_policy(text), text, clock=kwargs.pop("clock", Clock()), **kwargs)


def test_install_validates_versions_and_describes_the_change():
    clock = Clock()
    store = new_store(clock=clock)
    assert (store.current.version, store.current.updated_by, store.current.updated_at) == (1, "startup", T0)

    clock.advance(60)
    change = store.install(BETTER, actor="alice", role="admin", comment="cheaper first")

    assert (change.old_version, change.new_version, change.actor, change.role) == (1, 2, "alice", "admin")
    assert (change.source, change.action, change.comment, change.changed_at) == (
        "grpc", "set_policy", "cheaper first", T0 + dt.timedelta(seconds=60))
    assert (change.old_text, change.new_text) == (GOOD, BETTER)
    assert "-  - {name: r, primary: a/one, fallbacks: [a/two]}" in change.diff
    assert "+  - {name: r, strategy: cheapest, primary: a/two, fallbacks: [a/one]}" in change.diff
    assert change.diff.startswith("--- policy (current)\n+++ policy (new)\n")
    current = store.current
    assert (current.version, current.text, current.updated_by, current.updated_at) == (
        2, BETTER, "alice", T0 + dt.timedelta(seconds=60))
    assert current.policy.routes[0].strategy == "cheapest"


def test_a_bad_document_raises_and_leaves_the_running_policy():
    store = new_store()
    before = store.current
    with pytest.raises(PolicyConfigError) as raised:
        store.install(routes("{name: r, primary: a/nine}"), actor="alice", role="admin")
    assert raised.value.field == "routes[0].primary"
    assert store.current is before


def test_expected_version_is_optimistic_locking():
    store = new_store()
    with pytest.raises(PolicyVersionConflict, match="expected policy version 5, but version 1 is current"):
        store.install(BETTER, actor="alice", role="admin", expected_version=5)
    assert store.current.version == 1
    assert store.install(BETTER, actor="alice", role="admin", expected_version=1).new_version == 2
    with pytest.raises(PolicyVersionConflict):
        store.install(GOOD, actor="bob", role="admin", expected_version=1)
    assert store.install(GOOD, actor="bob", role="admin", expected_version=0).new_version == 3  # 0: no check
    assert store.current.text == GOOD


def test_the_audit_hook_sees_the_change_before_it_is_installed():
    seen: list[tuple[PolicyChange, int]] = []
    holder: dict[str, PolicyStore] = {}

    def audit(change: PolicyChange) -> None:
        seen.append((change, holder["store"].current.version))

    store = holder["store"] = new_store(on_change=audit)
    change = store.install(BETTER, actor="alice", role="admin")
    assert seen == [(change, 1)]  # the hook ran while version 1 was still current
    assert store.current.version == 2


def test_a_raising_audit_hook_leaves_the_policy_unchanged():
    def audit(change: PolicyChange) -> None:
        raise RuntimeError("audit topic unavailable")

    store = new_store(on_change=audit)
    before = store.current
    with pytest.raises(RuntimeError, match="audit topic unavailable"):
        store.install(BETTER, actor="alice", role="admin")
    assert store.current is before
    assert store.current.text == GOOD


def test_an_invalid_document_never_reaches_the_audit_hook():
    calls: list[PolicyChange] = []
    store = new_store(on_change=calls.append)
    with pytest.raises(PolicyConfigError):
        store.install("a: [", actor="alice", role="admin")
    assert calls == []
    assert store.current.version == 1


# --- hot reload from a file ---------------------------------------------------------------------------------

def write(path: Path, text: str, bump_s: float) -> None:
    """Write and move the modification time on, so the change is seen whatever the file system's granularity."""
    path.write_text(text, encoding="utf-8")
    stamp = path.stat().st_mtime + bump_s
    os.utime(path, (stamp, stamp))


def test_the_file_is_reloaded_when_it_changes(tmp_path: Path):
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD, encoding="utf-8")
    changes: list[PolicyChange] = []
    store = PolicyStore.from_file(path, on_change=changes.append, clock=Clock())
    assert (store.current.version, store.current.updated_by, store.path) == (1, "file", path)
    assert store.reload_if_changed() is None  # nothing moved

    write(path, BETTER, bump_s=10)
    change = store.reload_if_changed()

    assert change is not None and changes == [change]
    assert (change.source, change.action, change.actor, change.role) == ("file", "load_policy", f"file:{path}", "admin")
    assert (store.current.version, store.current.text) == (2, BETTER)
    assert store.reload_if_changed() is None


def test_a_touched_file_with_the_same_text_installs_nothing(tmp_path: Path):
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD, encoding="utf-8")
    changes: list[PolicyChange] = []
    store = PolicyStore.from_file(path, on_change=changes.append)
    write(path, GOOD, bump_s=10)
    assert store.reload_if_changed() is None
    assert (changes, store.current.version) == ([], 1)


def test_a_bad_file_keeps_the_running_policy_and_a_fixed_file_is_picked_up(tmp_path: Path, caplog):
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD, encoding="utf-8")
    store = PolicyStore.from_file(path)

    write(path, routes("{name: r, primary: a/nine}"), bump_s=10)
    with caplog.at_level(logging.ERROR, logger="prismops.gateway_grpc.policy_config"):
        assert store.reload_if_changed() is None
    assert (store.current.version, store.current.text) == (1, GOOD)
    assert "keeping version 1" in caplog.text and "routes[0].primary" in caplog.text

    write(path, BETTER, bump_s=20)
    assert store.reload_if_changed().new_version == 2
    assert store.current.text == BETTER


def test_a_deleted_file_keeps_the_running_policy(tmp_path: Path):
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD, encoding="utf-8")
    store = PolicyStore.from_file(path)
    path.unlink()
    assert store.reload_if_changed() is None
    assert store.current.text == GOOD


def test_a_reload_whose_audit_fails_is_retried_on_the_next_poll(tmp_path: Path):
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD, encoding="utf-8")
    failing = {"on": True}
    audited: list[PolicyChange] = []

    def audit(change: PolicyChange) -> None:
        if failing["on"]:
            raise RuntimeError("kafka down")
        audited.append(change)

    store = PolicyStore.from_file(path, on_change=audit)
    write(path, BETTER, bump_s=10)
    assert store.reload_if_changed() is None
    assert store.current.version == 1

    failing["on"] = False
    change = store.reload_if_changed()  # the file did not move again, yet the change lands now
    assert change is not None and audited == [change]
    assert store.current.text == BETTER


def test_the_watcher_thread_installs_a_changed_file(tmp_path: Path):
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD, encoding="utf-8")
    installed = threading.Event()
    store = PolicyStore.from_file(path, on_change=lambda change: installed.set())
    store.start_watching(interval_s=0.02)
    try:
        write(path, BETTER, bump_s=10)
        assert installed.wait(5.0)
        deadline = time.monotonic() + 5.0
        while store.current.version != 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert store.current.text == BETTER
    finally:
        store.stop_watching()


def test_without_a_file_the_bundled_policy_runs_and_nothing_is_watched():
    store = PolicyStore.from_file(None)
    assert store.path is None
    assert store.current.text == BUNDLED_POLICY.read_text(encoding="utf-8")
    assert store.current.updated_by == "startup"
    assert store.reload_if_changed() is None
    store.start_watching(0.01)
    store.stop_watching()
    assert store.current.version == 1


def test_sha256_text_is_the_hex_digest_of_the_utf8_text():
    assert sha256_text("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert sha256_text(GOOD) != sha256_text(BETTER)

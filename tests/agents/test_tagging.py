"""agents/tagging.py: dimensions and where each came from (explicit, inferred, default)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import yaml

from agents.tagging import (
    UNALLOCATED,
    ServiceOwner,
    ServiceRegistry,
    load_service_registry,
    normalize,
    resolve_dimensions,
)

REGISTRY = load_service_registry()
BUNDLED = yaml.safe_load(resources.files("agents").joinpath("service_registry.yaml").read_text())["services"]


def test_bundled_registry_is_loaded():
    assert set(REGISTRY.services) == set(BUNDLED)
    for service, owner in BUNDLED.items():
        assert REGISTRY.owner(service) == ServiceOwner(owner["team"], owner["product"])


def test_identity_dimensions_are_explicit_and_normalised(make_event):
    event = make_event(tenant="  ACME ", service="Code-Assist", feature="Complete  Code", provider="OpenAI",
                       model=" GPT-4o ", environment="staging")
    dims, source = resolve_dimensions(event, REGISTRY)
    assert dims["tenant"] == "acme"
    assert dims["service"] == "code-assist"
    assert dims["feature"] == "complete code"  # inner runs of whitespace collapse to one space
    assert dims["provider"] == "openai"
    assert dims["model"] == "gpt-4o"
    assert dims["environment"] == "staging"
    for name in ("tenant", "service", "feature", "provider", "model", "environment"):
        assert source[name] == "explicit"


def test_team_and_product_inferred_from_the_registry(make_event):
    dims, source = resolve_dimensions(make_event(service="code-assist", labels={}), REGISTRY)
    assert (dims["team"], dims["product"]) == (BUNDLED["code-assist"]["team"], BUNDLED["code-assist"]["product"])
    assert source["team"] == source["product"] == "inferred"


def test_registry_lookup_is_normalised(make_event):
    dims, source = resolve_dimensions(make_event(service="  SUPPORT-Bot "), REGISTRY)
    assert dims["team"] == BUNDLED["support-bot"]["team"]
    assert source["team"] == "inferred"


def test_labels_override_the_registry(make_event):
    event = make_event(service="code-assist", labels={"team": "  Platform  Team ", "product": "IDE-Pro"})
    dims, source = resolve_dimensions(event, REGISTRY)
    assert (dims["team"], dims["product"]) == ("platform team", "ide-pro")
    assert source["team"] == source["product"] == "explicit"


def test_a_label_for_one_dimension_leaves_the_other_inferred(make_event):
    dims, source = resolve_dimensions(make_event(service="search", labels={"team": "ranking"}), REGISTRY)
    assert (dims["team"], source["team"]) == ("ranking", "explicit")
    assert (dims["product"], source["product"]) == (BUNDLED["search"]["product"], "inferred")


def test_blank_labels_do_not_count(make_event):
    dims, source = resolve_dimensions(make_event(service="search", labels={"team": "   "}), REGISTRY)
    assert (dims["team"], source["team"]) == (BUNDLED["search"]["team"], "inferred")


def test_unknown_service_goes_to_unallocated_by_default(make_event):
    dims, source = resolve_dimensions(make_event(service="shadow-it-bot", labels={}), REGISTRY)
    assert UNALLOCATED == "unallocated"
    assert dims["team"] == dims["product"] == "unallocated"
    assert source["team"] == source["product"] == "default"


def test_unknown_service_with_labels_is_explicit(make_event):
    dims, source = resolve_dimensions(make_event(service="shadow-it-bot", labels={"team": "ops"}), REGISTRY)
    assert (dims["team"], source["team"]) == ("ops", "explicit")
    assert (dims["product"], source["product"]) == ("unallocated", "default")


@pytest.mark.parametrize(("customer", "expected", "tag"), [
    ("cust-42", "cust-42", "explicit"),
    ("  cust-42 ", "cust-42", "explicit"),
    ("", None, "default"),
    ("   ", None, "default"),
    (None, None, "default"),
])
def test_customer(make_event, customer, expected, tag):
    dims, source = resolve_dimensions(make_event(customer=customer), REGISTRY)
    assert dims["customer"] == expected
    assert source["customer"] == tag


def test_every_dimension_has_a_source(make_event):
    dims, source = resolve_dimensions(make_event(), REGISTRY)
    assert set(dims) == set(source)
    assert set(source.values()) <= {"explicit", "inferred", "default"}


def test_normalize():
    assert normalize("  Hello \t  World\n") == "hello world"
    assert normalize("") == ""


def test_load_service_registry_from_a_file(tmp_path: Path):
    path = tmp_path / "registry.yaml"
    path.write_text("services:\n  '  Billing API ': {team: payments, product: checkout}\n")
    registry = load_service_registry(path)
    assert registry.owner("billing api") == ServiceOwner("payments", "checkout")
    assert registry.owner("BILLING   API") == ServiceOwner("payments", "checkout")


def test_empty_registry_file_means_everything_is_unallocated(tmp_path: Path, make_event):
    path = tmp_path / "registry.yaml"
    path.write_text("")
    registry = load_service_registry(path)
    assert registry == ServiceRegistry({})
    dims, _ = resolve_dimensions(make_event(service="search"), registry)
    assert dims["team"] == UNALLOCATED

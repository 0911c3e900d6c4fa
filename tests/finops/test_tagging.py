"""finops/tagging.py: dimensions and where each came from (explicit, inferred, default)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings as hypothesis_settings, strategies as st

from prismops.finops.pricing import load_catalog
from prismops.finops.tagging import (
    DIMENSIONS,
    UNALLOCATED,
    UNSPECIFIED,
    ServiceOwner,
    ServiceRegistry,
    load_service_registry,
    normalize,
    resolve_dimensions,
    tag_key,
)

REGISTRY = load_service_registry()
DOCUMENT = yaml.safe_load(resources.files("prismops.finops").joinpath("service_registry.yaml").read_text())
BUNDLED = DOCUMENT["services"]
ALIASES = DOCUMENT["aliases"]
CATALOG = load_catalog()


def resolve(event, registry: ServiceRegistry = REGISTRY):
    return resolve_dimensions(event, registry, CATALOG.infer_provider)


def test_bundled_registry_is_loaded():
    assert set(REGISTRY.services) == set(BUNDLED)
    for service, owner in BUNDLED.items():
        assert REGISTRY.owner(service) == ServiceOwner(owner["team"], owner["product"], owner.get("default_feature"))


def test_constants():
    assert (UNALLOCATED, UNSPECIFIED) == ("unallocated", "unspecified")


def test_normalize():
    assert normalize("  Hello \t  World\n") == "hello world"
    assert normalize("") == ""


def test_every_dimension_has_a_source(make_event):
    dims, source = resolve(make_event())
    assert set(dims) == set(source) == set(DIMENSIONS)
    assert set(source.values()) <= {"explicit", "inferred", "default"}


def test_identity_dimensions_are_explicit_and_normalised(make_event):
    event = make_event(tenant="  ACME ", service="Code-Assist", feature="Complete  Code", provider="OpenAI",
                       model=" GPT-4o ", environment="staging")
    dims, source = resolve(event)
    assert dims["tenant"] == "acme"
    assert dims["service"] == "code-assist"
    assert dims["feature"] == "complete code"  # inner runs of whitespace collapse to one space
    assert dims["provider"] == "openai"
    assert dims["model"] == "gpt-4o"
    assert dims["environment"] == "staging"
    for name in ("tenant", "service", "feature", "provider", "model", "environment"):
        assert source[name] == "explicit"


# --- aliases -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("dimension", "alias", "target"),
                         [(d, a, t) for d, mapping in sorted(ALIASES.items()) for a, t in sorted(mapping.items())])
def test_every_registry_alias_maps_to_its_canonical_value(dimension, alias, target):
    assert REGISTRY.canonical(dimension, alias) == target
    assert REGISTRY.canonical(dimension, f"  {alias.upper()} ") == target  # matched after normalizing


def test_tenant_aliases(make_event):
    for spelling in ("Acme Corp", "  ACME   corp ", "acme-inc", "acme"):
        dims, source = resolve(make_event(tenant=spelling))
        assert (dims["tenant"], source["tenant"]) == ("acme", "explicit")
    dims, _ = resolve(make_event(tenant="Globex Corporation"))
    assert dims["tenant"] == "globex"


def test_a_service_alias_finds_the_owner(make_event):
    dims, source = resolve(make_event(service="Support_Bot", feature="", labels={}))
    assert dims["service"] == "support-bot"
    assert (dims["team"], dims["product"]) == (BUNDLED["support-bot"]["team"], BUNDLED["support-bot"]["product"])
    assert (dims["feature"], source["feature"]) == (BUNDLED["support-bot"]["default_feature"], "inferred")


def test_a_team_label_alias(make_event):
    dims, source = resolve(make_event(labels={"team": "CX"}))
    assert (dims["team"], source["team"]) == ("customer-experience", "explicit")


def test_aliases_only_apply_to_their_own_dimension(make_event):
    dims, _ = resolve(make_event(tenant="cx"))
    assert dims["tenant"] == "cx"  # cx is a team alias, not a tenant one


# --- tenant and service ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tenant", "service"])
@pytest.mark.parametrize("blank", ["", "   ", None])
def test_missing_tenant_or_service_is_unallocated_by_default(make_event, name, blank):
    dims, source = resolve(make_event(**{name: blank}))
    assert (dims[name], source[name]) == (UNALLOCATED, "default")


@pytest.mark.parametrize("name", ["tenant", "service"])
def test_tenant_or_service_from_a_label_is_explicit(make_event, name):
    dims, source = resolve(make_event(**{name: ""}, labels={name: "  Search "}))
    assert (dims[name], source[name]) == ("search", "explicit")


def test_the_event_field_wins_over_the_label(make_event):
    dims, _ = resolve(make_event(tenant="acme", labels={"tenant": "globex"}))
    assert dims["tenant"] == "acme"


# --- team and product ---------------------------------------------------------------------------------------

def test_team_and_product_inferred_from_the_registry(make_event):
    dims, source = resolve(make_event(service="code-assist", labels={}))
    assert (dims["team"], dims["product"]) == (BUNDLED["code-assist"]["team"], BUNDLED["code-assist"]["product"])
    assert source["team"] == source["product"] == "inferred"


def test_registry_lookup_is_normalised(make_event):
    dims, source = resolve(make_event(service="  SUPPORT-Bot "))
    assert dims["team"] == BUNDLED["support-bot"]["team"]
    assert source["team"] == "inferred"


def test_labels_override_the_registry(make_event):
    event = make_event(service="code-assist", labels={"team": "  Platform  Team ", "product": "IDE-Pro"})
    dims, source = resolve(event)
    assert (dims["team"], dims["product"]) == ("platform team", "ide-pro")
    assert source["team"] == source["product"] == "explicit"


def test_a_label_for_one_dimension_leaves_the_other_inferred(make_event):
    dims, source = resolve(make_event(service="search", labels={"team": "ranking"}))
    assert (dims["team"], source["team"]) == ("ranking", "explicit")
    assert (dims["product"], source["product"]) == (BUNDLED["search"]["product"], "inferred")


def test_blank_labels_do_not_count(make_event):
    dims, source = resolve(make_event(service="search", labels={"team": "   "}))
    assert (dims["team"], source["team"]) == (BUNDLED["search"]["team"], "inferred")


def test_unknown_service_goes_to_unallocated_by_default(make_event):
    dims, source = resolve(make_event(service="shadow-it-bot", feature="", labels={}))
    assert dims["service"] == "shadow-it-bot"  # the service itself is what the event said
    assert source["service"] == "explicit"
    assert dims["team"] == dims["product"] == UNALLOCATED
    assert source["team"] == source["product"] == "default"
    assert (dims["feature"], source["feature"]) == (UNSPECIFIED, "default")


def test_missing_service_means_unallocated_team_and_product(make_event):
    dims, source = resolve(make_event(service="", labels={}))
    assert dims["team"] == dims["product"] == UNALLOCATED
    assert source["team"] == source["product"] == "default"


def test_unknown_service_with_labels_is_explicit(make_event):
    dims, source = resolve(make_event(service="shadow-it-bot", labels={"team": "ops"}))
    assert (dims["team"], source["team"]) == ("ops", "explicit")
    assert (dims["product"], source["product"]) == (UNALLOCATED, "default")


# --- feature -----------------------------------------------------------------------------------------------

def test_an_explicit_feature(make_event):
    dims, source = resolve(make_event(service="search", feature="Rerank"))
    assert (dims["feature"], source["feature"]) == ("rerank", "explicit")


def test_a_feature_label_is_explicit(make_event):
    dims, source = resolve(make_event(service="search", feature="", labels={"feature": "rerank"}))
    assert (dims["feature"], source["feature"]) == ("rerank", "explicit")


@pytest.mark.parametrize("service", sorted(BUNDLED))
def test_missing_feature_is_the_services_default(make_event, service):
    dims, source = resolve(make_event(service=service, feature=""))
    assert (dims["feature"], source["feature"]) == (BUNDLED[service]["default_feature"], "inferred")


def test_missing_feature_without_a_service_default_is_unspecified(tmp_path: Path, make_event):
    path = tmp_path / "registry.yaml"
    path.write_text("services:\n  billing: {team: payments, product: checkout}\n")
    dims, source = resolve(make_event(service="billing", feature=None), load_service_registry(path))
    assert (dims["team"], source["team"]) == ("payments", "inferred")
    assert (dims["feature"], source["feature"]) == (UNSPECIFIED, "default")


# --- provider and model ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("model", "provider"), [
    ("gpt-4o", "openai"), ("GPT-4o-mini", "openai"), ("claude-sonnet-4", "anthropic"),
    ("claude-sonnet-4-20250514", "anthropic"), ("gemini-2.0-flash-001", "google"), ("mistral-7b", "local"),
])
def test_missing_provider_is_inferred_from_the_catalog(make_event, model, provider):
    dims, source = resolve(make_event(provider="", model=model))
    assert (dims["provider"], source["provider"]) == (provider, "inferred")
    assert (dims["model"], source["model"]) == (normalize(model), "explicit")


def test_an_explicit_provider_is_not_second_guessed(make_event):
    dims, source = resolve(make_event(provider=" Azure ", model="gpt-4o"))
    assert (dims["provider"], source["provider"]) == ("azure", "explicit")


def test_an_unknown_model_without_provider_has_an_unknown_provider(make_event):
    dims, source = resolve(make_event(provider="", model="mystery-1"))
    assert (dims["provider"], source["provider"]) == ("unknown", "default")


def test_without_a_catalog_nothing_is_inferred(make_event):
    dims, source = resolve_dimensions(make_event(provider="", model="gpt-4o"), REGISTRY)
    assert (dims["provider"], source["provider"]) == ("unknown", "default")


def test_the_model_is_given_to_inference_normalized(make_event):
    seen = []
    resolve_dimensions(make_event(provider="", model="  GPT-4o "), REGISTRY, lambda m: seen.append(m) or "openai")
    assert seen == ["gpt-4o"]


# --- customer, environment ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("customer", "expected", "tag"), [
    ("cust-42", "cust-42", "explicit"),
    ("  cust-42 ", "cust-42", "explicit"),
    ("", None, "default"),
    ("   ", None, "default"),
    (None, None, "default"),
])
def test_customer(make_event, customer, expected, tag):
    dims, source = resolve(make_event(customer=customer))
    assert dims["customer"] == expected
    assert source["customer"] == tag


@pytest.mark.parametrize("environment", ["dev", "staging", "prod"])
def test_environment_is_explicit(make_event, environment):
    dims, source = resolve(make_event(environment=environment))
    assert (dims["environment"], source["environment"]) == (environment, "explicit")


# --- registry files ----------------------------------------------------------------------------------------

def test_load_service_registry_from_a_file(tmp_path: Path):
    path = tmp_path / "registry.yaml"
    path.write_text(
        "services:\n  '  Billing API ': {team: Payments, product: checkout, default_feature: ' Charge '}\n"
        "aliases:\n  service:\n    billing_api: billing api\n"
    )
    registry = load_service_registry(path)
    assert registry.owner("billing api") == ServiceOwner("payments", "checkout", "charge")
    assert registry.owner("BILLING   API") == ServiceOwner("payments", "checkout", "charge")
    assert registry.owner("Billing_API") == ServiceOwner("payments", "checkout", "charge")


def test_a_service_without_team_or_product_is_refused(tmp_path: Path):
    path = tmp_path / "registry.yaml"
    path.write_text("services:\n  billing: {team: payments}\n")
    with pytest.raises(ValueError, match="billing needs a team and a product"):
        load_service_registry(path)


def test_empty_registry_file_means_everything_is_unallocated(tmp_path: Path, make_event):
    path = tmp_path / "registry.yaml"
    path.write_text("")
    registry = load_service_registry(path)
    assert registry == ServiceRegistry({})
    dims, source = resolve(make_event(service="search", feature=""), registry)
    assert dims["team"] == UNALLOCATED
    assert (dims["feature"], source["feature"]) == (UNSPECIFIED, "default")


_names = st.sampled_from(["", " Acme ", "acme", "support-bot", "SUPPORT  bot", "gpt-4o", "GPT-4o ", "openai", "x"])


@hypothesis_settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({
    "tenant": _names, "service": _names, "model": _names, "provider": _names, "feature": _names,
    "environment": st.sampled_from(["prod", "dev"]), "customer": st.sampled_from([None, "", " c-1 "]),
    "labels": st.dictionaries(st.sampled_from(["team", "product", "tenant", "feature", "service"]), _names, max_size=3),
}), st.fixed_dictionaries({
    "event_id": _names, "request_id": _names, "model_version": _names, "deployment_id": _names,
    "input_tokens": st.integers(0, 10), "status": st.sampled_from(["ok", "error"]), "user_id": _names,
}))
def test_events_with_equal_tag_keys_get_equal_dimensions(tags, rest):
    """tag_key holds every value tagging reads: the pricing stage remembers a call's shape by it."""
    event = {**tags, **rest}
    assert tag_key(event) == tag_key(tags)
    assert resolve(event) == resolve(tags)
    reordered = {**tags, "labels": dict(reversed(list(tags["labels"].items())))}
    assert tag_key(reordered) == tag_key(tags) and resolve(reordered) == resolve(tags)


"""Tenant tokens and per-token rates for HTTP ingest."""

from __future__ import annotations

import math

import pytest

from prismops.gateway_http.access import TokenBuckets, TokensFileError, load_tenant_tokens, parse_tenant_tokens, token_digest


def test_a_token_maps_to_its_tenant_whether_given_in_clear_or_hashed(tmp_path):
    path = tmp_path / "tokens.yaml"
    path.write_text(f"- {{tenant: acme, token: s3cret}}\n- {{tenant: globex, token_sha256: {token_digest('other')}}}\n")
    tokens = load_tenant_tokens(path)
    assert tokens.tenant_of("Bearer s3cret") == "acme"
    assert tokens.tenant_of("bearer other") == "globex"
    assert tokens.tenant_of("Bearer nope") is None
    assert tokens.tenant_of(None) is None and tokens.tenant_of("Basic s3cret") is None


@pytest.mark.parametrize(("document", "field"), [
    ({"tenant": "acme"}, None),
    ([{"token": "x"}], "tenant"),
    ([{"tenant": "acme", "token_sha256": "abc"}], "token_sha256"),
])
def test_a_bad_tokens_file_names_the_entry_and_rule(document, field):
    with pytest.raises(TokensFileError) as info:
        parse_tenant_tokens(document, "tokens.yaml")
    assert info.value.field == field and "tokens.yaml" in str(info.value)


def test_an_unreadable_tokens_file_names_the_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("- [unclosed")
    with pytest.raises(TokensFileError, match="bad.yaml"):
        load_tenant_tokens(tmp_path / "bad.yaml")


def test_a_bucket_allows_its_burst_then_the_rate_and_says_how_long_to_wait():
    now = [0.0]
    buckets = TokenBuckets(rate_per_s=100, burst=200, clock=lambda: now[0])
    assert buckets.take("acme", 200) == 0.0
    assert buckets.take("acme", 50) == pytest.approx(0.5)
    assert buckets.take("globex", 200) == 0.0, "buckets are per token"
    now[0] = 0.5
    assert buckets.take("acme", 50) == 0.0
    assert buckets.take("acme", 201) == math.inf, "more than a burst never fits"

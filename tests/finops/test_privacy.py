"""finops/privacy.py: keyed user hashes, masking of emails and phone numbers, no conversation content kept."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from prismops.finops.privacy import (
    CONTENT_FIELDS,
    EMAIL_MASK,
    PHONE_MASK,
    hash_user_id,
    mask_labels,
    mask_personal_data,
    strip_content_fields,
)
from prismops.streams.codecs import codec_for

KEY = b"test-secret-key"


# --- user ids ----------------------------------------------------------------------------------------------

def test_user_hash_is_hmac_sha256_under_the_key():
    assert hash_user_id("user-42", KEY) == hmac.new(KEY, b"user-42", hashlib.sha256).hexdigest()
    assert hash_user_id("zoë@example.com", KEY) == hmac.new(KEY, "zoë@example.com".encode(), hashlib.sha256).hexdigest()


def test_user_hash_is_stable_per_user_and_differs_between_users():
    assert hash_user_id("user-42", KEY) == hash_user_id("user-42", KEY)
    assert hash_user_id("user-42", KEY) != hash_user_id("user-43", KEY)


def test_user_hash_depends_on_the_key():
    assert hash_user_id("user-42", KEY) != hash_user_id("user-42", b"another-key")


def test_user_hash_is_not_a_plain_hash_of_the_id():
    digest = hash_user_id("jane@example.com", KEY)
    assert digest != hashlib.sha256(b"jane@example.com").hexdigest()
    assert "jane" not in digest and len(digest) == 64


# --- masking -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("email", ["jane.doe@example.com", "J.Doe+billing@sub.example.co.uk", "a_b-c%d@x-y.io"])
def test_emails_are_masked(email):
    assert mask_personal_data(email) == EMAIL_MASK
    assert mask_personal_data(f"contact {email} today") == f"contact {EMAIL_MASK} today"


@pytest.mark.parametrize("phone", ["+1 415 555 0100", "(415) 555-0100", "+447911123456", "415.555.0100",
                                   "415-555-0100", "+1 (415) 555-0100", "+44 7911 123456"])
def test_phone_numbers_are_masked(phone):
    assert mask_personal_data(phone) == PHONE_MASK
    assert mask_personal_data(f"call {phone}, then") == f"call {PHONE_MASK}, then"


@pytest.mark.parametrize("text", ["order-12345", "2026-11-21", "3.14", "v1.2.3", "ticket 4711", "2026-11-21 10:30:15",
                                  "gpt-4o-2024-08-06", "retry 3 of 5", "cust-001", "us-east-1", "1700000000000"])
def test_ordinary_numbers_and_ids_are_not_masked(text):
    assert mask_personal_data(text) == text


def test_several_findings_in_one_text():
    text = "from jane@example.com (415) 555-0100 re order-12345 on 2026-11-21"
    assert mask_personal_data(text) == f"from {EMAIL_MASK} {PHONE_MASK} re order-12345 on 2026-11-21"


def test_mask_labels_masks_values_and_drops_content_keys():
    labels = {"owner": "jane@example.com", "escalation": "+1 415 555 0100", "order": "order-12345",
              "day": "2026-11-21", "prompt": "tell me a secret", "Completion": "the secret"}
    assert mask_labels(labels) == {"owner": EMAIL_MASK, "escalation": PHONE_MASK, "order": "order-12345",
                                   "day": "2026-11-21"}


def test_mask_labels_leaves_the_input_alone():
    labels = {"owner": "jane@example.com"}
    mask_labels(labels)
    assert labels == {"owner": "jane@example.com"}


# --- conversation content ----------------------------------------------------------------------------------

SECRET = "my card number is 4111 1111 1111 1111, please help"


def _json(document: dict) -> bytes:
    return json.dumps(document).encode()


def test_top_level_content_fields_are_stripped_from_json():
    document = {"event_id": "e1", "model": "gpt-4o", "prompt": SECRET, "messages": [{"role": "user", "content": SECRET}]}
    cleaned, dropped = strip_content_fields(_json(document))
    assert dropped == ["messages", "prompt"]
    assert json.loads(cleaned) == {"event_id": "e1", "model": "gpt-4o"}
    assert SECRET.encode() not in cleaned


def test_content_labels_are_stripped_from_json():
    document = {"event_id": "e1", "labels": {"team": "search", "completion": SECRET}}
    cleaned, dropped = strip_content_fields(_json(document))
    assert dropped == ["labels.completion"]
    assert json.loads(cleaned) == {"event_id": "e1", "labels": {"team": "search"}}


def test_content_field_names_match_in_any_case():
    cleaned, dropped = strip_content_fields(_json({"event_id": "e1", "Prompt": SECRET, "labels": {"RESPONSE": SECRET}}))
    assert dropped == ["Prompt", "labels.RESPONSE"]
    assert SECRET.encode() not in cleaned


@pytest.mark.parametrize("name", sorted(CONTENT_FIELDS))
def test_every_content_field_is_stripped(name):
    cleaned, dropped = strip_content_fields(_json({"event_id": "e1", name: SECRET}))
    assert dropped == [name]
    assert json.loads(cleaned) == {"event_id": "e1"}


def test_json_without_content_is_returned_as_is():
    value = b'{"event_id": "e1",   "labels": {"team": "search"}}'
    assert strip_content_fields(value) == (value, [])


def test_avro_values_are_untouched(make_event):
    value = codec_for("llm_usage_event").encode(make_event(labels={"note": "prompt"}))
    cleaned, dropped = strip_content_fields(value)
    assert cleaned is value
    assert dropped == []


@pytest.mark.parametrize("value", [None, b"", b"not json", b"{broken", b"[1, 2]", b"  \n"])
def test_other_values_are_untouched(value):
    assert strip_content_fields(value) == (value, [])

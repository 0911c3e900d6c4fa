"""The JSON Schema served at /schema is generated from the .avsc and accepts exactly what the schema requires."""

from __future__ import annotations

from prismops.gateway_http.json_schema import json_schema_of
from prismops.schemas import latest


def test_the_usage_schema_lists_every_avsc_field_and_requires_those_without_default():
    schema = json_schema_of("llm_usage_event")
    fields = latest("llm_usage_event").definition["fields"]
    assert list(schema["properties"]) == [f["name"] for f in fields]
    assert set(schema["required"]) == {f["name"] for f in fields if "default" not in f}
    assert schema["properties"]["event_time"]["format"] == "date-time"
    assert schema["properties"]["status"]["enum"] == ["ok", "error", "timeout", "rate_limited"]
    assert schema["properties"]["customer"] == {"anyOf": [{"type": "null"}, {"type": "string"}],
                                                **({"description": schema["properties"]["customer"]["description"]}
                                                   if "description" in schema["properties"]["customer"] else {}),
                                                "default": None}
    assert schema["$schema"].startswith("https://json-schema.org/draft/2020-12")

"""schemas/__init__.py: discovery of the .avsc files, version ordering, lookups and their errors."""

from __future__ import annotations

import json
import re
from importlib import resources

import fastavro
import pytest

from prismops import schemas

AVSC_FILE = re.compile(r"^(?P<name>[a-z_]+)\.v(?P<version>\d+)\.avsc$")


def _avsc_files() -> list[str]:
    return sorted(e.name for e in resources.files("prismops.schemas").iterdir() if e.name.endswith(".avsc"))


def test_every_avsc_file_is_well_named_and_registered():
    files = _avsc_files()
    assert files, "no .avsc files found next to schemas/__init__.py"
    registered = {f"{v.name}.v{v.version}.avsc" for n in schemas.schema_names() for v in schemas.versions(n)}
    for file_name in files:
        # A misnamed file would be silently ignored by the registry.
        assert AVSC_FILE.match(file_name), f"{file_name} does not follow <name>.v<N>.avsc"
    assert registered == set(files)


def test_the_topic_schemas_are_all_present():
    from prismops.streams.topics import ALL_TOPICS

    assert {spec.schema for spec in ALL_TOPICS} <= set(schemas.schema_names())


def _pinned_items(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["prismops.items"]] if "prismops.items" in node else []
        return found + [name for value in node.values() for name in _pinned_items(value)]
    if isinstance(node, list):
        return [name for value in node for name in _pinned_items(value)]
    return []


def test_a_batch_carries_the_item_version_it_pins():
    item = schemas.get("cost_line", 3).definition
    batch = schemas.get("cost_line_batch", 1).definition
    [lines] = [f for f in batch["fields"] if f["name"] == "lines"]
    assert lines["type"]["items"] == item


@pytest.mark.parametrize("file_name", _avsc_files())
def test_every_schema_file_parses_with_fastavro(file_name):
    definition = json.loads(resources.files("prismops.schemas").joinpath(file_name).read_text())
    assert definition["type"] == "record"
    named: dict = {}
    pinned = _pinned_items(definition)
    for item_file in pinned:  # a batch file names its item; fastavro resolves the name from the item's own file
        fastavro.parse_schema(json.loads(resources.files("prismops.schemas").joinpath(f"{item_file}.avsc").read_text()),
                              named_schemas=named)
    fastavro.parse_schema(definition, named_schemas=named)
    match = AVSC_FILE.match(file_name)
    version = schemas.get(match["name"], int(match["version"]))
    if pinned:
        definition = version.definition  # expanded on load: the item's definition in place of its name
        assert "prismops.items" not in json.dumps(definition)
    parsed = fastavro.parse_schema(definition)
    assert version.definition == definition
    # `.parsed` is the fastavro-parsed form of the same definition (and is cached).
    assert version.parsed == parsed
    assert version.parsed is version.parsed


@pytest.mark.parametrize("name", schemas.schema_names())
def test_versions_are_contiguous_from_one_and_ordered(name):
    found = schemas.versions(name)
    assert [v.version for v in found] == list(range(1, len(found) + 1))
    assert all(v.name == name for v in found)


@pytest.mark.parametrize("name", schemas.schema_names())
def test_every_version_keeps_the_same_record_full_name(name):
    # Avro resolution matches records by name: renaming would make old data unreadable.
    full_names = {(v.definition.get("namespace"), v.definition["name"]) for v in schemas.versions(name)}
    assert len(full_names) == 1


def test_latest_is_the_highest_version():
    # llm_usage_event ships three files (v1..v3): latest must be v3, not the first one found.
    assert schemas.latest("llm_usage_event").version == 3
    assert "cache_write_tokens" in {f["name"] for f in schemas.latest("llm_usage_event").definition["fields"]}
    for name in schemas.schema_names():
        assert schemas.latest(name).version == max(v.version for v in schemas.versions(name))
        assert schemas.get(name) == schemas.latest(name)


def test_get_a_specific_version():
    v1 = schemas.get("llm_usage_event", 1)
    assert v1.version == 1
    assert "reasoning_tokens" not in {f["name"] for f in v1.definition["fields"]}


def test_schema_names_are_sorted_and_unique():
    names = schemas.schema_names()
    assert names == sorted(set(names))


@pytest.mark.parametrize("call", [
    lambda: schemas.versions("no_such_schema"),
    lambda: schemas.latest("no_such_schema"),
    lambda: schemas.get("no_such_schema"),
])
def test_unknown_schema_name_is_a_key_error_naming_it_and_the_known_ones(call):
    with pytest.raises(KeyError) as info:
        call()
    text = str(info.value)
    assert "no_such_schema" in text
    assert "cost_line" in text  # the message lists the known names


def test_unknown_version_is_a_key_error():
    with pytest.raises(KeyError, match="no version 99"):
        schemas.get("cost_line", 99)
    with pytest.raises(KeyError, match="no_such_schema"):
        schemas.get("no_such_schema", 1)
